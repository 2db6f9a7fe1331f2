"""Does the model fit, and does it predict next year? Posterior predictive checks of the current
posteriors, and a held-out year (thin wiring around analyses/predictive.py and analyses/holdout.py)."""

import time

import dagster as dg
import polars as pl

from schoolquality_assets.analyses import figures, holdout, predictive
from schoolquality_assets.defs.analyses import ANALYSIS_ASSET, current_keys, posteriors_of, publish_table, run_ids, sources_metadata
from schoolquality_assets.defs.common import code_version_of, rounded
from schoolquality_assets.defs.partitions import sample_partitions
from schoolquality_assets.defs.posteriors import STAN_TAG
from schoolquality_assets.defs.resources import ConvergenceResource, SamplerResource, WarehouseResource
from schoolquality_assets.engine.base import SamplingError
from schoolquality_assets.models import diagnostics, specs
from schoolquality_assets.progress import StepProgress

PPC_MODELS = ("m0", "m1", "m2", "m3")
HOLDOUT_MODELS = ("m1", "m2", "m3")


@dg.asset(
    deps=[f"posterior_{k}" for k in PPC_MODELS] + ["analysis_sample"],
    description="Posterior predictive checks of M0-M3: school proportions by size band, between-year and "
    "within-cohort dispersion, the subject profile, the extremes and the share of observations outside their 95% "
    "predictive interval, each with its posterior predictive p-value (replications draw new cohort and profile "
    "effects).",
    check_specs=[dg.AssetCheckSpec("ppc_p_values", asset="posterior_predictive_checks", partitions_def=sample_partitions,
                                   description="Every posterior predictive p-value within [0.025, 0.975] (WARN); the "
                                   "metadata names the statistics outside")],
    **(ANALYSIS_ASSET | {"code_version": code_version_of(predictive, figures)}),
)
def posterior_predictive_checks(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    wh = warehouse.get()
    partition = context.partition_key
    keys = current_keys(context, wh, PPC_MODELS)
    p = posteriors_of(wh, partition, keys)
    sample = wh.read_partition("analysis_sample", partition)
    with StepProgress(context.log.info, "posterior predictive checks", parts=len(keys)) as progress:
        parts = []
        for k in keys:
            parts.append(predictive.posterior_predictive_checks(p[k], sample, k.upper()))
            progress.part_done(k.upper())
    table = pl.concat(parts) if parts else pl.DataFrame(schema=predictive.SCHEMA)
    flags = predictive.ppc_flags(table)
    finding = predictive.ppc_finding(table)
    pngs = {"ppc_p_values": figures.ppc_p_values_png(table)} if table.height else {}
    yield publish_table(context, wh, "posterior_predictive_checks", table, pngs, run_ids(p), finding=finding,
                   **sources_metadata(p, partition))
    yield dg.AssetCheckResult(check_name="ppc_p_values", passed=not flags, severity=dg.AssetCheckSeverity.WARN,
                              metadata={"outside_0_025_0_975": dg.MetadataValue.json(flags), "statistics": table.height,
                                        "finding": finding})


@dg.asset(
    deps=["analysis_sample"],
    description="Does the model predict next year? M1-M3 fitted to every year but the latest (fixed seed, the "
    "production gate; never the published posteriors), each held-out result's posterior predictive distribution "
    "with a new cohort effect: coverage of the 50% and 90% intervals and the mean log predictive density, beside "
    "the school's earlier raw proportion and the frequentist model.",
    check_specs=[dg.AssetCheckSpec("holdout_fits_converged", asset="holdout_validation",
                                   partitions_def=sample_partitions,
                                   description="Every held-out fit passed the convergence gate (WARN)")],
    pool="stan",
    op_tags={STAN_TAG: "true"},
    **(ANALYSIS_ASSET | {"code_version": code_version_of(holdout, figures)}),
)
def holdout_validation(context: dg.AssetExecutionContext, warehouse: WarehouseResource, sampler: SamplerResource,
                       convergence: ConvergenceResource):
    wh = warehouse.get()
    partition = context.partition_key
    sample = wh.read_partition("analysis_sample", partition)
    if sample["year"].n_unique() < 2:
        raise dg.Failure(description=f"holdout_validation[{partition}]: the sample has one year "
                         f"({sample['year'].unique().to_list()}); a held-out year needs at least two")
    settings, limits = sampler.settings(partition), convergence.thresholds()
    gates: dict[str, str] = {}

    def fit(key: str, train: pl.DataFrame):
        start = time.monotonic()
        try:
            idata = specs.fit(specs.MODELS[key], train, settings, progress=context.log.debug, limits=limits)
        except SamplingError as exc:
            raise dg.Failure(description=f"holdout_validation[{partition}]: the held-out fit of {key.upper()} "
                             f"did not finish: {exc}") from exc
        # the blocking gate only: the cohort/profile blocks' reported figures (an arviz pass over
        # every cohort and profile effect) are not published for a held-out fit
        outcomes = diagnostics.gate(diagnostics.convergence_summary(idata, limits, reported=False), limits)
        gates[key.upper()] = diagnostics.describe(outcomes) if diagnostics.failed_blocking(outcomes) else "passed"
        progress.part_done(f"{key.upper()} on the earlier years ({time.monotonic() - start:.0f} s, gate {gates[key.upper()]})")
        return idata

    with StepProgress(context.log.info, "held-out year", parts=len(HOLDOUT_MODELS)) as progress:
        table = holdout.run_holdout(sample, fit, HOLDOUT_MODELS, seed=settings.seed)
    table = table.with_columns(gate=pl.col("model").replace_strict(gates, default="no fit (baseline)"))
    finding = holdout.holdout_finding(table)
    pngs = {"holdout_coverage": figures.holdout_coverage_png(table)}
    yield publish_table(context, wh, "holdout_validation", table, pngs, {}, finding=finding,
                   heldout_year=int(table["heldout_year"][0]),
                   coverage_90=dg.MetadataValue.json({r["model"]: rounded(r["coverage_90"]) for r in table.iter_rows(named=True)}))
    failed = {m: g for m, g in gates.items() if g != "passed"}
    yield dg.AssetCheckResult(check_name="holdout_fits_converged", passed=not failed,
                              severity=dg.AssetCheckSeverity.WARN, metadata={"gates": dg.MetadataValue.json(gates)})
