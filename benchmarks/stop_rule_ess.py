"""True ESS at the stop rule's stop, on simulated chains whose ESS is known (numpy only, no Stan).

Sampling stops at the first checkpoint where the blocking convergence gate holds
(``engine.base.StopRule``: 100 draws per chain, then +100 or x1.25, up to 5,000). The gate's
figures are noisy - the hyperparameters' R-hat <= 1.01 false-fails most stationary fits at 300
draws (benchmarks/gate_error_rates.py) - so the checkpoint where it first holds is partly chosen
by noise: does that bias the reported ESS (and the Monte Carlo standard errors behind the
intervals) at the stop?

Each replicate simulates 4 stationary AR(1) chains (unit variance, mean 0; rho = (1 - r) / (1 + r)
gives ESS/N = r), lazily as far as the stop rule asks, for the 7 hyperparameters of
gate_error_rates.py (b_Intercept, b[1..3], sd_school, sd_cohort, sigma; ESS/N ``--hyper-ess-ratio``)
and K = ``--schools`` school effects (ESS/N uniform on ``--school-ess-ratio``). The real StopRule
walks its checkpoints with a judge that does what ``specs.convergence_judge`` does: an InferenceData
of the first n draws, ``diagnostics.convergence_summary(screen=True, reported=False)`` and the
blocking gate, and when the screen passes the same with arviz (screen=False), under the default
``Thresholds()``. Rules:

* ``first``: stop at the first checkpoint where the gate holds (production's rule);
* ``two consecutive``: stop at the first checkpoint where the gate holds and held at the
  previous checkpoint too (the same verdicts, walked further);
* ``fixed``: every replicate at one fixed length, the median stop of ``first`` (reference).

At the stop it compares, per hyperparameter, arviz's reported bulk ESS with the true ESS
(4 n / (1 + 2 sum_k (1 - k/n) rho^k), exact for the mean of n AR(1) draws per chain; the
rank-normalised bulk ESS of Gaussian draws is about the same), checks whether
mean +- 1.96 MCSE (az.mcse, mean) covers the true mean 0, and the error of the 5% and 95% sample
quantiles in units of their reported MCSE (az.mcse, quantile): z = (q_hat - q_true) / MCSE, with
|z| > 1.96 about 5% of the time when the MCSEs are calibrated.

Optional stopping is measured against a *matched fixed-length reference*: the same statistic
averaged over all replicates at fixed length n, weighted by the rule's distribution of stops
(``bias`` = mean over replicates of [value at own stop - all-replicate mean at that n], +- its
standard error). Any estimator bias that fixed-length sampling has too (Geyer truncation, the ESS
estimate's noise) cancels; what remains is due to stopping where the gate first holds.

Usage:
    python benchmarks/stop_rule_ess.py                       # 200 replicates, K = 300: ~7 s CPU/replicate, ~25 min
    python benchmarks/stop_rule_ess.py --schools 60          # ~1.7 s CPU/replicate: ~6 min CPU (12 min wall on a busy 2-core host)
    python benchmarks/stop_rule_ess.py --schools 60 --hyper-ess-ratio 0.36                      # gate_error_rates' ESS/N
    python benchmarks/stop_rule_ess.py --schools 60 --hyper-ess-ratio 0.8 1 1 1 1 0.6 1 --school-ess-ratio 0.6 1.0

Most of the time is arviz's R-hat/ESS per school effect at checkpoints the screen passes (the real
judge); the school effects rarely decide the stop at ESS/N >= 0.5, so a smaller K changes little.

Options: --replicates, --schools, --hyper-ess-ratio (1 value for all or 7), --school-ess-ratio LOW
HIGH, --seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import xarray as xr
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_error_rates import HYPER  # b_Intercept, b[3], sd_school, sd_cohort, sigma

from schoolquality_assets.engine.base import StopRule, Verdict, columns
from schoolquality_assets.models import diagnostics as dg

HYPER_NAMES = [f"{v}[{i + 1}]" if s else v for v, s in HYPER.items() for i in range(int(np.prod(s)))]
COLUMNS = [name.replace("[", ".").rstrip("]") for name in HYPER_NAMES]  # engine column names: b.1, ...
Z95 = 1.959963984540054
QUANTILES = (0.05, 0.95)
Q_TRUE = {p: float(stats.norm.ppf(p)) for p in QUANTILES}  # the true quantiles of N(0, 1)


def rho_of(ratio) -> np.ndarray:
    ratio = np.asarray(ratio, float)
    return (1 - ratio) / (1 + ratio)


def true_ess(n: int, ratio, chains: int = 4) -> np.ndarray:
    """Exact ESS of the mean of ``chains`` independent stationary AR(1) chains of n draws."""
    rho = rho_of(ratio)[..., None]
    k = np.arange(1, n)
    tau = 1 + 2 * ((1 - k / n) * rho ** k).sum(-1)
    return chains * n / tau


class LazyAR1:
    """Stationary unit-variance AR(1) chains, one rho per row, (draw, row, chain), extended on
    demand. The draws do not depend on how they were extended: the same rng gives the same
    prefix however far it is asked."""

    def __init__(self, rng, ratios, chains: int):
        self.rng, self.rho = rng, rho_of(ratios)
        self.scale = np.sqrt(1 - self.rho ** 2)[:, None]
        self.x = rng.standard_normal((1, len(self.rho), chains))  # stationary start

    def upto(self, n: int) -> np.ndarray:
        have = self.x.shape[0]
        if n > have:
            m = max(n - have, have // 2, 100)
            e = self.rng.standard_normal((m, *self.x.shape[1:])) * self.scale
            new = np.empty_like(e)
            prev, rho = self.x[-1], self.rho[:, None]
            for t in range(m):
                prev = new[t] = rho * prev + e[t]
            self.x = np.concatenate([self.x, new])
        return self.x[:n]


def rng_for(seed: int, replicate: int, part: int):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(replicate, part)))


class Replicate:
    """One simulated fit: chain tables as the engines hand them to the judge, and the judge."""

    def __init__(self, args, i: int, school_ratios: np.ndarray):
        self.hyper = LazyAR1(rng_for(args.seed, i, 0), args.hyper_ess_ratio, args.chains)
        self.school = LazyAR1(rng_for(args.seed, i, 1), school_ratios, args.chains)
        self.names = COLUMNS + [f"r_school.{k + 1}" for k in range(len(school_ratios))]
        self.limits = dg.Thresholds()
        self.verdicts: dict[int, tuple[Verdict, dict]] = {}  # checkpoint -> (verdict, summary)

    def views(self, n: int) -> dict:
        table = np.concatenate([self.hyper.upto(n), self.school.upto(n)], axis=1)  # (n, columns, chain)
        return {c: {"names": self.names, "table": table[:, :, c]} for c in range(table.shape[2])}

    def judge(self, views: dict, n: int, elapsed: float) -> Verdict:
        """specs.convergence_judge on the gated quantities (no sampler statistics: no divergences)."""
        if n in self.verdicts:  # the same draws: the same verdict (both rules walk the same checkpoints)
            return self.verdicts[n][0]
        p = columns(views, [*HYPER, "r_school"])
        idata = az.from_dict(posterior=p, dims={"r_school": ["school"], "b": ["coef"]})
        summary, failed, screen_failed = dg.screened_gate(idata, self.limits)
        summary = summary | {"_failed": [o.name for o in failed], "_screen_failed": [o.name for o in screen_failed]}
        verdict = Verdict(not failed, not failed, "gate holds" if not failed else "not yet")
        self.verdicts[n] = (verdict, summary)
        return verdict


def consecutive(judge, k: int = 2):
    """A judge whose verdict is final once the gate has held at k checkpoints in a row."""
    run = [0]

    def wrapped(views, n, elapsed):
        v = judge(views, n, elapsed)
        run[0] = run[0] + 1 if v.passed else 0
        final = (v.final and not v.passed) or run[0] >= k
        return Verdict(v.passed and run[0] >= k, final, f"{v.status} ({run[0]} in a row)")

    return wrapped


def walk(stop: StopRule, views) -> tuple[int, Verdict]:
    """The engines' checkpoint loop (pystan_engine._watch) without the chains: judge at
    min_draws, then at next_checkpoint, until the verdict is final or max_draws is reached."""
    checkpoint = stop.min_draws
    while True:
        checkpoint = min(checkpoint, stop.max_draws)
        verdict = stop.judge(views(checkpoint), checkpoint, 0.0)
        if verdict.final or checkpoint >= stop.max_draws:
            return checkpoint, verdict
        checkpoint = stop.next_checkpoint(checkpoint)


def hyper_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """arviz figures of the hyperparameters' draws x (draw, 7, chain), per hyperparameter."""
    ds = xr.Dataset({"x": (("draw", "k", "chain"), x)}).transpose("chain", "draw", "k")
    pooled = x.transpose(1, 0, 2).reshape(x.shape[1], -1)
    out = {"ess_bulk": az.ess(ds, method="bulk")["x"].values,
           "mean": pooled.mean(1),
           "mcse_mean": az.mcse(ds, method="mean")["x"].values}
    for p in QUANTILES:
        out[f"q{p}"] = np.quantile(pooled, p, axis=1)
        out[f"mcse_q{p}"] = az.mcse(ds, method="quantile", prob=p)["x"].values
    return out


def derived(s: dict, n: int, ratios: np.ndarray) -> dict[str, np.ndarray]:
    """Per-hyperparameter ratio reported/true ESS, coverage of mean +- 1.96 MCSE, z of the mean
    and of the 5%/95% quantiles."""
    z_mean = s["mean"] / s["mcse_mean"]
    zq = np.stack([(s[f"q{p}"] - Q_TRUE[p]) / s[f"mcse_q{p}"] for p in QUANTILES])
    out = {"ess_ratio": s["ess_bulk"] / true_ess(n, ratios), "covered": np.abs(z_mean) <= Z95,
           "z2": z_mean ** 2, "q_out": (np.abs(zq) > Z95).mean(0)}
    # the hyperparameter with the smallest reported bulk ESS (the one the ESS check looks at), as column 7
    j = int(np.argmin(s["ess_bulk"]))
    return {k: np.append(v.astype(float), float(v[j])) for k, v in out.items()}


def pct(a, q) -> float:
    return float(np.percentile(a, q))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replicates", type=int, default=200)
    p.add_argument("--schools", type=int, default=300, help="K, school effects (r_school)")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--hyper-ess-ratio", type=float, nargs="+", default=[0.5, 0.8, 0.8, 0.8, 0.5, 0.25, 0.9],
                   help=f"ESS/N of the hyperparameters ({', '.join(HYPER_NAMES)}): one value or one each")
    p.add_argument("--school-ess-ratio", type=float, nargs=2, default=[0.5, 1.0], metavar=("LOW", "HIGH"),
                   help="ESS/N of the school effects, uniform between LOW and HIGH")
    p.add_argument("--seed", type=int, default=20240601)
    args = p.parse_args(argv)
    if len(args.hyper_ess_ratio) == 1:
        args.hyper_ess_ratio *= len(HYPER_NAMES)
    if len(args.hyper_ess_ratio) != len(HYPER_NAMES):
        p.error(f"--hyper-ess-ratio needs 1 or {len(HYPER_NAMES)} values")
    hr = np.array(args.hyper_ess_ratio)
    school_ratios = np.random.default_rng(args.seed).uniform(*args.school_ess_ratio, args.schools)
    slow = int(np.argmin(hr))  # the slowest hyperparameter
    template = StopRule(judge=None)
    limits = dg.Thresholds()
    print(f"{args.replicates} replicates, {args.chains} chains, K = {args.schools} school effects (ESS/N "
          f"{args.school_ess_ratio[0]}-{args.school_ess_ratio[1]}), hyperparameters ESS/N "
          + ", ".join(f"{n} {r:g}" for n, r in zip(HYPER_NAMES, hr))
          + f"; seed {args.seed}\nStopRule: min_draws {template.min_draws}, check_every {template.check_every}, "
          f"growth {template.growth}, max_draws {template.max_draws}; {limits}", flush=True)

    # pass 1: walk the real StopRule under both rules (shared verdicts per checkpoint)
    rules = ("first", "two consecutive")
    stops = {r: [] for r in rules}
    passed = {r: [] for r in rules}
    summaries = {r: [] for r in rules}
    history = []  # per replicate: checkpoint -> (passed, failed checks, screen failed checks, summary)
    start = time.perf_counter()
    for i in range(args.replicates):
        rep = Replicate(args, i, school_ratios)
        for rule, judge in (("first", rep.judge), ("two consecutive", consecutive(rep.judge))):
            n, verdict = walk(StopRule(judge=judge), rep.views)
            stops[rule].append(n)
            passed[rule].append(verdict.passed)
            summaries[rule].append(rep.verdicts[n][1])
        history.append({n: (v.passed, s["_failed"], s["_screen_failed"], s) for n, (v, s) in rep.verdicts.items()})
        if (i + 1) % max(1, args.replicates // 10) == 0:
            el = time.perf_counter() - start
            print(f"  {i + 1}/{args.replicates} replicates, {el:.0f} s ({el / (i + 1):.1f} s/replicate)", flush=True)
    stops = {r: np.array(v) for r, v in stops.items()}
    n_fixed = int(np.median(stops["first"]))
    n_fixed = -(-n_fixed // template.check_every) * template.check_every
    stops["fixed"] = np.full(args.replicates, n_fixed)

    # pass 2: the hyperparameters' arviz figures of every replicate at every length that any rule stopped at
    needed = sorted(set(np.concatenate(list(stops.values())).tolist()))
    at = {n: [] for n in needed}  # n -> per replicate derived figures
    for i in range(args.replicates):
        hyper = LazyAR1(rng_for(args.seed, i, 0), hr, args.chains)  # the same draws as in pass 1
        for n in needed:
            at[n].append(derived(hyper_stats(hyper.upto(n)), n, hr))
    pass_seconds = time.perf_counter() - start

    def stack(key, rule):
        return np.array([at[n][i][key] for i, n in enumerate(stops[rule])])  # (replicate, 7) at own stop

    def reference(key, n):  # all-replicate mean at fixed length n
        return np.mean([d[key] for d in at[n]], axis=0)

    # gate pass rates by checkpoint
    print("\nGate at each checkpoint (replicates that reached it under 'two consecutive'; fail reasons: "
          "rhat_hyper = a hyperparameter's R-hat > 1.01, block = r_school block rule, ess = some ESS < 400; "
          "'screen' = failed already at the vectorised screen):")
    head = (f"{'n/chain':>7} {'reps':>5} {'passes':>6} | {'rhat_hyper':>10} {'block':>6} {'ess':>6} {'screen':>6} | "
            f"{'true ESS slowest hyper':>22} {'reported (median)':>17}")
    print(head)
    print("-" * len(head))
    ckpts = sorted({n for h in history for n in h})
    for n in ckpts:
        hs = [h[n] for h in history if n in h]
        rhat_hyper = np.mean([(s["n_rhat_hyper_failing"] or 0) > 0 for _, _, _, s in hs])
        block = np.mean([s.get("r_school_block_passed") == 0 for _, _, _, s in hs])
        ess = np.mean(["ess" in f for _, f, _, _ in hs])
        scr = np.mean([bool(sf) for _, _, sf, _ in hs])
        rep_min = np.median([s["min_ess_bulk_sd"] if s["min_ess_bulk_sd"] is not None else np.nan for _, _, _, s in hs])
        print(f"{n:>7} {len(hs):>5} {np.mean([ok for ok, _, _, _ in hs]):>6.3f} | {rhat_hyper:>10.3f} {block:>6.3f} "
              f"{ess:>6.3f} {scr:>6.3f} | {true_ess(n, hr[slow]):>22.0f} {rep_min:>17.0f}")
    print(f"(reported = median over replicates of the smallest bulk ESS among the SDs and sigma; "
          f"slowest hyperparameter: {HYPER_NAMES[slow]}, ESS/N {hr[slow]:g})")

    # per-rule summary
    all_rules = ("first", "two consecutive", "fixed")
    print(f"\nPer rule ('fixed' = every replicate at {n_fixed} draws/chain, the median stop of 'first', rounded up "
          f"to {template.check_every}s). ESS ratio = reported bulk ESS / true ESS; cover = share of mean +- 1.96 MCSE "
          "covering 0; E z^2 = mean of (mean / MCSE)^2 (1 if MCSE calibrated); q-out = share of |z| > 1.96 for the "
          "5%/95% quantiles (0.05 if calibrated):")
    head = (f"{'rule':<16} | {'stop n: med':>11} {'p10':>5} {'p90':>5} {'draws/chain':>11} {'gate ok':>7} | "
            f"{'slowest: ESS ratio':>18} {'true ESS<400':>12} {'cover':>6} {'E z^2':>6} {'q-out':>6} | "
            f"{'all 7: ESS ratio':>16} {'cover':>6} {'E z^2':>6} {'q-out':>6} | {'min ESS all: rep/true':>21}")
    print(head)
    print("-" * len(head))
    for rule in all_rules:
        s = stops[rule]
        er, cov, z2, qo = (stack(k, rule) for k in ("ess_ratio", "covered", "z2", "q_out"))
        t_slow = np.array([true_ess(n, hr[slow]) for n in s])
        ok = f"{np.mean(passed[rule]):>7.3f}" if rule in passed else f"{'-':>7}"
        if rule in summaries:
            t_min = np.array([true_ess(n, min(hr.min(), school_ratios.min())) for n in s])
            rep_min = np.array([x["min_ess_bulk"] for x in summaries[rule]], float)
            min_all = f"{np.mean(rep_min / t_min):>21.3f}"
        else:
            min_all = f"{'-':>21}"
        er, cov, z2, qo = er[:, :-1], cov[:, :-1], z2[:, :-1], qo[:, :-1]  # without the 'min reported' column
        print(f"{rule:<16} | {np.median(s):>11.0f} {pct(s, 10):>5.0f} {pct(s, 90):>5.0f} {s.mean():>11.0f} "
              f"{ok} | {er[:, slow].mean():>18.3f} {np.mean(t_slow < limits.min_ess):>12.3f} "
              f"{cov[:, slow].mean():>6.3f} {z2[:, slow].mean():>6.3f} {qo[:, slow].mean():>6.3f} | "
              f"{er.mean():>16.3f} {cov.mean():>6.3f} {z2.mean():>6.3f} {qo.mean():>6.3f} | {min_all}")
    print("(min ESS all = the summary's min bulk ESS over every gated quantity / the true ESS of the slowest "
          "quantity; 'fixed' has no summary)")

    # optional-stopping bias against the matched fixed-length reference
    print("\nOptional-stopping bias: value at the rule's stop minus the all-replicate mean at the same fixed length "
          "(matched reference), mean +- standard error over replicates; 'min reported' = at each stop the hyperparameter "
          "with the smallest reported bulk ESS (its ESS ratio: that reported ESS / its true ESS); 'fixed' is its own "
          "reference (no bias column):")
    head = (f"{'rule':<16} {'quantity':<12} | {'ESS ratio: stop':>15} {'matched':>8} {'bias':>15} | "
            f"{'cover: stop':>11} {'matched':>8} {'bias':>15} | {'E z^2: stop':>11} {'matched':>8} {'bias':>15} | "
            f"{'q-out: stop':>11} {'matched':>8} {'bias':>15}")
    print(head)
    print("-" * len(head))
    for rule in all_rules:
        for label, cols in ((HYPER_NAMES[slow], [slow]), ("all 7", list(range(len(hr)))),
                            ("min reported", [len(hr)])):
            cells = []
            for key in ("ess_ratio", "covered", "z2", "q_out"):
                v = stack(key, rule)[:, cols].mean(1).astype(float)
                ref = np.array([reference(key, n)[cols].mean() for n in stops[rule]])
                d = v - ref
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
                bias = f"{d.mean():>+7.3f} +- {se:.3f}" if rule != "fixed" else f"{'-':>15}"
                cells.append(f"{v.mean():>{15 if key == 'ess_ratio' else 11}.3f} {ref.mean():>8.3f} {bias}")
            print(f"{rule:<16} {label:<12} | " + " | ".join(cells))

    # per hyperparameter
    print("\nPer hyperparameter (ESS ratio / cover / q-out at the stop):")
    head = f"{'hyperparameter':<14} {'ESS/N':>5} | " + " | ".join(f"{r:^22}" for r in all_rules)
    print(head)
    print("-" * len(head))
    for j, name in enumerate(HYPER_NAMES):
        cells = [f"{stack('ess_ratio', r)[:, j].mean():>6.3f} {stack('covered', r)[:, j].mean():>6.3f} "
                 f"{stack('q_out', r)[:, j].mean():>6.3f}   " for r in all_rules]
        print(f"{name:<14} {hr[j]:>5.2f} | " + " | ".join(cells))

    # by stop n under 'first'
    print("\nUnder 'first', by stopping checkpoint: slowest hyperparameter's ESS ratio and E z^2 at the stop, "
          "against all replicates at that length:")
    head = f"{'n/chain':>7} {'stops':>5} | {'ESS ratio: stop':>15} {'all reps':>8} | {'E z^2: stop':>11} {'all reps':>8}"
    print(head)
    print("-" * len(head))
    er, z2 = stack("ess_ratio", "first")[:, slow], stack("z2", "first")[:, slow]
    for n in sorted(set(stops["first"].tolist())):
        m = stops["first"] == n
        print(f"{n:>7} {m.sum():>5} | {er[m].mean():>15.3f} {reference('ess_ratio', n)[slow]:>8.3f} | "
              f"{z2[m].mean():>11.3f} {reference('z2', n)[slow]:>8.3f}")
    print(f"\n{pass_seconds:.0f} s in all ({pass_seconds / args.replicates:.1f} s/replicate)")


if __name__ == "__main__":
    main()
