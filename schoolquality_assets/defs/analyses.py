"""The page's tables and figures as partitioned assets (thin wiring around analyses, loo, figures)."""

import dagster as dg
import polars as pl

from schoolquality_assets.analyses import figures, loo, report, tables
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
from schoolquality_assets.models import diagnostics, specs
from schoolquality_assets.progress import StepProgress
from schoolquality_assets.warehouse import Warehouse, atomic_path

# tables.py and figures.py compute every table and figure; diagnostics and loo two of them
ANALYSIS_ASSET = dict(partitions_def=sample_partitions, group_name="analyses", owners=[OWNER], kinds={"duckdb", "polars"},
                      code_version=code_version_of(tables, figures, diagnostics, loo))


def posteriors_of(wh: Warehouse, partition: str, keys) -> dict:
    return {k: load_posterior(wh, k, partition) for k in keys}


def current_keys(context, wh: Warehouse, keys) -> list[str]:
    """Of ``keys``, the models with a current posterior on the partition (a passed one, and the
    latest fit did not fail); a table comparing models leaves the others out, and the log says why."""
    partition = context.partition_key
    failed = report.failed_fits(wh, partition)
    for k in keys:
        if k in failed:
            context.log.warning(f"{k.upper()} left out: its latest fit on {partition} failed its convergence gate "
                                f"(failed draws: {failed[k]})")
    current = report.current_fits(wh, partition)
    return [k for k in keys if k in current]


def run_ids(p: dict) -> dict[str, str]:
    """Model key -> run that fitted the posterior (recorded with each table: see report.section_status)."""
    return {k: str(v.attrs.get("run_id", "")) for k, v in p.items()}


def sources_metadata(p: dict, partition: str) -> dict:
    """Which posteriors a table came from: model, partition, the run that fitted it, draws."""
    return {"posteriors": dg.MetadataValue.json({
        k.upper(): {"partition": partition, "run_id": str(v.attrs.get("run_id", "")),
                    "draws": int(v.posterior.sizes["chain"] * v.posterior.sizes["draw"]),
                    "stop_status": str(v.attrs.get("stop_status", ""))} for k, v in p.items()})}


def publish_table(context, wh: Warehouse, table: str, frame: pl.DataFrame, pngs: dict[str, bytes], sources: dict[str, str],
             **extra) -> dg.MaterializeResult:
    """Write the figures (by name), then the table's partition rows with the posteriors they came
    from (``sources``: model -> run id); return metadata the UI shows."""
    partition = context.partition_key
    meta = table_metadata(frame) | {"table": dg.MetadataValue.md(markdown(frame.head(30)))}
    for name, png in pngs.items():
        with atomic_path(wh.figure_path(partition, name)) as tmp:
            tmp.write_bytes(png)
        meta[figures.label(name)] = image_md(png, figures.label(name))
    wh.write_partition(table, partition, frame, sources=sources)
    return dg.MaterializeResult(metadata=meta | extra)


@dg.asset(deps=["posterior_m0", "posterior_m1", "analysis_sample"], description="M0 vs M1 shrinkage per school and by sample-size band.", **ANALYSIS_ASSET)
def shrinkage(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    p = posteriors_of(wh, context.partition_key, ("m0", "m1"))
    table = tables.shrinkage(wh.read_partition("analysis_sample", context.partition_key), p["m0"], p["m1"])
    return publish_table(context, wh, "shrinkage", table,
                    {"shrinkage_arrows": figures.shrinkage_arrows_png(table),
                     "shrinkage_vs_n": figures.shrinkage_vs_n_png(table)}, run_ids(p),
                    definition=tables.SHRINKAGE_DEFINITION, **sources_metadata(p, context.partition_key))


@dg.asset(deps=["shrinkage"], description="Shrinkage of M0 and M1 by sample-size band (mean, 90th percentile, "
          "maximum; and over schools with the modal number of observations), from the shrinkage table.", **ANALYSIS_ASSET)
def shrinkage_by_band(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    partition = context.partition_key
    sources = wh.read_sources("shrinkage", partition)
    if sources is None:
        raise dg.Failure(description=f"shrinkage[{partition}] has not been built: materialize it first")
    by_band = tables.shrinkage_by_band(wh.read_partition("shrinkage", partition))
    return publish_table(context, wh, "shrinkage_by_band", by_band, {}, sources, definition=tables.SHRINKAGE_DEFINITION)


@dg.asset(deps=["posterior_m2", "posterior_m3"], description="Variance decomposition per posterior draw (full with pi^2/3, and latent), M3 and M2.", **ANALYSIS_ASSET)
def variance_components(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    p = posteriors_of(wh, context.partition_key, ("m2", "m3"))
    table = pl.concat([tables.variance_components(p[k]).with_columns(model=pl.lit(k.upper())) for k in ("m3", "m2")])
    m3 = table.filter(pl.col("model") == "M3")
    return publish_table(context, wh, "variance_components", table, {"variance_shares": figures.variance_shares_png(table)},
                    run_ids(p), page_tables=dg.MetadataValue.md(tables.variance_markdown(m3)),
                    **sources_metadata(p, context.partition_key))


@dg.asset(deps=["posterior_m1", "posterior_m2", "posterior_m3"],
          description="School SD (mean, 95% interval) under M1, M2, M3 (those with a posterior on the partition).",
          **ANALYSIS_ASSET)
def school_sd_by_model(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    keys = current_keys(context, wh, ("m1", "m2", "m3"))
    p = posteriors_of(wh, context.partition_key, keys)
    table = tables.school_sd_by_model(p)
    return publish_table(context, wh, "school_sd_by_model", table, {"school_sd_by_model": figures.school_sd_png(table)},
                    run_ids(p), **sources_metadata(p, context.partition_key))


@dg.asset(deps=["posterior_m3", "eligible_schools"], description="M3 school effects, ranked, with 95% intervals (caterpillar).", **ANALYSIS_ASSET)
def school_random_effects(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    p = posteriors_of(wh, context.partition_key, ("m3",))
    table = tables.school_random_effects(p["m3"], wh.read_table("eligible_schools"))
    return publish_table(context, wh, "school_random_effects", table, {"school_effects_caterpillar": figures.caterpillar_png(table)},
                    run_ids(p), **sources_metadata(p, context.partition_key))


@dg.asset(deps=["posterior_m1", "posterior_m2", "posterior_m3", "analysis_sample"],
          description="PSIS-LOO (per observation) and integrated leave-one-cohort-out comparison of M1-M3 (M0 excluded).",
          check_specs=[dg.AssetCheckSpec("pareto_k_share", asset="loo_comparison", partitions_def=sample_partitions,
                                         description="No observation-level Pareto k above arviz's sample-size threshold, as the loo "
                                         "package judges PSIS (WARN); the finding says how much of each ELPD "
                                         "difference the units above it carry")],
          **ANALYSIS_ASSET)
def loo_comparison(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    wh = warehouse.get()
    p = posteriors_of(wh, context.partition_key, ("m1", "m2", "m3"))
    sample = wh.read_partition("analysis_sample", context.partition_key).sort("school_id", "year", "subject")
    with StepProgress(context.log.info, "LOO", parts=2 * len(p)) as progress, loo.loo_workers() as pool:
        context.log.info("PSIS and cohort integrals " + ("in worker processes" if pool else "in this process"))
        obs = loo.loo_table(p, on_done=progress.part_done, pool=pool)
        cohort = loo.cohort_loo_table(p, groups=loo.cohort_groups(sample), on_done=progress.part_done, pool=pool)
    table = loo.mark_unconverged_inputs(loo.comparison(obs, cohort, p | {"m0": None}), p)
    result = publish_table(context, wh, "loo_comparison", table, {}, run_ids(p), finding=loo.loo_finding(table),
                      **sources_metadata(p, context.partition_key))
    ranked = obs.filter(pl.col("rank").is_not_null())
    high = int(ranked["n_k_above_threshold"].max())
    yield result
    yield dg.AssetCheckResult(
        check_name="pareto_k_share", passed=high == 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"max_units_k_above_threshold": high,
                  "max_share_k_above_threshold": rounded(float(ranked["share_k_above_threshold"].max())),
                  "k_threshold": rounded(float(ranked["k_threshold"].max())), "finding": loo.loo_finding(table)},
    )


@dg.asset(deps=["posterior_m0", "posterior_m1", "posterior_m2", "posterior_m3"],
          description="Convergence table and trace plots of every model with a posterior on the partition.", **ANALYSIS_ASSET)
def mcmc_diagnostics(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     convergence: ConvergenceResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    keys = current_keys(context, wh, specs.MODELS)
    p = posteriors_of(wh, context.partition_key, keys)
    limits = convergence.thresholds()
    with StepProgress(context.log.info, "MCMC diagnostics", parts=len(keys)) as progress:
        tables, traces = [], {}
        for k in keys:  # the summary stored with each fit, unless the thresholds or the code changed since
            tables.append(diagnostics.mcmc_diagnostics({k: p[k]}, limits))
            traces[f"trace_{k}"] = figures.trace_png(p[k], specs.MODELS[k].sd_names, k.upper())
            progress.part_done(k.upper())
    table = pl.concat(tables, how="diagonal_relaxed")
    return publish_table(context, wh, "mcmc_diagnostics", table, traces, run_ids(p), **sources_metadata(p, context.partition_key))


@dg.asset(deps=["analysis_sample", "variance_components", "posterior_m2"],
          description="The page's logit-normal mixed model (statsmodels) against the Bayesian fit, measured in this run.", **ANALYSIS_ASSET)
def frequentist_comparison(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    partition = context.partition_key
    sample = wh.read_partition("analysis_sample", partition)
    sources = wh.read_sources("variance_components", partition)
    if sources is None:
        raise dg.Failure(description=f"variance_components[{partition}] has not been built: materialize it first")
    components = wh.read_partition("variance_components", partition).filter(pl.col("model") == "M3")
    m2 = load_posterior(wh, "m2", partition)
    if sources.get("m2") != str(m2.attrs.get("run_id", "")):
        raise dg.Failure(description=f"variance_components[{partition}] was built from another M2 fit "
                         f"(run {sources.get('m2')}) than the current posterior_m2 (run {m2.attrs.get('run_id')}): "
                         "materialize variance_components first")
    table = tables.frequentist_comparison(
        sample, components, bayes_seconds=float(m2.attrs.get("sample_seconds", 0.0)),
        bayes_sample=f"{sample['school_id'].n_unique()} schools, {sample.height} observations ({partition})",
    )
    return publish_table(context, wh, "frequentist_comparison", table, {}, sources)
