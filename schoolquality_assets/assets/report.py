"""report: warehouse/reports/<partition>/index.html, built from the partition's tables and figures."""

import dagster as dg

from schoolquality_assets import report as report_html
from schoolquality_assets.assets.common import OWNER
from schoolquality_assets.models import MODELS
from schoolquality_assets.partitions import sample_partitions
from schoolquality_assets.resources import WarehouseResource
from schoolquality_assets.warehouse import atomic_path


@dg.asset(
    deps=["shrinkage", "variance_components", "school_sd_by_model", "school_random_effects", "loo_comparison",
          "mcmc_diagnostics", "frequentist_comparison", "g3_school_quality"],
    partitions_def=sample_partitions,
    group_name="report",
    owners=[OWNER],
    kinds={"html"},
    description="Self-contained HTML report of the partition (tables and embedded figures), read like the page.",
)
def report(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    failed = [p for k in MODELS if (p := wh.failed_posterior_path(k, context.partition_key)).exists()]
    if failed:
        raise dg.Failure(description="the latest fit of " + ", ".join(p.name.split(".")[0] for p in failed)
                         + " failed its convergence gate (failed draws: " + ", ".join(map(str, failed))
                         + "); the report is not rebuilt from tables of older fits")
    sections = report_html.build_sections(wh, context.partition_key)
    path = wh.report_path(context.partition_key)
    with atomic_path(path) as tmp:
        tmp.write_text(report_html.report_html(context.partition_key, sections), encoding="utf-8")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "sections": dg.MetadataValue.json(list(sections)),
    })
