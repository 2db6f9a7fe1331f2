"""Simulation-based calibration (Talts et al. 2018) of M1, M2 and M3 (issue 10, section 4).

    flock /tmp/schoolquality-stan.lock .venv/bin/python benchmarks/sbc.py [--replicates 200] [--models m1,m2,m3]

For each replicate (seeded by ``[seed, replicate]``): draw every parameter from the program's
prior, simulate binomial outcomes (the exact likelihood) on a small complete design, fit the
project's program through the project's own path (``models.model_input``, ``initial_values``,
the streaming engine), thin the pooled draws to L = 99 evenly spaced draws, and record the rank
(0..99) of each true value among them: the intercept, every SD, three school effects
``r_school[1..3]`` and, for M2/M3, ``b[1]`` and ``r_cohort[1]``. A fit whose smallest bulk ESS
over those quantities is below L is rerun once with more draws (Talts et al., algorithm 2), so
the thinned draws are at least one effective sample apart. Divergent fits are kept and counted;
a fit that fails outright is counted and has no ranks. The logic lives in
``schoolquality_assets/calibration.py`` (shared with ``test_sbc.py``).

Priors: the programs' own (Intercept and every SD student_t(3, 0, 2.5), the SDs half-t through
``<lower=0>``). The fixed effects ``b`` of M2/M3 are flat (improper) as in brms, so there is no
prior to draw from: the replicates draw b ~ normal(0, 1) and fit with the data switch
``prior_b_sd = 1``, under which the programs add ``b ~ normal(0, prior_b_sd)``. The switch is in
the project's programs (``prior_b_sd = 0``, what ``models.model_input`` passes, keeps b flat and
gives bit-identical draws to the programs before the switch) rather than in SBC-only copies, so
the calibrated code is the code that runs in production, apart from that one line.

Outputs: ``benchmarks/sbc_results/sbc_<model>.png`` (rank histograms with a 99% band for a
uniform histogram), ``sbc_<model>.json`` (settings, every replicate, the tests) and a printed table:
per quantity the chi-square p-value on binned ranks and the KS p-value on normalised ranks, over
all replicates and over the replicates without divergences.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from schoolquality_assets import calibration, models  # noqa: E402
from schoolquality_assets.stan_engine import SamplerSettings, compile_pystan  # noqa: E402

RESULTS = Path(__file__).parent / "sbc_results"
DESIGN = calibration.Design(schools=20, years=3, n_min=10, n_max=60)
# Shorter than production (1000 warmup, until converged, tree depth 10) so 600 fits fit in ~30 min
# on 2 cores; the ESS rerun keeps the thinned draws roughly independent.
SETTINGS = calibration.Settings(
    sampler=SamplerSettings(chains=2, warmup=250, draws=250, max_treedepth=8, until_converged=False),
    thinned=99, max_draw_factor=3)


def run_model(key: str, replicates: int, seed: int) -> dict:
    spec = models.MODELS[key]
    compile_pystan(spec.path, progress=lambda message: None)   # not timed with the replicates
    start = time.monotonic()
    reps = []
    for i in range(replicates):
        reps.append(calibration.run_replicate(spec, i, DESIGN, SETTINGS, seed))
        if (i + 1) % 25 == 0:
            print(f"  {key}: {i + 1}/{replicates} replicates, {time.monotonic() - start:.0f} s", flush=True)
    wall = time.monotonic() - start
    return {"model": key, "wall_seconds": wall, "replicates": [asdict(r) for r in reps],
            "tests": calibration.summarise(reps, SETTINGS.thinned),
            "tests_without_divergences": calibration.summarise(reps, SETTINGS.thinned, without_divergences=True),
            "_reps": reps}


def plot_ranks(result: dict, path: Path) -> None:
    """One rank histogram per quantity, with the 99% band of a bin count under uniformity."""
    reps = [r for r in result["_reps"] if r.ranks is not None]
    names = list(reps[0].ranks)
    bins = calibration.bins_for(len(reps), SETTINGS.thinned)
    lo, hi = stats.binom.ppf([0.005, 0.995], len(reps), 1 / bins)
    cols = 3
    fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(4 * cols, 2.6 * -(-len(names) // cols)), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ranks = np.array([r.ranks[name] for r in reps])
        ax.axhspan(lo, hi, color="0.85")
        ax.hist(ranks, bins=np.linspace(0, SETTINGS.thinned + 1, bins + 1), color="tab:blue", edgecolor="white")
        p = result["tests"][name]
        ax.set_title(f"{name}: χ² p={p['chi2_p']:.3f}, KS p={p['ks_p']:.3f}", fontsize=9)
        ax.set_xlim(0, SETTINGS.thinned + 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"SBC rank histograms, {result['model'].upper()}: {len(reps)} replicates, L = {SETTINGS.thinned} "
                 "(grey: 99% band of a bin under uniform ranks)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fit_counts(result: dict) -> dict:
    reps = result["_reps"]
    return {
        "replicates": len(reps),
        "failed": sum(r.ranks is None for r in reps),
        "divergent_fits": sum(r.divergences > 0 for r in reps),
        "divergent_transitions": sum(r.divergences for r in reps),
        "treedepth_fits": sum(r.treedepth_hits > 0 for r in reps),
        "reruns": sum(r.reruns for r in reps),
        "low_ess_fits": sum(r.ranks is not None and r.min_ess < SETTINGS.thinned for r in reps),
    }


def print_table(results: list[dict]) -> None:
    print("\n| model | quantity | n | χ² p | KS p | n (no div.) | χ² p (no div.) | KS p (no div.) |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        for name, t in res["tests"].items():
            u = res["tests_without_divergences"].get(name, {"n": 0, "chi2_p": float("nan"), "ks_p": float("nan")})
            print(f"| {res['model'].upper()} | {name} | {t['n']} | {t['chi2_p']:.3f} | {t['ks_p']:.3f} "
                  f"| {u['n']} | {u['chi2_p']:.3f} | {u['ks_p']:.3f} |")
    print("\n| model | replicates | wall | s/fit | failed | fits with divergences (transitions) "
          "| fits at max tree depth | ESS reruns | ESS < L after rerun | calibrated (Bonferroni 1%) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        c = fit_counts(res)
        print(f"| {res['model'].upper()} | {c['replicates']} | {res['wall_seconds'] / 60:.1f} min "
              f"| {res['wall_seconds'] / c['replicates']:.2f} | {c['failed']} "
              f"| {c['divergent_fits']} ({c['divergent_transitions']}) | {c['treedepth_fits']} | {c['reruns']} "
              f"| {c['low_ess_fits']} | {'yes' if calibration.calibrated(res['tests']) else 'NO'} |")


def save(result: dict) -> None:
    out = {k: v for k, v in result.items() if k != "_reps"} | {
        "counts": fit_counts(result), "design": asdict(DESIGN), "settings": asdict(SETTINGS),
        "prior_b_sd": calibration.PRIOR_B_SD, "machine": f"{platform.node()} {platform.machine()}, "
        f"{os.cpu_count()} cores"}
    (RESULTS / f"sbc_{result['model']}.json").write_text(json.dumps(out, indent=1, default=str))
    plot_ranks(result, RESULTS / f"sbc_{result['model']}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--models", default="m1,m2,m3")
    parser.add_argument("--seed", type=int, default=20181024)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    print(f"SBC: {args.replicates} replicates per model, design {DESIGN}, sampler {SETTINGS}, "
          f"b ~ normal(0, {calibration.PRIOR_B_SD})", flush=True)
    results = []
    for key in args.models.split(","):
        result = run_model(key, args.replicates, args.seed)
        save(result)
        results.append(result)
        print(f"{key}: {result['wall_seconds']:.0f} s", flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
