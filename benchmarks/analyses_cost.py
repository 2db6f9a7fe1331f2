"""The cost of the two heaviest analyses on stored posteriors (not a test: it prints figures).

    .venv/bin/python benchmarks/analyses_cost.py [--warehouse PATH] [--partition full] [--only loo,ppc]
        [--out TABLE_PREFIX]

Reads the posteriors M0-M3 and the analysis sample a job left in the warehouse (``--warehouse``,
default $SCHOOLQUALITY_WAREHOUSE or ./warehouse) and times, in this process, what the assets
``loo_comparison`` (M1-M3 per observation, then per cohort, on worker processes as the asset
runs them) and ``posterior_predictive_checks`` (M0-M3) compute, part by part. ``--out`` writes
each table to TABLE_PREFIX_loo.parquet / TABLE_PREFIX_ppc.parquet, so that two checkouts can be
compared number for number: run it from each (``PYTHONPATH=<checkout>``), one after the other,
with nothing else running.
"""

from __future__ import annotations

import argparse
import time

import polars as pl

from schoolquality_assets.analyses import loo, predictive
from schoolquality_assets.models.specs import load_posterior
from schoolquality_assets.warehouse import Warehouse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warehouse", default=None)
    ap.add_argument("--partition", default="full")
    ap.add_argument("--only", default="loo,ppc")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    wh = Warehouse.from_env(args.warehouse)
    sample = wh.read_partition("analysis_sample", args.partition).sort("school_id", "year", "subject")
    posteriors = {k: load_posterior(wh.posterior_path(k, args.partition)) for k in ("m0", "m1", "m2", "m3")}
    print(f"{wh.root}, {args.partition}: {sample.height:,} observations, {sample['school_id'].n_unique():,} schools")
    if "loo" in args.only:
        start, parts = time.monotonic(), []
        fits = {k: posteriors[k] for k in ("m1", "m2", "m3")}
        with loo.loo_workers() as pool:
            obs = loo.loo_table(fits, on_done=lambda label: parts.append((label, time.monotonic())), pool=pool)
            cohort = loo.cohort_loo_table(fits, groups=loo.cohort_groups(sample), pool=pool,
                                          on_done=lambda label: parts.append((label, time.monotonic())))
        _report("loo_comparison", start, parts)
        if args.out:
            pl.concat([obs, cohort], how="diagonal_relaxed").write_parquet(f"{args.out}_loo.parquet")
    if "ppc" in args.only:
        start, parts, tables = time.monotonic(), [], []
        for k, idata in posteriors.items():
            tables.append(predictive.posterior_predictive_checks(idata, sample, k.upper()))
            parts.append((k.upper(), time.monotonic()))
        _report("posterior_predictive_checks", start, parts)
        if args.out:
            pl.concat(tables).write_parquet(f"{args.out}_ppc.parquet")


def _report(what: str, start: float, parts: list[tuple[str, float]]) -> None:
    steps, last = [], start
    for label, at in parts:
        steps.append(f"{label} {at - last:.1f} s")
        last = at
    print(f"{what}: {last - start:.1f} s ({'; '.join(steps)})", flush=True)


if __name__ == "__main__":
    main()
