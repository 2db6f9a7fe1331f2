"""Error rates of the convergence gate's R-hat rule on simulated chains (numpy only, no Stan).

Chains are AR(1) with a chosen ESS/N (rho = (1 - r) / (1 + r) gives ESS/N = r), started in the
stationary distribution: ``--chains`` chains of ``--draws`` draws for K = ``--schools`` school
effects (``r_school``) and 7 hyperparameters (b_Intercept, b[3], sd_school, sd_cohort, sigma).
Scenarios (the hyperparameters stay stationary in all of them, so the school-effect rule is
what is measured):

* ``stationary``: every chain stationary - any failure is a false fail;
* ``correlated``: stationary, but every school effect loads +-c (``--corr``) on one common
  stationary series per chain (correlated effects, as through the intercept or sd_school) -
  failures are false fails;
* ``offset_all``: chain 1 offset by +-delta posterior SDs in every school effect;
* ``offset_5pct``: chain 1 offset by +-delta posterior SDs in a random 5% of the school effects;
* ``stuck``: chain 1 has ESS/N = ``--stuck-ess-ratio`` (rho ~ 0.99) instead of ``--ess-ratio``;
* ``frozen``: chain 1 stays at one stationary draw (all its draws equal).

For each scenario and draw count it prints the share of replicates that fail, by

* ``old``: the rule before this change - max R-hat <= 1.01 over every gated quantity;
* ``new``: the new ``rhat`` check - hyperparameters R-hat <= 1.01, and the r_school block rule
  (``diagnostics.block_rule``: per-parameter limit and between/within ratio);
* ``new:block`` / ``new:hyper``: the two parts of ``new`` alone;

so the stationary rows are false-fail rates and the others 1 - false-pass rates (the
false-pass rate is printed too). Then it times ``convergence_summary`` (new, and the version
at git HEAD when it differs) on one stationary posterior per draw count.

Usage: python benchmarks/gate_error_rates.py [--replicates 200] [--draws 300 700 1500] ...
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import arviz as az
import numpy as np
from scipy.signal import lfilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schoolquality_assets.models import diagnostics as dg  # noqa: E402
from schoolquality_assets.models import draw_diagnostics as dd  # noqa: E402

HYPER = {"b_Intercept": (), "b": (3,), "sd_school": (), "sd_cohort": (), "sigma": ()}


def ar1(rng, shape, ess_ratio: float) -> np.ndarray:
    """Stationary AR(1) draws along the last axis with unit variance and ESS/N ~ ess_ratio."""
    rho = (1 - ess_ratio) / (1 + ess_ratio)
    e = rng.standard_normal(shape)
    e[..., 1:] *= np.sqrt(1 - rho ** 2)
    return lfilter([1.0], [1.0, -rho], e, axis=-1)


STATIONARY = ("stationary", "correlated")


def simulate(rng, scenario: str, k: int, chains: int, draws: int, ess_ratio: float, delta: float,
             stuck_ess_ratio: float, corr: float = 0.0) -> np.ndarray:
    """r_school draws (K, chain, draw) for one scenario."""
    x = ar1(rng, (k, chains, draws), ess_ratio)
    sign = rng.choice([-1.0, 1.0], size=k)
    if scenario == "correlated":
        x = np.sqrt(1 - corr ** 2) * x + corr * sign[:, None, None] * ar1(rng, (chains, draws), ess_ratio)[None]
    elif scenario == "offset_all":
        x[:, 0] += delta * sign[:, None]
    elif scenario == "offset_5pct":
        hit = rng.choice(k, size=max(1, round(0.05 * k)), replace=False)
        x[hit, 0] += delta * sign[hit, None]
    elif scenario == "stuck":
        x[:, 0] = ar1(rng, (k, draws), stuck_ess_ratio)
    elif scenario == "frozen":
        x[:, 0] = rng.standard_normal((k, 1))
    elif scenario != "stationary":
        raise ValueError(scenario)
    return x


def rhat_figures(x: np.ndarray) -> dict:
    """R-hat and block sums of squares of (K, chain, draw) draws (the gate's own functions)."""
    split = dd._split(x)
    z, median = dd._z_scale(split, median=True)
    folded = dd._z_scale(np.abs(split - median[:, None, None]))
    rb, ssb_b, ssw_b, con_b = dd._rhat_parts(z)
    rf, ssb_f, ssw_f, con_f = dd._rhat_parts(folded)
    return {"rhat": np.maximum(rb, rf), "ssb_bulk": ssb_b, "ssw_bulk": ssw_b, "ssb_folded": ssb_f, "ssw_folded": ssw_f,
            "contrasts_bulk": con_b, "contrasts_folded": con_f}


def replicate(rng, scenario, args, draws, delta, limits) -> dict:
    chains, k = args.chains, args.schools
    school = simulate(rng, scenario, k, chains, draws, args.ess_ratio, delta, args.stuck_ess_ratio, args.corr)
    n_hyper = sum(int(np.prod(s)) for s in HYPER.values())
    hyper = rhat_figures(ar1(rng, (n_hyper, chains, draws), args.ess_ratio))["rhat"]
    figs = rhat_figures(school)
    rule = dg.block_rule(figs, chains, draws, limits)
    hyper_fail = bool((~(hyper <= limits.max_rhat)).any())
    return {
        "old": bool(max(hyper.max(), figs["rhat"].max()) > 1.01),
        "new": hyper_fail or not rule["passed"],
        "block": not rule["passed"],
        "hyper": hyper_fail,
        "max_rhat": float(figs["rhat"].max()),
        "ratio": max(rule["ratio_bulk"], rule["ratio_folded"]),
        "limit": rule["rhat_limit"], "ratio_limit": rule["ratio_limit"],
    }


def idata_for(rng, args, draws):
    chains = args.chains
    post = {v: np.moveaxis(ar1(rng, (*s, chains, draws), args.ess_ratio), range(len(s)), range(2, 2 + len(s)))
            + (3.0 if v.startswith(("sd", "sigma")) else 0.0) for v, s in HYPER.items()}
    post["r_school"] = np.moveaxis(simulate(rng, "stationary", args.schools, chains, draws, args.ess_ratio, 0, 0), 0, 2)
    return az.from_dict(posterior=post, dims={"r_school": ["school"], "b": ["coef"]})


def old_module():
    """diagnostics.py as committed at git HEAD (the rule before this change), or None."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", "HEAD:schoolquality_assets/models/diagnostics.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "block_rule" in src:
        return None  # HEAD already has this rule
    path = Path(tempfile.mkdtemp()) / "diagnostics_head.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("diagnostics_head", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schools", type=int, default=3300, help="K, school effects in the block")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, nargs="+", default=[300, 700, 1500], help="draws per chain")
    p.add_argument("--ess-ratio", type=float, default=0.36, help="ESS/N of every stationary chain")
    p.add_argument("--stuck-ess-ratio", type=float, default=0.005, help="ESS/N of the stuck chain")
    p.add_argument("--offset-all", type=float, default=0.1, help="offset_all: delta in posterior SDs")
    p.add_argument("--offset-subset", type=float, default=0.3, help="offset_5pct: delta in posterior SDs")
    p.add_argument("--corr", type=float, default=0.2, help="correlated: loading of every effect on the common series")
    p.add_argument("--replicates", type=int, default=200, help="replicates of the stationary scenarios")
    p.add_argument("--replicates-nonmixed", type=int, default=None,
                   help="replicates of each non-mixed scenario (default: --replicates)")
    p.add_argument("--scenarios", nargs="+", default=["stationary", "correlated", "offset_all", "offset_5pct", "stuck", "frozen"])
    p.add_argument("--timing", type=int, default=1, help="timed convergence_summary calls per draw count (0: none)")
    p.add_argument("--seed", type=int, default=20240601)
    args = p.parse_args(argv)
    limits = dg.Thresholds()
    rng = np.random.default_rng(args.seed)
    delta = {"offset_all": args.offset_all, "offset_5pct": args.offset_subset}
    nonmixed = args.replicates_nonmixed or args.replicates
    print(f"K = {args.schools} school effects + 7 hyperparameters, {args.chains} chains, ESS/N {args.ess_ratio}, "
          f"seed {args.seed}; thresholds {limits}")
    print(f"offset_all: delta {args.offset_all} SD in every school effect; offset_5pct: delta {args.offset_subset} SD "
          f"in 5% of them; stuck: chain 1 ESS/N {args.stuck_ess_ratio}; frozen: chain 1 constant; correlated: "
          f"loading {args.corr} on a common series (correlation {args.corr ** 2:.3g} between effects)")
    print("fail = share of replicates failing (stationary/correlated: false-fail rate); false-pass = 1 - fail; "
          "z = (ratio limit - mean ratio) / sd; ratio limit = mean over replicates (it depends on the estimated K_eff)")
    head = (f"{'scenario':<12} {'draws':>5} {'reps':>4} | {'fail: old':>9} {'new':>6} {'block':>6} {'hyper':>6} | "
            f"{'false-pass: old':>15} {'new':>6} | {'max R-hat: med':>14} {'max':>6} {'limit':>6} | "
            f"{'ratio: mean':>11} {'sd':>5} {'limit':>5} {'z':>5} | {'s/rep':>5}")
    print(head)
    print("-" * len(head))
    for scenario in args.scenarios:
        reps = args.replicates if scenario in STATIONARY else nonmixed
        for draws in args.draws:
            start = time.perf_counter()
            rows = [replicate(rng, scenario, args, draws, delta.get(scenario, 0.0), limits) for _ in range(reps)]
            sec = (time.perf_counter() - start) / reps
            mx, ratio = [r["max_rhat"] for r in rows], [r["ratio"] for r in rows]
            sd = np.std(ratio, ddof=1) if reps > 1 else float("nan")
            ratio_limit = np.mean([r["ratio_limit"] for r in rows])  # depends on the estimated K_eff
            rate = {key: np.mean([r[key] for r in rows]) for key in ("old", "new", "block", "hyper")}
            fp = "" if scenario in STATIONARY else f"{1 - rate['old']:>15.3f} {1 - rate['new']:>6.3f}"
            print(f"{scenario:<12} {draws:>5} {reps:>4} | {rate['old']:>9.3f} {rate['new']:>6.3f} {rate['block']:>6.3f} "
                  f"{rate['hyper']:>6.3f} | {fp:>22} | {np.median(mx):>14.4f} {np.max(mx):>6.4f} "
                  f"{rows[0]['limit']:>6.4f} | {np.mean(ratio):>11.3f} {sd:>5.3f} "
                  f"{ratio_limit:>5.3f} {(ratio_limit - np.mean(ratio)) / sd:>5.1f} | {sec:>5.2f}",
                  flush=True)
    if args.timing:
        old = old_module()
        print(f"\nconvergence_summary on one stationary posterior ({args.schools} school effects + 7 hyperparameters, "
              f"{args.chains} chains), median of {args.timing} call(s):")
        for draws in args.draws:
            idata = idata_for(rng, args, draws)
            new_s, summary = [], None
            for _ in range(args.timing):
                t = time.perf_counter()
                summary = dg.convergence_summary(idata, limits)
                new_s.append(time.perf_counter() - t)
            failed = [o.name for o in dg.failed_blocking(dg.gate(summary, limits))]
            line = (f"  draws {draws:>5}: new {np.median(new_s):6.2f} s (gate: {'passes' if not failed else 'fails ' + ', '.join(failed)}; "
                    f"min ESS bulk {summary['min_ess_bulk']:.0f}, tail {summary['min_ess_tail']:.0f}, "
                    f"q2.5/97.5 {summary['min_ess_q025_q975']:.0f}, max R-hat {summary['max_rhat']:.4f})")
            if old is not None:
                old_s = []
                for _ in range(args.timing):
                    t = time.perf_counter()
                    old.convergence_summary(idata, old.Thresholds())
                    old_s.append(time.perf_counter() - t)
                line += f"; HEAD {np.median(old_s):6.2f} s"
            print(line, flush=True)


if __name__ == "__main__":
    main()
