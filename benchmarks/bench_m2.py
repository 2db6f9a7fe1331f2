"""Benchmarks of M2 (not tests: they print figures). Run one at a time, with nothing else running.

    .venv/bin/python benchmarks/bench_m2.py steps [subsample|full]
        Cost per leapfrog step of each exact form of M2 in the sampling phase: one chain alone,
        150 warmup iterations (tree depth capped at 6), then two runs of 20 and 60 draws with the
        same seed, differenced (start-up, data load and warmup cancel).
    .venv/bin/python benchmarks/bench_m2.py converge [m0|m1|m2|m3] [subsample|full] [--warmup N] [--mass-matrix diag,low_rank]
        The production rule (sample until the gate holds, default settings, or another warmup
        length): warmup and sampling seconds, draws per chain, leapfrog steps per iteration and per
        effective draw of the slowest gated quantity, min ESS per draw over the school effects, max
        R-hat, wall time, and the peak memory of the fit (this process and its chain processes
        together, polled every 0.5 s from /proc). --mass-matrix: one fit per nutpie mass matrix
        listed, in that order.
    .venv/bin/python benchmarks/bench_m2.py brms
        benchmarks/data/brms_m2_subsample.csv, the 11,487 rows brms fitted (README of
        ../shared/data): the project's M2 at brms's settings 4 x (1000 + 1000) and under the
        production rule, and the brms-style non-centred form in the same run, beside brms's
        recorded figures. BENCH_NC_WARMUP / BENCH_NC_DRAWS shorten the non-centred run.
    .venv/bin/python benchmarks/bench_m2.py chains [m2|m3] [subsample|full] [--draws N] [--adapt-delta D]
        Each chain's adaptation, with the asset's settings, seed and initial values (so the same
        chains as the asset's fit) and N draws (default 100): the step size and diagonal inverse
        metric Stan adapted, leapfrog steps per iteration, and the coordinates whose draws spread
        furthest in the metric's units (SD of the unconstrained draws / sqrt(inverse metric); 1
        where the metric fits the posterior): a chain whose trees are deep shows which direction.
    .venv/bin/python benchmarks/bench_m2.py scale [FACTOR ...] [--budget SECONDS]
        How the cost grows: M2 on the full sample of synthetic provinces of FACTOR x the built-in
        province's schools (default 1 2 4; same parameters, same seed), production rule and default
        settings except the time budget (default: none, so that the gate is reached): time to the
        gate, draws per chain it needed, and the fit's peak memory, with the default budget's verdict.

    .venv/bin/python benchmarks/bench_m2.py flags [subsample|full] [VARIANT ...]
        Cost per leapfrog step of stan/m2_cohort.stan built with other stanc / g++ flags
        (``steps``'s method, four rounds in alternating order): httpstan's own ("httpstan", what
        the engine builds), without Stan's range checks ("no-range-checks"), stanc --O1, and both
        ("O1-no-range-checks"); "native" (-march=native) aborts.

Forms compared by ``steps``: stan/m2_cohort.stan (the project), benchmarks/m2_csr_first_release.stan
(the first release: CSR products inside Stan), benchmarks/m2_plain_indexed.stan (one effect per
cell, cohorts centred on schools, no multipliers) and benchmarks/m2_brms_noncentred.stan.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import polars as pl

from schoolquality_assets.ingest import contract, filters, synthetic

from schoolquality_assets.models import design, diagnostics, specs
from schoolquality_assets.defs.resources import SAMPLER_ENV
from schoolquality_assets.engine.pystan_engine import compile_pystan
from schoolquality_assets.engine.sampling import choose_engine, sample
from schoolquality_assets.engine.base import SamplerSettings

HERE = Path(__file__).parent
FORMS = {
    "project (stan/m2_cohort.stan)": specs.MODELS["m2"].path,
    "first release (CSR products)": HERE / "m2_csr_first_release.stan",
    "plain indexed": HERE / "m2_plain_indexed.stan",
    "brms non-centred (sd * z, GLM)": HERE / "m2_brms_noncentred.stan",
}
BRMS = {"seconds": 4151.0, "ess_sd_school": 1991.0, "ess_sd_cohort": 1535.0, "sd_school": 0.62, "sd_cohort": 0.40}
QUIET = lambda m: None  # noqa: E731
PROGRESS = (lambda m: print(m, flush=True)) if os.environ.get("BENCH_VERBOSE") else QUIET


class TreeMemory:
    """Peak resident memory of this process and all its descendants together (Linux /proc,
    polled in a thread): the memory of a fit, chain processes included."""

    def __init__(self, interval: float = 0.5):
        import threading

        self.peak, self.interval, self._stop = 0, interval, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def _tree_rss() -> int:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                children.setdefault(int(fields[1]), []).append(int(d.name))
                rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                continue
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo += children.get(pid, [])
        return total

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._tree_rss())

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cleaned_from(frame: pl.DataFrame) -> pl.DataFrame:
    raw = frame.with_columns(pl.all().cast(pl.Utf8)).with_columns(
        source_file=pl.lit("bench"), source_row=pl.int_range(1, frame.height + 1, dtype=pl.Int64))
    return filters.clean(contract.validate(raw)[0])[0]


def province_sample(partition: str) -> pl.DataFrame:
    return filters.analysis_sample(cleaned_from(synthetic.generate_province().observations), partition)


def form_data(name: str, mi: specs.ModelInput) -> dict:
    """Stan data of each form from the project's model input."""
    d = mi.data
    if name.startswith("project"):
        return specs.stan_data(specs.MODELS["m2"], mi)
    common = {k: d[k] for k in ("N", "n_trials", "y_success", "J_school", "J_cohort", "cohort_school", "cohort")}
    if name.startswith("plain"):
        cells = mi.frame["year_subject"]
        levels = sorted(cells.unique().to_list())
        return common | {"L": len(levels), "cell": np.array([levels.index(c) + 1 for c in cells.to_list()])}
    common |= {"K": d["K"], "X": d["X"]}
    if name.startswith("brms"):
        return common
    info, _ = design.information(d)
    sds = d["group_sds"]
    school_info = np.bincount(d["cohort_school"] - 1, weights=1 / (sds["cohort"] ** 2 + 1 / np.maximum(info, 1e-9)),
                              minlength=d["J_school"])
    return common | {"fixed_scale": d["fixed_scale"], "log_sd_scale": d["log_sd_scale"],
                     "school_scale": 1 / np.sqrt(school_info + sds["school"] ** -2),
                     "cohort_scale": 1 / np.sqrt(info + sds["cohort"] ** -2)}


def seconds_per_step(stan_file: Path, data: dict, inits, warmup: int = 150, short: int = 20, long: int = 60) -> tuple[float, float]:
    """(seconds per leapfrog step, steps per iteration) of the sampling phase: two runs with the
    same seed (so the same warmup and the same first draws), timed, differenced over the extra
    draws and their leapfrog steps. Tree depth capped at 6."""
    runs = {}
    for n in (short, long):
        settings = SamplerSettings(chains=1, warmup=warmup, draws=n, seed=1, max_treedepth=6, until_converged=False,
                                   engine="pystan")   # Stan's own sampler and gradient
        start = time.monotonic()
        draws = sample(stan_file, data, settings, inits=inits, progress=QUIET)
        runs[n] = (time.monotonic() - start, int(draws.sample_stats["n_steps"].sum()))
    extra_steps = runs[long][1] - runs[short][1]
    return (runs[long][0] - runs[short][0]) / extra_steps, extra_steps / (long - short)


def steps(partition: str) -> None:
    mi = specs.model_input(specs.MODELS["m2"], province_sample(partition))
    n = mi.data["N"]
    print(f"M2 cost per leapfrog step, {partition}: {n} observations, {mi.data['J_school']} schools, "
          f"{mi.data['J_cohort']} cohorts; one chain alone, sampling phase after 150 warmup iterations")
    print(f"{'form':34s} {'ms/step':>8s} {'ns/obs':>7s} {'steps/iteration':>16s}")
    for name, path in FORMS.items():
        compile_pystan(path, progress=QUIET)
        inits = specs.initial_values(specs.MODELS["m2"], mi, 1, 1) if name.startswith("project") else None
        per_step, per_iter = seconds_per_step(path, form_data(name, mi), inits)
        print(f"{name:34s} {1000 * per_step:8.2f} {1e9 * per_step / n:7.0f} {per_iter:16.1f}", flush=True)
    per_gradient = gradient_seconds(mi)
    print(f"{'hand-written density (nutpie engine)':34s} {1000 * per_gradient:8.2f} {1e9 * per_gradient / n:7.0f} "
          f"{'(one gradient)':>16s}", flush=True)


def gradient_seconds(mi: specs.ModelInput, calls: int = 300) -> float:
    """Seconds per evaluation of M2's hand-written log density and gradient (cohort_density), one
    thread, at the asset's initial values: a leapfrog step costs one gradient."""
    from schoolquality_assets.engine import cohort_density

    spec = specs.MODELS["m2"]
    data = specs.stan_data(spec, mi)
    density = cohort_density.density(data)
    u = cohort_density.unconstrain(specs.initial_values(spec, mi, 1, 1)[0], data)
    grad = np.empty_like(u)
    density.logp_into(u, grad)   # compiled
    start = time.perf_counter()
    for _ in range(calls):
        density.logp_into(u, grad)
    return (time.perf_counter() - start) / calls


def converge(partition: str, key: str = "m2", warmup: int | None = None, mass_matrix: str | None = None) -> None:
    from schoolquality_assets.engine import nutpie_engine

    if mass_matrix:
        nutpie_engine.MASS_MATRIX = mass_matrix
    spec = specs.MODELS[key]
    sample_ = province_sample(partition)
    settings = SamplerSettings(warmup=warmup or SAMPLER_ENV["full_warmup" if partition == "full" else "warmup"].default,
                               engine=os.environ.get("SCHOOLQUALITY_ENGINE", "auto"))
    if choose_engine(settings.engine, spec.path) == "pystan":
        compile_pystan(spec.path, progress=QUIET)
    start = time.monotonic()
    with TreeMemory() as memory:
        idata = specs.fit(spec, sample_, settings, progress=PROGRESS, limits=diagnostics.Thresholds())
    wall = time.monotonic() - start
    s = diagnostics.convergence_summary(idata)
    post = idata.posterior
    draws = post.sizes["chain"] * post.sizes["draw"]
    bulk = az.ess(post[["r_school"]], method="bulk")["r_school"].values
    tail = az.ess(post[["r_school"]], method="tail")["r_school"].values
    stats = idata.sample_stats
    print(f"{key.upper()} {partition}, {idata.attrs['engine']} engine ({nutpie_engine.MASS_MATRIX} mass matrix), production rule (warmup {settings.warmup}, checkpoints every {settings.check_every}): "
          f"{idata.attrs.get('stop_status')}")
    print(f"  wall {wall:.0f} s: warmup {idata.attrs['warmup_seconds']:.0f} s, sampling to the stop "
          f"{idata.attrs['sample_seconds'] - idata.attrs['warmup_seconds']:.0f} s; {post.sizes['draw']} draws per chain")
    print(f"  leapfrog steps per iteration {float(stats['n_steps'].mean()):.1f} (tree depth {float(stats['tree_depth'].mean()):.2f}); "
          f"min ESS per draw over r_school: bulk {bulk.min() / draws:.3f}, tail {tail.min() / draws:.3f} "
          f"(median bulk {np.median(bulk) / draws:.3f}); max R-hat {s['max_rhat']:.4f}; divergences {s['divergences']}")
    steps_total = float(stats["n_steps"].sum())
    print(f"  leapfrog steps per effective draw of the slowest gated quantity (kept draws' steps / min bulk ESS "
          f"{s['min_ess_bulk']:.0f}): {steps_total / s['min_ess_bulk']:.0f}; sampling-phase leapfrog steps per second "
          f"{steps_total / max(idata.attrs['sample_seconds'] - idata.attrs['warmup_seconds'], 1e-9):.0f}")
    sds = ", ".join(f"{n} {float(post[n].mean()):.3f}" for n in ("sd_school", "sd_cohort", "sd_profile", "sigma") if n in post)
    print(f"  {sds}; "
          f"peak memory of the fit (this process and its chains together) {memory.peak / 1024**3:.2f} GiB", flush=True)


# The unconstrained parameters of the cohort programs, in the order of their parameters block,
# and the Stan data entry of each one's multiplier (the unconstrained value is value / multiplier).
UNCONSTRAINED = {
    "Intercept": "fixed_scale", "delta": "fixed_scale", "log_sd_school": ("log_sd_scale", 0),
    "log_sd_cohort": ("log_sd_scale", 1), "mu_school_c": "school_c_scale", "z_school": "school_nc_scale",
    "mu_cohort_c": "cohort_c_scale", "z_cohort": "cohort_nc_scale", "log_sd_profile": ("log_sd_scale", 2),
    "r_profile_c": "profile_c_scale", "z_profile": "profile_nc_scale",
}


def chains(model: str, partition: str, n_draws: int, adapt_delta: float | None = None) -> None:
    spec = specs.MODELS[model]
    mi = specs.model_input(spec, province_sample(partition))
    data = specs.stan_data(spec, mi)
    settings = SamplerSettings(warmup=300 if partition == "full" else 1000, draws=n_draws, until_converged=False,
                               engine="pystan")   # Stan's adaptation (step size and metric) is what this reads
    # the model's floor (M3: 0.9), as specs.fit applies it, unless --adapt-delta says otherwise
    delta = adapt_delta if adapt_delta is not None else max(settings.adapt_delta, spec.min_adapt_delta)
    settings = SamplerSettings(**(settings.as_dict() | {"adapt_delta": delta}))
    compile_pystan(spec.path, progress=QUIET)
    inits = specs.initial_values(spec, mi, settings.chains, settings.seed)
    draws = sample(spec.path, data, settings, inits=inits, progress=QUIET)
    names, scales, columns = [], [], []
    for name in (n for n in UNCONSTRAINED if n in draws.params):
        value = draws.params[name].reshape(settings.chains, n_draws, -1)
        where = UNCONSTRAINED[name]
        scale_ = (np.ones(value.shape[-1]) if where is None else
                  np.broadcast_to(np.asarray(data[where[0]][where[1]] if isinstance(where, tuple) else data[where], float),
                                  value.shape[-1:]))
        names += [f"{name}[{i}]" if value.shape[-1] > 1 else name for i in range(value.shape[-1])]
        scales.append(scale_)
        columns.append(value)
    unconstrained = np.concatenate(columns, axis=-1) / np.concatenate(scales)
    print(f"{model} on {partition}: {mi.data['N']} observations, {len(names)} unconstrained parameters; "
          f"warmup {settings.warmup}, {n_draws} draws, seed {settings.seed}, adapt_delta {settings.adapt_delta}, "
          "the asset's initial values")
    for c in range(settings.chains):
        a = draws.adaptation[c]
        assert a["inv_metric"].size == len(names), (a["inv_metric"].size, len(names))
        spread = unconstrained[c].std(axis=0) / np.sqrt(a["inv_metric"])
        top = np.argsort(spread)[::-1][:5]
        steps_ = draws.sample_stats["n_steps"][c]
        print(f"chain {c + 1}: step size {a['stepsize']:.4f}, leapfrog steps per iteration {steps_.mean():.0f} "
              f"(max {steps_.max()}), spread in metric units median {np.median(spread):.2f}; widest: "
              + ", ".join(f"{names[j]} {spread[j]:.1f} (inv metric {a['inv_metric'][j]:.3g})" for j in top), flush=True)
        for block in dict.fromkeys(n.split("[")[0] for n in names):
            cols = [j for j, n in enumerate(names) if n.split("[")[0] == block]
            print(f"    {block:15s} inverse metric median {np.median(a['inv_metric'][cols]):.3g}, "
                  f"spread median {np.median(spread[cols]):.2f} max {spread[cols].max():.2f}")


def scale(factors: list[float], budget: float | None) -> None:
    spec = specs.MODELS["m2"]
    default = SamplerSettings()
    settings = SamplerSettings(warmup=300, budget_seconds=budget or 24 * 3600.0,
                               engine=os.environ.get("SCHOOLQUALITY_ENGINE", "auto"))
    engine = choose_engine(settings.engine, spec.path)
    if engine == "pystan":
        compile_pystan(spec.path, progress=QUIET)
    print(f"M2 on full, {engine} engine, production rule (warmup {settings.warmup}, checkpoints every {settings.check_every}, "
          f"budget {settings.budget_seconds:.0f} s; the default budget is {default.budget_seconds:.0f} s)")
    print(f"{'schools':>7s} {'obs':>7s} {'cohorts':>7s} {'warmup s':>8s} {'to gate s':>9s} {'draws':>6s} "
          f"{'steps/it':>8s} {'peak GiB':>8s}  verdict")
    for factor in factors:
        province = synthetic.generate_province(n_schools=round(factor * synthetic.DEFAULT_N_SCHOOLS))
        sample_ = filters.analysis_sample(cleaned_from(province.observations), "full")
        with TreeMemory() as memory:
            idata = specs.fit(spec, sample_, settings, progress=PROGRESS, limits=diagnostics.Thresholds())
        post, a = idata.posterior, idata.attrs
        seconds = a["sample_seconds"]
        within = "within" if seconds <= default.budget_seconds else "over"
        print(f"{post.sizes['school']:7d} {sample_.height:7d} {post.sizes.get('cohort', 0):7d} "
              f"{a['warmup_seconds']:8.0f} {seconds:9.0f} {post.sizes['draw']:6d} "
              f"{float(idata.sample_stats['n_steps'].mean()):8.1f} {memory.peak / 1024**3:8.2f}  "
              f"{a.get('stop_status')} ({within} the default budget)", flush=True)
    print("to gate: seconds from the start of warmup to the checkpoint whose draws passed the gate")


def _ess_row(label: str, sd_school: np.ndarray, sd_cohort: np.ndarray, seconds: float) -> None:
    ess = [float(az.ess(x)) for x in (sd_school, sd_cohort)]
    rate = [e / seconds for e in ess]
    brms = [BRMS["ess_sd_school"] / BRMS["seconds"], BRMS["ess_sd_cohort"] / BRMS["seconds"]]
    print(f"{label:46s} {seconds:8.0f} {float(sd_school.mean()):6.3f} {float(sd_cohort.mean()):6.3f} "
          f"{ess[0]:7.0f} {ess[1]:7.0f} {rate[0]:7.2f} {rate[1]:7.2f} {rate[0] / brms[0]:6.0f}x {rate[1] / brms[1]:6.0f}x",
          flush=True)


def brms() -> None:
    sample_ = cleaned_from(pl.read_csv(HERE / "data" / "brms_m2_subsample.csv", infer_schema=False))
    spec = specs.MODELS["m2"]
    mi = specs.model_input(spec, sample_)
    print(f"brms_m2_subsample.csv: {mi.data['N']} observations, {mi.data['J_school']} schools, {mi.data['J_cohort']} cohorts")
    print(f"{'fit':46s} {'seconds':>8s} {'sd_s':>6s} {'sd_c':>6s} {'ESS_s':>7s} {'ESS_c':>7s} {'ESS/s':>7s} {'ESS/s':>7s} "
          f"{'x brms (school, cohort)':>15s}")
    print(f"{'brms 2.18 / rstan, 4 x (1000+1000), recorded':46s} {BRMS['seconds']:8.0f} {BRMS['sd_school']:6.3f} "
          f"{BRMS['sd_cohort']:6.3f} {BRMS['ess_sd_school']:7.0f} {BRMS['ess_sd_cohort']:7.0f} "
          f"{BRMS['ess_sd_school'] / BRMS['seconds']:7.2f} {BRMS['ess_sd_cohort'] / BRMS['seconds']:7.2f}      1x      1x")
    compile_pystan(spec.path, progress=QUIET)
    fixed = SamplerSettings(chains=4, warmup=1000, draws=1000, seed=1, until_converged=False)
    idata = specs.fit(spec, sample_, fixed, progress=QUIET)
    _ess_row("project M2, 4 x (1000+1000)", idata.posterior["sd_school"].values, idata.posterior["sd_cohort"].values,
             idata.attrs["sample_seconds"])
    idata = specs.fit(spec, sample_, SamplerSettings(seed=1), progress=QUIET, limits=diagnostics.Thresholds())
    _ess_row(f"project M2, until converged ({idata.posterior.sizes['draw']}/chain)", idata.posterior["sd_school"].values,
             idata.posterior["sd_cohort"].values, idata.attrs["sample_seconds"])
    nc = FORMS["brms non-centred (sd * z, GLM)"]
    compile_pystan(nc, progress=QUIET)
    w, d = int(os.environ.get("BENCH_NC_WARMUP", 1000)), int(os.environ.get("BENCH_NC_DRAWS", 1000))
    draws = sample(nc, form_data("brms", mi), SamplerSettings(chains=4, warmup=w, draws=d, seed=1, until_converged=False),
                   progress=QUIET)
    _ess_row(f"brms-style non-centred, 4 x ({w}+{d})", draws.params["sd_school"], draws.params["sd_cohort"],
             draws.sample_seconds)
    print("ESS: arviz bulk ESS; seconds: sampling (warmup + draws), compile excluded (brms: its total, compile included)")


HTTPSTAN_GXX = ("-O3", "-std=c++14", "-Wno-sign-compare")   # httpstan 4.13's own g++ flags
FLAG_VARIANTS = {  # (stanc flags, g++ flags)
    "httpstan": ((), HTTPSTAN_GXX),
    "no-range-checks": ((), HTTPSTAN_GXX + ("-DSTAN_NO_RANGE_CHECKS",)),
    "O1": (("--O1",), HTTPSTAN_GXX),
    "O1-no-range-checks": (("--O1",), HTTPSTAN_GXX + ("-DSTAN_NO_RANGE_CHECKS",)),
    # not a candidate: with -march=native the chain aborts ("double free or corruption"), presumably
    # because Eigen's alignment then differs from httpstan's prebuilt stan_services.o, which it links
    "native": ((), HTTPSTAN_GXX + ("-march=native",)),
}


def build_variant(stan_file: Path, variant: str, folder: Path) -> Path:
    """A copy of ``stan_file`` ending in a comment that names the variant (httpstan's cache is keyed
    by the program's text), built into httpstan's cache with the variant's stanc and g++ flags;
    the engine then samples the copy like any program."""
    import asyncio
    import importlib.resources
    import subprocess
    import tempfile

    import httpstan.compile
    import httpstan.models

    stanc_flags, gxx_flags = FLAG_VARIANTS[variant]
    copy = folder / f"{stan_file.stem}_{variant}.stan"
    copy.write_text(stan_file.read_text() + f"\n// benchmark build: {' '.join(stanc_flags + gxx_flags)}\n")

    def stanc(program_code: str, stan_model_name: str) -> tuple[str, str]:   # httpstan's, with stanc_flags
        with importlib.resources.path("httpstan", "stanc") as exe, tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / f"{stan_model_name}.stan"
            source.write_text(program_code)
            done = subprocess.run([str(exe), "--name", stan_model_name, *stanc_flags, "--print-cpp", str(source)],
                                  capture_output=True, timeout=120, check=True)
        return done.stdout.decode().strip(), done.stderr.decode().strip()

    try:
        httpstan.models.import_services_extension_module(httpstan.models.calculate_model_name(copy.read_text()))
    except KeyError:
        own, httpstan.compile.compile = httpstan.compile.compile, stanc
        try:
            asyncio.run(httpstan.models.build_services_extension_module(copy.read_text(), extra_compile_args=list(gxx_flags)))
        finally:
            httpstan.compile.compile = own
    return copy


def flags(partition: str, variants: list[str], rounds: int = 4) -> None:
    import statistics
    import tempfile

    spec = specs.MODELS["m2"]
    mi = specs.model_input(spec, province_sample(partition))
    data, inits, n = specs.stan_data(spec, mi), specs.initial_values(spec, mi, 1, 1), mi.data["N"]
    print(f"M2 cost per leapfrog step by build flags, {partition}: {n} observations; one chain alone, "
          f"'steps' method, {rounds} rounds, the order alternating")
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: build_variant(spec.path, name, Path(folder)) for name in variants}   # compiled apart from the timing
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(rounds):
            for name in variants if round_ % 2 == 0 else variants[::-1]:
                per_step, per_iter = seconds_per_step(paths[name], data, inits)
                times[name].append(1000 * per_step)
                print(f"round {round_ + 1} {name:20s} {1000 * per_step:7.3f} ms/step {1e9 * per_step / n:5.0f} ns/observation "
                      f"{per_iter:6.1f} steps/iteration", flush=True)
    for name, ms in times.items():
        print(f"{name:20s} min {min(ms):7.3f}  median {statistics.median(ms):7.3f} ms/step")


if __name__ == "__main__":
    args = sys.argv[1:]
    warmup = int(args.pop(args.index("--warmup") + 1)) if "--warmup" in args else None
    budget = float(args.pop(args.index("--budget") + 1)) if "--budget" in args else None
    n_draws = int(args.pop(args.index("--draws") + 1)) if "--draws" in args else 100
    delta = float(args.pop(args.index("--adapt-delta") + 1)) if "--adapt-delta" in args else None
    metrics = args.pop(args.index("--mass-matrix") + 1).split(",") if "--mass-matrix" in args else [None]
    args = [a for a in args if a not in ("--warmup", "--budget", "--draws", "--adapt-delta", "--mass-matrix")]
    what = args[0] if args else "steps"
    partition = args[1] if len(args) > 1 else "subsample"
    {"steps": lambda: steps(partition), "converge": lambda: [converge(*((args[2] if len(args) > 2 else "subsample", partition)
                                    if partition in specs.MODELS else (partition, "m2")), warmup, m) for m in metrics], "brms": brms,
     "chains": lambda: chains(args[1] if len(args) > 1 else "m3", args[2] if len(args) > 2 else "full", n_draws, delta),
     "scale": lambda: scale([float(a) for a in args[1:]] or [1, 2, 4], budget),
     "flags": lambda: flags(partition, args[2:] or ["httpstan", "no-range-checks", "O1", "O1-no-range-checks"])}[what]()
