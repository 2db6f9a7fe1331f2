"""report: warehouse/reports/<partition>/index.html, built from the partition's tables and figures."""

import datetime

import dagster as dg

from schoolquality_assets import columns
from schoolquality_assets.analyses import figures, rankings
from schoolquality_assets.analyses import report as report_html
from schoolquality_assets.defs.common import OWNER, code_version_of, image_md
from schoolquality_assets.defs.partitions import sample_partitions
from schoolquality_assets.defs.production import code_version
from schoolquality_assets.defs.resources import WarehouseResource
from schoolquality_assets.models.specs import MODELS
from schoolquality_assets.warehouse import atomic_path

# Everything build_sections reads: the analysis tables (and their figures), the sample, the
# posterior files (summaries), the partition's g3_school_quality file and the row accounting.
REPORT_DEPS = [
    "shrinkage", "shrinkage_by_band", "variance_components", "school_sd_by_model", "school_random_effects",
    "loo_comparison", "mcmc_diagnostics", "frequentist_comparison", "g3_school_quality", "school_rankings",
    "posterior_predictive_checks", "holdout_validation",
    "eligible_schools", "analysis_sample",
    *(f"posterior_{k}" for k in MODELS), "rejected_observations", "filtered_observations", "cleaned_observations",
]


@dg.asset(
    deps=REPORT_DEPS,
    partitions_def=sample_partitions,
    group_name="report",
    owners=[OWNER],
    kinds={"html"},
    code_version=code_version_of(report_html, figures, columns, rankings, report_html.TEMPLATES / "report.html.j2"),
    description="Self-contained HTML report of the partition (tables and embedded figures), read like the page. "
    "A section is shown only when its tables were built from the partition's current posteriors; otherwise it "
    "says what is missing or out of date.",
)
def report(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    # a model whose latest fit failed has no current fit: nothing built from it is shown, and the
    # report says so first (a failed M3 must not stop production's report)
    failed = report_html.failed_fits(wh, context.partition_key)
    if failed:
        context.log.warning(report_html.failed_fit_notice(failed, context.partition_key))
    sections = report_html.build_sections(wh, context.partition_key)
    path = wh.report_path(context.partition_key)
    with atomic_path(path) as tmp:
        run = {"partition": context.partition_key, "run": context.run.run_id,
               "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "code version": code_version()}
        tmp.write_text(report_html.report_html(context.partition_key, sections, run), encoding="utf-8")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "sections": dg.MetadataValue.json(list(sections)),
        "sections_not_shown": dg.MetadataValue.json([n for n, sec in sections.items() if sec.get("stale")]),
        "failed_fits": dg.MetadataValue.json({k.upper(): str(path) for k, path in failed.items()}),
        "summary": dg.MetadataValue.md(_summary(sections)),
        **{f"figure: {figures.label(name)}": image_md(png, figures.label(name)) for name, png in _key_figures(sections)},
    })


SUMMARY_TABLES = {  # table -> columns shown in the UI summary
    "variance_components": ["model", "component", "pct_latent", "pct_latent_lower", "pct_latent_upper"],
    "school_sd_by_model": ["model", "sd_school", "lower", "upper"],
    "loo_comparison": ["model", "unit", "elpd_diff", "se_diff", "pareto_k_gt_0_7"],
    "mcmc_diagnostics": ["model", "max_rhat", "min_ess_bulk", "min_ess_tail", "divergences", "min_bfmi"],
    "shrinkage_by_band": ["band", "schools", "mean_shrinkage_m0_pp", "mean_shrinkage_m1_pp", "max_shrinkage_m1_pp"],
    "school_rankings by size band": ["band", "schools", "below", "above", "cannot_tell", "median_rank_interval_width"],
    "posterior_predictive_checks": ["model", "statistic", "observed", "replicated_mean", "p_value"],
    "holdout_validation": ["model", "observations", "coverage_50", "coverage_90", "mean_lpd"],
}


def _summary(sections: dict) -> str:
    """The report's findings and headline tables, for the asset page in the UI."""
    parts = []
    for name, section in sections.items():
        if section.get("stale"):
            parts.append(f"### {name}\n\n" + section["text"].split("\n\n")[-1])
            continue
        tables = dict(section.get("tables", []))
        shown = [(t, tables[t]) for t in SUMMARY_TABLES if t in tables]
        if not shown:
            continue
        parts.append(f"### {name}\n\n" + section.get("text", "").split("\n\n", 1)[-1])
        for t, frame in shown:
            cols = [c for c in SUMMARY_TABLES[t] if c in frame.columns]
            parts.append(f"*{report_html.table_caption(t)}*\n\n" + report_html.markdown_table(frame.select(cols)))
    return "\n\n".join(parts) or "(no tables yet)"


def _key_figures(sections: dict) -> list[tuple[str, bytes]]:
    wanted = ("variance_shares", "shrinkage_arrows", "school_sd_by_model", "school_effects_caterpillar",
              "school_ranks_league_table", "ppc_p_values", "holdout_coverage")
    return [(n, png) for s in sections.values() for n, png in s.get("figures", []) if n in wanted]
