"""The HTML report: the partition's tables and figures in the page's order, rendered with
``templates/report.html.j2`` (jinja2, autoescaped). Reads the warehouse; no Dagster."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path

import arviz as az
import jinja2
import polars as pl
import pyarrow.parquet as pq
import xarray as xr

from schoolquality_assets.analyses import figures, rankings
from schoolquality_assets.columns import DESCRIPTIONS, header
from schoolquality_assets.models.diagnostics import posterior_summary
from schoolquality_assets.models.specs import MODELS, posterior_run_id
from schoolquality_assets.partitions import FULL
from schoolquality_assets.warehouse import MissingTable, Warehouse

SECTIONS = (
    "Key findings",
    "Why the binomial likelihood matters",
    "Shrinkage",
    "Variance decomposition",
    "School SD by model",
    "School random effects",
    "Model comparison (LOO-CV)",
    "Posterior predictive checks",
    "Held-out year",
    "Stage 1 production model",
    "School rankings",
    "Posterior summaries",
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
    "Posterior predictive checks": "Does each model describe the data? Every posterior draw replicates the data set "
    "(with new cohort and profile effects, as a new cohort would get), and each statistic of the observed data is "
    "compared with its replications: a posterior predictive p-value below 0.025 or above 0.975 says the model does "
    "not reproduce that feature of the data.",
    "Held-out year": "Does each model predict next year? M1-M3 are fitted again to every year but the latest (fixed "
    "seed, the production gate; the published posteriors are untouched) and predict each result of the latest year "
    "with a new cohort effect, beside the school's earlier raw proportion and the frequentist model.",
    "Stage 1 production model": "M2 on every school of the partition (on full, every eligible school: the production "
    "fit); g3_school_quality.parquet holds each school's posterior "
    "mean and SD of the random intercept.",
    "School rankings": "Where each school stands among the schools of the M2 fit, with its uncertainty.",
    "Posterior summaries": "brms-style summary of each model: posterior mean (Estimate), posterior SD (Est. error), "
    "95% quantile interval, R-hat and bulk/tail ESS for the intercept, the fixed effects (year x subject contrasts) "
    "and the SDs. Logit scale, except M0 (Normal on proportions).",
    "MCMC diagnostics": "R-hat, effective sample sizes, divergences and E-BFMI from arviz; trace plots of the SD hyperparameters.",
    "Comparison with frequentist approach": "The logit-normal mixed model fitted in this run (statsmodels) beside the Bayesian fit.",
}
# section -> (assets whose rows must come from the partition's current posteriors, DuckDB tables
# shown, figures by name: see warehouse.figure_path). A section whose assets were built from
# another fit, or never on this partition, says so instead of showing them (section_status).
CONTENT = {
    "Shrinkage": (["shrinkage", "shrinkage_by_band"], ["shrinkage_by_band"], ["shrinkage_arrows", "shrinkage_vs_n"]),
    "Variance decomposition": (["variance_components"], ["variance_components"], ["variance_shares"]),
    "School SD by model": (["school_sd_by_model"], ["school_sd_by_model"], ["school_sd_by_model"]),
    "School random effects": (["school_random_effects"], [], ["school_effects_caterpillar"]),
    "Model comparison (LOO-CV)": (["loo_comparison"], ["loo_comparison"], []),
    "Posterior predictive checks": (["posterior_predictive_checks"], ["posterior_predictive_checks"], ["ppc_p_values"]),
    "Held-out year": (["holdout_validation"], ["holdout_validation"], ["holdout_coverage"]),
    "MCMC diagnostics": (["mcmc_diagnostics"], ["mcmc_diagnostics"], [f"trace_{k}" for k in ("m0", "m1", "m2", "m3")]),
    "Comparison with frequentist approach": (["frequentist_comparison"], ["frequentist_comparison"], []),
}
TABLE_CAPTIONS = {
    "shrinkage_by_band": "Shrinkage by school size: how far M0 and M1 move schools from their own no-pooling "
                         "estimates, in percentage points (mean, 90th percentile and largest per band of mean students).",
    "variance_components": "Variance components on the logit scale (posterior mean and 95% interval) of M3 and M2, as a "
                           "share of the total including the binomial pi^2/3 and of the latent (school + cohort + profile) variance.",
    "school_sd_by_model": "School SD (logit scale) by model: posterior mean and 95% interval.",
    "loo_comparison": "Leave-one-out comparison per observation and per cohort: expected log predictive density (higher "
                      "is better), its difference to the best model of the same comparison, and Pareto k diagnostics.",
    "mcmc_diagnostics": "Convergence of every model: R-hat and bulk/tail ESS over the gated quantities, cohort and profile "
                        "effects, divergences, E-BFMI, maximum tree depth and sampling time.",
    "frequentist_comparison": "The page's frequentist logit-normal mixed model beside the Bayesian fit of this run.",
    "school_rankings by size band": "Schools below and above the average school at 95% posterior probability, those "
                                    "that cannot be told apart from it, and the median width of the 95% rank interval "
                                    "(places), by average number of students per observation.",
    "school_rankings: most likely below and above the average": "The schools most likely below the average school "
        "(highest p_below_average) and most likely above it (lowest), up to 10 of each, with their names and boards "
        "where the data gives them; the full list is the school_rankings table and g3_school_quality.parquet.",
    "landing files read": "What was read from the landing folder: each file, its format and year, its rows and "
                          "schools, and the school rows the publisher suppressed.",
    "posterior_predictive_checks": "Each statistic of the observed data beside its replications under each model "
                                   "(mean and 95% interval) and the posterior predictive p-value P(T_rep >= T_obs).",
    "holdout_validation": "The latest year held out: coverage of each model's 50% and 90% predictive intervals (randomised "
                          "PIT for counts) and the mean log predictive density per result, beside the baselines.",
    "g3_school_quality summary": "Stage 1 output: schools, spread of the school means and their mean posterior SD (logit scale).",
}
TRANSPOSED = {"mcmc_diagnostics": "model"}  # wide tables shown one row per column: table -> key column
TEMPLATES = Path(__file__).resolve().parent / "templates"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def significant(v: float) -> str:
    """3 significant digits; from 100 up, the rounded whole number with thousands separators."""
    if abs(v) >= 99.95:  # would round to 100 or more
        return f"{v:,.0f}"
    return f"{v:#.3g}".removesuffix(".")


def display_cell(column: str, v) -> str:
    """A value as the report shows it (the tables keep full precision): percentages (``pct_*`` in
    percent, ``*share*`` as 0-1 fractions) with %, R-hat with 3 decimals, integers with thousands
    separators, other floats with 3 significant digits; nulls and NaN empty."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v) if column in ("year", "data_vintage") else f"{v:,}"
    if not isinstance(v, float):
        return str(v)
    if column.startswith("pct_"):
        return significant(v) + "%"
    if "share" in column:
        return significant(100 * v) + "%"
    if "rhat" in column:
        return f"{v:.3f}"
    return significant(v)


def table_caption(name: str) -> str:
    if name.startswith("posterior_summary_"):
        key = name.removeprefix("posterior_summary_")
        return f"Posterior summary, {key.upper()} ({MODELS[key].description})" if key in MODELS else name
    return TABLE_CAPTIONS.get(name, name.replace("_", " "))


def display_table(name: str, frame: pl.DataFrame) -> dict:
    """A table as the report shows it: caption, human headers (descriptions as tooltips), display-rounded
    cells; a ``note`` column is said once below the table instead of in every row. Tables in
    TRANSPOSED show one row per column and one column per model, so that they fit the page."""
    notes = frame["note"].drop_nulls().unique(maintain_order=True).to_list() if "note" in frame.columns else []
    shown = frame.drop("note", strict=False)
    table = {"id": slug(name), "caption": table_caption(name), "notes": [n for n in notes if n]}
    if name in TRANSPOSED:
        key = TRANSPOSED[name]
        return table | {
            "head": [("", "")] + [(str(v), "") for v in shown[key]],
            "rows": [{"header": (header(c), DESCRIPTIONS.get(c, "")),
                      "cells": [(display_cell(c, v), shown[c].dtype.is_numeric()) for v in shown[c]]}
                     for c in shown.columns if c != key]}
    numeric = [dtype.is_numeric() for dtype in shown.dtypes]
    return table | {
        "head": [(header(c), DESCRIPTIONS.get(c, "")) for c in shown.columns],
        "rows": [{"header": None, "cells": [(display_cell(c, v), n) for c, v, n in zip(shown.columns, row, numeric)]}
                 for row in shown.iter_rows()]}


def markdown_table(frame: pl.DataFrame) -> str:
    """The table as markdown with the report's headers and display rounding (for the Dagster UI)."""
    rows = [[display_cell(c, v) for c, v in zip(frame.columns, row)] for row in frame.iter_rows()]
    lines = ["| " + " | ".join(header(c) for c in frame.columns) + " |", "|" + "---|" * frame.width]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def display_figure(name: str, png: bytes) -> dict:
    return {"label": figures.label(name), "caption": figures.caption(name), "png": png}


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
    text = f"Mean shrinkage by band ({bands} students): M0 {_pp(m0)} pp, M1 {_pp(m1)} pp. "
    m1_falls = all(a > b for a, b in zip(m1, m1[1:]))
    m0_ratio, m1_ratio = _smallest_to_largest(m0), _smallest_to_largest(m1)
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
    if m0_ratio > 1.25:
        text += " " + _like_for_like(rows)
    return text


def _pp(values: list[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in values)


def _smallest_to_largest(band_means: list[float]) -> float:
    return band_means[0] / max(band_means[-1], 1e-12)


def _like_for_like(rows: list[dict]) -> str:
    """Band means over schools with the same (most common) number of observations, if the table has them."""
    key0, key1 = "mean_shrinkage_m0_pp_modal_obs", "mean_shrinkage_m1_pp_modal_obs"
    usable = [r for r in rows if r.get(key0) is not None and (r.get("schools_modal_obs") or 0) >= 5]
    if len(usable) < 2:
        return ""
    m0, m1 = [r[key0] for r in usable], [r[key1] for r in usable]
    ratio0, ratio1 = _smallest_to_largest(m0), _smallest_to_largest(m1)
    text = (f"Among the schools with {usable[0]['modal_n_obs']} observations each (the most common count; "
            f"bands {' / '.join(r['band'] for r in usable)}): M0 {_pp(m0)} pp ({ratio0:.1f}x), "
            f"M1 {_pp(m1)} pp ({ratio1:.1f}x). ")
    if ratio0 <= 1.25:
        return text + ("With the number of observations held equal M0's shrinkage is flat: its extra "
                       "shrinkage of small schools comes from their fewer observations, not their fewer students.")
    return text + "Even with the number of observations held equal, M0's shrinkage falls with size."


def _table(wh: Warehouse, name: str, partition: str) -> pl.DataFrame | None:
    try:
        frame = wh.read_partition(name, partition)
    except MissingTable:
        return None
    return frame if frame.height else None


def failed_fits(wh: Warehouse, partition: str) -> dict[str, Path]:
    """Model key -> failed draws of each model whose latest fit on ``partition`` failed its gate."""
    return {k: path for k in MODELS if (path := wh.failed_posterior_path(k, partition)).exists()}


def current_fits(wh: Warehouse, partition: str) -> dict[str, str]:
    """Model key -> run id of each model's current posterior on ``partition``: its last passed one,
    unless its latest fit failed the gate (then it has none; models without a posterior are absent)."""
    failed = failed_fits(wh, partition)
    runs = {k: posterior_run_id(wh.posterior_path(k, partition)) for k in MODELS if k not in failed}
    return {k: run for k, run in runs.items() if run is not None}


def failed_fit_notice(failed: dict[str, Path], partition: str) -> str:
    """What the report says when fits failed: nothing built from them (or the fits before) is shown."""
    if not failed:
        return ""
    names = ", ".join(k.upper() for k in failed)
    return (f"The latest fit of {names} on {partition} failed its convergence gate (failed draws: "
            f"{', '.join(str(p) for p in failed.values())}). Nothing built from it, or from the fit before it, is "
            "shown; the tables that compare models leave it out. Refit it until it passes.")


def stale_reason(asset: str, partition: str, sources: dict[str, str] | None, current: dict[str, str],
                 failed: dict[str, Path] | None = None) -> str | None:
    """Why ``asset``'s rows of ``partition`` are not those of the current fits (None when they are).

    ``sources`` is what the rows were built from (model -> run id, ``Warehouse.read_sources``);
    ``current`` the partition's current posteriors (``current_fits``), ``failed`` its failed fits
    (``failed_fits``)."""
    if sources is None:
        return f"{asset} has not been built on the {partition} partition"
    for model, run in sorted(sources.items()):
        name = model.upper()
        if model in (failed or {}):
            return f"{asset} was built from an earlier {name} fit, and the latest {name} fit on {partition} failed its convergence gate"
        if model not in current:
            return f"{asset} was built from a {name} posterior that {partition} no longer has"
        if current[model] != run:
            return (f"{asset} was built from the {name} fit of run {run[:8]}, but the current {name} posterior "
                    f"on {partition} is from run {current[model][:8]}")
    return None


def section_status(wh: Warehouse, partition: str, assets: list[str], current: dict[str, str],
                   failed: dict[str, Path] | None = None) -> str | None:
    """None when every asset of a section comes from the current fits; else what to materialize and why."""
    reasons = [r for a in assets if (r := stale_reason(a, partition, wh.read_sources(a, partition), current, failed))]
    if not reasons:
        return None
    return (f"Not shown: {'; '.join(reasons)}. Materialize {', '.join(assets)} on {partition} "
            "(with its upstream) to show this section.")


def build_sections(wh: Warehouse, partition: str) -> dict:
    """Section name -> text, tables and figures for ``partition``: only what was built from the
    partition's current posteriors; a section whose tables were not says so in its text."""
    current, failed = current_fits(wh, partition), failed_fits(wh, partition)
    sections = {"Why the binomial likelihood matters": {"text": TEXT["Why the binomial likelihood matters"]}}
    for name, (assets, tables, figures) in CONTENT.items():
        status = section_status(wh, partition, assets, current, failed)
        if status:
            sections[name] = {"text": "\n\n".join([TEXT[name], status]), "stale": True}
            continue
        found = [(t, f) for t in tables if (f := _table(wh, t, partition)) is not None]
        pngs = [(f, p.read_bytes()) for f in figures if (p := wh.figure_path(partition, f)).exists()]
        sections[name] = {"text": "\n\n".join(filter(None, [TEXT[name], _finding(name, dict(found))])),
                          "tables": found, "figures": pngs}
    findings = [_finding(name, dict(sections[name].get("tables", []))) for name in CONTENT]
    shown = dict(sections["Variance decomposition"].get("tables", []))
    sample = _table(wh, "analysis_sample", partition)
    lead = [failed_fit_notice(failed, partition), data_read(wh), accounting(wh)]
    if sample is not None:
        lead.append(f"{sample['school_id'].n_unique():,} schools, {sample.height:,} observations "
                    f"({sample['year'].min()}-{sample['year'].max()}; data vintage {sample['year'].max()}).")
    if "variance_components" in shown:
        lead.append(variance_finding(shown["variance_components"]))
    sections["Key findings"] = {"text": "\n\n".join(filter(None, lead + findings))}
    if (read := files_read(wh)) is not None and not read.is_empty():
        sections["Key findings"]["tables"] = [("landing files read", read)]
    summaries = posterior_summaries(wh, partition, current)
    missing = [k.upper() for k in MODELS if k not in current]
    sections["Posterior summaries"] = {
        "text": "\n\n".join(filter(None, [TEXT["Posterior summaries"], missing and
                                           f"No posterior on {partition} for {', '.join(missing)}."])),
        "tables": summaries}
    sections["Stage 1 production model"] = production_section(wh, partition, current, failed)
    sections["School rankings"] = rankings_section(wh, partition, current, failed)
    if not sections["School rankings"].get("stale"):
        sections["Key findings"]["text"] += "\n\n" + sections["School rankings"]["finding"]
    return sections


def rankings_section(wh: Warehouse, partition: str, current: dict[str, str], failed: dict[str, Path] | None = None) -> dict:
    """How many schools are distinguishable from the average, by size band, in words and as a
    table, and the league table with rank intervals; only from the current M2 fit."""
    status = section_status(wh, partition, ["school_rankings"], current, failed)
    if status:
        return {"text": "\n\n".join([TEXT["School rankings"], status]), "stale": True}
    table = wh.read_partition("school_rankings", partition)
    by_band = rankings.distinguishable_by_band(table, wh.read_table("eligible_schools"))
    finding = rankings.rankings_finding(by_band)
    png = wh.figure_path(partition, "school_ranks_league_table")
    return {"text": "\n\n".join([TEXT["School rankings"], rankings.RANKINGS_DEFINITION, finding]),
            "tables": [("school_rankings by size band", by_band),
                       ("school_rankings: most likely below and above the average", extremes(table))],
            "figures": [("school_ranks_league_table", png.read_bytes())] if png.exists() else [],
            "finding": finding}


EXTREME_COLUMNS = ("school_id", "school_name", "board_name", "g3_school_re", "p_below_average", "rank_median",
                   "rank_lower_95", "rank_upper_95", "distinguishable")


def extremes(table: pl.DataFrame, n: int = 10) -> pl.DataFrame:
    """The ``n`` schools most likely below the average and the ``n`` most likely above it (named
    where the data names them), ties broken by school_id."""
    shown = [c for c in EXTREME_COLUMNS if c in table.columns]
    ordered = table.sort("p_below_average", "school_id", descending=[True, False])
    return pl.concat([ordered.head(n), ordered.tail(min(n, max(table.height - n, 0)))]).select(shown)


def files_read(wh: Warehouse) -> pl.DataFrame | None:
    """The landing files behind the current raw_observations (from its stored rows): per file, its
    format, years, landing rows and schools, and the school-subjects the publisher suppressed."""
    try:
        raw = wh.read_table("raw_observations")
    except MissingTable:
        return None
    flag = pl.col("publisher_suppressed") if "publisher_suppressed" in raw.columns else pl.lit(None, pl.Utf8)
    fmt = pl.col("source_format") if "source_format" in raw.columns else pl.lit("landing contract")
    return raw.group_by("source_file").agg(
        fmt.first().alias("format"),
        pl.col("year").min().alias("first_year"), pl.col("year").max().alias("last_year"),
        pl.len().alias("landing_rows"), pl.col("school_id").n_unique().alias("schools"),
        (flag.str.strip_chars().fill_null("0") != "0").sum().alias("school_subjects_suppressed"),
    ).sort("source_file")


def data_read(wh: Warehouse) -> str:
    """What was read, in words: files, formats, years, schools and what the publisher suppressed."""
    files = files_read(wh)
    if files is None or files.is_empty():
        return ""
    suppressed = int(files["school_subjects_suppressed"].sum())
    formats = ", ".join(sorted(set(files["format"].drop_nulls())))
    years = f"{files['first_year'].min()}-{files['last_year'].max()}"
    text = (f"Read {files.height:,} landing file(s) ({formats}; years {years}): {int(files['landing_rows'].sum()):,} "
            f"landing rows (a school row of a publisher's wide file counts once per subject).")
    if suppressed:
        text += f" The publisher suppressed {suppressed:,} school-subjects (small groups); they are in rejected_observations."
    return text


def accounting(wh: Warehouse) -> str:
    """Where every landing row went: rejected by the contract, dropped by the filters, kept."""
    counts = {t: wh.row_count(t) for t in ("rejected_observations", "filtered_observations", "cleaned_observations")}
    if None in counts.values():
        return ""
    raw = sum(counts.values())
    return (f"{raw:,} landing rows: {counts['rejected_observations']:,} rejected by the landing contract, "
            f"{counts['filtered_observations']:,} dropped by the participation and eligibility filters "
            f"(both tables keep each row with its reason), {counts['cleaned_observations']:,} kept.")


def production_section(wh: Warehouse, partition: str, current: dict[str, str],
                       failed: dict[str, Path] | None = None) -> dict:
    """The partition's g3_school_quality file (the production file on full, the dry run otherwise),
    shown only when it was written from the current M2 posterior."""
    path = wh.output_path(partition)
    kind = "production file" if partition == FULL else "dry run"
    text = [TEXT["Stage 1 production model"]]
    if not path.exists():
        return {"text": "\n\n".join(text + [f"Not shown: no g3_school_quality {kind} has been written on {partition}."]),
                "stale": True}
    meta = pq.read_schema(path).metadata or {}
    sources = {"m2": meta.get(b"posterior_run_id", b"").decode()}
    if reason := stale_reason(f"the g3_school_quality {kind} ({path.name})", partition, sources, current, failed):
        return {"text": "\n\n".join(text + [f"Not shown: {reason}. Materialize g3_school_quality on {partition}."]),
                "stale": True}
    q = pl.read_parquet(path)
    summary = q.select(pl.len().alias("schools"), pl.col("g3_school_re").std().alias("sd_of_means"),
                       pl.col("g3_re_sd").mean().alias("mean_posterior_sd"), pl.col("data_vintage").max())
    return {"text": "\n\n".join(text + [f"From the {kind} {path.name}."]),
            "tables": [("g3_school_quality summary", summary)]}


def posterior_summaries(wh: Warehouse, partition: str, current: dict[str, str] | None = None) -> list[tuple[str, pl.DataFrame]]:
    """brms-style summary of every model with a current posterior (``current_fits``; only the
    summarised variables are read)."""
    current = current_fits(wh, partition) if current is None else current
    return [(f"posterior_summary_{k}", _summary_of(wh.posterior_path(k, partition))) for k in MODELS if k in current]


def _summary_of(path: Path) -> pl.DataFrame:
    with xr.open_dataset(path, group="posterior", engine="h5netcdf") as post:
        return posterior_summary(az.InferenceData(posterior=post))


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
        from schoolquality_assets.analyses.loo import loo_finding
        return loo_finding(tables["loo_comparison"])
    if section == "Posterior predictive checks" and "posterior_predictive_checks" in tables:
        from schoolquality_assets.analyses.predictive import ppc_finding
        return ppc_finding(tables["posterior_predictive_checks"])
    if section == "Held-out year" and "holdout_validation" in tables:
        from schoolquality_assets.analyses.holdout import holdout_finding
        return holdout_finding(tables["holdout_validation"])
    if section == "Shrinkage" and "shrinkage_by_band" in tables:
        return shrinkage_finding(tables["shrinkage_by_band"])
    return ""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters |= {"slug": slug, "b64": lambda b: base64.b64encode(b).decode()}
    return env


def report_html(partition: str, sections: dict, run: dict | None = None) -> str:
    """Self-contained report; sections are rendered in the page's order, missing ones skipped;
    ``run`` (run id, date, code version, ...) is shown under the title."""
    ordered = [
        {"name": name, "paragraphs": [p for p in sections[name].get("text", "").split("\n\n") if p],
         "tables": [display_table(t, df) for t, df in sections[name].get("tables", [])],
         "figures": [display_figure(f, png) for f, png in sections[name].get("figures", [])]}
        for name in SECTIONS if name in sections
    ]
    return _environment().get_template("report.html.j2").render(partition=partition, sections=ordered,
                                                                 run=run or {})
