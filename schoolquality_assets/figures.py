"""Every figure of the report, each named by what it shows; PNG bytes from matplotlib (Agg)."""

from __future__ import annotations

import io

import arviz as az
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from schoolquality_assets.analyses import BANDS  # noqa: E402

BAND_COLOURS = dict(zip(BANDS, plt.get_cmap("viridis_r")([0.0, 0.5, 1.0])))


def figure_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()

def raw_vs_estimate_png(table: pl.DataFrame) -> bytes:
    """Raw vs posterior estimate, M0 (left) and M1 (right), coloured by size band."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, key, title in zip(axes, ("m0", "m1"), ("M0: Normal (ignores n)", "M1: Binomial")):
        for band in BANDS:
            t = table.filter(pl.col("band") == band)
            raw = t["raw_mean_proportion" if key == "m0" else "raw_proportion"]  # each model's no-pooling estimate
            ax.scatter(raw, t[f"{key}_estimate"], s=8, alpha=0.6, color=BAND_COLOURS[band], label=f"n {band}")
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.set(title=title, xlabel="raw proportion", ylabel="posterior estimate")
    axes[1].legend(title="mean n")
    return figure_png(fig)


def shrinkage_vs_n_png(table: pl.DataFrame) -> bytes:
    """Shrinkage (pp) against mean n, both models, log x-axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(table["mean_n"], table["m0_shrinkage_pp"], s=8, alpha=0.5, label="M0 (Normal)", color="tab:orange")
    ax.scatter(table["mean_n"], table["m1_shrinkage_pp"], s=8, alpha=0.5, label="M1 (Binomial)", color="tab:blue")
    ax.set(xscale="log", xlabel="mean n per observation", ylabel="|raw − posterior| (pp)")
    ax.legend()
    return figure_png(fig)


def school_sd_png(table: pl.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(table.height)
    m = table["sd_school"].to_numpy()
    err = np.vstack([m - table["lower"].to_numpy(), table["upper"].to_numpy() - m])
    ax.errorbar(x, m, yerr=err, fmt="o", capsize=4)
    ax.set(xticks=x, xticklabels=table["model"].to_list(), ylabel="school SD (logit)", title="School SD by model (95% CrI)")
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
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis_r"), ax=ax, label="mean n")
    ax.set(xlabel="school rank", ylabel="r_school (logit)", title="School random effects (M3), 95% CrI")
    return figure_png(fig)


def trace_png(idata, var_names) -> bytes:
    axes = az.plot_trace(idata, var_names=list(var_names), compact=True)
    return figure_png(np.ravel(axes)[0].figure)
