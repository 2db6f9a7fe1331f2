"""posterior_m0 ... posterior_m3: one partitioned asset per model, gated by convergence checks."""

import time

import dagster as dg

from schoolquality_assets.analyses import figures
from schoolquality_assets.defs.common import OWNER, image_md, rounded
from schoolquality_assets.defs.ingest import analysis_sample
from schoolquality_assets.defs.partitions import sample_partitions
from schoolquality_assets.defs.resources import (
    ConvergenceResource,
    SamplerResource,
    WarehouseResource,
)
from schoolquality_assets.engine.base import SamplingError
from schoolquality_assets.models import diagnostics, specs

STAN_TAG = "schoolquality/stan"  # the executor runs one step with this tag at a time


def check_results(outcomes: list[diagnostics.CheckOutcome], limits: ConvergenceResource,
                  asset_key: dg.AssetKey, **context) -> list[dg.AssetCheckResult]:
    """One result per gate check, with its figures, the thresholds and ``context`` (which draws
    file was judged)."""
    thresholds = dg.MetadataValue.json(limits.model_dump())
    return [
        dg.AssetCheckResult(
            asset_key=asset_key, check_name=o.name, passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            metadata={k: rounded(v) for k, v in o.metadata.items()} | context | {"all_thresholds": thresholds},
        )
        for o in outcomes
    ]


def fits_in_run(context: dg.AssetExecutionContext) -> tuple[specs.ModelSpec, ...]:
    """The models this run fits (its posterior steps): the first one compiles all their programs
    that the PyStan engine samples (none under the default nutpie engine)."""
    steps = set(context.run.step_keys_to_execute or [n.name for n in context.job_def.nodes])
    return tuple(s for s in specs.MODELS.values() if f"posterior_{s.key}" in steps)


def build_posterior_asset(spec: specs.ModelSpec) -> dg.AssetsDefinition:
    name = f"posterior_{spec.key}"
    key = dg.AssetKey(name)

    @dg.asset(
        name=name,
        deps=[analysis_sample],
        partitions_def=sample_partitions,
        group_name="models",
        owners=[OWNER],
        kinds={"stan", "netcdf"},
        code_version=specs.stan_code_version(spec),
        description=f"{spec.key.upper()}: {spec.description}. Posterior draws (arviz NetCDF) from stan/{spec.stan_file}.",
        check_specs=[dg.AssetCheckSpec(c, asset=key, description=d, blocking=blocking, partitions_def=sample_partitions)
                     for c, (d, blocking) in diagnostics.GATE.items()],
        pool="stan",
        op_tags={STAN_TAG: "true"},
    )
    def _posterior(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        sampler: SamplerResource,
        convergence: ConvergenceResource,
    ):
        wh = warehouse.get()
        partition = context.partition_key
        sample = wh.read_partition("analysis_sample", partition)
        settings = sampler.settings(partition)
        limits = convergence.thresholds()
        previous = wh.posterior_path(spec.key, partition)
        prior_sds = specs.previous_sds(previous) if sampler.seed_from_previous and previous.exists() else None
        context.log.info(f"fitting {spec.key.upper()} on {sample.height} observations ({partition}) with {settings}"
                         + (f"; scales seeded from the previous posterior {prior_sds}" if prior_sds else ""))
        start = time.monotonic()
        try:
            idata = specs.fit(spec, sample, settings, progress=context.log.info, limits=limits, prior_sds=prior_sds,
                               also_compile=fits_in_run(context))
        except SamplingError as exc:
            raise dg.Failure(description=f"{name}[{partition}] did not produce a posterior: {exc}. Nothing was written; "
                             "every published file is unchanged. Give the sampler more time "
                             "(SCHOOLQUALITY_BUDGET_SECONDS) or check the data.") from exc
        wall = time.monotonic() - start
        summary = diagnostics.convergence_summary(idata, limits)
        outcomes = diagnostics.gate(summary, limits)
        failed = diagnostics.failed_blocking(outcomes)
        idata.attrs.update(diagnostics.summary_attrs(summary, limits)
                           | {"partition": partition, "wall_seconds": wall, "run_id": context.run.run_id,
                              "gate_passed": int(not failed), "gate_failures": diagnostics.describe(outcomes)})
        path = wh.posterior_path(spec.key, partition)
        failed_path = wh.failed_posterior_path(spec.key, partition)
        if failed:
            specs.save_posterior(idata, failed_path)
            # the checks say what failed, with their numbers, before the step fails
            yield from check_results(outcomes, convergence, key, judged="failed fit (not published)",
                                     failed_draws=dg.MetadataValue.path(str(failed_path)), run_id=context.run.run_id)
            raise dg.Failure(
                description=f"{name}[{partition}] failed its convergence gate: {diagnostics.describe(outcomes)}. "
                f"Sampling ended: {idata.attrs.get('stop_status', 'fixed length')}. The failed draws are in {failed_path} "
                f"for diagnosis; {path} (the last posterior that passed) is unchanged, and every downstream asset "
                "refuses to build until a fit passes. To converge: give the sampler more time "
                "(SCHOOLQUALITY_BUDGET_SECONDS / SCHOOLQUALITY_MAX_DRAWS) or a longer warmup (SCHOOLQUALITY_WARMUP).",
                metadata={"failed_draws": dg.MetadataValue.path(str(failed_path)), "wall_seconds": round(wall, 1),
                          **{o.name: o.passed for o in outcomes}},
            )
        specs.save_posterior(idata, path)
        failed_path.unlink(missing_ok=True)
        trace = figures.trace_png(idata, spec.sd_names, spec.key.upper())
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "draws_per_chain": int(idata.posterior.sizes["draw"]),
                "stop_status": str(idata.attrs.get("stop_status", "fixed length")),
                "sampler": dg.MetadataValue.json(settings.as_dict()),
                "engine": idata.attrs["engine"],
                "wall_seconds": round(wall, 1),
                "compile_seconds": round(float(idata.attrs["compile_seconds"]), 1),
                "observations": sample.height,
                "schools": sample["school_id"].n_unique(),
                "max_rhat": rounded(summary["max_rhat"]),
                "min_ess_bulk": rounded(summary["min_ess_bulk"]),
                "min_ess_tail": rounded(summary["min_ess_tail"]),
                "min_ess_bulk_sd": rounded(summary["min_ess_bulk_sd"]),
                "min_ess_tail_sd": rounded(summary["min_ess_tail_sd"]),
                "divergences": summary["divergences"],
                "min_bfmi": rounded(summary["min_bfmi"]),
                "max_treedepth_hits": summary["max_treedepth_hits"],
                figures.label(f"trace_{spec.key}"): image_md(trace, figures.label(f"trace_{spec.key}")),
            },
            check_results=check_results(outcomes, convergence, key, judged="published posterior",
                                        posterior=dg.MetadataValue.path(str(path)), run_id=context.run.run_id),
        )

    return _posterior


posterior_assets = [build_posterior_asset(spec) for spec in specs.MODELS.values()]
