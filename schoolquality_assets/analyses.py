"""Tables, figures and the HTML report of the Bayesian multilevel page.

Pure functions (no Dagster): inputs are analysis samples (polars) and posteriors
(arviz InferenceData as built by :mod:`schoolquality_assets.models`); outputs are polars
DataFrames, PNG bytes (matplotlib Agg) or strings.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import time

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from scipy.special import expit, gammaln, log_expit, logsumexp  # noqa: E402

from schoolquality_assets import models  # noqa: E402

LOGISTIC_VAR = math.pi**2 / 3
BANDS = ("<=25", "26-100", ">100")
BAND_COLOURS = dict(zip(BANDS, plt.get_cmap("viridis_r")([0.0, 0.5, 1.0])))
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
M0_NOTE = "M0 excluded: a Normal density on proportions is not comparable with binomial probabilities"
NO_WEIGHTS = "weights not applied: statsmodels MixedLM has no observation weights"
SECTIONS = (
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


# ---------------------------------------------------------------- helpers
def figure_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _flat(da) -> np.ndarray:
    """(chain, draw, *dims) -> (chain*draw, *dims)."""
    v = np.asarray(da.values if hasattr(da, "values") else da)
    return v.reshape(-1, *v.shape[2:])


def _summary(x: np.ndarray, axis: int = 0) -> tuple:
    return x.mean(axis), np.quantile(x, 0.025, axis=axis), np.quantile(x, 0.975, axis=axis)


def band_of(mean_n: pl.Expr) -> pl.Expr:
    return pl.when(mean_n <= 25).then(pl.lit(BANDS[0])).when(mean_n <= 100).then(pl.lit(BANDS[1])).otherwise(pl.lit(BANDS[2]))


def _thin(idata: az.InferenceData, max_draws: int | None) -> az.InferenceData:
    """Keep every k-th draw (per chain) so that at most ~max_draws remain."""
    post = idata.posterior
    total = post.sizes["chain"] * post.sizes["draw"]
    groups = {g: idata[g] for g in ("constant_data", "observed_data") if g in idata.groups()}
    if max_draws is None or total <= max_draws:
        return az.InferenceData(posterior=post, **groups)
    step = math.ceil(total / max_draws)
    return az.InferenceData(posterior=post.isel(draw=slice(None, None, step)), **groups)


def _n_draws(idata) -> int:
    return idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]


def _reff(idata) -> float:
    """Relative efficiency for PSIS from the mean ESS of the SD hyperparameters.

    ``az.loo`` averages ESS over *all* posterior variables (tens of thousands for M3); the
    hyperparameters are the slowest-mixing quantities, so this is cheap and conservative.
    """
    post = idata.posterior
    if post.sizes["chain"] == 1:
        return 1.0
    names = [n for n in ("sd_school", "sd_cohort", "sd_profile") if n in post]
    ess = az.ess(post[names], method="mean")
    return float(np.clip(np.mean([float(ess[n]) for n in names]) / _n_draws(idata), 0.01, 1.0))


# ---------------------------------------------------------------- 1. shrinkage
def shrinkage(sample: pl.DataFrame, idata_m0, idata_m1) -> pl.DataFrame:
    """Per school: raw pooled proportion vs M0 / M1 posterior estimates (proportion scale)."""
    raw = (
        sample.group_by("school_id")
        .agg(
            pl.len().alias("n_obs"),
            pl.col("n_trials").mean().alias("mean_n"),
            (pl.col("y_success").sum() / pl.col("n_trials").sum()).alias("raw_proportion"),
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
        (100 * (pl.col("raw_proportion") - pl.col(f"m{k}_estimate")).abs()).alias(f"m{k}_shrinkage_pp") for k in (0, 1)
    ).select(
        "school_id", "n_obs", "mean_n", "band", "raw_proportion", "m0_estimate", "m1_estimate",
        "m0_shrinkage_pp", "m1_shrinkage_pp",
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
        )
        .join(order, on="band")
        .sort("_o")
        .drop("_o")
    )


def shrinkage_figures(table: pl.DataFrame) -> bytes:
    """Raw vs posterior estimate, M0 (left) and M1 (right), coloured by size band."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, key, title in zip(axes, ("m0", "m1"), ("M0: Normal (ignores n)", "M1: Binomial")):
        for band in BANDS:
            t = table.filter(pl.col("band") == band)
            ax.scatter(t["raw_proportion"], t[f"{key}_estimate"], s=8, alpha=0.6, color=BAND_COLOURS[band], label=f"n {band}")
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.set(title=title, xlabel="raw proportion", ylabel="posterior estimate")
    axes[1].legend(title="mean n")
    return figure_png(fig)


def shrinkage_vs_n_figure(table: pl.DataFrame) -> bytes:
    """Shrinkage (pp) against mean n, both models, log x-axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(table["mean_n"], table["m0_shrinkage_pp"], s=8, alpha=0.5, label="M0 (Normal)", color="tab:orange")
    ax.scatter(table["mean_n"], table["m1_shrinkage_pp"], s=8, alpha=0.5, label="M1 (Binomial)", color="tab:blue")
    ax.set(xscale="log", xlabel="mean n per observation", ylabel="|raw − posterior| (pp)")
    ax.legend()
    return figure_png(fig)


# ---------------------------------------------------------------- 2. variance decomposition
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


# ---------------------------------------------------------------- 3. school SD by model
def school_sd_by_model(idatas: dict) -> pl.DataFrame:
    rows = []
    for key in ("m1", "m2", "m3"):
        if key in idatas:
            m, lo, hi = _summary(_flat(idatas[key].posterior["sd_school"]))
            rows.append({"model": key.upper(), "description": models.MODELS[key].description,
                         "sd_school": float(m), "lower": float(lo), "upper": float(hi)})
    return pl.DataFrame(rows)


def school_sd_figure(table: pl.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(table.height)
    m = table["sd_school"].to_numpy()
    err = np.vstack([m - table["lower"].to_numpy(), table["upper"].to_numpy() - m])
    ax.errorbar(x, m, yerr=err, fmt="o", capsize=4)
    ax.set(xticks=x, xticklabels=table["model"].to_list(), ylabel="school SD (logit)", title="School SD by model (95% CrI)")
    return figure_png(fig)


# ---------------------------------------------------------------- 4. school random effects
def school_random_effects(idata_m3, eligible: pl.DataFrame) -> pl.DataFrame:
    """Posterior summary of r_school per school with rank (1 = lowest mean)."""
    r = _flat(idata_m3.posterior["r_school"])
    m, lo, hi = _summary(r)
    t = pl.DataFrame({
        "school_id": [str(s) for s in idata_m3.posterior["school"].values],
        "mean": m, "sd": r.std(0, ddof=1), "lower": lo, "upper": hi,
    })
    t = t.join(eligible.select("school_id", "mean_n_trials"), on="school_id", how="left")
    return t.with_columns(pl.col("mean").rank("ordinal").cast(pl.Int64).alias("rank")).sort("rank")


def caterpillar_figure(table: pl.DataFrame) -> bytes:
    """Ranked school intercepts with 95% CrI, coloured by mean n (small = yellow)."""
    t = table.sort("rank")
    fig, ax = plt.subplots(figsize=(10, 5))
    norm = matplotlib.colors.LogNorm(vmin=max(float(t["mean_n_trials"].min() or 1), 1), vmax=float(t["mean_n_trials"].max() or 2))
    colours = plt.get_cmap("viridis_r")(norm(t["mean_n_trials"].fill_null(1).to_numpy()))
    x = t["rank"].to_numpy()
    ax.vlines(x, t["lower"].to_numpy(), t["upper"].to_numpy(), colors=colours, lw=0.6, alpha=0.6)
    ax.scatter(x, t["mean"].to_numpy(), c=colours, s=4)
    ax.axhline(0, color="grey", lw=0.8)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis_r"), ax=ax, label="mean n")
    ax.set(xlabel="school rank", ylabel="r_school (logit)", title="School random effects (M3), 95% CrI")
    return figure_png(fig)


# ---------------------------------------------------------------- 5. LOO
def _psis_loo(ll: np.ndarray, reff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ll: (units, S) -> (elpd_i, p_loo_i, pareto_k) with az.psislw (last axis = draws)."""
    lw, k = az.psislw(-ll, reff)  # normalised, smoothed log weights
    elpd = logsumexp(lw + ll, axis=-1)
    lppd = logsumexp(ll, axis=-1) - math.log(ll.shape[-1])
    return elpd, lppd - elpd, np.asarray(k)


def pointwise_loo(idata, max_draws: int | None = 1000, chunk: int = 2000) -> dict:
    """PSIS-LOO per observation, computing the log-likelihood in chunks of observations."""
    thin = _thin(idata, max_draws)
    reff, S = _reff(thin), _n_draws(thin)
    N = idata.constant_data.sizes["obs"]
    parts = []
    for a in range(0, N, chunk):
        ll = models.log_likelihood(thin, slice(a, min(a + chunk, N)))
        parts.append(_psis_loo(ll.reshape(S, -1).T, reff))
    elpd, p, k = (np.concatenate(x) for x in zip(*parts))
    return {"elpd_i": elpd, "p_loo_i": p, "pareto_k": k, "draws_used": S, "reff": reff}


def _compare(pointwise: dict[str, dict], unit: str, note: str = "") -> pl.DataFrame:
    """loo_compare-style table from pointwise results keyed by model."""
    sizes = {len(v["elpd_i"]) for v in pointwise.values()}
    labels = [tuple(v["labels"]) for v in pointwise.values() if "labels" in v]
    if len(sizes) > 1 or len(set(labels)) > 1:
        raise ValueError(f"models were fitted to different data ({sizes} {unit}s): LOO not comparable")
    elpd = {m: float(v["elpd_i"].sum()) for m, v in pointwise.items()}
    best = max(elpd, key=elpd.get)
    rows = []
    for m, v in pointwise.items():
        n = len(v["elpd_i"])
        diff = v["elpd_i"] - pointwise[best]["elpd_i"]
        rows.append({
            "model": m.upper(), "description": models.MODELS[m].description if m in models.MODELS else m,
            "unit": unit, "n_units": n, "elpd_loo": elpd[m], "se": float(np.sqrt(n * np.var(v["elpd_i"]))),
            "p_loo": float(v["p_loo_i"].sum()), "elpd_diff": elpd[m] - elpd[best],
            "se_diff": None if m == best else float(np.sqrt(n * np.var(diff))),
            "pareto_k_gt_0_7": int((v["pareto_k"] > 0.7).sum()), "pareto_k_share": float((v["pareto_k"] > 0.7).mean()),
            "draws_used": int(v["draws_used"]), "note": note,
        })
    t = pl.DataFrame(rows).sort("elpd_loo", descending=True)
    return t.with_columns(pl.int_range(1, t.height + 1).alias("rank"))


def _with_m0_row(table: pl.DataFrame, idatas: dict) -> pl.DataFrame:
    if "m0" not in idatas:
        return table
    row = pl.DataFrame({"model": ["M0"], "description": [models.MODELS["m0"].description], "note": [M0_NOTE]})
    return pl.concat([table, row], how="diagonal_relaxed")


def loo_table(idatas: dict, max_draws: int | None = 1000, chunk: int = 2000) -> pl.DataFrame:
    """PSIS-LOO per observation for the binomial models m1..m3 present, compared."""
    pw = {m: pointwise_loo(idatas[m], max_draws, chunk) for m in ("m1", "m2", "m3") if m in idatas}
    return _with_m0_row(_compare(pw, "observation", M0_NOTE), idatas)


def cohort_groups(sample: pl.DataFrame) -> np.ndarray:
    """Cohort label (school_year_id) of each observation in model order."""
    return sample.sort("school_id", "year", "subject")["school_year_id"].to_numpy()


def _group_index(idata, groups) -> tuple[np.ndarray, list]:
    """The model's own cohorts when it has them, else ``groups`` (labels sorted, as models._index)."""
    if "cohort_idx" in idata.constant_data:
        return idata.constant_data["cohort_idx"].values, [str(c) for c in idata.posterior["cohort"].values]
    if groups is None:
        raise ValueError("model has no cohorts: pass groups (e.g. cohort_groups(sample))")
    labels, idx = np.unique(np.asarray(groups), return_inverse=True)
    return idx, [str(x) for x in labels]


def _agh_log_marginal(eta, y, n, logc, gid, G, sd, u0, nodes, weights, newton=12):
    """log ∫ Π_i Binom(y_i|n_i, expit(eta_i+u)) N(u|0,sd) du per (draw, group) by adaptive GH.

    eta (S, n_obs); gid (n_obs,) local group ids 0..G-1; sd (S,); u0 (S, G) start values.
    """
    red = lambda a: _gsum(a, gid, G)  # noqa: E731
    u = u0.copy()
    prec = 1 / sd[:, None] ** 2
    for _ in range(newton):  # Newton steps to the mode (strictly concave), step clipped for safety
        p = expit(eta + u[:, gid])
        grad = red(y - n * p) - u * prec
        hess = -red(n * p * (1 - p)) - prec
        step = np.clip(grad / hess, -1.0, 1.0)
        u = u - step
        if np.abs(step).max() < 1e-9:
            break
    p = expit(eta + u[:, gid])
    scale = 1 / np.sqrt(red(n * p * (1 - p)) + prec)  # Laplace curvature scale
    terms = []
    for x, w in zip(nodes, weights):
        v = u + math.sqrt(2) * scale * x
        e = eta + v[:, gid]
        f = red(logc + y * log_expit(e) + (n - y) * log_expit(-e))
        f += -0.5 * v**2 * prec - np.log(sd)[:, None] - 0.5 * math.log(2 * math.pi)
        terms.append(f + x * x + math.log(w))
    return logsumexp(np.stack(terms), axis=0) + np.log(math.sqrt(2) * scale)


def _gsum(a: np.ndarray, gid: np.ndarray, G: int) -> np.ndarray:
    """Sum columns of a (S, n) into groups -> (S, G); gid sorted, every group 0..G-1 present."""
    starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
    assert len(starts) == G
    return np.add.reduceat(np.broadcast_to(a, (a.shape[0], len(gid))), starts, axis=1)


def cohort_log_marginal(idata, groups=None, n_nodes: int = 15, max_draws: int | None = 1000,
                        chunk: int = 2000) -> tuple[list, np.ndarray, np.ndarray]:
    """(labels, n_obs per group, log p_s(y_c) of shape (S, C)) with the cohort effect integrated out.

    Models with cohorts use their own cohort index (``groups`` ignored); models without
    ``r_cohort`` (M1) need ``groups`` and get the plain sum of binomial log-likelihoods per group.
    Groups are processed in chunks of ~``chunk`` observations to bound memory.
    """
    thin = _thin(idata, max_draws)
    S = _n_draws(thin)
    gidx, labels = _group_index(thin, groups)
    C = len(labels)
    order = np.argsort(gidx, kind="stable")
    bounds = np.searchsorted(gidx[order], np.arange(C + 1))
    counts = np.diff(bounds)
    post = thin.posterior
    integrate = "r_cohort" in post
    nodes, weights = np.polynomial.hermite.hermgauss(n_nodes)
    if integrate:  # copied once (thinned views are not contiguous)
        r, sd = post["r_cohort"].values.reshape(S, -1), _flat(post["sd_cohort"])
    out = np.empty((S, C))
    c0 = 0
    while c0 < C:
        c1 = int(np.searchsorted(bounds, bounds[c0] + chunk, side="right")) - 1
        c1 = min(max(c1, c0 + 1), C)
        obs = order[bounds[c0]:bounds[c1]]
        gid = gidx[obs] - c0
        if not integrate:
            out[:, c0:c1] = _gsum(models.log_likelihood(thin, obs).reshape(S, -1), gid, c1 - c0)
        else:
            eta = models.linear_predictor(thin, obs).reshape(S, -1) - r[:, gidx[obs]]  # eta without cohort
            y = thin.observed_data["y_success"].values[obs].astype(float)
            n = thin.constant_data["n_trials"].values[obs].astype(float)
            logc = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
            u0 = r[:, c0:c1]  # start Newton at the current draw of the cohort effect
            out[:, c0:c1] = _agh_log_marginal(eta, y, n, logc, gid, c1 - c0, sd, u0, nodes, weights)
        c0 = c1
    return labels, counts, out


def cohort_integrated_loo(idata, n_nodes: int = 15, groups=None, max_draws: int | None = 1000,
                          chunk: int = 2000) -> pl.DataFrame:
    """Leave-one-cohort-out PSIS with the cohort effect integrated out (adaptive GH)."""
    labels, counts, logp = cohort_log_marginal(idata, groups, n_nodes, max_draws, chunk)
    thin = _thin(idata, max_draws)
    elpd, p, k = _psis_loo(logp.T, _reff(thin))
    return pl.DataFrame({"cohort": [str(x) for x in labels], "n_obs": counts, "elpd": elpd, "p_loo": p,
                         "pareto_k": k, "draws_used": np.full(len(labels), logp.shape[0])})


def cohort_loo_table(idatas: dict, groups=None, n_nodes: int = 15, max_draws: int | None = 1000,
                     chunk: int = 2000) -> pl.DataFrame:
    """Leave-one-cohort-out comparison of m1..m3 (same shape as :func:`loo_table`, unit='cohort')."""
    pw = {}
    for m in ("m1", "m2", "m3"):
        if m in idatas:
            t = cohort_integrated_loo(idatas[m], n_nodes, groups, max_draws, chunk)
            pw[m] = {"elpd_i": t["elpd"].to_numpy(), "p_loo_i": t["p_loo"].to_numpy(),
                     "pareto_k": t["pareto_k"].to_numpy(), "draws_used": int(t["draws_used"][0]),
                     "labels": t["cohort"].to_list()}
    return _with_m0_row(_compare(pw, "cohort", M0_NOTE), idatas)


# ---------------------------------------------------------------- 6. MCMC diagnostics
HYPER = ("b_Intercept", "Intercept", "b", "sd_school", "sd_cohort", "sd_profile", "sigma")


def _max(ds) -> float:
    return float(max(float(np.nanmax(ds[v].values)) for v in ds.data_vars))


def convergence_summary(idata) -> dict:
    """Convergence figures for one model (arviz diagnostics)."""
    post, stats = idata.posterior, idata.get("sample_stats")
    main = [v for v in HYPER if v in post] + ["r_school"]
    sds = [v for v in ("sd_school", "sd_cohort", "sd_profile", "sigma") if v in post]
    out = {"model": str(idata.attrs.get("model", "")), "max_rhat": _max(az.rhat(post[main]))}
    for v in ("r_cohort", "r_profile"):
        if v in post:
            r = az.rhat(post[[v]])[v].values
            out[f"{v}_share_rhat_gt_1_01"] = float((r > 1.01).mean())
            out[f"{v}_max_rhat"] = float(np.nanmax(r))
        else:
            out[f"{v}_share_rhat_gt_1_01"] = out[f"{v}_max_rhat"] = None
    bulk, tail = az.ess(post[sds], method="bulk"), az.ess(post[sds], method="tail")
    out["min_ess_bulk_sd"] = float(min(float(bulk[v]) for v in sds))
    out["min_ess_tail_sd"] = float(min(float(tail[v]) for v in sds))
    has = lambda v: stats is not None and v in stats  # noqa: E731
    out["divergences"] = int(stats["diverging"].values.sum()) if has("diverging") else None
    out["min_bfmi"] = float(np.min(az.bfmi(idata))) if has("energy") else None
    out["max_treedepth_hits"] = int(stats["max_treedepth_hit"].values.sum()) if has("max_treedepth_hit") else None
    sec = idata.attrs.get("sample_seconds")
    out["sample_seconds"] = float(sec) if sec is not None else None
    return out


def mcmc_diagnostics(idatas: dict) -> pl.DataFrame:
    rows = []
    for key, idata in idatas.items():
        rows.append(convergence_summary(idata) | {"model": key.upper()})
    return pl.DataFrame(rows, infer_schema_length=None)


def trace_plot_png(idata, var_names) -> bytes:
    axes = az.plot_trace(idata, var_names=list(var_names), compact=True)
    return figure_png(np.ravel(axes)[0].figure)


# ---------------------------------------------------------------- 7. frequentist comparison
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


# ---------------------------------------------------------------- 9. HTML report
def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return html.escape(str(v))


def table_html(title: str, df: pl.DataFrame) -> str:
    """HTML table; floats with 6 significant digits, nulls empty."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in df.iter_rows())
    return (f'<table id="table-{slug(title)}"><caption>{html.escape(title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def report_html(partition: str, sections: dict) -> str:
    """Self-contained report; sections are rendered in the page's order, missing ones skipped."""
    parts = [f"<h1>Bayesian multilevel model — partition {html.escape(partition)}</h1>",
             "<p><em>Numbers in tables are shown with 6 significant digits.</em></p>"]
    for name in SECTIONS:
        if name not in sections:
            continue
        s = sections[name]
        parts.append(f'<section id="section-{slug(name)}"><h2>{html.escape(name)}</h2>')
        if s.get("text"):
            parts.append("".join(f"<p>{html.escape(p)}</p>" for p in s["text"].split("\n\n")))
        parts += [table_html(t, df) for t, df in s.get("tables", [])]
        for title, png in s.get("figures", []):
            b64 = base64.b64encode(png).decode()
            parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}"/>'
                         f"<figcaption>{html.escape(title)}</figcaption></figure>")
        parts.append("</section>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>schoolquality {html.escape(partition)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
