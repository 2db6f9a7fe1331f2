"""A second peer (issue 39): M2 in NumPyro (JAX, CPU), judged by the project's blocking gate. Not a test: it
prints figures. Optional extra, never a runtime dependency; run alone, with nothing else running:

    .venv/bin/python -m pip install -e '.[peer-numpyro]'      # numpyro, jax[cpu]
    .venv/bin/python benchmarks/peer_numpyro.py [--data brms|full] [--param centred|noncentred|hcentred]
        [--warmup 1000] [--draws 1000] [--chains 4] [--seed 1] [--project] [--project-fixed] [--out /tmp]

The peer at its best: one XLA host device per chain (chain_method="parallel"), float64 as the project,
NUTS at NumPyro's defaults (target_accept_prob 0.8, max_tree_depth 10, diagonal mass matrix, init_to_uniform),
no progress bar. The model is the PyMC peer's (peer_nutpie.py): the brms priors of stan/m2_cohort.stan
(Intercept ~ student_t(3, 0, 2.5) at the mean design row, SDs ~ half student_t(3, 0, 2.5), flat b),
schools centred on the intercept and cohorts on their school (``--param noncentred``: both as mean + sd * z;
``hcentred``: the project's hierarchical centring of m2_cohort.stan, each school and cohort mean carrying its
level's fixed effects, all groups centred, no multipliers), fixed effects by cell index, binomial logit on
the observation rows (M2's rows are not collapsed: specs.stan_data collapses only the school-only M1).

Phases: mcmc.warmup(), then mcmc.run() from the warmed-up state. JAX compiles each phase's program when it is
first called; the compile time (the union of JAX's own tracing, lowering and XLA compile spans, from
jax.monitoring) is reported apart and taken off each phase's wall time. Seconds below are compile excluded.

Reported: bulk ESS of sd_school and sd_cohort and ESS/s (ESS / (warmup + sampling seconds), as the PyMC peer
and the project's sample_seconds count them); the project's gate (diagnostics.convergence_summary and gate,
default Thresholds) on all draws, and at each of the project's StopRule checkpoints (100, 200, ... draws per
chain) on the first k draws; the time to the first passing checkpoint is warmup + k / draws of the sampling
seconds (judging costs the peer nothing). ``--project``: the project's M2 under its default rule on the same
data and seed, in the same run (sample seconds: warmup and judging included); ``--project-fixed``: the
project's M2 at the peer's warmup and draws, no stop rule (ESS/s like for like). JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

import arviz as az
import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import bench_m2

from schoolquality_assets.engine.base import SamplerSettings, StopRule
from schoolquality_assets.models import diagnostics, draw_diagnostics, specs

# JAX's threads run in this process: judge every block here, never in forked copies (JAX warns
# that a fork may deadlock; the project's own fits fork only nutpie's paused process)
draw_diagnostics.PARALLEL_MIN_VALUES = sys.maxsize

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("brms", "full"), default="brms")
    p.add_argument("--param", choices=("centred", "noncentred", "hcentred"), default="centred")
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--project", action="store_true", help="also fit the project's M2 (default rule) in this run")
    p.add_argument("--project-fixed", action="store_true",
                   help="also fit the project's M2 at the peer's warmup and draws (no stop rule) in this run")
    p.add_argument("--out", type=Path, default=Path("/tmp"))
    return p.parse_args(argv)


def sample_of(which: str):
    if which == "brms":
        import polars as pl
        return bench_m2.cleaned_from(pl.read_csv(HERE / "data" / "brms_m2_subsample.csv", infer_schema=False))
    return bench_m2.province_sample("full")


def peer_model(d: dict, param: str):
    """NumPyro M2 from the project's model input (same rows, same treatment contrasts)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    X = np.asarray(d["X"], dtype=np.float64)
    rows, cell = np.unique(X, axis=0, return_inverse=True)   # distinct design rows: one per year_subject cell
    rows, cell, x_mean = jnp.asarray(rows), jnp.asarray(cell.ravel()), jnp.asarray(X.mean(axis=0))
    n, y = jnp.asarray(d["n_trials"]), jnp.asarray(d["y_success"])
    cs, cohort = jnp.asarray(d["cohort_school"] - 1), jnp.asarray(d["cohort"] - 1)
    J_s, J_c, K = d["J_school"], d["J_cohort"], d["K"]
    half_t = dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 2.5))   # half student_t(3, 0, 2.5) on sd >= 0

    if param == "hcentred":   # the project's hierarchical centring (m2_cohort.stan): each mean carries its level's Xb
        dj = lambda rows_, index: (jnp.asarray(d[rows_]), jnp.asarray(d[index] - 1))
        (Xss, s_row), (Xbar, c_row), (Xw, w_row) = dj("Xss_rows", "school_row"), dj("Xbar_rows", "cohort_row"), \
            dj("Xw_rows", "within_row")

    def model():
        intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 0.0, 2.5))   # at the mean design row
        b = numpyro.sample("b", dist.ImproperUniform(dist.constraints.real, (), (K,)))   # flat, as brms
        sd_school = numpyro.sample("sd_school", half_t)
        sd_cohort = numpyro.sample("sd_cohort", half_t)
        b_intercept = intercept - x_mean @ b
        if param == "noncentred":
            z_school = numpyro.sample("z_school", dist.Normal(0.0, 1.0).expand([J_s]).to_event(1))
            z_cohort = numpyro.sample("z_cohort", dist.Normal(0.0, 1.0).expand([J_c]).to_event(1))
            mu_school = numpyro.deterministic("mu_school", b_intercept + sd_school * z_school)
            eta = (mu_school[cs] + sd_cohort * z_cohort)[cohort] + (rows @ b)[cell]
        elif param == "centred":
            mu_school = numpyro.sample("mu_school", dist.Normal(b_intercept, sd_school).expand([J_s]).to_event(1))
            mu_cohort = numpyro.sample("mu_cohort", dist.Normal(mu_school[cs], sd_cohort).to_event(1))
            eta = mu_cohort[cohort] + (rows @ b)[cell]
        else:
            school_fixed = (Xss @ b)[s_row]
            mu_school = numpyro.sample("mu_school", dist.Normal(b_intercept + school_fixed, sd_school).to_event(1))
            cohort_mean = mu_school[cs] + (Xbar @ b)[c_row] - school_fixed[cs]
            mu_cohort = numpyro.sample("mu_cohort", dist.Normal(cohort_mean, sd_cohort).to_event(1))
            eta = mu_cohort[cohort] + (Xw @ b)[w_row]
        numpyro.sample("y", dist.Binomial(total_count=n, logits=eta).to_event(1), obs=y)

    return model


class CompileClock:
    """Seconds JAX spent compiling (tracing, lowering, XLA) within a wall-clock interval: the union of its spans."""

    def __init__(self):
        import jax.monitoring
        self.spans: list[tuple[float, float]] = []
        jax.monitoring.register_event_time_span_listener(
            lambda event, start, end, **_: self.spans.append((start, end)) if event in COMPILE_EVENTS else None)

    def within(self, t0: float, t1: float) -> float:
        total, reach = 0.0, t0
        for start, end in sorted(self.spans):
            start, end = max(start, reach), min(end, t1)
            if end > start:
                total, reach = total + end - start, end
        return total


def checkpoints(draws: int) -> list[int]:
    rule, k, out = StopRule(judge=None, max_draws=draws), SamplerSettings.min_draws, []
    while k <= draws:
        out.append(k)
        k = rule.next_checkpoint(k)
    return out + ([draws] if not out or out[-1] != draws else [])


def judge(values: dict, stats: dict, k: int, limits) -> tuple[dict, list]:
    idata = az.from_dict(posterior={n: v[:, :k] for n, v in values.items()},
                         sample_stats={n: v[:, :k] for n, v in stats.items()})
    summary = diagnostics.convergence_summary(idata, limits, reported=False)
    return summary, diagnostics.gate(summary, limits)


def verdict(summary: dict, outcomes: list) -> str:
    """PASSED, or the failed blocking checks with their figures and worst quantities, on one line."""
    failed = diagnostics.failed_blocking(outcomes)
    f = lambda v, spec=".3f": "nan" if v is None else format(v, spec)
    worst = ", ".join((summary["worst_rhat"] or summary["worst_ess"]).split(", ")[:3])
    return "PASSED" if not failed else (
        f"failed {'+'.join(o.name for o in failed)} (R-hat hyper {f(summary['max_rhat_hyper'])}, r_school "
        f"{f(summary['r_school_max_rhat'])}/{f(summary['r_school_rhat_limit'])}; min ESS bulk "
        f"{f(summary['min_ess_bulk'], '.0f')} tail {f(summary['min_ess_tail'], '.0f')}; worst {worst})")


def project_fit(spec, sample_, settings, limits, label: str):
    """The project's M2 under ``settings``, printed as one row of the table: (idata, sample seconds, bulk ESS of
    sd_school and sd_cohort)."""
    idata = specs.fit(spec, sample_, settings, progress=bench_m2.QUIET, limits=limits)
    sec = float(idata.attrs["sample_seconds"])
    pe = {n: float(az.ess(idata.posterior[n].values)) for n in ("sd_school", "sd_cohort")}
    print(f"{label:48s} {sec:8.1f} {float(idata.posterior['sd_school'].mean()):6.3f} "
          f"{float(idata.posterior['sd_cohort'].mean()):6.3f} {pe['sd_school']:7.0f} {pe['sd_cohort']:7.0f} "
          f"{pe['sd_school'] / sec:7.2f} {pe['sd_cohort'] / sec:7.2f}", flush=True)
    return idata, sec, pe


def main(argv: list[str]) -> None:
    args = arguments(argv)
    # before jax is first imported: one host device per chain, float64
    flag = f"--xla_force_host_platform_device_count={args.chains}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import numpyro
    numpyro.set_host_device_count(args.chains)
    numpyro.enable_x64()
    import jax
    from numpyro.infer import MCMC, NUTS

    clock = CompileClock()
    spec = specs.MODELS["m2"]
    sample_ = sample_of(args.data)
    mi = specs.model_input(spec, sample_)
    d = mi.data
    versions = {name: version(name) for name in ("numpyro", "jax", "jaxlib", "arviz")}
    print(f"{args.data}: {d['N']} observation rows, {d['J_school']} schools, {d['J_cohort']} cohorts, K {d['K']}; "
          f"{args.chains} chains on {jax.local_device_count()} host devices, {os.cpu_count()} cores; "
          f"x64 {jax.config.jax_enable_x64}; {versions}", flush=True)

    model = peer_model(d, args.param)
    kernel = NUTS(model, target_accept_prob=0.8, max_tree_depth=10)
    mcmc = MCMC(kernel, num_warmup=args.warmup, num_samples=args.draws, num_chains=args.chains,
                chain_method="parallel", progress_bar=False)
    fields = ("diverging", "energy", "num_steps") + (("~z.mu_cohort",) if args.param != "noncentred" else ())
    t0, c0 = time.time(), time.process_time()
    mcmc.warmup(jax.random.PRNGKey(args.seed), extra_fields=fields)
    jax.block_until_ready(mcmc.post_warmup_state)
    t1, c1 = time.time(), time.process_time()
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=fields)
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    t2, c2 = time.time(), time.process_time()
    compile_w, compile_s = clock.within(t0, t1), clock.within(t1, t2)
    warmup_s, sampling_s = t1 - t0 - compile_w, t2 - t1 - compile_s
    seconds = warmup_s + sampling_s

    post = {n: np.asarray(v) for n, v in samples.items()}
    extra = {n: np.asarray(v) for n, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    b_intercept = post["Intercept"] - post["b"] @ np.asarray(d["X"], float).mean(axis=0)
    values = {"b_Intercept": b_intercept, "Intercept": post["Intercept"], "b": post["b"],
              "sd_school": post["sd_school"], "sd_cohort": post["sd_cohort"],
              "r_school": post["mu_school"] - b_intercept[..., None]}
    if args.param == "hcentred":   # r_school = mu_school - school mean, as specs.group_effects
        values["r_school"] -= (post["b"] @ np.asarray(d["Xss_rows"]).T)[..., d["school_row"] - 1]
    stats = {"diverging": extra["diverging"].astype(bool), "energy": extra["energy"],
             "max_treedepth_hit": extra["num_steps"] >= 2 ** 10 - 1}
    ess = {n: float(az.ess(values[n])) for n in ("sd_school", "sd_cohort")}
    limits = diagnostics.Thresholds()
    summary, outcomes = judge(values, stats, args.draws, limits)
    passed_all = not diagnostics.failed_blocking(outcomes)
    leapfrog = float(extra["num_steps"].mean())

    label = f"NumPyro {args.param}, {args.chains} x ({args.warmup}+{args.draws}), seed {args.seed}"
    print(f"\ncompile {compile_w:.1f} s (warmup program) + {compile_s:.1f} s (sampling program), not counted; "
          f"warmup {warmup_s:.1f} s, sampling {sampling_s:.1f} s; {leapfrog:.1f} leapfrog steps per draw; "
          f"{int(stats['diverging'].sum())} divergent; process CPU seconds warmup {c1 - c0:.1f}, "
          f"sampling {c2 - c1:.1f} "
          f"(compile included: against wall time, how many cores the run had)", flush=True)
    print(f"{'fit':48s} {'seconds':>8s} {'sd_s':>6s} {'sd_c':>6s} {'ESS_s':>7s} {'ESS_c':>7s} "
          f"{'ESS/s':>7s} {'ESS/s':>7s}")
    print(f"{label:48s} {seconds:8.1f} {values['sd_school'].mean():6.3f} {values['sd_cohort'].mean():6.3f} "
          f"{ess['sd_school']:7.0f} {ess['sd_cohort']:7.0f} {ess['sd_school'] / seconds:7.2f} "
          f"{ess['sd_cohort'] / seconds:7.2f}")
    f = lambda v, spec=".4f": "nan" if v is None else format(v, spec)
    print(f"  all draws: gate {verdict(summary, outcomes)}\n"
          f"  max R-hat hyperparameters {f(summary['max_rhat_hyper'])}, r_school {f(summary['r_school_max_rhat'])} "
          f"(limit {f(summary['r_school_rhat_limit'])}); min ESS over the gated quantities: bulk "
          f"{f(summary['min_ess_bulk'], '.0f')} / tail {f(summary['min_ess_tail'], '.0f')}", flush=True)

    found, rows = {}, []
    for k in checkpoints(args.draws):
        at = warmup_s + sampling_s * k / args.draws
        line = f"  checkpoint {k:5d} draws per chain (~{at:6.1f} s):"
        row = {"draws_per_chain": k, "seconds": at}
        for name, keep in (("gate", values), ("gate without b", {n: v for n, v in values.items() if n != "b"})):
            if name in found:
                continue
            s, o = judge(keep, stats, k, limits)
            ok = not diagnostics.failed_blocking(o)
            row[name] = {"passed": ok} | {key: s[key] for key in ("max_rhat_hyper", "r_school_max_rhat",
                                                                  "min_ess_bulk", "min_ess_tail", "worst_rhat")}
            if ok:
                found[name] = {"draws_per_chain": k, "seconds": at,
                               "ess_bulk": {n: float(az.ess(values[n][:, :k])) for n in ("sd_school", "sd_cohort")}}
            line += f"\n    {name}: {verdict(s, o)}"
        rows.append(row)
        print(line, flush=True)
        if len(found) == 2:
            break
    for name in ("gate", "gate without b"):
        g = found.get(name)
        print(f"  NumPyro's time to the {name}: " + (
            f"~{g['seconds']:.1f} s at {g['draws_per_chain']} draws per chain (bulk ESS sd_school / sd_cohort "
            f"{g['ess_bulk']['sd_school']:.0f} / {g['ess_bulk']['sd_cohort']:.0f})" if g else
            f"not reached in {args.draws} draws per chain ({seconds:.1f} s)"), flush=True)

    result = {"label": label, "args": {k: str(v) for k, v in vars(args).items()}, "versions": versions,
              "data": {k: int(d[k]) for k in ("N", "J_school", "J_cohort", "K")},
              "compile_seconds": {"warmup": compile_w, "sampling": compile_s},
              "seconds": {"warmup": warmup_s, "sampling": sampling_s, "total": seconds},
              "wall_seconds": {"warmup": t1 - t0, "sampling": t2 - t1},
              "cpu_seconds": {"warmup": c1 - c0, "sampling": c2 - c1},
              "leapfrog_per_draw": leapfrog, "divergences": int(stats["diverging"].sum()),
              "means": {n: float(values[n].mean()) for n in ("sd_school", "sd_cohort")},
              "ess_bulk": ess, "ess_per_second": {n: v / seconds for n, v in ess.items()},
              "gate_all_draws": passed_all, "summary_all_draws": summary, "checkpoints": rows, "to_gate": found}

    if args.project:   # the project's M2, default rule (warmup 300, stop at the first passing checkpoint)
        idata, sec, pe = project_fit(spec, sample_, SamplerSettings(seed=args.seed), limits,
                                     f"project M2, default rule, seed {args.seed}")
        n_draws = int(idata.posterior.sizes["draw"])
        print(f"  converged {idata.attrs.get('converged')} at {n_draws} draws per chain", flush=True)
        result["project"] = {"seconds": sec, "draws_per_chain": n_draws, "ess_bulk": pe,
                             "converged": int(idata.attrs.get("converged", -1))}
        if "gate" in found:
            print(f"  time to the gate: project {sec:.1f} s, NumPyro ~{found['gate']['seconds']:.1f} s: "
                  f"{sec / found['gate']['seconds']:.2f}x", flush=True)

    if args.project_fixed:   # the project's M2 at NumPyro's lengths: ESS/s like for like
        settings = SamplerSettings(warmup=args.warmup, draws=args.draws, chains=args.chains, seed=args.seed,
                                   until_converged=False)
        _, sec, pe = project_fit(spec, sample_, settings, None,
                                 f"project M2, {args.chains} x ({args.warmup}+{args.draws}), seed {args.seed}")
        print("  ESS/s against NumPyro's, same lengths: " + " / ".join(
            f"{pe[n] / sec / result['ess_per_second'][n]:.2f}x" for n in ("sd_school", "sd_cohort")), flush=True)
        result["project_fixed"] = {"seconds": sec, "ess_bulk": pe}

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"peer_numpyro_{args.data}_{args.param}_{args.warmup}_{args.draws}_seed{args.seed}.json"
    path.write_text(json.dumps(result, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
