"""Every figure of the report, each named by what it shows; PNG bytes from matplotlib (Agg).
``label(name)`` is the figure's short title (Dagster UI), ``caption(name)`` what it shows (report)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from scipy.stats import gaussian_kde  # noqa: E402

from schoolquality_assets.analyses.tables import BANDS  # noqa: E402

BAND_COLOURS = dict(zip(BANDS, plt.get_cmap("viridis_r")([0.15, 0.5, 0.9])))
CHAIN_COLOURS = plt.get_cmap("tab10").colors
MODEL_COLOURS = {"M0": "tab:orange", "M1": "tab:blue", "M2": "tab:green", "M3": "tab:purple"}

FIGURES = {  # name -> (label, caption)
    "shrinkage_arrows": (
        "Shrinkage per school, M0 vs M1, by school size",
        "Shrinkage per school: each line runs from the school's no-pooling estimate (0 on the y-axis) to its "
        "posterior mean (dot), in percentage points, against the no-pooling estimate; M0 (Normal, ignores n) left, "
        "M1 (binomial) right, one row per band of mean students per observation; the "
        "y-axis is shared, so line lengths compare across models and bands."),
    "shrinkage_vs_n": (
        "Shrinkage against school size, M0 and M1",
        "Shrinkage (|no-pooling estimate − posterior mean|, percentage points) of every school against its mean "
        "number of students per observation (log scale), M0 and M1."),
    "variance_shares": (
        "Variance decomposition, latent shares (M3, M2)",
        "Share of the latent variance (school + cohort + subject profile, logit scale) per component: posterior "
        "mean with 95% interval, M3 and M2."),
    "school_sd_by_model": (
        "School SD by model (M1-M3)",
        "School SD (logit scale) under M1, M2 and M3: posterior mean with 95% interval."),
    "school_effects_caterpillar": (
        "School random effects, M3 (caterpillar)",
        "M3 school effects r_school (logit scale) ranked from lowest to highest, with 95% intervals; colour is the "
        "mean number of students per observation (yellow = small)."),
}
FIGURES |= {
    "school_ranks_league_table": (
        "League table: school ranks with 95% intervals (M2)",
        "Every school's posterior median rank under M2 (1 = lowest school effect), schools ordered by it, with "
        "its 95% rank interval (2.5% and 97.5% quantiles of the school's rank over the posterior draws); colour "
        "is the band of mean students per observation. A long vertical line: the data cannot place the school."),
}
FIGURES |= {
    "ppc_p_values": (
        "Posterior predictive p-values by model and statistic",
        "Each dot is the posterior predictive p-value P(T_rep >= T_obs) of one statistic under one model "
        "(replications with new cohort and profile effects); the shaded bands are outside [0.025, 0.975], where a "
        "statistic says the model does not reproduce the data."),
    "holdout_coverage": (
        "Held-out year: coverage of the 50% and 90% predictive intervals",
        "Share of the latest year's results inside each model's 50% and 90% posterior predictive intervals when "
        "fitted to the earlier years, beside the baselines; the dashed lines are the nominal 50% and 90%."),
}
FIGURES |= {
    f"trace_{k}": (f"Trace plot, {k.upper()} SDs",
                   f"{k.upper()}: posterior density (left) and trace (right) of each SD hyperparameter, one colour per "
                   "chain; overlapping chains that mix without trends indicate convergence.")
    for k in ("m0", "m1", "m2", "m3")
}


def label(name: str) -> str:
    """Short title of a figure: what it shows and which model."""
    return FIGURES.get(name, (name.replace("_", " "), ""))[0]


def caption(name: str) -> str:
    """Sentence under a figure in the report."""
    return FIGURES.get(name, ("", label(name)))[1]


def figure_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def band_label(band: str) -> str:
    return band.replace("<=", "≤").replace("-", "–")


SHRINKAGE_PANELS = (  # model, its no-pooling estimate, its posterior mean, title
    ("M0", "raw_mean_proportion", "m0_estimate", "M0: Normal on proportions (ignores n)"),
    ("M1", "raw_proportion", "m1_estimate", "M1: Binomial (uses n)"),
)


def shrinkage_arrows_png(table: pl.DataFrame) -> bytes:
    """Per school a vertical line from its no-pooling estimate (y = 0) to its posterior mean (dot),
    in pp against the no-pooling estimate; M0 and M1 side by side, one row per size band."""
    fig, axes = plt.subplots(len(BANDS), 2, figsize=(11, 2.6 * len(BANDS)), sharex=True, sharey=True,
                             squeeze=False, constrained_layout=True)
    for row, band in zip(axes, BANDS):
        t = table.filter(pl.col("band") == band)
        for ax, (model, raw_col, est_col, title) in zip(row, SHRINKAGE_PANELS):
            raw = 100 * t[raw_col].to_numpy()
            shift = 100 * t[est_col].to_numpy() - raw
            ax.axhline(0, color="grey", lw=0.8)
            ax.vlines(raw, 0, shift, color=BAND_COLOURS[band], lw=0.9)
            ax.scatter(raw, shift, color=BAND_COLOURS[band], s=6, zorder=3)
            mean_abs = float(np.mean(np.abs(shift))) if len(shift) else float("nan")
            ax.text(0.02, 0.94, f"{model}, n {band_label(band)}: {t.height} schools, mean |shift| {mean_abs:.2f} pp",
                    transform=ax.transAxes, va="top", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
            if band == BANDS[0]:
                ax.set_title(title)
        row[0].set_ylabel(f"n {band_label(band)}\nposterior − no-pooling (pp)")
    for ax in axes[-1]:
        ax.set_xlabel("no-pooling estimate (% of students at level 3-4)")
    return figure_png(fig)


def shrinkage_vs_n_png(table: pl.DataFrame) -> bytes:
    """Shrinkage (pp) against mean n, both models, log x-axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(table["mean_n"], table["m0_shrinkage_pp"], s=8, alpha=0.5, label="M0 (Normal)", color=MODEL_COLOURS["M0"])
    ax.scatter(table["mean_n"], table["m1_shrinkage_pp"], s=8, alpha=0.5, label="M1 (Binomial)", color=MODEL_COLOURS["M1"])
    ax.set(xscale="log", xlabel="mean students per observation (log scale)", ylabel="|no-pooling − posterior| (pp)",
           title="Shrinkage against school size")
    ax.legend()
    return figure_png(fig)


def variance_shares_png(table: pl.DataFrame) -> bytes:
    """Latent variance shares (%) per component with 95% intervals, one bar per model."""
    latent = table.filter(pl.col("pct_latent").is_not_null())
    models = latent["model"].unique(maintain_order=True).to_list()
    components = latent["component"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.8 * len(components)))
    height = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        t = latent.filter(pl.col("model") == model)
        y = np.array([components.index(c) for c in t["component"]]) + (i - (len(models) - 1) / 2) * height
        mean = t["pct_latent"].to_numpy()
        err = np.vstack([mean - t["pct_latent_lower"].to_numpy(), t["pct_latent_upper"].to_numpy() - mean])
        ax.barh(y, mean, height=0.9 * height, xerr=err, capsize=3, label=model,
                color=MODEL_COLOURS.get(model, f"C{i}"), alpha=0.8)
        for yy, m, hi in zip(y, mean, t["pct_latent_upper"].to_numpy()):
            ax.text(hi + 1, yy, f"{m:.1f}%", va="center", fontsize=8)
    ax.set(yticks=range(len(components)), yticklabels=components, xlim=(0, 105),
           xlabel="share of latent variance (%), posterior mean and 95% interval",
           title="Variance decomposition (latent scale)")
    ax.invert_yaxis()
    ax.legend(title="model", loc="lower right")
    return figure_png(fig)


def school_sd_png(table: pl.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(table.height)
    m = table["sd_school"].to_numpy()
    err = np.vstack([m - table["lower"].to_numpy(), table["upper"].to_numpy() - m])
    ax.errorbar(x, m, yerr=err, fmt="o", capsize=4)
    ax.set(xticks=x, xticklabels=table["model"].to_list(), xlabel="model", ylabel="school SD (logit)",
           title="School SD by model (95% interval)")
    return figure_png(fig)


def caterpillar_png(table: pl.DataFrame) -> bytes:
    """Ranked school intercepts with 95% CrI, coloured by mean n (small = yellow)."""
    t = table.sort("rank")
    fig, ax = plt.subplots(figsize=(10, 5))
    norm = matplotlib.colors.LogNorm(vmin=max(float(t["mean_n_trials"].min() or 1), 1), vmax=float(t["mean_n_trials"].max() or 2))
    colours = plt.get_cmap("viridis_r")(norm(t["mean_n_trials"].fill_null(1).to_numpy()))
    x = t["rank"].to_numpy()
    ax.vlines(x, t["lower"].to_numpy(), t["upper"].to_numpy(), colors=colours, lw=0.6, alpha=0.6)
    ax.scatter(x, t["mean"].to_numpy(), c=colours, s=4)
    ax.axhline(0, color="grey", lw=0.8)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis_r"), ax=ax, label="mean students per observation")
    ax.set(xlabel="school rank (1 = lowest effect)", ylabel="r_school (logit)", title="School random effects (M3), 95% interval")
    return figure_png(fig)


def trace_png(idata, var_names, model: str) -> bytes:
    """Density (left) and trace (right) per variable, one colour per chain, titled by model."""
    post = idata.posterior
    names = [v for v in var_names if v in post]
    scale = "proportion scale" if model == "M0" else "logit scale"
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 0.6 + 2.3 * len(names)), squeeze=False,
                             constrained_layout=True, gridspec_kw={"width_ratios": [1, 2]})
    for (dens, trace), name in zip(axes, names):
        for c, chain in enumerate(post[name].values):
            colour = CHAIN_COLOURS[c % len(CHAIN_COLOURS)]
            grid = np.linspace(chain.min(), chain.max(), 200)
            if np.ptp(chain) > 0:
                dens.plot(grid, gaussian_kde(chain)(grid), color=colour, lw=1)
            trace.plot(chain, color=colour, lw=0.5, alpha=0.8, label=f"chain {c + 1}")
        dens.set(xlabel=f"{name} ({scale})", ylabel="density")
        trace.set(xlabel="draw (after warmup)", ylabel=name)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="outside upper right", ncol=len(labels), fontsize=8)
    for line in legend.get_lines():
        line.set_linewidth(2)
    fig.suptitle(f"Trace plot, {model} SDs", x=0.02, ha="left")
    return figure_png(fig)


def league_table_png(rankings: pl.DataFrame, eligible: pl.DataFrame) -> bytes:
    """Schools ordered by posterior median rank (x), each with its 95% rank interval (vertical line)
    and median (dot), coloured by size band (mean_n_trials of ``eligible``); 1 = lowest effect.
    Ties in the median rank are ordered by p_below_average (more likely below = further left)."""
    from schoolquality_assets.analyses.tables import band_of

    size = pl.col("mean_n_trials")
    t = (rankings.join(eligible.select("school_id", "mean_n_trials"), on="school_id", how="left")
         .with_columns(pl.when(size.is_null()).then(None).otherwise(band_of(size)).alias("band"))
         .sort(["rank_median", "p_below_average"], descending=[False, True])
         .with_columns(pl.int_range(1, pl.len() + 1).alias("_position")))
    n = t.height
    fig, ax = plt.subplots(figsize=(11, 5.5))
    lw = 0.9 if n <= 400 else 0.4
    for band in BANDS:  # small schools (widest intervals) first, large ones drawn over them
        b = t.filter(pl.col("band") == band)
        if not b.height:
            continue
        x = b["_position"].to_numpy()
        ax.vlines(x, b["rank_lower_95"].to_numpy(), b["rank_upper_95"].to_numpy(), colors=[BAND_COLOURS[band]],
                  lw=lw, alpha=0.55)
        width = float((b["rank_upper_95"] - b["rank_lower_95"]).median())
        ax.scatter(x, b["rank_median"].to_numpy(), color=BAND_COLOURS[band], s=3, zorder=3,
                   label=f"n {band_label(band)}: {b.height:,} schools, median interval {width:,.0f} places")
    unknown = t.filter(pl.col("mean_n_trials").is_null())
    if unknown.height:
        ax.vlines(unknown["_position"].to_numpy(), unknown["rank_lower_95"].to_numpy(),
                  unknown["rank_upper_95"].to_numpy(), colors="grey", lw=lw, alpha=0.55)
        ax.scatter(unknown["_position"].to_numpy(), unknown["rank_median"].to_numpy(), color="grey", s=3,
                   label=f"size unknown: {unknown.height:,} schools")
    ax.plot([1, n], [1, n], color="black", lw=0.6, ls=":")
    ax.set(xlim=(0, n + 1), ylim=(0, n + 1), xlabel="schools ordered by posterior median rank",
           ylabel=f"rank among the {n:,} schools (1 = lowest effect)",
           title="League table: school ranks with 95% intervals (M2)")
    legend = ax.legend(loc="upper left", fontsize=8, markerscale=3)
    legend.set_title("mean students per observation", prop={"size": 8})
    return figure_png(fig)


def ppc_p_values_png(table: pl.DataFrame) -> bytes:
    """Posterior predictive p-values: one row per statistic, one marker per model."""
    stats = table["statistic"].unique(maintain_order=True).to_list()
    models = table["model"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(stats) + 1.5))
    ax.axvspan(0, 0.025, color="0.85")
    ax.axvspan(0.975, 1, color="0.85")
    for i, model in enumerate(models):
        rows = table.filter(pl.col("model") == model)
        y = [stats.index(s) + (i - (len(models) - 1) / 2) * 0.15 for s in rows["statistic"]]
        ax.plot(rows["p_value"].to_numpy(), y, "o", label=model)
    ax.set(yticks=range(len(stats)), yticklabels=stats, xlim=(0, 1), xlabel="posterior predictive p-value",
           title="Posterior predictive checks")
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5))
    return figure_png(fig)


def holdout_coverage_png(table: pl.DataFrame) -> bytes:
    """Coverage of the 50% and 90% intervals per model and baseline, against the nominal levels."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(table.height)
    ax.bar(x - 0.2, table["coverage_50"].to_numpy(), width=0.4, label="50% interval")
    ax.bar(x + 0.2, table["coverage_90"].to_numpy(), width=0.4, label="90% interval")
    for level in (0.5, 0.9):
        ax.axhline(level, color="k", linestyle="--", linewidth=0.8)
    ax.set(xticks=x, xticklabels=table["model"].to_list(), ylim=(0, 1), ylabel="share of held-out results inside",
           title=f"Held-out year {int(table['heldout_year'][0])}")
    ax.legend(loc="lower right")
    return figure_png(fig)
