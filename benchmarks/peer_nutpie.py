"""The peer a user could pick instead: M2 in PyMC, sampled by nutpie, beside the project's M2 in the
same run (not a test: it prints figures). Run alone, with nothing else running:

    .venv/bin/python -m pip install -e '.[peer]'      # optional extra: pymc (nutpie and numba are dependencies)
    flock /tmp/schoolquality-stan.lock .venv/bin/python benchmarks/peer_nutpie.py [brms|full] [--draws N] [--warmup N] [--seeds S]

The project's M2 runs under its default engine here (nutpie on the hand-written density) and under
Stan's own sampler (PyStan); ``--engine auto|pystan`` runs one of them.

``brms`` (default): benchmarks/data/brms_m2_subsample.csv, the 11,487 rows brms fitted, at brms's
settings 4 x (1000 + 1000). ``full``: the built-in province's full analysis sample, 4 x (300 + 700).
Each fit runs with seeds 1..S (default 3), fits of one seed back to back, and the table ends
with each fit's median over the seeds and its ratio to the peer's median: the bulk ESS of one SD
from 4,000 draws varies by up to ~20% from seed to seed, as much as the differences measured.
``--gate``: time to the blocking gate instead: the project's default rule (its fit's sampling seconds,
judging included) against the peer under the same rule (peer_to_gate), for ``full`` the
side-by-side of issue 19 (``full --gate --seeds 1``).
Rows: the project at the fixed settings and under its default rule (the gate), each at the
project's default warmup (``--warmup``, else brms's 1,000 / the full partition's 300) and, for
``brms``, at 300; the peer at the fixed settings and at 4 x (300 + 1000) (nutpie's own default
warmup is 400). The peer samples with nutpie.sample's default cores (one chain per core).

The peer is the form that did best in the issue's measurements, given its best configuration:
centred-nested (schools centred on the intercept, cohorts on their school), the project's priors
(Intercept ~ student_t(3, 0, 2.5) at the mean design row, SDs ~ half student_t(3, 0, 2.5), flat b),
nutpie's numba backend, and the fixed effects by cell index (a K x K product and an index, not the
dense N x K design product for which PyTensor wants a BLAS). Both fits use 4 chains on every core.

Printed per fit: sampling seconds (warmup included, compile apart), arviz bulk ESS of sd_school and
sd_cohort, ESS per second, the posterior means, and the gate's figures (max R-hat of the
hyperparameters and of r_school, min bulk and tail ESS over r_school).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import polars as pl

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import bench_m2  # noqa: E402

from schoolquality_assets.models import specs  # noqa: E402

from schoolquality_assets.models import diagnostics
from schoolquality_assets.defs.resources import SAMPLER_ENV  # noqa: E402
from schoolquality_assets.engine.pystan_engine import compile_pystan  # noqa: E402
from schoolquality_assets.engine.base import SamplerSettings  # noqa: E402

QUIET = bench_m2.QUIET


def sample_of(which: str) -> pl.DataFrame:
    if which == "brms":
        return bench_m2.cleaned_from(pl.read_csv(HERE / "data" / "brms_m2_subsample.csv", infer_schema=False))
    return bench_m2.province_sample("full")


def peer_model(mi: specs.ModelInput):
    """PyMC M2, centred-nested, from the project's model input (same data, same contrasts)."""
    import pymc as pm

    d = mi.data
    X = np.asarray(d["X"], dtype=float)
    rows, cell = np.unique(X, axis=0, return_inverse=True)   # distinct design rows: one per year_subject cell
    x_mean = X.mean(axis=0)
    with pm.Model() as model:
        intercept = pm.StudentT("Intercept", nu=3, mu=0, sigma=2.5)       # at the mean design row
        b = pm.Flat("b", shape=d["K"])
        sd_school = pm.HalfStudentT("sd_school", nu=3, sigma=2.5)
        sd_cohort = pm.HalfStudentT("sd_cohort", nu=3, sigma=2.5)
        mu_school = pm.Normal("mu_school", mu=intercept - pm.math.dot(x_mean, b), sigma=sd_school, shape=d["J_school"])
        mu_cohort = pm.Normal("mu_cohort", mu=mu_school[d["cohort_school"] - 1], sigma=sd_cohort, shape=d["J_cohort"])
        cell_effect = pm.math.dot(rows, b)
        eta = mu_cohort[d["cohort"] - 1] + cell_effect[cell.ravel()]
        pm.Binomial("y", n=d["n_trials"], logit_p=eta, observed=d["y_success"])
    return model


def report(label: str, posterior, seconds: float) -> tuple[float, float]:
    values = {name: np.asarray(posterior[name]) for name in ("sd_school", "sd_cohort", "r_school")}
    ess = [float(az.ess(values[name])) for name in ("sd_school", "sd_cohort")]
    hyper = max(float(az.rhat(values[name])) for name in ("sd_school", "sd_cohort"))
    schools = az.convert_to_dataset(values["r_school"])
    rhat = az.rhat(schools)["x"].values
    bulk = az.ess(schools, method="bulk")["x"].values
    tail = az.ess(schools, method="tail")["x"].values
    print(f"{label:52s} {seconds:8.0f} {values['sd_school'].mean():6.3f} {values['sd_cohort'].mean():6.3f} "
          f"{ess[0]:7.0f} {ess[1]:7.0f} {ess[0] / seconds:7.2f} {ess[1] / seconds:7.2f}   "
          f"R-hat hyper {hyper:.4f}, r_school {np.nanmax(rhat):.4f}; min ESS r_school bulk {np.nanmin(bulk):.0f} / "
          f"tail {np.nanmin(tail):.0f}", flush=True)
    return ess[0] / seconds, ess[1] / seconds


def project(spec, sample_, settings: SamplerSettings, label: str) -> tuple[float, float]:
    if settings.engine == "pystan":
        compile_pystan(spec.path, progress=QUIET)
    limits = diagnostics.Thresholds() if settings.until_converged else None
    idata = specs.fit(spec, sample_, settings, progress=QUIET, limits=limits)
    return report(label, idata.posterior, float(idata.attrs["sample_seconds"]))


_PEER = {}


def peer(mi: specs.ModelInput, warmup: int | None, draws: int | None, seed: int, label: str, chains: int | None = 4):
    """The peer at 4 x (warmup + draws), or with None at nutpie.sample's own defaults (6 chains x
    (400 + 1000) on one core per chain at a time in nutpie 0.16.8)."""
    import nutpie

    if "compiled" not in _PEER:
        start = time.monotonic()
        _PEER["compiled"] = nutpie.compile_pymc_model(peer_model(mi), backend="numba")
        print(f"  (peer compile {time.monotonic() - start:.0f} s, not counted)")
    start = time.monotonic()
    given = {name: value for name, value in (("chains", chains), ("tune", warmup), ("draws", draws)) if value is not None}
    trace = nutpie.sample(_PEER["compiled"], seed=seed, progress_bar=False, **given)
    seconds = time.monotonic() - start
    post = {name: trace.posterior[name].values for name in ("sd_school", "sd_cohort", "mu_school", "Intercept", "b")}
    school_mean = post["Intercept"] - post["b"] @ mi.data["X"].mean(axis=0)
    post["r_school"] = post["mu_school"] - school_mean[..., None]
    return report(label, post, seconds)


def peer_to_gate(mi: specs.ModelInput, warmup: int, max_draws: int, seed: int) -> None:
    """The peer under the project's stop rule, generously: nutpie samples 4 x (warmup + max_draws)
    without pausing, the time at which every chain has k kept draws is recorded for each of the
    project's checkpoints k, and afterwards the project's gate (diagnostics.convergence_summary
    and gate, default Thresholds) judges the first k draws; the peer's time to the gate is the
    time of the first checkpoint that passes (judging costs it nothing)."""
    import re

    import nutpie
    from nutpie import _lib
    from nutpie.sample import _arrow_to_arviz

    from schoolquality_assets.engine.base import StopRule

    if "compiled" not in _PEER:
        start = time.monotonic()
        _PEER["compiled"] = nutpie.compile_pymc_model(peer_model(mi), backend="numba")
        print(f"  (peer compile {time.monotonic() - start:.0f} s, not counted)", flush=True)
    compiled = _PEER["compiled"]
    rule = StopRule(judge=None, max_draws=max_draws)
    checkpoints, k = [], rule.min_draws
    while k <= max_draws:
        checkpoints.append(k)
        k = rule.next_checkpoint(k)
    reached: dict[int, float] = {}
    settings = _lib.PyNutsSettings.Diag(seed)   # as nutpie.sample builds them
    settings.num_tune, settings.num_draws, settings.num_chains = warmup, max_draws, 4
    cores = 4   # every chain at once, as the project's engine runs them (nutpie.sample's default, one per
                # core, runs chains 3 and 4 after 1 and 2 have finished: no checkpoint before the end)

    start = time.monotonic()

    def progress(text: str) -> None:
        counts = [int(c) - warmup for c in re.findall(r"-?\d+", text)]
        if len(counts) == 4:
            for k in checkpoints:
                if k not in reached and min(counts) >= k:
                    reached[k] = time.monotonic() - start

    template = "{% for chain in chains %}{{ chain.finished_draws }} {% endfor %}"
    sampler = compiled._make_sampler(settings, np.zeros(compiled.n_dim), cores,
                                     _lib.ProgressType.template_callback(200, template, cores, progress),
                                     _lib.PyStorage.arrow())
    sampler.wait(None)
    seconds = time.monotonic() - start
    draw_batches, stat_batches = sampler.take_results().get_arrow_trace()
    trace = _arrow_to_arviz(draw_batches, stat_batches, skip_vars=["gradient", "unconstrained_draw", "mass_matrix_inv",
                            "mass_matrix_eigvals", "mass_matrix_stds", "divergence_start", "divergence_end",
                            "divergence_momentum", "divergence_start_gradient"], coords={}, save_warmup=False)
    post = trace.posterior
    x_mean = np.asarray(mi.data["X"], float).mean(axis=0)
    b_intercept = post["Intercept"].values - post["b"].values @ x_mean
    mu_school = post["mu_school"].values
    values = {"b_Intercept": b_intercept, "Intercept": post["Intercept"].values, "b": post["b"].values,
              "sd_school": post["sd_school"].values, "sd_cohort": post["sd_cohort"].values,
              "r_school": mu_school - b_intercept[..., None],
              "r_cohort": post["mu_cohort"].values - mu_school[..., np.asarray(mi.data["cohort_school"]) - 1]}
    stats = trace.sample_stats
    limits = diagnostics.Thresholds()
    print(f"PyMC + nutpie (numba), 4 x ({warmup} + up to {max_draws}), seed {seed}: {seconds:.0f} s in all; "
          f"every chain past {warmup} warmup + k draws at: "
          + ", ".join(f"{k}: {t:.0f} s" for k, t in sorted(reached.items())), flush=True)
    found, gate_k = {}, None
    for k in checkpoints:
        stats_k = {"diverging": stats["diverging"].values[:, :k], "energy": stats["energy"].values[:, :k],
                   "max_treedepth_hit": stats["maxdepth_reached"].values[:, :k]}
        line = f"  checkpoint {k} draws per chain (reached at {reached.get(k, float('nan')):.0f} s):"
        # the gate, and the gate without b (a generous bound: the peer's flat b mixes slowly, see below)
        for name, keep in (("gate", values), ("gate without b", {n: v for n, v in values.items() if n != "b"})):
            if name in found:
                continue
            idata = az.from_dict(posterior={n: v[:, :k] for n, v in keep.items()}, sample_stats=stats_k)
            outcomes = diagnostics.gate(diagnostics.convergence_summary(idata, limits, reported=False), limits)
            if not diagnostics.failed_blocking(outcomes):
                found[name] = reached.get(k, seconds)
                if name == "gate":
                    gate_k = k
            line += f" {name} " + ("PASSED" if name in found else diagnostics.describe(outcomes)[:160]) + ";"
        print(line, flush=True)
        if gate_k == k:   # the peer's ESS per second at its passing checkpoint
            ess = [float(az.ess(values[n][:, :k])) for n in ("sd_school", "sd_cohort")]
            print(f"  at the gate: bulk ESS sd_school / sd_cohort {ess[0]:.0f} / {ess[1]:.0f}, per second "
                  f"{ess[0] / found['gate']:.1f} / {ess[1] / found['gate']:.1f}", flush=True)
        if len(found) == 2:
            break
    for name in ("gate", "gate without b"):
        print(f"  peer's time to the {name}: " + (f"{found[name]:.0f} s" if name in found else
                                                 f"not reached in {max_draws} draws per chain ({seconds:.0f} s)"), flush=True)


def main(argv: list[str]) -> None:
    which = next((a for a in argv if not a.startswith("--") and not a.isdigit()), "brms")
    opt = lambda name, default: int(argv[argv.index(name) + 1]) if name in argv else default  # noqa: E731
    gate = "--gate" in argv
    warmup = opt("--warmup", 1000 if which == "brms" and not gate else SAMPLER_ENV["warmup"].default)
    draws = opt("--draws", 1000 if which == "brms" else 700)
    seeds = range(1, opt("--seeds", 3) + 1)
    spec = specs.MODELS["m2"]
    sample_ = sample_of(which)
    mi = specs.model_input(spec, sample_)
    print(f"{which}: {mi.data['N']} observations, {mi.data['J_school']} schools, {mi.data['J_cohort']} cohorts; "
          f"4 chains on {os.cpu_count()} cores; seeds {list(seeds)}")
    print(f"{'fit':52s} {'seconds':>8s} {'sd_s':>6s} {'sd_c':>6s} {'ESS_s':>7s} {'ESS_c':>7s} {'ESS/s':>7s} {'ESS/s':>7s}")
    engines = [e for e in ("auto", "pystan") if "--engine" not in argv or argv[argv.index("--engine") + 1] == e]
    if gate:   # time to the blocking gate: the project's default rule against the peer under the same rule
        for seed in seeds:
            for engine in engines:
                project(spec, sample_, SamplerSettings(warmup=warmup, seed=seed, engine=engine),
                        f"project M2 ({'nutpie' if engine == 'auto' else 'Stan'}), default rule, warmup {warmup}, seed {seed}")
            peer_to_gate(mi, warmup, opt("--max-draws", 1500), seed)
        return
    warmups = sorted({warmup, 300}, reverse=True) if which == "brms" else [warmup]
    results: dict[str, list[tuple[float, float]]] = {}
    for seed in seeds:
        for engine in engines:   # auto: the default engine here (nutpie on the hand-written density); pystan: Stan's sampler
            name = "nutpie" if engine == "auto" else "Stan"
            fixed = f"project M2 ({name}), 4 x ({warmup}+{draws})"
            results.setdefault(fixed, []).append(project(
                spec, sample_, SamplerSettings(warmup=warmup, draws=draws, seed=seed, until_converged=False, engine=engine),
                f"{fixed}, seed {seed}"))
            for w in warmups:
                rule = f"project M2 ({name}), default rule, warmup {w}"
                results.setdefault(rule, []).append(project(
                    spec, sample_, SamplerSettings(warmup=w, seed=seed, engine=engine), f"{rule}, seed {seed}"))
        for w, d in ((warmup, draws), (300, 1000)):
            label = f"PyMC + nutpie (numba), 4 x ({w}+{d})"
            results.setdefault(label, []).append(peer(mi, w, d, seed, f"{label}, seed {seed}"))
        label = "PyMC + nutpie (numba), nutpie.sample's defaults"
        results.setdefault(label, []).append(peer(mi, None, None, seed, f"{label}, seed {seed}", chains=None))
    print("seconds: sampling, warmup included, compile excluded; ESS: arviz bulk ESS")
    peer_label = f"PyMC + nutpie (numba), 4 x ({warmup}+{draws})"
    best = [float(np.median([r[k] for r in results[peer_label]])) for k in (0, 1)]
    print(f"\nmedian ESS/s over seeds {list(seeds)} (sd_school / sd_cohort) and x the peer at 4 x ({warmup}+{draws}):")
    for label, rows in results.items():
        med = [float(np.median([r[k] for r in rows])) for k in (0, 1)]
        print(f"  {label:52s} {med[0]:7.1f} / {med[1]:7.1f}   x {med[0] / best[0]:.2f} / {med[1] / best[1]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
