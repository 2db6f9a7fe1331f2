"""posterior_m0 ... posterior_m3: one partitioned asset per model, gated by convergence checks."""

import time

import dagster as dg

from schoolquality_assets import diagnostics, figures, models
from schoolquality_assets.assets.common import OWNER, image_md
from schoolquality_assets.assets.ingest import analysis_sample
from schoolquality_assets.partitions import sample_partitions
from schoolquality_assets.resources import ConvergenceResource, SamplerResource, WarehouseResource


def check_results(outcomes: list[diagnostics.CheckOutcome], limits: ConvergenceResource,
                  asset_key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    thresholds = dg.MetadataValue.json(limits.model_dump())
    return [
        dg.AssetCheckResult(
            asset_key=asset_key, check_name=o.name, passed=o.passed,
            severity=dg.AssetCheckSeverity.ERROR if o.blocking else dg.AssetCheckSeverity.WARN,
            metadata=o.metadata | {"all_thresholds": thresholds},
        )
        for o in outcomes
    ]


def build_posterior_asset(spec: models.ModelSpec) -> dg.AssetsDefinition:
    name = f"posterior_{spec.key}"
    key = dg.AssetKey(name)

    @dg.asset(
        name=name,
        deps=[analysis_sample],
        partitions_def=sample_partitions,
        group_name="models",
        owners=[OWNER],
        kinds={"stan", "netcdf"},
        code_version=models.stan_code_version(spec),
        description=f"{spec.key.upper()}: {spec.description}. Posterior draws (arviz NetCDF) from stan/{spec.stan_file}.",
        check_specs=[dg.AssetCheckSpec(c, asset=key, description=d, blocking=blocking)
                     for c, (d, blocking) in diagnostics.GATE.items()],
        pool="stan",
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
        context.log.info(f"fitting {spec.key.upper()} on {sample.height} observations ({partition}) with {settings}")
        start = time.monotonic()
        idata = models.fit(spec, sample, settings, progress=context.log.info)
        wall = time.monotonic() - start
        summary = diagnostics.convergence_summary(idata)
        idata.attrs.update({f"diag_{k}": v for k, v in summary.items() if v is not None}
                           | {"partition": partition, "wall_seconds": wall, "run_id": context.run_id})
        path = wh.posterior_path(spec.key, partition)
        models.save_posterior(idata, path)
        trace = figures.trace_png(idata, spec.sd_names)
        yield dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "sampler": dg.MetadataValue.json(settings.as_dict()),
                "engine": idata.attrs["engine"],
                "wall_seconds": round(wall, 1),
                "compile_seconds": round(float(idata.attrs["compile_seconds"]), 1),
                "observations": sample.height,
                "schools": sample["school_id"].n_unique(),
                "max_rhat": summary["max_rhat"],
                "min_ess_bulk_sd": summary["min_ess_bulk_sd"],
                "min_ess_tail_sd": summary["min_ess_tail_sd"],
                "divergences": summary["divergences"],
                "min_bfmi": summary["min_bfmi"],
                "max_treedepth_hits": summary["max_treedepth_hits"],
                "trace_plot": image_md(trace, f"{name} SD hyperparameters"),
            },
            check_results=check_results(diagnostics.gate(summary, convergence.thresholds()), convergence, key),
        )

    return _posterior


posterior_assets = [build_posterior_asset(spec) for spec in models.MODELS.values()]
