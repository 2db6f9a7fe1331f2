"""Cost, calibration and coverage of the school rankings (schoolquality_assets.analyses.rankings); numpy only, no Stan.

Two modes:

* ``timing`` (default): ``school_rankings`` on ``--chains`` x ``--draws`` x ``--schools`` synthetic
  draws (default 4 x 700 x 3,300, the production fit's size), median of ``--repeats`` runs, split
  into the parts (p_below_average, ranks, quantiles, arviz MCSE). The draws are the exact posterior of
  a Normal-Normal model sized like the synthetic province: true effects N(0, 0.395), each school
  measured with variance (cohort 0.156 + binomial 1 / (3 n p(1-p))) / years, n ~ lognormal(median 45,
  0.8) and 12% small schools (3-15 students, 1-2 years). ``--worst-case`` makes every school's
  indicators vary (all schools of equal, large error), which is what arviz's MCSE costs most for.

* ``truth``: given a warehouse (``--warehouse``, default $SCHOOLQUALITY_WAREHOUSE or ./warehouse) with
  ``posteriors/full/posterior_m2.nc`` and the ``synthetic_truth`` DuckDB table (school_id,
  school_effect), prints the calibration of p_below_average against the truth (per p bin: schools,
  mean p, share truly below the average of the true effects of the schools in the fit) and the
  share of schools whose true rank lies in the 95% rank interval. The issue asks: among schools with
  p >= 0.9 at least 90% truly below, among p <= 0.1 at least 90% truly above, coverage 93-97%.

Usage:
    python benchmarks/rankings.py [timing] [--chains 4 --draws 700 --schools 3300 --repeats 3 --worst-case]
    python benchmarks/rankings.py truth [--warehouse PATH] [--partition full]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from schoolquality_assets.analyses import rankings  # noqa: E402

BINS = (0.0, 0.025, 0.1, 0.5, 0.9, 0.975, 1.0)


# ---------------------------------------------------------------- timing
def province_like_sds(rng, n_schools: int) -> np.ndarray:
    """Measurement SD (logit) of each school's effect, sized like the synthetic province."""
    n = np.clip(np.exp(rng.normal(np.log(45), 0.8, n_schools)), 5, 260)
    years = np.full(n_schools, 8.0)
    small = rng.random(n_schools) < 0.12
    n[small] = rng.integers(3, 16, small.sum())
    years[small] = rng.integers(1, 3, small.sum())
    return np.sqrt((0.156 + 1 / (3 * n * 0.245)) / years)


def exact_posterior_draws(rng, chains: int, draws: int, tau: float, s: np.ndarray, mu: float = 0.0):
    """True effects theta ~ N(mu, tau^2), x ~ N(theta, s^2); iid draws (chains, draws, J) of the exact
    posterior N(mu + B (x - mu), B s^2), B = tau^2 / (tau^2 + s^2); returns (draws, theta)."""
    theta = rng.normal(mu, tau, s.size)
    x = rng.normal(theta, s)
    b = tau**2 / (tau**2 + s**2)
    z = rng.standard_normal((chains, draws, s.size))
    z *= np.sqrt(b) * s
    z += mu + b * (x - mu)
    return z, theta


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def timing(args) -> None:
    rng = np.random.default_rng(args.seed)
    tau = np.sqrt(0.395)
    s = np.full(args.schools, 2.0) if args.worst_case else province_like_sds(rng, args.schools)
    draws, _ = exact_posterior_draws(rng, args.chains, args.draws, tau, s)
    ids = [f"S{j:05d}" for j in range(args.schools)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    totals, parts = [], {"p_below_average + MCSE": [], "ranks": [], "rank quantiles": [], "tail indicators + MCSE": []}
    table = None
    for _ in range(args.repeats):
        table, t = _timed(rankings.rankings_from_draws, draws, ids)
        totals.append(t)
        # the parts, separately (same code paths)
        below, t = _timed(lambda r: r < r.mean(axis=2, keepdims=True), draws)
        _, t2 = _timed(rankings.indicator_mcse, below)
        parts["p_below_average + MCSE"].append(t + t2)
        del below
        ranks, t = _timed(rankings.draw_ranks, draws)
        parts["ranks"].append(t)
        _, t = _timed(lambda x: np.quantile(x.reshape(-1, x.shape[-1]), (0.025, 0.5, 0.975), axis=0,
                                            method="inverted_cdf"), ranks)
        parts["rank quantiles"].append(t)
        k = rankings.tail_size(args.schools)
        _, t = _timed(lambda x: (rankings.indicator_mcse(x <= k), rankings.indicator_mcse(x > args.schools - k)), ranks)
        parts["tail indicators + MCSE"].append(t)
        del ranks
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    varying = {c: int(((table[c] > 0) & (table[c] < 1)).sum()) for c in rankings.PROBABILITIES}
    print(f"school_rankings on {args.chains} chains x {args.draws} draws x {args.schools:,} schools "
          f"({'worst case: every indicator varies' if args.worst_case else 'province-like measurement errors'})")
    print(f"  median of {args.repeats} runs: {np.median(totals):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in totals)})")
    for name, ts in parts.items():
        print(f"    {name:<26} {np.median(ts):.2f} s")
    print(f"  schools whose indicator varies over draws (arviz MCSE computed): {varying}")
    print(f"  draws array {draws.nbytes / 2**20:.0f} MiB; peak RSS growth during the runs {(rss1 - rss0) / 1024:.0f} MiB "
          f"(peak RSS {rss1 / 1024:.0f} MiB)")
    print(f"  MCSE gate: {rankings.mcse_summary(table)}")
    print(f"  labels: {rankings.distinguishable_counts(table)}")


# ---------------------------------------------------------------- calibration and coverage against the truth
def truth_check(args) -> int:
    from schoolquality_assets.models import specs
    from schoolquality_assets.warehouse import Warehouse

    wh = Warehouse.from_env(args.warehouse)
    path = wh.posterior_path("m2", args.partition)
    if not path.exists():
        print(f"no M2 posterior at {path}: fit posterior_m2[{args.partition}] first (nothing to check)", file=sys.stderr)
        return 2
    try:
        truth = wh.read_table("synthetic_truth").select("school_id", "school_effect")
    except Exception as exc:  # WarehouseError (no database), duckdb.CatalogException (no table)
        print(f"no synthetic_truth table in {wh.database} ({exc}): the check needs the synthetic province",
              file=sys.stderr)
        return 2
    try:
        idata = specs.load_passed_posterior(path, wh.failed_posterior_path("m2", args.partition))
    except specs.PosteriorRefused as exc:
        print(f"posterior_m2[{args.partition}] refused: {exc}", file=sys.stderr)
        return 2
    table, seconds = _timed(rankings.school_rankings, idata)
    t = table.join(truth, on="school_id", how="left")
    missing = t["school_effect"].null_count()
    if missing:
        print(f"{missing} schools of the posterior have no true effect (is this the synthetic province?)", file=sys.stderr)
        return 2
    theta = t["school_effect"].to_numpy()
    t = t.with_columns(
        truly_below=pl.Series(theta < theta.mean()),
        true_rank=pl.Series(np.argsort(np.argsort(theta, kind="stable"), kind="stable") + 1),
    )
    print(f"{table.height:,} schools, posterior {path} ({idata.posterior.sizes['chain']} chains x "
          f"{idata.posterior.sizes['draw']} draws); school_rankings took {seconds:.2f} s")
    print("calibration of p_below_average (truth: effect below the mean true effect of these schools)")
    print(f"  {'p range':<16}{'schools':>9}{'mean p':>9}{'truly below':>13}")
    cut = np.searchsorted(BINS, t["p_below_average"].to_numpy(), side="right") - 1
    cut = np.clip(cut, 0, len(BINS) - 2)
    for b in range(len(BINS) - 1):
        sel = t.filter(pl.Series(cut == b))
        close = "]" if b == len(BINS) - 2 else ")"
        share = sel["truly_below"].mean() if sel.height else float("nan")
        mean_p = sel["p_below_average"].mean() if sel.height else float("nan")
        print(f"  [{BINS[b]:.3f}, {BINS[b + 1]:.3f}{close:<3}{sel.height:>9,}{mean_p:>9.3f}{share:>13.3f}")
    hi = t.filter(pl.col("p_below_average") >= 0.9)
    lo = t.filter(pl.col("p_below_average") <= 0.1)
    share = lambda frame, col: f"{frame[col].mean():.3f}" if frame.height else "n/a"  # noqa: E731
    lo = lo.with_columns(truly_above=~pl.col("truly_below"))
    print(f"  p >= 0.9: {hi.height:,} schools, {share(hi, 'truly_below')} truly below (issue: >= 0.90)")
    print(f"  p <= 0.1: {lo.height:,} schools, {share(lo, 'truly_above')} truly above (issue: >= 0.90)")
    inside = (t["true_rank"] >= t["rank_lower_95"]) & (t["true_rank"] <= t["rank_upper_95"])
    print(f"95% rank interval coverage of the true rank: {inside.mean():.3f} (issue: 0.93-0.97)")
    by = t.group_by("distinguishable").agg(
        pl.len().alias("schools"), pl.col("truly_below").mean().alias("share_truly_below")).sort("distinguishable")
    print("labels against the truth:")
    for r in by.iter_rows(named=True):
        print(f"  {r['distinguishable']:<12}{r['schools']:>7,} schools, {r['share_truly_below']:.3f} truly below")
    print(f"MCSE gate: {rankings.mcse_summary(table)}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", choices=("timing", "truth"), default="timing")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=700)
    ap.add_argument("--schools", type=int, default=3300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--worst-case", action="store_true")
    ap.add_argument("--warehouse", default=None)
    ap.add_argument("--partition", default="full")
    args = ap.parse_args(argv)
    if args.mode == "truth":
        return truth_check(args)
    timing(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
