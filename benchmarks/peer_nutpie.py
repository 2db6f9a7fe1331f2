"""The peer a user could pick instead: M2 in PyMC, sampled by nutpie, beside the project's M2 in the
same run (not a test: it prints figures). Run alone, with nothing else running:

    .venv/bin/python -m pip install -e '.[peer]'      # optional extra: pymc (nutpie and numba are dependencies)
    flock /tmp/schoolquality-stan.lock .venv/bin/python benchmarks/peer_nutpie.py [brms|full] [--draws N] [--warmup N]

The project's M2 runs under its default engine here (nutpie on the hand-written density) and under
Stan's own sampler (PyStan); ``--engine auto|pystan`` runs one of them.

``brms`` (default): benchmarks/data/brms_m2_subsample.csv, the 11,487 rows brms fitted, at brms's
settings 4 x (1000 + 1000). ``full``: the built-in province's full analysis sample, 4 x (300 + 700).

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

from schoolquality_assets import diagnostics, models  # noqa: E402
from schoolquality_assets.stan_engine import SamplerSettings, compile_pystan  # noqa: E402

QUIET = bench_m2.QUIET


def sample_of(which: str) -> pl.DataFrame:
    if which == "brms":
        return bench_m2.cleaned_from(pl.read_csv(HERE / "data" / "brms_m2_subsample.csv", infer_schema=False))
    return bench_m2.province_sample("full")


def peer_model(mi: models.ModelInput):
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


def report(label: str, posterior, seconds: float) -> None:
    values = {name: np.asarray(posterior[name]) for name in ("sd_school", "sd_cohort", "r_school")}
    ess = [float(az.ess(values[name])) for name in ("sd_school", "sd_cohort")]
    hyper = max(float(az.rhat(values[name])) for name in ("sd_school", "sd_cohort"))
    schools = az.convert_to_dataset(values["r_school"])
    rhat = az.rhat(schools)["x"].values
    bulk = az.ess(schools, method="bulk")["x"].values
    tail = az.ess(schools, method="tail")["x"].values
    print(f"{label:44s} {seconds:8.0f} {values['sd_school'].mean():6.3f} {values['sd_cohort'].mean():6.3f} "
          f"{ess[0]:7.0f} {ess[1]:7.0f} {ess[0] / seconds:7.2f} {ess[1] / seconds:7.2f}   "
          f"R-hat hyper {hyper:.4f}, r_school {np.nanmax(rhat):.4f}; min ESS r_school bulk {np.nanmin(bulk):.0f} / "
          f"tail {np.nanmin(tail):.0f}", flush=True)


def project(spec, sample_, settings: SamplerSettings, label: str) -> None:
    if settings.engine == "pystan":
        compile_pystan(spec.path, progress=QUIET)
    limits = diagnostics.Thresholds() if settings.until_converged else None
    idata = models.fit(spec, sample_, settings, progress=QUIET, limits=limits)
    report(label, idata.posterior, float(idata.attrs["sample_seconds"]))


def peer(mi: models.ModelInput, warmup: int, draws: int) -> None:
    import nutpie

    start = time.monotonic()
    compiled = nutpie.compile_pymc_model(peer_model(mi), backend="numba")
    compile_seconds = time.monotonic() - start
    start = time.monotonic()
    trace = nutpie.sample(compiled, chains=4, tune=warmup, draws=draws, seed=1, progress_bar=False)
    seconds = time.monotonic() - start
    post = {name: trace.posterior[name].values for name in ("sd_school", "sd_cohort", "mu_school", "Intercept", "b")}
    school_mean = post["Intercept"] - post["b"] @ mi.data["X"].mean(axis=0)
    post["r_school"] = post["mu_school"] - school_mean[..., None]
    report(f"PyMC + nutpie (numba), 4 x ({warmup}+{draws})", post, seconds)
    print(f"  (peer compile {compile_seconds:.0f} s, not counted)")


def main(argv: list[str]) -> None:
    which = next((a for a in argv if not a.startswith("--") and not a.isdigit()), "brms")
    opt = lambda name, default: int(argv[argv.index(name) + 1]) if name in argv else default  # noqa: E731
    warmup = opt("--warmup", 1000 if which == "brms" else 300)
    draws = opt("--draws", 1000 if which == "brms" else 700)
    spec = models.MODELS["m2"]
    sample_ = sample_of(which)
    mi = models.model_input(spec, sample_)
    print(f"{which}: {mi.data['N']} observations, {mi.data['J_school']} schools, {mi.data['J_cohort']} cohorts; "
          f"4 chains on {os.cpu_count()} cores")
    print(f"{'fit':44s} {'seconds':>8s} {'sd_s':>6s} {'sd_c':>6s} {'ESS_s':>7s} {'ESS_c':>7s} {'ESS/s':>7s} {'ESS/s':>7s}")
    engines = [e for e in ("auto", "pystan") if "--engine" not in argv or argv[argv.index("--engine") + 1] == e]
    for engine in engines:   # auto: the default engine here (nutpie on the hand-written density); pystan: Stan's sampler
        name = "nutpie" if engine == "auto" else "Stan"
        project(spec, sample_, SamplerSettings(warmup=warmup, draws=draws, seed=1, until_converged=False, engine=engine),
                f"project M2 ({name}), 4 x ({warmup}+{draws})")
        project(spec, sample_, SamplerSettings(warmup=warmup, seed=1, engine=engine),
                f"project M2 ({name}), default rule (to the gate)")
    peer(mi, warmup, draws)
    print("seconds: sampling, warmup included, compile excluded; ESS: arviz bulk ESS")


if __name__ == "__main__":
    main(sys.argv[1:])
