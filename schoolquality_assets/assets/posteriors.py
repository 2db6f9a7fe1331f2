"""posterior_m0 ... posterior_m3: one partitioned asset per model, gated by convergence checks."""


import time

import dagster as dg

from schoolquality_assets import analyses, models
from schoolquality_assets.assets.common import image_md, sample_partitions
from schoolquality_assets.assets.ingest import OWNER, analysis_sample
from schoolquality_assets.resources import ConvergenceResource, SamplerResource, WarehouseResource
from schoolquality_assets.warehouse import Warehouse

CHECKS = {
    "rhat": "R-hat <= threshold for hyperparameters, fixed effects and school effects",
    "no_divergences": "No more divergent transitions than allowed (default 0)",
    "ess": "Bulk and tail ESS >= threshold for the SD hyperparameters",
    "bfmi": "E-BFMI >= threshold in every chain",
}
BLOCKING = {"rhat", "no_divergences"}


def posterior_path(warehouse: Warehouse, key: str, partition: str):
    return warehouse.posteriors_dir / partition / f"posterior_{key}.nc"


def convergence_checks(summary: dict, limits: ConvergenceResource, asset_key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    thresholds = limits.model_dump()
    figures = {
        "rhat": (summary["max_rhat"] <= limits.max_rhat, {
            "max_rhat": summary["max_rhat"], "threshold": limits.max_rhat,
            "cohort_max_rhat": summary["r_cohort_max_rhat"],
            "cohort_share_rhat_gt_1_01": summary["r_cohort_share_rhat_gt_1_01"],
            "profile_max_rhat": summary["r_profile_max_rhat"],
            "profile_share_rhat_gt_1_01": summary["r_profile_share_rhat_gt_1_01"],
        }),
        "no_divergences": (summary["divergences"] <= limits.max_divergences, {
            "divergences": summary["divergences"], "threshold": limits.max_divergences,
        }),
        "ess": (min(summary["min_ess_bulk_sd"], summary["min_ess_tail_sd"]) >= limits.min_ess, {
            "min_ess_bulk": summary["min_ess_bulk_sd"], "min_ess_tail": summary["min_ess_tail_sd"],
            "threshold": limits.min_ess,
        }),
        "bfmi": (summary["min_bfmi"] >= limits.min_bfmi, {"min_bfmi": summary["min_bfmi"], "threshold": limits.min_bfmi}),
    }
    return [
        dg.AssetCheckResult(
            asset_key=asset_key, check_name=name, passed=bool(passed),
            severity=dg.AssetCheckSeverity.ERROR if name in BLOCKING else dg.AssetCheckSeverity.WARN,
            metadata={k: v for k, v in meta.items() if v is not None} | {"all_thresholds": dg.MetadataValue.json(thresholds)},
        )
        for name, (passed, meta) in figures.items()
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
        check_specs=[dg.AssetCheckSpec(c, asset=key, description=d, blocking=c in BLOCKING) for c, d in CHECKS.items()],
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
        summary = analyses.convergence_summary(idata)
        idata.attrs.update({f"diag_{k}": v for k, v in summary.items() if v is not None}
                           | {"partition": partition, "wall_seconds": wall, "run_id": context.run_id})
        path = posterior_path(wh, spec.key, partition)
        models.save_posterior(idata, path)
        trace = analyses.trace_plot_png(idata, spec.sd_names)
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
            check_results=convergence_checks(summary, convergence, key),
        )

    return _posterior


posterior_assets = [build_posterior_asset(spec) for spec in models.MODELS.values()]
