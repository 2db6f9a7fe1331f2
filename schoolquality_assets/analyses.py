"""The page's tables: shrinkage, variance decomposition, school SD and school effects, and the
frequentist comparison. Pure functions (no Dagster): analysis samples (polars) and posteriors
(arviz InferenceData as built by :mod:`schoolquality_assets.models`) in, polars frames out.
"""

from __future__ import annotations

import math
import time

import numpy as np
import polars as pl
from scipy.special import expit

from schoolquality_assets import models
from schoolquality_assets.models import draws_matrix as _flat

LOGISTIC_VAR = math.pi**2 / 3
BANDS = ("<=25", "26-100", ">100")
COMPONENTS = {  # posterior SD name -> table label
    "sd_school": "School (persistent)",
    "sd_cohort": "Cohort (school×year)",
    "sd_profile": "Subject profile",
}
OBSERVATION = "Observation (binomial)"
INTERPRETATION = {
    OBSERVATION: "Binomial sampling noise (theoretical, not estimated)",
    "School (persistent)": "Stable school quality across years and subjects",
    "Cohort (school×year)": "Year-specific shared movement across subjects",
    "Subject profile": "School×subject divergence (e.g. strong in Math, weak in Writing)",
}
NO_WEIGHTS = "weights not applied: statsmodels MixedLM has no observation weights"

def _summary(x: np.ndarray, axis: int = 0) -> tuple:
    return x.mean(axis), np.quantile(x, 0.025, axis=axis), np.quantile(x, 0.975, axis=axis)


def band_of(mean_n: pl.Expr) -> pl.Expr:
    return pl.when(mean_n <= 25).then(pl.lit(BANDS[0])).when(mean_n <= 100).then(pl.lit(BANDS[1])).otherwise(pl.lit(BANDS[2]))

# ---------------------------------------------------------------- shrinkage
SHRINKAGE_DEFINITION = (
    "Shrinkage of a model = |its no-pooling estimate - its posterior mean|, in percentage points, each model "
    "against its own no-pooling estimate: M1 (binomial) against the pooled proportion sum(y)/sum(n) "
    "(raw_proportion); M0 (Normal on each observation's proportion, one sigma) against the unweighted mean of the "
    "school's observed proportions (raw_mean_proportion)."
)


def shrinkage(sample: pl.DataFrame, idata_m0, idata_m1) -> pl.DataFrame:
    """Per school: each model's no-pooling estimate vs its posterior mean (proportion scale);
    see SHRINKAGE_DEFINITION."""
    raw = (
        sample.group_by("school_id")
        .agg(
            pl.len().alias("n_obs"),
            pl.col("n_trials").mean().alias("mean_n"),
            (pl.col("y_success").sum() / pl.col("n_trials").sum()).alias("raw_proportion"),
            (pl.col("y_success") / pl.col("n_trials")).mean().alias("raw_mean_proportion"),
        )
        .with_columns(band_of(pl.col("mean_n")).alias("band"))
    )
    p0 = idata_m0.posterior
    m0 = (_flat(p0["Intercept"])[:, None] + _flat(p0["r_school"])).mean(0)
    p1 = idata_m1.posterior
    m1 = expit(_flat(p1["b_Intercept"])[:, None] + _flat(p1["r_school"])).mean(0)
    est0 = pl.DataFrame({"school_id": [str(s) for s in p0["school"].values], "m0_estimate": m0})
    est1 = pl.DataFrame({"school_id": [str(s) for s in p1["school"].values], "m1_estimate": m1})
    out = raw.join(est0, on="school_id", how="left").join(est1, on="school_id", how="left")
    return out.with_columns(
        (100 * (pl.col("raw_mean_proportion") - pl.col("m0_estimate")).abs()).alias("m0_shrinkage_pp"),
        (100 * (pl.col("raw_proportion") - pl.col("m1_estimate")).abs()).alias("m1_shrinkage_pp"),
    ).select(
        "school_id", "n_obs", "mean_n", "band", "raw_proportion", "m0_estimate", "m1_estimate",
        "m0_shrinkage_pp", "m1_shrinkage_pp", "raw_mean_proportion",
    ).sort("school_id")


def shrinkage_by_band(table: pl.DataFrame) -> pl.DataFrame:
    """Schools, mean n and mean shrinkage (pp) per sample-size band, small to large."""
    order = pl.DataFrame({"band": list(BANDS), "_o": [0, 1, 2]})
    return (
        table.group_by("band")
        .agg(
            pl.len().alias("schools"),
            pl.col("mean_n").mean().alias("mean_n"),
            pl.col("m0_shrinkage_pp").mean().alias("mean_shrinkage_m0_pp"),
            pl.col("m1_shrinkage_pp").mean().alias("mean_shrinkage_m1_pp"),
            pl.col("m0_shrinkage_pp").quantile(0.9).alias("p90_shrinkage_m0_pp"),
            pl.col("m1_shrinkage_pp").quantile(0.9).alias("p90_shrinkage_m1_pp"),
            pl.col("m0_shrinkage_pp").max().alias("max_shrinkage_m0_pp"),
            pl.col("m1_shrinkage_pp").max().alias("max_shrinkage_m1_pp"),
        )
        .join(order, on="band")
        .sort("_o")
        .drop("_o")
    )


# ---------------------------------------------------------------- variance decomposition
def variance_components(idata) -> pl.DataFrame:
    """Per-draw variance shares on the logit scale, summarised (mean, 2.5%, 97.5%)."""
    post = idata.posterior
    names = [n for n in COMPONENTS if n in post]
    var = np.stack([_flat(post[n]) ** 2 for n in names], axis=1)  # (S, K)
    full = np.column_stack([np.full(var.shape[0], LOGISTIC_VAR), var])
    pct_total = 100 * full / full.sum(1, keepdims=True)
    pct_latent = 100 * var / var.sum(1, keepdims=True)
    rows = []
    for j, label in enumerate([OBSERVATION] + [COMPONENTS[n] for n in names]):
        v, t = _summary(full[:, j]), _summary(pct_total[:, j])
        lat = _summary(pct_latent[:, j - 1]) if j else (None, None, None)
        rows.append(dict(zip(
            ["component", "variance", "variance_lower", "variance_upper", "pct_total", "pct_total_lower",
             "pct_total_upper", "pct_latent", "pct_latent_lower", "pct_latent_upper"],
            [label, *map(float, v), *map(float, t), *[None if x is None else float(x) for x in lat]],
        )))
    return pl.DataFrame(rows)


def variance_markdown(table: pl.DataFrame) -> str:
    """The page's two markdown tables (full and latent-scale decomposition)."""
    iv = lambda r, k, f, u="": f"{r[k]:{f}}{u} [{r[k + '_lower']:{f}}{u}, {r[k + '_upper']:{f}}{u}]"  # noqa: E731
    lines = ["| Component | Variance | % of total | Interpretation |", "|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        obs = r["component"] == OBSERVATION
        var = f"π²/3 = {LOGISTIC_VAR:.2f}" if obs else iv(r, "variance", ".3f")
        pct = f"{r['pct_total']:.1f}%" if obs else iv(r, "pct_total", ".1f", "%")
        lines.append(f"| {r['component']} | {var} | {pct} | {INTERPRETATION[r['component']]} |")
    lines += ["", "| Component | % of latent variance |", "|---|---|"]
    for r in table.filter(pl.col("component") != OBSERVATION).iter_rows(named=True):
        lines.append(f"| {r['component']} | {iv(r, 'pct_latent', '.1f', '%')} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- school SD and school effects
def school_sd_by_model(idatas: dict) -> pl.DataFrame:
    rows = []
    for key in ("m1", "m2", "m3"):
        if key in idatas:
            m, lo, hi = _summary(_flat(idatas[key].posterior["sd_school"]))
            rows.append({"model": key.upper(), "description": models.MODELS[key].description,
                         "sd_school": float(m), "lower": float(lo), "upper": float(hi)})
    return pl.DataFrame(rows)


def school_effect_summary(idata) -> pl.DataFrame:
    """Posterior mean, SD and 95% interval of each school's random intercept r_school (logit)."""
    r = _flat(idata.posterior["r_school"])
    m, lo, hi = _summary(r)
    return pl.DataFrame({
        "school_id": [str(s) for s in idata.posterior["school"].values],
        "mean": m, "sd": r.std(0, ddof=1), "lower": lo, "upper": hi,
    })


def school_random_effects(idata_m3, eligible: pl.DataFrame) -> pl.DataFrame:
    """Posterior summary of r_school per school with rank (1 = lowest mean)."""
    t = school_effect_summary(idata_m3)
    t = t.join(eligible.select("school_id", "mean_n_trials"), on="school_id", how="left")
    return t.with_columns(pl.col("mean").rank("ordinal").cast(pl.Int64).alias("rank")).sort("rank")


# ---------------------------------------------------------------- frequentist comparison
def frequentist_fit(sample: pl.DataFrame, max_schools: int | None = 1000, seed: int = 0) -> dict:
    """Logit-normal mixed model with statsmodels MixedLM (REML): school + cohort variance components.

    Empirical logits ``log((y+.5)/(n-y+.5))`` with year×subject fixed effects. The page's
    weights n·p·(1−p) are computed but NOT applied (MixedLM has no observation weights).
    """
    import pandas as pd
    import statsmodels.formula.api as smf

    schools = sorted(sample["school_id"].unique().to_list())
    used = schools
    if max_schools is not None and len(schools) > max_schools:
        used = sorted(np.random.default_rng(seed).choice(schools, max_schools, replace=False).tolist())
    d = sample.filter(pl.col("school_id").is_in(used))
    y, n = d["y_success"].to_numpy().astype(float), d["n_trials"].to_numpy().astype(float)
    p = (y + 0.5) / (n + 1)
    df = pd.DataFrame({
        "elog": np.log((y + 0.5) / (n - y + 0.5)), "school_id": d["school_id"].to_numpy(),
        "school_year_id": d["school_year_id"].to_numpy(), "year_subject": d["year_subject"].to_numpy(),
    })
    t0 = time.perf_counter()
    res = smf.mixedlm("elog ~ C(year_subject)", df, groups="school_id", re_formula="1",
                      vc_formula={"cohort": "0 + C(school_year_id)"}).fit(reml=True)
    seconds = time.perf_counter() - t0
    comp = {"school": float(res.cov_re.iloc[0, 0]), "cohort": float(res.vcomp[0]), "residual": float(res.scale)}
    total = sum(comp.values())
    return {"variance": comp, "pct": {k: 100 * v / total for k, v in comp.items()}, "fit_seconds": seconds,
            "n_schools": len(used), "n_schools_total": len(schools), "n_obs": d.height,
            "mean_weight": float(np.mean(n * p * (1 - p))), "converged": bool(res.converged), "weights_note": NO_WEIGHTS}


def frequentist_comparison(sample: pl.DataFrame, bayes_components: pl.DataFrame | None = None,
                           bayes_seconds: float | None = None, bayes_sample: str | None = None,
                           max_schools: int | None = 1000) -> pl.DataFrame:
    """The page's "Comparison with frequentist approach" table with measured values."""
    f = frequentist_fit(sample, max_schools)
    pct = f["pct"]
    freq_var = (f"school {pct['school']:.1f}%, cohort {pct['cohort']:.1f}%, residual {pct['residual']:.1f}% "
                "(REML variance components in one model)")
    bayes_var = "Direct from joint posterior"
    if bayes_components is not None:
        lat = bayes_components.filter(pl.col("pct_latent").is_not_null())
        bayes_var += ": " + ", ".join(
            f"{r['component']} {r['pct_latent']:.1f}% [{r['pct_latent_lower']:.1f}%, {r['pct_latent_upper']:.1f}%]"
            for r in lat.iter_rows(named=True)) + " of latent variance"
    rows = [
        ("Likelihood", "Logit-normal approximation (empirical logits)", "Exact binomial"),
        ("Weights", f"n·p·(1−p) computed (mean {f['mean_weight']:.1f}); {NO_WEIGHTS}", "Built into likelihood"),
        ("Uncertainty", "Point estimates + SE", "Full posterior distributions"),
        ("Variance decomposition", freq_var, bayes_var),
        ("Shrinkage", "Implicit in BLUPs", "Explicit, driven by n"),
        ("Speed", f"{f['fit_seconds']:.1f} s (MixedLM fit{'' if f['converged'] else ', NOT converged'})",
         "—" if bayes_seconds is None else f"{bayes_seconds:.0f} s sampling"),
        ("Sample", f"{f['n_schools']} of {f['n_schools_total']} schools, {f['n_obs']} observations",
         bayes_sample or "—"),
    ]
    return pl.DataFrame(rows, schema=["aspect", "frequentist", "bayesian"], orient="row")
