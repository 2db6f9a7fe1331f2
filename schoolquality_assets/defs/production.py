"""Stage 1 production output: g3_school_quality.parquet from the M2 posterior."""


import dataclasses
import importlib.metadata
import json
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow.parquet as pq

from schoolquality_assets.analyses import figures, rankings, tables
from schoolquality_assets.defs.common import (
    OWNER,
    code_version_of,
    image_md,
    load_posterior,
    markdown,
    rounded,
    table_metadata,
)
from schoolquality_assets.defs.partitions import sample_partitions
from schoolquality_assets.defs.resources import ConvergenceResource, WarehouseResource
from schoolquality_assets.ingest import landing
from schoolquality_assets.models import diagnostics, specs
from schoolquality_assets.partitions import FULL
from schoolquality_assets.progress import StepProgress
from schoolquality_assets.warehouse import (
    CHECKOUT,
    MissingTable,
    Warehouse,
    atomic_path,
)


def school_quality_table(idata, eligible: pl.DataFrame, vintage: int, names: pl.DataFrame | None = None) -> pl.DataFrame:
    """Posterior mean, SD and 95% interval of each school's random intercept (logit scale), then
    where it stands among the schools of the fit (rankings.school_rankings: probability below the
    average school, rank with its 95% interval, bottom/top 10%, with Monte Carlo errors). The
    school's name, board and language (from ``names``, the schools table) follow school_id."""
    frame = tables.school_effect_summary(idata).rename({
        "mean": "g3_school_re", "sd": "g3_re_sd", "lower": "g3_re_lower_95", "upper": "g3_re_upper_95"})
    info = eligible.select("school_id", "n_obs", "mean_n_trials")
    frame = frame.join(info, on="school_id", how="left").with_columns(data_vintage=pl.lit(vintage, pl.Int32))
    frame = frame.join(rankings.school_rankings(idata), on="school_id", how="left").sort("school_id")
    return landing.with_school_names(frame, names)


def school_names(wh: Warehouse, log) -> pl.DataFrame | None:
    """The schools table (names, boards, language), or None, with a warning, when it was never built."""
    try:
        return wh.read_table("schools")
    except MissingTable:
        log.warning("no schools table in the warehouse: school_name, board_id, board_name and language are null "
                    "(materialize schools, e.g. with '*g3_school_quality', to fill them)")
        return None


def ranking_mcse_limit(min_ess: float) -> float:
    """The largest MCSE a published probability may have: that of a probability of 0.5 estimated
    from the ESS the convergence gate requires, 0.5 / sqrt(min_ess) (0.025 at ESS 400)."""
    return 0.5 / min_ess ** 0.5


def ranking_rank_mcse_limit(min_ess: float) -> float:
    """The largest MCSE a published rank quantile may have, as a share of its school's 95% rank
    interval width: 5 / sqrt(min_ess) (0.25 at ESS 400; rankings.mcse_summary says why). Like the
    probabilities' limit it scales as 1 / sqrt(ESS), as the rank MCSEs themselves do."""
    return 5.0 / min_ess ** 0.5


def publication_problems(table: pl.DataFrame, expected: set[str]) -> dict[str, int]:
    """What stops ``table`` from being published: counts of missing, extra and duplicate schools,
    null cells (names aside: data may have none) and non-positive SDs (all zero when it may be written)."""
    schools = set(table["school_id"])
    return {
        "missing_schools": len(expected - schools),
        "extra_schools": len(schools - expected),
        "duplicate_rows": table.height - table["school_id"].n_unique(),
        "null_cells": int(sum(table.drop(landing.SCHOOL_COLUMNS, strict=False).null_count().row(0))),
        "non_positive_sd": table.filter(pl.col("g3_re_sd") <= 0).height,
    }


def _json(values: dict) -> str:
    """JSON of NetCDF attributes (NumPy scalars come back from the file)."""
    return json.dumps(values, default=lambda v: v.item() if hasattr(v, "item") else str(v))


def code_version() -> str:
    """The git commit of the checkout the code runs from; for an installed package (no checkout),
    its version and a hash of its source files and Stan programs."""
    try:
        if (CHECKOUT / "pyproject.toml").exists():
            return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                  cwd=CHECKOUT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    package = Path(specs.__file__).parents[1]
    sources = sorted([*package.rglob("*.py"), *specs.STAN_DIR.glob("*.stan")])
    return f"schoolquality {importlib.metadata.version('schoolquality')} (source {code_version_of(*sources)})"


def _archive_previous(wh: Warehouse, target) -> str | None:
    """Keep the previous vintage beside the latest: g3_school_quality_<vintage>_<run>.parquet."""
    if not target.exists():
        return None
    meta = pq.read_schema(target).metadata or {}
    vintage = meta.get(b"data_vintage", b"unknown").decode()
    run = meta.get(b"run_id", b"unknown").decode()[:8]
    archive = wh.archive_path(vintage, run)
    archive.parent.mkdir(parents=True, exist_ok=True)
    if not archive.exists():
        shutil.copy2(target, archive)
    return str(archive)


# Published once a year: annual_rerun_schedule starts production_job on 15 September, 06:00 Toronto
# time, and the file is due by 1 October, 06:00 (two weeks to rerun a failed fit). Past the deadline
# without a materialization since 15 September, the UI shows g3_school_quality failing its freshness
# policy until it is materialized. Dagster judges freshness per asset, not per partition: the
# subsample dry run counts as a materialization too.
ANNUAL_PUBLICATION = dg.FreshnessPolicy.cron(deadline_cron="0 6 1 10 *", lower_bound_delta=timedelta(days=16),
                                             timezone="America/Toronto")


@dg.asset(
    deps=["posterior_m2", "eligible_schools", "cleaned_observations", "schools"],
    partitions_def=sample_partitions,
    group_name="production",
    owners=[OWNER],
    kinds={"parquet", "polars"},
    code_version=code_version_of(tables, diagnostics, rankings, Path(__file__)),
    description="Stage 1 production output: one row per eligible school with the M2 posterior mean (g3_school_re) "
    "and SD (g3_re_sd) of its school random intercept. 'full' writes outputs/g3_school_quality.parquet; "
    "'subsample' is a dry run written to outputs/dry_run/.",
    freshness_policy=ANNUAL_PUBLICATION,
    check_specs=[dg.AssetCheckSpec("matches_eligible_schools", asset="g3_school_quality", blocking=True,
                                   partitions_def=sample_partitions,
                                   description="One row per eligible school in the sample, no nulls, g3_re_sd > 0"),
                 dg.AssetCheckSpec("ranking_mcse", asset="g3_school_quality", blocking=True,
                                   partitions_def=sample_partitions,
                                   description="Monte Carlo error of every published probability (p_below_average, "
                                   "p_bottom_10, p_top_10) <= 0.5 / sqrt(min_ess), and of every rank quantile "
                                   "(rank_median, rank_lower_95, rank_upper_95) <= 5 / sqrt(min_ess) of the school's "
                                   "95% rank interval width (an MCSE of 1 place always passes); all finite")],
)
def g3_school_quality(context: dg.AssetExecutionContext, warehouse: WarehouseResource, convergence: ConvergenceResource):
    wh = warehouse.get()
    partition = context.partition_key
    limits = convergence.thresholds()
    with StepProgress(context.log.info, "g3_school_quality", parts=2) as progress:
        idata = load_posterior(wh, "m2", partition)
        progress.part_done("posterior loaded")
        # the posterior asset judged this fit; judge again only when the thresholds or the code changed since
        stored = diagnostics.stored_summary(idata, limits)
        summary = stored or diagnostics.convergence_summary(idata, limits)
        progress.part_done("convergence gate: the one stored with the fit (same thresholds and code)"
                           if stored is not None else "convergence gate computed")
        rhat = summary["max_rhat"]
        outcomes = diagnostics.gate(summary, limits)
        if diagnostics.failed_blocking(outcomes):
            raise dg.Failure(
                f"posterior_m2[{partition}] fails the convergence gate ({diagnostics.describe(outcomes)}): "
                "g3_school_quality not written; the previous file is unchanged"
            )
    eligible = wh.read_table("eligible_schools")
    vintage = int(wh.read_table("cleaned_observations")["year"].max())
    table = school_quality_table(idata, eligible, vintage, school_names(wh, context.log))
    expected = set(eligible["school_id"]) if partition == FULL else set(map(str, idata.posterior["school"].values))
    problems = publication_problems(table, expected)
    target = wh.output_path(partition)
    check = dg.AssetCheckResult(check_name="matches_eligible_schools", passed=not any(problems.values()),
                                metadata=problems | {"rows": table.height, "expected": len(expected),
                                                     "posterior_run_id": str(idata.attrs.get("run_id", ""))})
    mcse = rankings.mcse_summary(table, limit=ranking_mcse_limit(convergence.min_ess),
                                 rank_limit=ranking_rank_mcse_limit(convergence.min_ess))
    mcse_check = dg.AssetCheckResult(check_name="ranking_mcse", passed=mcse["passed"],
                                     metadata={k: rounded(v) for k, v in mcse.items() if v is not None})
    if not (check.passed and mcse_check.passed):
        # nothing is published, so no materialization is recorded: only the checks
        yield check
        yield mcse_check
        raise dg.Failure(description=f"g3_school_quality[{partition}] failed its checks ({problems}; ranking MCSE "
                         f"{mcse}); {target} was not written and is unchanged")
    file_meta = {
        "model": "M2 " + specs.MODELS["m2"].description, "stan_file": idata.attrs["stan_file"],
        "stan_code_version": specs.stan_code_version(specs.MODELS["m2"]),
        "sampler": _json({k[8:]: v for k, v in idata.attrs.items() if k.startswith("sampler_")}),
        "diagnostics": _json({k: v for k, v in summary.items() if v is not None}),
        "code_version": code_version(), "run_id": context.run.run_id, "posterior_run_id": str(idata.attrs.get("run_id", "")),
        "data_vintage": str(vintage), "partition": partition, "scale": "logit",
        "gate_thresholds": _json(dataclasses.asdict(limits) | {
            "ranking_mcse_limit": ranking_mcse_limit(convergence.min_ess),
            "ranking_rank_mcse_ratio_limit": ranking_rank_mcse_limit(convergence.min_ess)}),
    }
    arrow = table.to_arrow()
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **file_meta})
    archived = _archive_previous(wh, target) if partition == FULL else None
    with atomic_path(target) as tmp:
        pq.write_table(arrow, tmp)
    yield dg.MaterializeResult(
        metadata=table_metadata(table) | {
            "path": dg.MetadataValue.path(str(target)), "data_vintage": vintage,
            "archived_previous": archived or "none", "posterior_max_rhat": rhat,
            "posterior_run_id": str(idata.attrs.get("run_id", "")),
            "distinguishable_from_average": dg.MetadataValue.json(rankings.distinguishable_counts(table)),
            "head": dg.MetadataValue.md(markdown(table.head(10))),
        },
        check_results=[check, mcse_check],
    )


RANKING_COLUMNS = ["school_id", *landing.SCHOOL_COLUMNS, "g3_school_re", "g3_re_sd", "g3_re_lower_95", "g3_re_upper_95", "mean_n_trials",
                   *rankings.COLUMNS[1:]]


@dg.asset(
    deps=["g3_school_quality", "eligible_schools"],
    partitions_def=sample_partitions,
    group_name="production",
    owners=[OWNER],
    kinds={"duckdb", "polars"},
    code_version=code_version_of(rankings, figures, Path(__file__)),
    description="Where each school stands, from the partition's g3_school_quality file (the same gated M2 fit): "
    "posterior mean and SD, probability below the average school, rank (1 = lowest) with its 95% interval, "
    "bottom/top 10% probabilities with Monte Carlo errors, and below / above / cannot tell at 95%; in DuckDB beside "
    "eligible_schools, with the league-table figure (ranks with 95% intervals, coloured by size) for the report.",
)
def school_rankings(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    partition = context.partition_key
    path = wh.output_path(partition)
    if not path.exists():
        raise dg.Failure(description=f"no g3_school_quality file on {partition} ({path}): materialize it first")
    quality = pl.read_parquet(path)
    meta = pq.read_schema(path).metadata or {}
    if not set(landing.SCHOOL_COLUMNS) <= set(quality.columns):  # a file written before names were kept
        quality = landing.with_school_names(quality, school_names(wh, context.log))
    missing = [c for c in RANKING_COLUMNS if c not in quality.columns]
    if missing:   # a file written by an earlier version
        raise dg.Failure(description=f"{path} has no column(s) {', '.join(missing)}: it was written by an earlier "
                         f"version; materialize g3_school_quality[{partition}] again (e.g. --select '*school_rankings')")
    table = quality.select(RANKING_COLUMNS)
    eligible = wh.read_table("eligible_schools")
    png = figures.league_table_png(table, eligible)
    with atomic_path(wh.figure_path(partition, "school_ranks_league_table")) as tmp:
        tmp.write_bytes(png)
    wh.write_partition("school_rankings", partition, table, sources={"m2": meta.get(b"posterior_run_id", b"").decode()})
    by_band = rankings.distinguishable_by_band(table, eligible)
    return dg.MaterializeResult(metadata=table_metadata(table) | {
        "distinguishable_from_average": dg.MetadataValue.json(rankings.distinguishable_counts(table)),
        "by_size_band": dg.MetadataValue.md(markdown(by_band)),
        "finding": rankings.rankings_finding(by_band),
        figures.label("school_ranks_league_table"): image_md(png, figures.label("school_ranks_league_table")),
    })
