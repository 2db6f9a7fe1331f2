"""The page's tables: shrinkage, variance decomposition, school SD and school effects, and the
frequentist comparison. Pure functions (no Dagster): analysis samples (polars) and posteriors
(arviz InferenceData as built by :mod:`schoolquality_assets.models.specs`) in, polars frames out.
"""

from __future__ import annotations

import math
import time

import numpy as np
import polars as pl
from scipy.special import expit

from schoolquality_assets.models import specs
from schoolquality_assets.models.specs import draws_matrix as _flat

LOGISTIC_VAR = math.pi**2 / 3
BANDS = ("<=25", "26-100", ">100")
COMPONENTS = {  # posterior SD name -> table label
    "sd_school": "School (persistent)",
    "sd_cohort": "Cohort (school×year)",
    "sd_profile": "Subject profile",
}
OBSERVATION = "Observation (binomial)"
INTERPRETATION = {
    OBSERVATION: "Variance of the latent logistic residual, π²/3 (theoretical, not estimated; the page calls it "
                 "binomial sampling noise)",
    "School (persistent)": "Stable school quality across years and subjects",
    "Cohort (school×year)": "Year-specific shared movement across subjects",
    "Subject profile": "School×subject divergence (e.g. strong in Math, weak in Writing)",
}


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
    """Schools, mean n and shrinkage (pp: mean, p90, max) per sample-size band, small to large.

    M0 pools a school by its number of observations, not its students; small schools also tend
    to have fewer observations. So the ``*_modal_obs`` columns repeat the band means over only
    the schools with the most common number of observations (``modal_n_obs``): like for like.
    """
    order = pl.DataFrame({"band": list(BANDS), "_o": [0, 1, 2]})
    modal = int(table["n_obs"].mode().max())
    same = pl.col("n_obs") == modal
    return (
        table.group_by("band")
        .agg(
            pl.lit(modal).alias("modal_n_obs"),
            same.sum().alias("schools_modal_obs"),
            pl.col("m0_shrinkage_pp").filter(same).mean().alias("mean_shrinkage_m0_pp_modal_obs"),
            pl.col("m1_shrinkage_pp").filter(same).mean().alias("mean_shrinkage_m1_pp_modal_obs"),
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
            rows.append({"model": key.upper(), "description": specs.MODELS[key].description,
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
FREQUENTIST_DEFINITION = (
    "Logit-normal mixed model (REML, statsmodels MixedLM) on every school of the partition: empirical logit "
    "log((y+0.5)/(n−y+0.5)) = year×subject + school + cohort (school×year) + e, Var(e_i) = σ²/w_i with the "
    "page's weight w_i = n·p·(1−p), p = (y+0.5)/(n+1). Noise = the mean sampling variance mean_i(σ²/w_i). "
    "One model: shares of latent (school + cohort) and of latent + noise. By subtraction across models "
    "(fixed effects only → + school → + cohort): each added effect's share is the fraction of the fixed-only "
    "model's residual variance it removes, (σ²_before − σ²_after)/σ²_fixed — the same fraction at every "
    "observation, as each residual variance is σ²/w_i; noise = σ²_full/σ²_fixed. The two differ when weights "
    "vary: the fixed-only model can express a school's variance, equal at every observation, only as σ²/w_i. "
    "Bayesian shares use the same denominators, with noise = mean(1/w) (the binomial's, i.e. σ² = 1)."
)
NO_WEIGHTS = "statsmodels MixedLM has no observation weights"
# MixedLM optimisers tried in turn until one converges; gtol applies to the log-likelihood per observation
FIT_OPTIONS = {"method": ["bfgs", "powell"], "gtol": 1e-7}


def empirical_logits(y: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical logits log((y+½)/(n−y+½)) and the page's weights w = n·p·(1−p), p = (y+½)/(n+1)."""
    y, n = np.asarray(y, float), np.asarray(n, float)
    p = (y + 0.5) / (n + 1)
    return np.log((y + 0.5) / (n - y + 0.5)), n * p * (1 - p)


def _nested_vc(groups: np.ndarray, nested: np.ndarray, scale: np.ndarray):
    """VCSpec of one component nested in ``groups``: per group, one column per level, entries ``scale``."""
    from statsmodels.regression.mixed_linear_model import VCSpec

    gix = np.unique(groups, return_inverse=True)[1]  # MixedLM orders groups by sorted label
    mats, names = [], []
    for rows in np.split(np.argsort(gix, kind="stable"), np.cumsum(np.bincount(gix))[:-1]):
        lev, loc = np.unique(nested[rows], return_inverse=True)
        m = np.zeros((rows.size, lev.size))
        m[np.arange(rows.size), loc] = scale[rows]
        mats.append(m)
        names.append([str(v) for v in lev])
    return VCSpec(["cohort"], [names], [mats])


def moment_start(endog, exog, groups, weights, nested) -> tuple[float, float]:
    """Method-of-moments (school, cohort) variances relative to sigma2, from weighted LS residuals r:
    sigma2 = weighted spread of r within cohorts; cohort = spread of the cohort means r_c within schools
    less sigma2·mean(1/W_c) (W_c = Σ w in the cohort); school = variance of the school means of r_c less
    what cohorts and noise add to it. Floored at 0.01: a start for the optimiser, not an estimate."""
    s = np.sqrt(weights)
    r = endog - exog @ np.linalg.lstsq(exog * s[:, None], endog * s, rcond=None)[0]
    keys = np.column_stack([np.unique(groups, return_inverse=True)[1], np.unique(nested, return_inverse=True)[1]])
    pairs, cix = np.unique(keys, axis=0, return_inverse=True)
    cix, g = cix.ravel(), pairs[:, 0]  # cohort of each row, school of each cohort
    wc = np.bincount(cix, weights)
    rc = np.bincount(cix, weights * r) / wc
    s2 = np.sum(weights * (r - rc[cix]) ** 2) / max(len(r) - len(wc), 1)
    k = np.bincount(g)  # cohorts per school
    mg = np.bincount(g, rc) / k
    multi = k[g] > 1
    tc = 0.0
    if multi.any():
        tc = np.sum((rc - mg[g])[multi] ** 2) / np.sum(k - 1) - s2 * np.mean(1 / wc[multi])
    ts = np.var(mg) - np.mean((max(tc, 0.0) + s2 * np.bincount(g, 1 / wc) / k) / k)
    return max(ts / s2, 0.01), max(tc / s2, 0.01)


def weighted_mixedlm(endog, exog, groups, weights, nested=None, reml: bool = True) -> dict:
    """Linear mixed model with observation weights: y = Xb + Z_g u + Z_c v + e, u ~ N(0, s2_g),
    v ~ N(0, s2_c) (``nested`` levels within ``groups``), Var(e_i) = sigma2 / w_i.

    MixedLM has no weights, so every row is multiplied by sqrt(w_i) (response, fixed-effect columns and
    the random-effect design entries) and the homoscedastic model is fitted. This is exact: with
    W = diag(w), V = Z G Z' + sigma2 W^-1 and y* = W^½ y, X* = W^½ X, Z* = W^½ Z,
    V* = W^½ V W^½ = Z* G Z*' + sigma2 I. Then
      ML:   log f(y) = log f*(y*) + ½ log|W|   (Jacobian of y -> y*, constant in the parameters);
      REML: log|V*| = log|V| + log|W|,  X*'V*^-1 X* = X'V^-1 X,  r*'V*^-1 r* = r'V^-1 r (r = y − Xb),
    so both criteria differ from the weighted model's by the constant ½ log|W|: same maximiser, same
    variance estimates, same GLS b and the same BLUPs (G Z*'V*^-1 r* = G Z'V^-1 r).
    Starts from :func:`moment_start` (MixedLM's default start, variances = sigma2, is far off once
    the design carries √w and BFGS can stop short of the optimum).
    """
    from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams

    endog, exog, groups, w = (np.asarray(a) for a in (endog, exog, groups, weights))
    s = np.sqrt(w.astype(float))
    vc = None if nested is None else _nested_vc(groups, np.asarray(nested), s)
    model = MixedLM(endog * s, exog * s[:, None], groups=groups, exog_re=s[:, None], exog_vc=vc)
    t0 = time.perf_counter()
    rel_school, rel_cohort = moment_start(endog, exog, groups, w, groups if nested is None else nested)
    start = MixedLMParams.from_components(np.zeros(exog.shape[1]), cov_re=np.array([[rel_school]]),
                                          vcomp=np.array([rel_cohort] if vc is not None else []))
    res = model.fit(reml=reml, start_params=start, **FIT_OPTIONS)
    return {"school": float(np.asarray(res.cov_re)[0, 0]), "cohort": float(res.vcomp[0]) if vc is not None else None,
            "sigma2": float(res.scale), "fe_params": np.asarray(res.fe_params), "llf": float(res.llf),
            "converged": bool(res.converged), "seconds": time.perf_counter() - t0}


def weighted_ls_sigma2(endog, exog, weights, reml: bool = True) -> float:
    """sigma2 of the fixed-effects-only model, Var(e_i) = sigma2 / w_i (REML: RSS_w / (N − p))."""
    s = np.sqrt(np.asarray(weights, float))
    ys, xs = np.asarray(endog, float) * s, np.asarray(exog, float) * s[:, None]
    rss = float(np.sum((ys - xs @ np.linalg.lstsq(xs, ys, rcond=None)[0]) ** 2))
    return rss / float(len(ys) - np.linalg.matrix_rank(xs) if reml else len(ys))


def frequentist_design(sample: pl.DataFrame, max_schools: int | None = None, seed: int = 0) -> dict:
    """Empirical logits, weights, year×subject design (treatment coded), school and cohort keys."""
    schools = sorted(sample["school_id"].unique().to_list())
    used = schools
    if max_schools is not None and len(schools) > max_schools:
        used = sorted(np.random.default_rng(seed).choice(schools, max_schools, replace=False).tolist())
    d = sample.filter(pl.col("school_id").is_in(used))
    elog, w = empirical_logits(d["y_success"].to_numpy(), d["n_trials"].to_numpy())
    x = np.column_stack([np.ones(d.height), specs.design_matrix(d["year_subject"])[0]])
    return {"endog": elog, "weights": w, "exog": x, "groups": d["school_id"].to_numpy(),
            "nested": d["school_year_id"].to_numpy(), "n_schools": len(used), "n_schools_total": len(schools),
            "n_obs": d.height}


def _shares(parts: dict) -> dict:
    total = sum(parts.values())
    return {k: 100 * v / total for k, v in parts.items()}


def frequentist_fit(sample: pl.DataFrame, max_schools: int | None = None, seed: int = 0) -> dict:
    """The page's frequentist model on every school of ``sample``; see FREQUENTIST_DEFINITION.

    ``variance``/``pct``: one-model REML components (school, cohort, noise = mean sampling variance
    sigma2·mean(1/w)); ``pct_latent``: school and cohort only; ``subtraction``: shares by subtraction
    across the three models (sum to 100); ``sigma2``: residual scales of the three models.
    """
    d = frequentist_design(sample, max_schools, seed)
    args = (d["endog"], d["exog"], d["groups"], d["weights"])
    t0 = time.perf_counter()
    s2_fixed = weighted_ls_sigma2(d["endog"], d["exog"], d["weights"])
    school = weighted_mixedlm(*args)
    full = weighted_mixedlm(*args, nested=d["nested"])
    seconds_all = time.perf_counter() - t0
    s2 = {"fixed": s2_fixed, "school": school["sigma2"], "full": full["sigma2"]}
    mean_inv_w = float(np.mean(1 / d["weights"]))
    var = {"school": full["school"], "cohort": full["cohort"], "noise": full["sigma2"] * mean_inv_w}
    sub = {"school": s2["fixed"] - s2["school"], "cohort": s2["school"] - s2["full"], "noise": s2["full"]}
    return {"variance": var, "pct": _shares(var), "pct_latent": _shares({k: var[k] for k in ("school", "cohort")}),
            "subtraction": _shares(sub), "sigma2": s2, "mean_inv_weight": mean_inv_w,
            "mean_weight": float(np.mean(d["weights"])), "fit_seconds": full["seconds"], "sequence_seconds": seconds_all,
            "converged": school["converged"] and full["converged"], "n_schools": d["n_schools"],
            "n_schools_total": d["n_schools_total"], "n_obs": d["n_obs"]}


def _bayes_variance_cell(components: pl.DataFrame | None, mean_inv_w: float) -> str:
    """Shares of latent variance (per-draw intervals) and, at posterior-mean variances, of latent + noise,
    noise = the binomial sampling variance of the empirical logit mean(1/w): the frequentist noise at σ² = 1."""
    if components is None:
        return "Direct from joint posterior"
    lat = components.filter(pl.col("pct_latent").is_not_null())
    latent = ", ".join(f"{r['component']} {r['pct_latent']:.1f}% [{r['pct_latent_lower']:.1f}%, "
                       f"{r['pct_latent_upper']:.1f}%]" for r in lat.iter_rows(named=True))
    with_noise = _shares(dict(zip(lat["component"], lat["variance"])) | {"noise": mean_inv_w})
    noisy = ", ".join(f"{k} {v:.1f}%" for k, v in with_noise.items())
    return (f"Direct from joint posterior. Share of latent variance ({' + '.join(lat['component'])}): {latent}. "
            f"Share of latent + noise (noise = binomial sampling variance of the empirical logit, mean(1/w) = "
            f"{mean_inv_w:.3f}, the frequentist noise at σ² = 1; posterior-mean variances): {noisy}")


def frequentist_comparison(sample: pl.DataFrame, bayes_components: pl.DataFrame | None = None,
                           bayes_seconds: float | None = None, bayes_sample: str | None = None,
                           max_schools: int | None = None) -> pl.DataFrame:
    """The page's "Comparison with frequentist approach" table with measured values. Both variance cells
    give shares of latent variance and of latent + noise, with the same noise (mean sampling variance of
    the empirical logit); see FREQUENTIST_DEFINITION and :func:`_bayes_variance_cell`."""
    f = frequentist_fit(sample, max_schools)
    pct, sub, lat, s2 = f["pct"], f["subtraction"], f["pct_latent"], f["sigma2"]
    freq_var = (
        f"One model (REML). Share of latent variance (school + cohort): school {lat['school']:.1f}%, cohort "
        f"{lat['cohort']:.1f}%. Share of latent + noise (noise = mean sampling variance mean(σ²/w) = "
        f"{f['variance']['noise']:.3f}): school {pct['school']:.1f}%, cohort {pct['cohort']:.1f}%, noise "
        f"{pct['noise']:.1f}%. By subtraction across models (fixed effects only → + school → + cohort; share of "
        f"the fixed-effects-only residual variance that each added effect removes): school {sub['school']:.1f}%, "
        f"cohort {sub['cohort']:.1f}%, noise left {sub['noise']:.1f}%"
    )
    rows = [
        ("Likelihood", "Logit-normal approximation: empirical logits log((y+0.5)/(n−y+0.5)), Normal residual "
         f"σ²/w (σ² estimated = {s2['full']:.3f}; 1 = binomial noise only); year×subject fixed effects; "
         "no subject-profile component", "Exact binomial"),
        ("Weights", f"n·p·(1−p) with p = (y+0.5)/(n+1) (the page does not say which p; mean w {f['mean_weight']:.1f}); "
         f"{NO_WEIGHTS}, so every row is multiplied by √w: exactly the weighted model's REML estimates",
         "Built into likelihood"),
        ("Uncertainty", "Point estimates + SE", "Full posterior distributions"),
        ("Variance decomposition", freq_var, _bayes_variance_cell(bayes_components, f["mean_inv_weight"])),
        ("Shrinkage", "Implicit in BLUPs", "Explicit, driven by n"),
        ("Speed", f"{f['fit_seconds']:.1f} s (school + cohort MixedLM fit; {f['sequence_seconds']:.1f} s for the "
         f"three-model sequence){'' if f['converged'] else ', NOT converged'}",
         "—" if bayes_seconds is None else f"{bayes_seconds:.0f} s sampling"),
        ("Sample", f"{f['n_schools']} of {f['n_schools_total']} schools, {f['n_obs']} observations",
         bayes_sample or "—"),
    ]
    return pl.DataFrame(rows, schema=["aspect", "frequentist", "bayesian"], orient="row")
