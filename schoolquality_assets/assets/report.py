"""report: warehouse/reports/<partition>/index.html, built from the partition's tables and figures."""


import dagster as dg
import duckdb
import polars as pl

from schoolquality_assets import analyses
from schoolquality_assets.assets.common import sample_partitions
from schoolquality_assets.assets.ingest import OWNER
from schoolquality_assets.resources import WarehouseResource
from schoolquality_assets.warehouse import Warehouse, atomic_path

TEXT = {
    "Why the binomial likelihood matters": "M0 treats each observed proportion as a Normal outcome and so shrinks a "
    "school of 15 students as much as a school of 200. M1 uses y_success | trials(n_trials): the number of students "
    "sets how far each school is pulled toward the mean.",
    "Shrinkage": "Shrinkage (percentage points between the raw proportion and the posterior estimate) by average "
    "number of students: flat for M0, falling with n for M1.",
    "Variance decomposition": "Variances per posterior draw of M3 (and M2), as a share of the total including the "
    "binomial constant pi^2/3, and of the latent (school + cohort + profile) variance; 95% intervals from the joint posterior.",
    "School SD by model": "The school SD shrinks as cohort and subject-profile effects take their share.",
    "School random effects": "M3 school effects ranked, with 95% credible intervals; colour is the average number of students.",
    "Model comparison (LOO-CV)": "PSIS-LOO per observation, and leave-one-cohort-out with each cohort effect integrated "
    "out (adaptive Gauss-Hermite). M0 is excluded: its density on proportions is not comparable with binomial probabilities.",
    "Stage 1 production model": "M2 on every eligible school; g3_school_quality.parquet holds each school's posterior "
    "mean and SD of the random intercept.",
    "MCMC diagnostics": "R-hat, effective sample sizes, divergences and E-BFMI from arviz; trace plots of the SD hyperparameters.",
    "Comparison with frequentist approach": "The logit-normal mixed model fitted in this run (statsmodels) beside the Bayesian fit.",
}
# section -> (DuckDB tables, figure files)
CONTENT = {
    "Shrinkage": (["shrinkage_by_band"], ["shrinkage_1", "shrinkage_2"]),
    "Variance decomposition": (["variance_components"], []),
    "School SD by model": (["school_sd_by_model"], ["school_sd_by_model_1"]),
    "School random effects": ([], ["school_random_effects_1"]),
    "Model comparison (LOO-CV)": (["loo_comparison"], []),
    "MCMC diagnostics": (["mcmc_diagnostics"], [f"mcmc_diagnostics_{i}" for i in range(1, 5)]),
    "Comparison with frequentist approach": (["frequentist_comparison"], []),
}


def _table(wh: Warehouse, name: str, partition: str) -> pl.DataFrame | None:
    try:
        frame = wh.read_partition(name, partition)
    except duckdb.CatalogException:
        return None
    return frame if frame.height else None


def build_sections(wh: Warehouse, partition: str) -> dict:
    sections = {"Why the binomial likelihood matters": {"text": TEXT["Why the binomial likelihood matters"]}}
    fig_dir = wh.reports_dir / partition / "figures"
    for name, (tables, figures) in CONTENT.items():
        found = [(t, f) for t in tables if (f := _table(wh, t, partition)) is not None]
        pngs = [(f, (fig_dir / f"{f}.png").read_bytes()) for f in figures if (fig_dir / f"{f}.png").exists()]
        if found or pngs:
            sections[name] = {"text": TEXT[name], "tables": found, "figures": pngs}
    production = wh.outputs_dir / "g3_school_quality.parquet"
    if partition == "full" and production.exists():
        q = pl.read_parquet(production)
        summary = q.select(pl.len().alias("schools"), pl.col("g3_school_re").std().alias("sd_of_means"),
                           pl.col("g3_re_sd").mean().alias("mean_posterior_sd"), pl.col("data_vintage").max())
        sections["Stage 1 production model"] = {"text": TEXT["Stage 1 production model"],
                                                "tables": [("g3_school_quality summary", summary)]}
    return sections


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
    sections = build_sections(wh, context.partition_key)
    path = wh.ensure(wh.reports_dir / context.partition_key) / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(analyses.report_html(context.partition_key, sections), encoding="utf-8")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(path)),
        "sections": dg.MetadataValue.json(list(sections)),
    })
