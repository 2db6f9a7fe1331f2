"""The HTML report: the partition's tables and figures in the page's order, rendered with
``templates/report.html.j2`` (jinja2, autoescaped). Reads the warehouse; no Dagster."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import duckdb
import jinja2
import polars as pl

from schoolquality_assets.partitions import FULL
from schoolquality_assets.warehouse import Warehouse

SECTIONS = (
    "Key findings",
    "Why the binomial likelihood matters",
    "Shrinkage",
    "Variance decomposition",
    "School SD by model",
    "School random effects",
    "Model comparison (LOO-CV)",
    "Stage 1 production model",
    "MCMC diagnostics",
    "Comparison with frequentist approach",
)
TEXT = {
    "Why the binomial likelihood matters": "M0 treats each observed proportion as a Normal outcome and so shrinks a "
    "school of 15 students as much as a school of 200. M1 uses y_success | trials(n_trials): the number of students "
    "sets how far each school is pulled toward the mean.",
    "Shrinkage": "Shrinkage (percentage points between each model's no-pooling estimate and its posterior "
    "estimate) by average number of students per observation.",
    "Variance decomposition": "Variances per posterior draw of M3 (and M2), as a share of the total including the "
    "binomial constant pi^2/3, and of the latent (school + cohort + profile) variance; 95% intervals from the joint posterior.",
    "School SD by model": "Posterior mean and 95% interval of the school SD under M1, M2 and M3.",
    "School random effects": "M3 school effects ranked, with 95% credible intervals; colour is the average number of students.",
    "Model comparison (LOO-CV)": "PSIS-LOO per observation, and leave-one-cohort-out with each cohort effect integrated "
    "out (adaptive Gauss-Hermite); the comparison whose Pareto k diagnostics pass comes first.",
    "Stage 1 production model": "M2 on every eligible school; g3_school_quality.parquet holds each school's posterior "
    "mean and SD of the random intercept.",
    "MCMC diagnostics": "R-hat, effective sample sizes, divergences and E-BFMI from arviz; trace plots of the SD hyperparameters.",
    "Comparison with frequentist approach": "The logit-normal mixed model fitted in this run (statsmodels) beside the Bayesian fit.",
}
# section -> (DuckDB tables, figures by name: see warehouse.figure_path)
CONTENT = {
    "Shrinkage": (["shrinkage_by_band"], ["shrinkage_raw_vs_estimate", "shrinkage_vs_n"]),
    "Variance decomposition": (["variance_components"], []),
    "School SD by model": (["school_sd_by_model"], ["school_sd_by_model"]),
    "School random effects": ([], ["school_effects_caterpillar"]),
    "Model comparison (LOO-CV)": (["loo_comparison"], []),
    "MCMC diagnostics": (["mcmc_diagnostics"], [f"trace_{k}" for k in ("m0", "m1", "m2", "m3")]),
    "Comparison with frequentist approach": (["frequentist_comparison"], []),
}
TEMPLATES = Path(__file__).resolve().parent / "templates"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cell(v) -> str:
    """Floats with 6 significant digits, nulls and NaN empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def school_sd_finding(table: pl.DataFrame) -> str:
    """What the school-SD table shows, in words (the page expects the SD to fall from M1 to M3)."""
    rows = list(table.iter_rows(named=True))
    if len(rows) < 2:
        return ""
    first, last = rows[0], rows[-1]
    change = last["sd_school"] - first["sd_school"]
    overlap = last["upper"] >= first["lower"] and first["upper"] >= last["lower"]
    values = ", ".join(f"{r['model']} {r['sd_school']:.3f} [{r['lower']:.3f}, {r['upper']:.3f}]" for r in rows)
    if change < 0 and not overlap:
        verdict = (f"The school SD falls from {first['model']} to {last['model']} ({change:+.3f}): part of what "
                   f"{first['model']} called persistent school quality is cohort or profile variation, as the page found.")
    else:
        verdict = (f"The school SD does not fall clearly from {first['model']} to {last['model']} ({change:+.3f}, "
                   "95% intervals overlap): these data do not show the decrease the page reports.")
    return f"{verdict} ({values})"


def shrinkage_finding(by_band: pl.DataFrame) -> str:
    """Whether M1's shrinkage falls with school size and M0's does not, from the band means."""
    rows = list(by_band.iter_rows(named=True))
    if len(rows) < 2:
        return ""
    m0 = [r["mean_shrinkage_m0_pp"] for r in rows]
    m1 = [r["mean_shrinkage_m1_pp"] for r in rows]
    bands = " / ".join(r["band"] for r in rows)
    text = (f"Mean shrinkage by band ({bands} students): M0 {' / '.join(f'{x:.2f}' for x in m0)} pp, "
            f"M1 {' / '.join(f'{x:.2f}' for x in m1)} pp. ")
    m1_falls = all(a > b for a, b in zip(m1, m1[1:]))
    m0_ratio, m1_ratio = m0[0] / max(m0[-1], 1e-12), m1[0] / max(m1[-1], 1e-12)
    text += ("M1 shrinks small schools most and large schools least, as the page says. " if m1_falls
             else "M1's shrinkage does not fall steadily with size here, unlike the page. ")
    ratios = f"smallest/largest band {m0_ratio:.1f}x for M0 against {m1_ratio:.1f}x for M1"
    if m0_ratio <= 1.25:
        text += f"M0's is nearly flat across sizes ({ratios}): it ignores n, as the page says."
    elif m0_ratio < m1_ratio:
        text += (f"M0's also falls with size, though less than M1's ({ratios}), so these data do not show the "
                 "flat M0 shrinkage the page describes.")
    else:
        text += f"M0's falls with size as much as M1's ({ratios}), unlike the page."
    return text


def _table(wh: Warehouse, name: str, partition: str) -> pl.DataFrame | None:
    try:
        frame = wh.read_partition(name, partition)
    except duckdb.CatalogException:
        return None
    return frame if frame.height else None


def build_sections(wh: Warehouse, partition: str) -> dict:
    """Section name -> text, tables and figures found in the warehouse for ``partition``."""
    sections = {"Why the binomial likelihood matters": {"text": TEXT["Why the binomial likelihood matters"]}}
    for name, (tables, figures) in CONTENT.items():
        found = [(t, f) for t in tables if (f := _table(wh, t, partition)) is not None]
        pngs = [(f, p.read_bytes()) for f in figures if (p := wh.figure_path(partition, f)).exists()]
        if found or pngs:
            sections[name] = {"text": "\n\n".join(filter(None, [TEXT[name], _finding(name, dict(found))])),
                              "tables": found, "figures": pngs}
    findings = [_finding(name, dict(sections[name].get("tables", []))) for name in CONTENT if name in sections]
    variance = _table(wh, "variance_components", partition)
    sample = _table(wh, "analysis_sample", partition)
    lead = []
    if sample is not None:
        lead.append(f"{sample['school_id'].n_unique():,} schools, {sample.height:,} observations "
                    f"({sample['year'].min()}-{sample['year'].max()}; data vintage {sample['year'].max()}).")
    if variance is not None:
        lead.append(variance_finding(variance))
    if any(findings) or lead:
        sections["Key findings"] = {"text": "\n\n".join(filter(None, lead + findings))}
    production = wh.output_path(FULL)
    if partition == FULL and production.exists():
        q = pl.read_parquet(production)
        summary = q.select(pl.len().alias("schools"), pl.col("g3_school_re").std().alias("sd_of_means"),
                           pl.col("g3_re_sd").mean().alias("mean_posterior_sd"), pl.col("data_vintage").max())
        sections["Stage 1 production model"] = {"text": TEXT["Stage 1 production model"],
                                                "tables": [("g3_school_quality summary", summary)]}
    return sections


def variance_finding(table: pl.DataFrame) -> str:
    """The latent variance shares of the fullest model in the table, with 95% intervals."""
    model = "M3" if "M3" in table["model"].to_list() else table["model"][0]
    rows = table.filter((pl.col("model") == model) & pl.col("pct_latent").is_not_null()).iter_rows(named=True)
    shares = "; ".join(f"{r['component']} {r['pct_latent']:.1f}% [{r['pct_latent_lower']:.1f}%, {r['pct_latent_upper']:.1f}%]"
                       for r in rows)
    return f"Latent variance ({model}, 95% intervals from the joint posterior): {shares}."


def _finding(section: str, tables: dict[str, pl.DataFrame]) -> str:
    if section == "School SD by model" and "school_sd_by_model" in tables:
        return school_sd_finding(tables["school_sd_by_model"])
    if section == "Model comparison (LOO-CV)" and "loo_comparison" in tables:
        from schoolquality_assets.loo import loo_finding
        return loo_finding(tables["loo_comparison"])
    if section == "Shrinkage" and "shrinkage_by_band" in tables:
        return shrinkage_finding(tables["shrinkage_by_band"])
    return ""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters |= {"slug": slug, "cell": cell, "b64": lambda b: base64.b64encode(b).decode()}
    return env


def report_html(partition: str, sections: dict, run: dict | None = None) -> str:
    """Self-contained report; sections are rendered in the page's order, missing ones skipped;
    ``run`` (run id, date, code version, ...) is shown under the title."""
    ordered = [
        {"name": name, "paragraphs": [p for p in sections[name].get("text", "").split("\n\n") if p],
         "tables": [(t, {"columns": df.columns, "rows": list(df.iter_rows())}) for t, df in sections[name].get("tables", [])],
         "figures": sections[name].get("figures", [])}
        for name in SECTIONS if name in sections
    ]
    return _environment().get_template("report.html.j2").render(partition=partition, sections=ordered,
                                                                 run=run or {})
