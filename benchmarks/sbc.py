"""Simulation-based calibration (Talts et al. 2018) of M1, M2 and M3 (issue 10, section 4).

    flock /tmp/schoolquality-stan.lock .venv/bin/python benchmarks/sbc.py \\
        [--settings production|quick] [--replicates 200] [--models m1,m2,m3] [--seed 20181024]
    .venv/bin/python benchmarks/sbc.py --estimate 6            # time a few replicates, write nothing
    .venv/bin/python benchmarks/sbc.py --from-json benchmarks/sbc_results --out /tmp/sbc   # no Stan

For each replicate i (numpy seeded by ``[seed, i]``, Stan and the initial values by ``seed + i``;
both recorded per replicate as ``rng_seed`` and ``sampler_seed``, with the sampler settings of the
kept fit as ``sampler``): draw every parameter from the program's prior, simulate binomial
outcomes (the exact likelihood) on a small complete design, fit the project's program through the
project's own path (``models.model_input``, ``initial_values``, the streaming engine), thin the
pooled draws to L = 99 evenly spaced draws, and record the rank (0..99) of each true value among
them: the intercept, every SD, three school effects ``r_school[1..3]`` and, for M2/M3, ``b[1]``
and ``r_cohort[1]`` (M1 5 quantities, M2 8, M3 9: 10, 16 and 18 tests). A fit whose smallest bulk
ESS over those quantities is below L is rerun once with more draws (Talts et al., algorithm 2), so
the thinned draws are at least one effective sample apart. A fit that fails outright is counted
and has no ranks. The logic lives in ``schoolquality_assets/models/calibration.py`` (shared with
``test_sbc.py``).

Sampler settings (``--settings``):

* ``production`` (default): the project's production sampler (``resources.SamplerResource``):
  4 chains, 300 warmup (SCHOOLQUALITY_WARMUP's default; 1000 before 2026-12-03), adapt_delta 0.8, max tree depth 10, but a *fixed* 250 draws per chain
  (1000 draws, thinned to 99; an ESS rerun gives up to 4x the draws) instead of production's
  "sample until the convergence gate holds". A fixed length because (i) the rank argument
  (true value and the L draws exchangeable given the data) holds for a fixed number of draws; a
  stopping rule that looks at the draws themselves (R-hat, ESS) is optional stopping, which it
  does not cover; (ii) thinning to a fixed L needs a known draw count, and the ESS rerun
  already makes the L draws roughly independent; (iii) the gate (ESS >= 400, R-hat <= 1.01)
  would keep many extreme prior draws sampling to ``max_draws``, an unbounded cost. What SBC
  checks is the program, the data path and the adapted sampler (warmup, step size, metric, tree
  depth) that production uses; the run length is the one difference.
* ``production-stop``: the production procedure itself (issue 38): 4 chains, 300 warmup, the
  model's adapt_delta (M3 0.9), dispersed initial values, sampling until the blocking gate
  (``diagnostics.Thresholds()``) holds at a checkpoint, as ``specs.sample_model`` does for every
  production fit, here with a 300 s budget per fit; no ESS rerun. A fit whose gate never held is
  a problem fit (``gate_failed``): production would not have published it. This is optional
  stopping, which the rank argument does not cover: the run measures whether it matters.
  Written to ``benchmarks/sbc_results/production_stop/``.
* ``quick``: the previous run's settings, 2 chains x (250 warmup + 250 draws), max tree depth 8,
  ESS rerun with up to 3x the draws (~16 min for 3 x 200 fits on this machine). Written to
  ``benchmarks/sbc_results/quick/`` unless ``--out`` says otherwise.

Problem fits: a fit with any divergent transition, any draw at the maximum tree depth, or a
smallest bulk ESS still below L after the rerun (``calibration.problems``). Every fit is kept;
the uniformity tests are reported three ways: all fits, the clean fits only and the problem fits
only. The split is a function of the data and of the sampler's draws, not of the truth, so a
correct posterior gives uniform ranks in each subset (up to the split also looking at the draws);
a subset that rejects where the other does not says where the trouble is.

Tests and verdict: per quantity the chi-square p-value on 20 bins of ranks and the KS p-value on
normalised ranks; the verdict is "uniformity not rejected" (or "rejected") with Bonferroni at 1%
over the model's tests. At 200 replicates this test has little power against moderate
miscalibration (``benchmarks/sbc_power.py``): "not rejected" means no gross miscalibration was
detected at that power, not "calibrated". Also printed: the share of ranks in the outer 10%
(ranks 0..4 and 95..99), where an over-confident posterior piles them up, with its binomial 95%
interval under uniformity.

Outputs in ``--out`` (default ``benchmarks/sbc_results``): ``sbc_<model>.png`` (rank histograms
with a 99% band for a bin count under uniformity), ``sbc_<model>_ecdf.png`` (ECDF of the
normalised ranks minus the uniform CDF with a simultaneous 95% band; arviz's ``plot_ecdf``,
``confidence_bands="optimized"``: the pointwise level whose simultaneous coverage is 95%,
computed exactly for the discrete ranks, Saeilynoja et al. 2022), ``sbc_<model>.json``
(settings, every replicate with its seeds and sampler settings, the tests of all / clean /
problem fits, the outer-10% shares), and ``sbc_summary_<models>.md`` (the printed tables,
e.g. ``sbc_summary_m1_m2_m3.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run as a script from anywhere
from schoolquality_assets.models import specs  # noqa: E402
from schoolquality_assets.models import calibration  # noqa: E402
from schoolquality_assets.defs.resources import SAMPLER_ENV  # noqa: E402
from schoolquality_assets.engine.pystan_engine import compile_pystan  # noqa: E402
from schoolquality_assets.engine.sampling import choose_engine  # noqa: E402
from schoolquality_assets.engine.base import SamplerSettings  # noqa: E402
from schoolquality_assets.models.diagnostics import Thresholds  # noqa: E402

RESULTS = Path(__file__).parent / "sbc_results"
DESIGN = calibration.Design(schools=20, years=3, n_min=10, n_max=60)
SETTINGS = {
    # resources.SamplerResource's chains / warmup / adapt_delta / max_treedepth, fixed draws (docstring)
    "production": calibration.Settings(
        sampler=SamplerSettings(chains=4, warmup=SAMPLER_ENV["warmup"].default, draws=250, adapt_delta=0.8, max_treedepth=10,
                                until_converged=False),
        thinned=99, max_draw_factor=4),
    # the production procedure itself: sampling until the blocking gate holds (optional stopping),
    # the model's adapt_delta, dispersed initial values; no ESS rerun (issue 38, section 3)
    "production-stop": calibration.Settings(
        sampler=SamplerSettings(chains=4, warmup=SAMPLER_ENV["warmup"].default, adapt_delta=0.8, max_treedepth=10,
                                until_converged=True, budget_seconds=300.0),
        thinned=99, max_draw_factor=1, limits=Thresholds()),
    # the previous run: short, tree depth lowered to 8 to bound the cost of the hard prior draws
    "quick": calibration.Settings(
        sampler=SamplerSettings(chains=2, warmup=250, draws=250, adapt_delta=0.8, max_treedepth=8,
                                until_converged=False),
        thinned=99, max_draw_factor=3),
}
SUBSET_LABEL = {"all": "all fits", "clean": "clean fits", "problem": "problem fits"}
ALPHA = 0.01


# --------------------------------------------------------------------------- run


def fit_line(key: str, done: int, total: int, rep: calibration.Replicate, elapsed: float, thinned: int) -> str:
    per_fit = elapsed / done
    flags = ",".join(calibration.problems(rep, thinned)) or "clean"
    return (f"  {key} {done:>4}/{total}: replicate {rep.index:>4} {rep.seconds:6.2f} s "
            f"(div {rep.divergences}, max depth {rep.treedepth_hits}, ESS {rep.min_ess:.0f}, "
            f"reruns {rep.reruns}, draws/chain {rep.draws_per_chain}; {flags if rep.ranks is not None else 'FAILED'}) "
            f"| {elapsed:.0f} s, {per_fit:.2f} s/fit, ETA {per_fit * (total - done) / 60:.1f} min")


def run_model(key: str, indices: list[int], seed: int, settings: calibration.Settings, name: str,
              pause_file: Path | None = None) -> dict:
    spec = specs.MODELS[key]
    if choose_engine(settings.sampler.engine, spec.path) == "pystan":
        compile_pystan(spec.path, progress=lambda message: None)   # not timed with the replicates
    start = time.monotonic()
    reps = []
    for done, i in enumerate(indices, 1):
        while pause_file is not None and pause_file.exists():   # between fits, so no fit's budget runs out
            time.sleep(5)
        rep = calibration.run_replicate(spec, i, DESIGN, settings, seed)
        reps.append(rep)
        print(fit_line(key, done, len(indices), rep, time.monotonic() - start, settings.thinned), flush=True)
    return {"model": key, "settings_name": name, "settings": settings, "seed": seed,
            "wall_seconds": time.monotonic() - start, "_reps": reps}


def load(path: Path) -> dict:
    """A result saved by :func:`save` (or by the previous version of this script)."""
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(calibration.Replicate)}
    reps = [calibration.Replicate(**{k: v for k, v in r.items() if k in known}) for r in raw["replicates"]]
    s = raw["settings"]
    sampler = {k: v for k, v in s["sampler"].items() if k != "seed"}
    settings = calibration.Settings(sampler=SamplerSettings(**sampler), thinned=s["thinned"],
                                    max_draw_factor=s["max_draw_factor"],
                                    limits=Thresholds(**s["limits"]) if s.get("limits") else None)
    return {"model": raw["model"], "settings_name": raw.get("settings_name", "quick (previous run)"),
            "settings": settings, "seed": raw.get("seed", 20181024), "wall_seconds": raw["wall_seconds"],
            "_reps": reps}


# --------------------------------------------------------------------------- summaries


def analyse(result: dict) -> dict:
    """Tests of all / clean / problem fits, counts and outer-10% shares, added to ``result``."""
    reps, L = result["_reps"], result["settings"].thinned
    result["tests"] = {subset: calibration.summarise(reps, L, subset=subset) for subset in calibration.SUBSETS}
    result["tests_without_divergences"] = calibration.summarise(reps, L, without_divergences=True)
    result["verdicts"] = {subset: calibration.verdict(t, ALPHA) for subset, t in result["tests"].items()}
    done = calibration.select(reps, L)
    outer = {}
    if done:
        names = list(done[0].ranks)
        for name in names:
            outer[name] = calibration.outer_share(np.array([r.ranks[name] for r in done]), L)
        outer["pooled"] = calibration.outer_share(np.array([[r.ranks[n] for n in names] for r in done]), L)
    result["outer_10pct"] = outer
    # the simultaneous 95% ECDF band per quantity (a 5% test each, no correction over the quantities)
    result["ecdf_band_95"] = ({name: {k: v for k, v in calibration.ecdf_band(
        np.array([r.ranks[name] for r in done]), L).items() if k not in ("lo", "hi")} for name in done[0].ranks}
        if done else {})
    result["counts"] = fit_counts(result)
    return result


def fit_counts(result: dict) -> dict:
    reps, L = result["_reps"], result["settings"].thinned
    flags = [calibration.problems(r, L) for r in reps]
    return {
        "replicates": len(reps),
        "failed": sum(r.ranks is None for r in reps),
        "divergent_fits": sum(r.divergences > 0 for r in reps),
        "divergent_transitions": sum(r.divergences for r in reps),
        "treedepth_fits": sum(r.treedepth_hits > 0 for r in reps),
        "reruns": sum(r.reruns for r in reps),
        "low_ess_fits": sum("low_ess" in f for f in flags),
        "gate_failed_fits": sum("gate_failed" in f for f in flags),
        "draws_per_chain_median": float(np.median([r.draws_per_chain for r in reps if r.ranks is not None] or [0])),
        "draws_per_chain_max": max([r.draws_per_chain for r in reps if r.ranks is not None] or [0]),
        "problem_fits": sum(bool(f) for f in flags),
        "clean_fits": len(calibration.select(reps, L, "clean")),
    }


def fmt_p(t: dict | None, key: str) -> str:
    return f"{t[key]:.3f}" if t else ""


def tables(results: list[dict]) -> list[str]:
    out = ["p-values per quantity (χ² on 20 bins / KS on normalised ranks) over all, clean and problem fits; "
           "ECDF: grid points (of L) outside the simultaneous 95% band, all fits (a 5% test per quantity, "
           "uncorrected):", "",
           "| model | quantity | n all | χ² p | KS p | ECDF outside 95% band | n clean | χ² p | KS p "
           "| n problem | χ² p | KS p |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for name, t in res["tests"]["all"].items():
            c, p = res["tests"]["clean"].get(name), res["tests"]["problem"].get(name)
            band = res["ecdf_band_95"][name]["outside_points"]
            out.append(f"| {res['model'].upper()} | {name} | {t['n']} | {t['chi2_p']:.3f} | {t['ks_p']:.3f} "
                       f"| {band if band else ''} "
                       f"| {c['n'] if c else 0} | {fmt_p(c, 'chi2_p')} | {fmt_p(c, 'ks_p')} "
                       f"| {p['n'] if p else 0} | {fmt_p(p, 'chi2_p')} | {fmt_p(p, 'ks_p')} |")
    out += ["", "| model | settings | replicates | wall | s/fit | failed | fits with divergences (transitions) "
            "| fits at max tree depth | ESS reruns | ESS < L after rerun | problem fits (any) | clean fits |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        c = res["counts"]
        out.append(f"| {res['model'].upper()} | {res['settings_name']} | {c['replicates']} "
                   f"| {res['wall_seconds'] / 60:.1f} min | {res['wall_seconds'] / max(c['replicates'], 1):.2f} "
                   f"| {c['failed']} | {c['divergent_fits']} ({c['divergent_transitions']}) | {c['treedepth_fits']} "
                   f"| {c['reruns']} | {c['low_ess_fits']} | {c['problem_fits']} | {c['clean_fits']} |")
    exits = [(res["model"].upper(), name) for res in results for name, b in res["ecdf_band_95"].items() if b["outside"]]
    panels = sum(len(res["ecdf_band_95"]) for res in results)
    out += ["", f"ECDF difference outside its simultaneous 95% band: {len(exits)} of {panels} quantities "
            f"(about {0.05 * panels:.1f} expected under uniform ranks if they were independent): "
            + (", ".join(f"{m} {n}" for m, n in exits) or "none")]
    out += ["", "Verdicts (chi-square on 20 bins and KS per quantity, Bonferroni over the model's tests):", ""]
    for res in results:
        for subset, line in res["verdicts"].items():
            n = len(calibration.select(res["_reps"], res["settings"].thinned, subset))
            out.append(f"- {res['model'].upper()}, {SUBSET_LABEL[subset]} (n = {n}): {line}")
    L = results[0]["settings"].thinned if results else 99
    k = calibration.tail_ranks(L)
    out += ["", f"Share of ranks in the outer 10% (ranks 0..{k - 1} and {L - k + 1}..{L}; expected "
            f"{2 * k / (L + 1):.0%}), [95% interval under uniform ranks]; the pooled interval treats a "
            "replicate's quantities as independent, so it is too narrow (post hoc, suggestive only):", "",
            "| model | quantity | n | outer share | 95% interval under uniformity | outside |", "|---|---|---|---|---|---|"]
    for res in results:
        for name, o in res["outer_10pct"].items():
            outside = "yes" if not o["lo"] <= o["share"] <= o["hi"] else ""
            out.append(f"| {res['model'].upper()} | {name} | {o['n']} | {o['share']:.1%} "
                       f"| [{o['lo']:.1%}, {o['hi']:.1%}] | {outside} |")
    return out


# --------------------------------------------------------------------------- plots


def plot_ranks(result: dict, path: Path) -> None:
    """One rank histogram per quantity, with the 99% band of a bin count under uniformity."""
    L = result["settings"].thinned
    reps = calibration.select(result["_reps"], L)
    names = list(reps[0].ranks)
    bins = calibration.bins_for(len(reps), L)
    lo, hi = stats.binom.ppf([0.005, 0.995], len(reps), 1 / bins)
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ranks = np.array([r.ranks[name] for r in reps])
        ax.axhspan(lo, hi, color="0.85")
        ax.hist(ranks, bins=np.linspace(0, L + 1, bins + 1), color="tab:blue", edgecolor="white")
        p = result["tests"]["all"][name]
        ax.set_title(f"{name}: χ² p={p['chi2_p']:.3f}, KS p={p['ks_p']:.3f}", fontsize=9)
        ax.set_xlim(0, L + 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"SBC rank histograms, {result['model'].upper()}, {result['settings_name']} settings: {len(reps)} "
                 f"replicates, L = {L} (grey: 99% band of a bin under uniform ranks)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ecdf(result: dict, path: Path, level: float = 0.95) -> None:
    """Per quantity: ECDF of the normalised ranks (r + 1) / (L + 1) minus the uniform CDF at k / (L + 1),
    k = 1..L (there the uniform CDF is exactly P(rank <= k - 1)), all fits with arviz's simultaneous
    ``level`` band ("optimized": the pointwise binomial level whose joint coverage under discrete uniform
    ranks is ``level``); the clean and the problem fits as thin lines, without a band (theirs is wider)."""
    import arviz as az

    L = result["settings"].thinned
    reps = calibration.select(result["_reps"], L)
    names = list(reps[0].ranks)
    grid = calibration.ecdf_grid(L)
    subsets = {s: calibration.select(result["_reps"], L, s) for s in ("clean", "problem")}
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        u = (np.array([r.ranks[name] for r in reps]) + 1) / (L + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            az.plot_ecdf(u, eval_points=grid, cdf=stats.uniform.cdf, difference=True, confidence_bands="optimized",
                         ci_prob=level, ax=ax, plot_kwargs={"color": "tab:blue", "label": f"all ({len(reps)})"},
                         fill_kwargs={"color": "0.8", "alpha": 0.8})
        for (subset, sub), color in zip(subsets.items(), ("tab:green", "tab:red")):
            if len(sub) >= 10:
                v = np.sort((np.array([r.ranks[name] for r in sub]) + 1) / (L + 1))
                ecdf = np.searchsorted(v, grid, side="right") / v.size
                ax.step(grid, ecdf - grid, where="post", color=color, lw=0.8, alpha=0.8,
                        label=f"{subset} ({len(sub)})")
        o = result["outer_10pct"][name]
        exit_ = " (outside band)" if result["ecdf_band_95"][name]["outside"] else ""
        ax.set_title(f"{name}{exit_}: outer 10% {o['share']:.1%} [{o['lo']:.1%}, {o['hi']:.1%}]", fontsize=9)
        ax.axhline(0, color="0.4", lw=0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalised rank", fontsize=8)
        ax.tick_params(labelsize=7)
    list(axes.flat)[0].legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"SBC ECDF difference, {result['model'].upper()}, {result['settings_name']} settings: ECDF of normalised "
                 f"ranks minus uniform CDF, L = {L}; grey: simultaneous {level:.0%} band for all {len(reps)} fits "
                 "(arviz, Säilynoja et al. 2022)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- save


def settings_record(result: dict) -> dict:
    """The settings as run: the sampler's own ``seed`` field is not what Stan got, so it is replaced."""
    record = asdict(result["settings"])
    n = len(result["_reps"])
    record["sampler"]["seed"] = (f"not used: replicate i ran with sampler seed {result['seed']} + i "
                                 f"(replicates[i].sampler_seed) and numpy seed [{result['seed']}, i]")
    record["sampler_seeds"] = [result["seed"], result["seed"] + max(n - 1, 0)] if n else []
    return record


def save(result: dict, out: Path, write_json: bool = True) -> None:
    key = result["model"]
    if write_json:
        record = {k: v for k, v in result.items() if not k.startswith("_") and k != "settings"} | {
            "replicates": [asdict(r) for r in result["_reps"]],
            "settings": settings_record(result), "design": asdict(DESIGN),
            "seed_rule": "numpy: default_rng([seed, i]); Stan and initial values: seed + i",
            "problem_rule": "divergences > 0, any draw at max tree depth, or min bulk ESS < L after the rerun",
            "engine": choose_engine(result["settings"].sampler.engine, specs.MODELS[key].path),
            "prior_b_sd": calibration.PRIOR_B_SD,
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores"}
        (out / f"sbc_{key}.json").write_text(json.dumps(record, indent=1, default=str))
    plot_ranks(result, out / f"sbc_{key}.png")
    plot_ecdf(result, out / f"sbc_{key}_ecdf.png")


def header(args, settings: calibration.Settings) -> str:
    sampler = {k: v for k, v in asdict(settings.sampler).items() if k != "seed"}
    return (f"SBC ({args.settings} settings): {args.replicates} replicates per model, design {DESIGN}, "
            f"sampler {sampler}, thinned to L = {settings.thinned}, "
            + (f"until the blocking gate holds ({settings.limits}); " if settings.stop_rule
               else f"ESS rerun up to {settings.max_draw_factor}x; ")
            + f"replicate i: numpy seed [{args.seed}, i], Stan seed {args.seed} + i; "
            f"b ~ normal(0, {calibration.PRIOR_B_SD})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", choices=sorted(SETTINGS), default="production",
                        help="sampler settings (default production; quick = the previous run's)")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--models", default="m1,m2,m3", help="comma-separated, of " + ",".join(specs.MODELS))
    parser.add_argument("--seed", type=int, default=20181024)
    parser.add_argument("--pause-file", type=Path, default=None,
                        help="wait between fits while this file exists (so that timings can run on a quiet machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default benchmarks/sbc_results, quick: benchmarks/sbc_results/quick)")
    parser.add_argument("--estimate", type=int, default=0, metavar="K",
                        help="time K of the replicates (spread over 0..N-1) per model, print the projected "
                             "run time, write nothing")
    parser.add_argument("--from-json", type=Path, default=None, metavar="DIR",
                        help="no Stan: reload sbc_<model>.json from DIR, print the tables and redraw the plots in --out")
    args = parser.parse_args()
    keys = args.models.split(",")
    unknown = [k for k in keys if k not in specs.MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}")
    out = args.out or (RESULTS if args.settings == "production" else RESULTS / args.settings.replace("-", "_"))
    settings = SETTINGS[args.settings]

    if args.from_json:
        results = [analyse(load(args.from_json / f"sbc_{key}.json")) for key in keys]
        out.mkdir(parents=True, exist_ok=True)
        for result in results:
            save(result, out, write_json=False)
        report(results, out, keys)
        return

    print(header(args, settings), flush=True)
    if args.estimate:
        total = 0.0
        for key in keys:
            indices = sorted(set(np.linspace(0, args.replicates - 1, args.estimate).round().astype(int).tolist()))
            result = run_model(key, indices, args.seed, settings, args.settings)
            per_fit = result["wall_seconds"] / len(indices)
            total += per_fit * args.replicates
            print(f"{key}: {per_fit:.2f} s/fit over {len(indices)} replicates -> {per_fit * args.replicates / 60:.0f} min "
                  f"for {args.replicates} (hard prior draws make this noisy)", flush=True)
        print(f"projected total: {total / 60:.0f} min", flush=True)
        return

    out.mkdir(parents=True, exist_ok=True)
    results = []
    for key in keys:
        result = analyse(run_model(key, list(range(args.replicates)), args.seed, settings, args.settings,
                                   args.pause_file))
        save(result, out)
        results.append(result)
        print(f"{key}: {result['wall_seconds']:.0f} s", flush=True)
    report(results, out, keys)


def report(results: list[dict], out: Path, keys: list[str]) -> None:
    lines = tables(results)
    print("\n" + "\n".join(lines))
    (out / f"sbc_summary_{'_'.join(keys)}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
