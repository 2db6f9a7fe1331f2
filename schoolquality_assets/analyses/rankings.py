"""School rankings from the M2 posterior draws: is a school below or above the average school, its
rank with a 95% interval, and its chance of being in the bottom or top 10%. Pure functions (no
Dagster): an arviz InferenceData (``posterior["r_school"]``, dims chain, draw, school) in, polars
frames and words out.

Definitions (all per posterior draw, then averaged over draws):

* the *average school* of a draw is the mean of that draw's school effects over the J schools in
  the fit, so ``p_below_average`` = P(r_s < mean_j r_j) - the same whatever the model's intercept
  absorbs;
* the *rank* of a school in a draw is its position among the J schools, **1 = lowest effect**,
  J = highest. The reported rank is the posterior median (``rank_median``) with the 2.5% / 97.5%
  quantiles of the per-draw ranks (``rank_lower_95`` / ``rank_upper_95``), taken with
  ``method="inverted_cdf"`` so all three are ranks actually drawn (integers);
* *bottom 10%* = rank <= k and *top 10%* = rank > J - k in the draw, k = ceil(0.1 J);
* ``distinguishable``: "below" when the 95% interval of r_s - mean_j r_j lies below 0, i.e.
  p_below_average >= 0.975; "above" when p_below_average <= 0.025; otherwise "cannot tell".

Monte Carlo error: each probability is the mean of an indicator over the draws; its MCSE is
``az.mcse(..., method="mean")`` of that indicator with its chains. An indicator that is the same in
every draw (p = 0 or 1) has no Monte Carlo variation among these draws; arviz's answer for it is 0
or NaN depending on version (its ESS is 0/0), so it is set to 0 here explicitly. A NaN for any other
indicator (arviz also returns NaN for fewer than 4 draws per chain) is kept and fails
:func:`mcse_summary`'s gate.

The rank quantiles have their Monte Carlo error too (``rank_median_mcse``, ``rank_lower_95_mcse``,
``rank_upper_95_mcse``, in places): arviz's quantile MCSE (``az.mcse(..., method="quantile",
prob=q)``, q = 0.5, 0.025, 0.975) of each school's per-draw ranks. The convergence gate's ESS rule
does not cover them: it judges each school's own effect, while a rank moves with every school's
draw. See :func:`rank_quantile_mcse` (how it is computed) and :func:`mcse_summary` (the gate).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import polars as pl
import xarray as xr
from scipy import fft, stats

from schoolquality_assets.analyses.tables import BANDS, band_of

TAIL_PERCENT = 10            # bottom / top 10%
DISTINGUISHABLE_LEVEL = 0.95  # central interval that must exclude the average school
BELOW, ABOVE, CANNOT_TELL = "below", "above", "cannot tell"
LABELS = (BELOW, ABOVE, CANNOT_TELL)
ALL_BANDS = "all"
UNKNOWN_BAND = "unknown"

# Largest MCSE any published probability may have (see mcse_summary).
MCSE_LIMIT = 0.02
# Largest MCSE of a rank quantile as a share of its school's 95% rank interval width (see mcse_summary).
RANK_MCSE_LIMIT = 0.25

PROBABILITIES = ("p_below_average", "p_bottom_10", "p_top_10")
RANK_QUANTILES = {"rank_median": 0.5, "rank_lower_95": 0.025, "rank_upper_95": 0.975}  # column -> quantile
RANK_PROBS = tuple(RANK_QUANTILES.values())
COLUMNS = ("school_id", "p_below_average", "p_below_average_mcse", "rank_median", "rank_lower_95",
           "rank_upper_95", "p_bottom_10", "p_bottom_10_mcse", "p_top_10", "p_top_10_mcse", "distinguishable",
           "near_cut", "rank_median_mcse", "rank_lower_95_mcse", "rank_upper_95_mcse")

RANKINGS_DEFINITION = (
    "Average school = the mean of the J school effects in the same posterior draw; p_below_average = posterior "
    "probability that the school's effect is below it. Rank 1 = lowest effect, J = highest, computed in every "
    "draw; the rank is the posterior median with a 95% interval (2.5% and 97.5% quantiles of the per-draw ranks). "
    "Bottom / top 10% = rank ≤ ceil(0.1·J) / rank > J − ceil(0.1·J) in a draw. A school is distinguishable from "
    "the average at 95% when the 95% interval of its difference from the average excludes 0 "
    "(p_below_average ≥ 0.975: below; ≤ 0.025: above)."
)

_RANK_CHUNK = 256       # draws argsorted at once (memory: chunk x J int64)
_MCSE_CHUNK = 512       # schools per az.mcse call (memory: chains x draws x chunk float64)
_RANK_MCSE_CHUNK = 256  # schools per rank_quantile_mcse step (memory: ~6 float64 chunk x draws, 35 MB at 2,800)
_BETA_ONE_SD = np.array([0.1586553, 0.8413447])  # arviz: quantiles 1 SD either side of a beta's centre


# ---------------------------------------------------------------- per-school rankings
def tail_size(n_schools: int) -> int:
    """k = ceil(0.1 J): the number of ranks in the bottom (and in the top) 10% (integer arithmetic:
    0.1 * 30 is 3.0000000000000004 in floating point)."""
    return -(-n_schools * TAIL_PERCENT // 100)


def draw_ranks(draws: np.ndarray) -> np.ndarray:
    """Per-draw ranks over the last axis (schools), 1 = lowest, as int32, same shape as ``draws``.

    The inverse permutation of each draw's argsort (the same ranks as argsort of argsort, one sort
    instead of two), chunked over draws so only a chunk's int64 argsort is held at once. Ties (which
    continuous draws do not have) go to the lower school index first (stable sort).
    """
    x = np.asarray(draws)
    flat = x.reshape(-1, x.shape[-1])
    n, j = flat.shape
    ranks = np.empty((n, j), dtype=np.int32)
    positions = np.arange(1, j + 1, dtype=np.int32)
    for start in range(0, n, _RANK_CHUNK):
        block = flat[start:start + _RANK_CHUNK]
        order = np.argsort(block, axis=1, kind="stable")
        np.put_along_axis(ranks[start:start + _RANK_CHUNK], order,
                          np.broadcast_to(positions, order.shape), axis=1)
    return ranks.reshape(x.shape)


def indicator_mcse(indicator: np.ndarray) -> np.ndarray:
    """MCSE of the mean of a (chain, draw, school) 0/1 indicator, per school, from ``az.mcse``
    (method "mean"). Schools whose indicator is constant over all draws get 0 (arviz: 0 or NaN)."""
    ind = np.asarray(indicator)
    if ind.ndim != 3:
        raise ValueError(f"indicator must be (chain, draw, school), got shape {ind.shape}")
    p = ind.mean(axis=(0, 1))
    out = np.zeros(ind.shape[2])
    varying = np.flatnonzero((p > 0) & (p < 1))
    for start in range(0, varying.size, _MCSE_CHUNK):
        idx = varying[start:start + _MCSE_CHUNK]
        ds = xr.Dataset({"x": (("chain", "draw", "school"), ind[:, :, idx].astype(np.float64))})
        out[idx] = np.asarray(az.mcse(ds, method="mean")["x"].values, dtype=np.float64)
    return out


def _split_indicator_ess(ind: np.ndarray) -> np.ndarray:
    """arviz's ESS (``_ess`` of ``_split_chains``: FFT autocovariance, Geyer's initial positive then
    monotone sequence) of each row of a (school, chain, draw) 0/1 array, all rows at once."""
    k, chains, n = ind.shape
    half = n // 2
    x = (ind.reshape(k, 2 * chains, half) if n % 2 == 0 else  # split chains (their order does not matter)
         np.concatenate([ind[:, :, :half], ind[:, :, n - half:]], axis=1))
    m = 2 * chains
    size = m * half
    hits = x.sum(axis=(1, 2))
    constant = (hits == 0) | (hits == size)
    chain_mean = x.mean(axis=2)
    n_fft = fft.next_fast_len(2 * half, real=True)
    centred = np.zeros((k, m, n_fft))
    np.subtract(x, chain_mean[:, :, None], out=centred[:, :, :half])
    spectrum = fft.rfft(centred, axis=2, overwrite_x=True).view(np.float64)    # (re, im) pairs
    squares = np.square(spectrum, out=spectrum).sum(axis=1) / m                  # mean over the chains
    power = squares[:, 0::2] + squares[:, 1::2]                                  # |F|^2
    acov = fft.irfft(power, n=n_fft, axis=1)[:, :half] / half    # the chains' mean autocovariance by lag
    mean_var = acov[:, 0] * half / (half - 1.0)
    var_plus = mean_var * (half - 1.0) / half + chain_mean.var(axis=1, ddof=1)
    last_pair = max((half - 3) // 2, 0)  # arviz's loop reaches lags 2j, 2j + 1 for pairs j <= last_pair
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var[:, None] - acov[:, :2 * last_pair + 2]) / var_plus[:, None]
    rho[:, 0] = 1.0
    pairs = rho[:, 0::2] + rho[:, 1::2]
    rows = np.arange(k)
    # the initial positive sequence stops at the first pair j >= 1 that is not > 0 (or at last_pair)
    if last_pair >= 1:
        stop = ~(pairs[:, 1:] > 0)
        j = np.where(stop.any(axis=1), stop.argmax(axis=1) + 1, last_pair)
        j = np.where(pairs[:, 0] > 0, j, 0)
    else:
        j = np.zeros(k, dtype=int)
    monotone = np.cumsum(np.minimum.accumulate(pairs, axis=1), axis=1)  # initial monotone sequence, summed
    kept = np.where(j > 0, monotone[rows, np.maximum(j - 1, 0)], 0.0)   # pairs 0 .. j - 1
    rho_even = rho[rows, 2 * j]                                         # arviz's last even lag, kept if > 0
    tail = np.where(j == 0, 1.0, np.where((pairs[rows, j] >= 0) | (rho_even > 0), rho_even, 0.0))
    tau = np.maximum(-1.0 + 2.0 * kept + tail, 1 / np.log10(size))
    ess = np.where(np.isnan(rho[:, 1]), np.nan, size / tau)
    return np.where(constant, float(size), ess)


def rank_quantile_mcse(ranks: np.ndarray, probs: tuple[float, ...] = RANK_PROBS) -> np.ndarray:
    """MCSE of the ``probs`` quantiles of each school's per-draw ranks, (len(probs), school) float64,
    from a (chain, draw, school) array; arviz's ``az.mcse(..., method="quantile", prob=q)``.

    arviz's method: the ESS of the indicator "rank <= the type-7 quantile" (split chains), then half
    the distance between the draws at the beta(ESS q + 1, ESS (1 - q) + 1) quantiles 1 SD either side
    of q. The same arithmetic is done here for a chunk of schools at once: ``az.mcse`` loops over
    the schools in Python at ~1 ms a school and quantile (~10 s for 3 x 3,300 schools, more than
    the rest of the rankings); test_rankings checks that the numbers are arviz's. The published
    quantiles are ``inverted_cdf`` ones, whose Monte Carlo error is the same to first order.

    A school whose rank is the same in every draw gets 0 (no Monte Carlo variation, as for a
    constant indicator); so does a quantile whose two bracketing draws are the same rank, which
    integer ranks allow (e.g. a school ranked 1 in most draws): that quantile is exact to one place.
    Fewer than 4 draws per chain give NaN (arviz's rule), which fails :func:`mcse_summary`'s gate.
    """
    r = np.asarray(ranks)
    if r.ndim != 3:
        raise ValueError(f"ranks must be (chain, draw, school), got shape {r.shape}")
    chains, n_draws, j = r.shape
    size = chains * n_draws
    out = np.zeros((len(probs), j))
    varying = np.flatnonzero(r.min(axis=(0, 1)) != r.max(axis=(0, 1)))
    if n_draws < 4:
        out[:, varying] = np.nan
        return out
    for start in range(0, varying.size, _RANK_MCSE_CHUNK):
        idx = varying[start:start + _RANK_MCSE_CHUNK]
        x = np.ascontiguousarray(np.moveaxis(r[:, :, idx], 2, 0), dtype=np.float64)   # (school, chain, draw)
        srt = np.sort(x.reshape(idx.size, size), axis=1)
        rows = np.arange(idx.size)
        for i, q in enumerate(probs):
            aleph = size * q + (1.0 - q)       # scipy mquantiles, alphap = betap = 1 (type 7), as arviz
            lo = int(np.floor(np.clip(aleph, 1, size - 1)))
            gamma = float(np.clip(aleph - lo, 0, 1))
            quantile = (1.0 - gamma) * srt[:, lo - 1] + gamma * srt[:, lo]
            ess = _split_indicator_ess(x <= quantile[:, None, None])
            with np.errstate(invalid="ignore"):
                band = stats.beta.ppf(_BETA_ONE_SD[:, None], ess * q + 1, ess * (1 - q) + 1)
            first = np.floor(np.fmax(band[0] * size - 1, 0)).astype(int)   # a NaN ESS spans all draws
            second = np.ceil(np.fmin(band[1] * size - 1, size - 1)).astype(int)
            out[i, idx] = (srt[rows, second] - srt[rows, first]) / 2
    return out


def _label(p_below: np.ndarray) -> np.ndarray:
    hi = 1 - (1 - DISTINGUISHABLE_LEVEL) / 2  # 0.975
    lo = (1 - DISTINGUISHABLE_LEVEL) / 2      # 0.025
    return np.where(p_below >= hi, BELOW, np.where(p_below <= lo, ABOVE, CANNOT_TELL))


def rankings_from_draws(draws: np.ndarray, school_ids) -> pl.DataFrame:
    """:func:`school_rankings` from a (chain, draw, school) array of school effects."""
    r = np.asarray(draws)
    if r.ndim != 3:
        raise ValueError(f"draws must be (chain, draw, school), got shape {r.shape}")
    chains, n_draws, j = r.shape
    ids = [str(s) for s in school_ids]
    if len(ids) != j:
        raise ValueError(f"{len(ids)} school ids for {j} schools in the draws")
    if j < 2:
        raise ValueError("ranking needs at least two schools")

    below = r < r.mean(axis=2, keepdims=True)          # bool (chain, draw, J)
    p_below = below.mean(axis=(0, 1))
    mcse_below = indicator_mcse(below)
    del below

    ranks = draw_ranks(r)                              # int32 (chain, draw, J)
    k = tail_size(j)
    bottom = ranks <= k
    p_bottom, mcse_bottom = bottom.mean(axis=(0, 1)), indicator_mcse(bottom)
    del bottom
    top = ranks > j - k
    p_top, mcse_top = top.mean(axis=(0, 1)), indicator_mcse(top)
    del top
    lower, median, upper = np.quantile(ranks.reshape(chains * n_draws, j), (0.025, 0.5, 0.975), axis=0,
                                       method="inverted_cdf")
    rank_mcse = dict(zip(RANK_QUANTILES, rank_quantile_mcse(ranks)))
    del ranks

    return pl.DataFrame({
        "school_id": pl.Series(ids, dtype=pl.Utf8),
        "p_below_average": p_below,
        "p_below_average_mcse": mcse_below,
        "rank_median": pl.Series(median.astype(np.int64), dtype=pl.Int64),
        "rank_lower_95": pl.Series(lower.astype(np.int64), dtype=pl.Int64),
        "rank_upper_95": pl.Series(upper.astype(np.int64), dtype=pl.Int64),
        "p_bottom_10": p_bottom,
        "p_bottom_10_mcse": mcse_bottom,
        "p_top_10": p_top,
        "p_top_10_mcse": mcse_top,
        "distinguishable": pl.Series(_label(p_below), dtype=pl.Utf8),
        "near_cut": pl.Series(near_cut(p_below, mcse_below), dtype=pl.Boolean),
        **{f"{column}_mcse": values for column, values in rank_mcse.items()},
    }).sort("school_id")


def near_cut(p_below: np.ndarray, mcse: np.ndarray) -> np.ndarray:
    """Schools whose ``distinguishable`` label could change with more draws: ``p_below_average``
    within 2 MCSE of either cut (0.025, 0.975)."""
    hi, lo = 1 - (1 - DISTINGUISHABLE_LEVEL) / 2, (1 - DISTINGUISHABLE_LEVEL) / 2
    return (np.abs(p_below - hi) < 2 * mcse) | (np.abs(p_below - lo) < 2 * mcse)


def school_rankings(idata) -> pl.DataFrame:
    """One row per school of the posterior, sorted by school_id: ``p_below_average`` and its MCSE,
    ``rank_median`` / ``rank_lower_95`` / ``rank_upper_95`` (1 = lowest effect, among the J schools
    of the fit), ``p_bottom_10`` / ``p_top_10`` and their MCSEs, ``distinguishable`` (below / above /
    cannot tell), ``near_cut``, and the MCSEs of the three rank quantiles (places). See the module
    docstring for the definitions.

    Memory beyond the posterior itself (J schools, S draws): the int32 ranks (4·S·J bytes, 37 MB for
    2,800 x 3,300), a bool indicator (S·J), the quantile's working copy of the ranks and chunked
    float64 copies for arviz and the rank MCSEs - about 100 MB at production size. Float64 draws are
    not copied.
    """
    da = idata.posterior["r_school"].transpose("chain", "draw", "school")
    return rankings_from_draws(np.asarray(da.values), da["school"].values)


# ---------------------------------------------------------------- the MCSE gate
def rank_mcse_ratios(rankings: pl.DataFrame, limit: float = RANK_MCSE_LIMIT) -> np.ndarray:
    """(3, school) MCSE of rank_median, rank_lower_95 and rank_upper_95 (the order of
    RANK_QUANTILES) divided by the school's 95% rank interval width, rank_upper_95 - rank_lower_95,
    taken as at least 1/``limit`` places, so that an MCSE of one place always passes (see
    :func:`mcse_summary`)."""
    width = (rankings["rank_upper_95"] - rankings["rank_lower_95"]).to_numpy().astype(np.float64)
    width = np.maximum(width, 1.0 / limit)
    return np.stack([rankings[f"{column}_mcse"].to_numpy() / width for column in RANK_QUANTILES])


def mcse_summary(rankings: pl.DataFrame, limit: float = MCSE_LIMIT, rank_limit: float = RANK_MCSE_LIMIT) -> dict:
    """The largest MCSE of each published probability and of the rank quantiles, and whether all
    probabilities' MCSEs are within ``limit`` and all rank quantiles' within ``rank_limit`` (below).

    The default limit 0.02: a probability is the mean of a 0/1 indicator, so its MCSE is
    sqrt(p(1-p)/ESS) with ESS the indicator's effective sample size, largest at p = 0.5. With the
    production draws (4 x 700 = 2,800) and a well-mixed chain this is at most ~0.0095; 0.02 lets the
    indicator's ESS fall to 625 at p = 0.5 (the convergence gate's floor of 400 would allow 0.025).
    At the cuts that matter the same ESS gives smaller errors: 0.012 at p = 0.9 and 0.006 at p = 0.975,
    so a school reported at p >= 0.9 is, to two MCSEs, truly above ~0.876; Monte Carlo noise alone
    moves a school across the 0.9 (or 0.975) cut only from just beside it, never from another bin of
    width 0.1. A NaN MCSE (a varying indicator arviz could not assess) fails the gate.

    The ranks: a rank quantile's MCSE is in places, so it is judged against the school's own 95% rank
    interval width W = rank_upper_95 - rank_lower_95 (:func:`rank_mcse_ratios`): for every school,
    the MCSE of its median and of both ends, divided by W, must be <= ``rank_limit`` (default 0.25).
    W is the uncertainty the reader is shown, so an error small against it cannot change what the
    interval says, and the ratio does not grow with J as places do. For a rank posterior of normal
    shape it is sqrt(q(1-q)) / phi(z_q) / (2 x 1.96) / sqrt(ESS): 0.68 / sqrt(ESS) at either end,
    0.32 / sqrt(ESS) at the median (0.034 and 0.016 at the convergence gate's ESS of 400). The gate
    takes the worst of 3 J estimates, which is larger: arviz's estimate is half the distance between
    two draws ~1 SD apart, with only ~ESS/40 draws beyond a 2.5% point, so it is noisy; and schools
    near the top or bottom have skewed rank posteriors whose inner end lies in a long thin tail.
    Simulated exact posteriors (J = 30, 500 and 3,300; 4 chains) whose school effects all had a
    quantile ESS of ~350 or more gave worst ratios of 0.06-0.18. Too short fits (4 x 25 to 4 x 100
    draws, or autocorrelated chains with effect ESS 10-170) gave 0.27-2.3 at J = 3,300, 0.18-0.71
    at J = 500 (mostly above 0.25), and at J = 30 mostly passed: too few schools for the worst to
    stand out (the convergence gate fails all of those fits first). Within 0.25, each end of every
    interval is, to 1 MCSE, within a quarter of its width of where more draws would put it. Integer
    ranks make tiny intervals coarse (arviz's estimate moves in half places), so W is taken as at
    least 1 / ``rank_limit`` places: an MCSE of 1 place always passes (a school ranked 1 in nearly
    every draw has W of 0-2). A NaN rank MCSE (fewer than 4 draws per chain) fails the gate.

    ``near_cut``: schools whose ``distinguishable`` label could change by Monte Carlo noise, i.e.
    p_below_average within 2 MCSE of 0.975 or of 0.025 (informational, not gated).
    """
    out: dict = {"mcse_limit": limit}
    worst, worst_school = -1.0, None
    non_finite = 0
    for name in PROBABILITIES:
        col = rankings[f"{name}_mcse"].to_numpy()
        bad = ~np.isfinite(col)
        non_finite += int(bad.sum())
        finite = np.where(bad, -np.inf, col)
        m = float(finite.max()) if col.size and not bad.all() else float("nan")
        out[f"max_{name}_mcse"] = m
        if col.size and m > worst:
            worst, worst_school = m, str(rankings["school_id"][int(finite.argmax())])
    p, se = rankings["p_below_average"].to_numpy(), rankings["p_below_average_mcse"].to_numpy()
    out["max_mcse"] = worst if worst_school is not None else float("nan")
    out["worst_mcse_school"] = worst_school
    out["non_finite_mcse"] = non_finite
    out["near_cut"] = int(near_cut(p, se).sum())
    ratios = rank_mcse_ratios(rankings, rank_limit)
    bad = ~np.isfinite(ratios)
    finite = np.where(bad, -np.inf, ratios)
    out["rank_mcse_ratio_limit"] = rank_limit
    out["non_finite_rank_mcse"] = int(bad.sum())
    out["max_rank_mcse_ratio"], out["worst_rank_mcse_school"] = float("nan"), None
    if ratios.size and not bad.all():
        which, row = (int(i) for i in np.unravel_index(int(finite.argmax()), ratios.shape))
        column = list(RANK_QUANTILES)[which]
        out["max_rank_mcse_ratio"] = float(ratios[which, row])
        out["worst_rank_mcse_school"] = str(rankings["school_id"][row])
        out["worst_rank_mcse_column"] = column
        out["worst_rank_mcse_places"] = float(rankings[f"{column}_mcse"][row])
        out["worst_rank_interval_width"] = int(rankings["rank_upper_95"][row] - rankings["rank_lower_95"][row])
    ranks_ok = (out["non_finite_rank_mcse"] == 0 and out["worst_rank_mcse_school"] is not None
                and out["max_rank_mcse_ratio"] <= rank_limit)
    out["passed"] = bool(non_finite == 0 and worst_school is not None and worst <= limit and ranks_ok)
    return out


def distinguishable_counts(rankings: pl.DataFrame) -> dict[str, int]:
    """Schools per label, e.g. {"below": 412, "above": 398, "cannot tell": 2437} (UI metadata)."""
    counts = dict(rankings["distinguishable"].value_counts().iter_rows())
    return {label: int(counts.get(label, 0)) for label in LABELS}


# ---------------------------------------------------------------- by size band, and in words
def distinguishable_by_band(rankings: pl.DataFrame, eligible: pl.DataFrame) -> pl.DataFrame:
    """Per size band (by ``mean_n_trials`` of eligible_schools; <=25, 26-100, >100) and for all
    schools (band "all", last): schools, how many are below / above the average school at 95% and
    how many cannot be told apart, and the median width (rank_upper_95 - rank_lower_95, in places)
    of the 95% rank interval. Every band has a row (0 schools, null width when empty); schools
    missing from ``eligible`` form an "unknown" band."""
    t = rankings.join(eligible.select("school_id", "mean_n_trials"), on="school_id", how="left").with_columns(
        pl.when(pl.col("mean_n_trials").is_null()).then(pl.lit(UNKNOWN_BAND))
        .otherwise(band_of(pl.col("mean_n_trials"))).alias("band"),
        (pl.col("rank_upper_95") - pl.col("rank_lower_95")).alias("_width"),
    )
    aggs = [
        pl.len().cast(pl.Int64).alias("schools"),
        (pl.col("distinguishable") == BELOW).sum().cast(pl.Int64).alias("below"),
        (pl.col("distinguishable") == ABOVE).sum().cast(pl.Int64).alias("above"),
        (pl.col("distinguishable") == CANNOT_TELL).sum().cast(pl.Int64).alias("cannot_tell"),
        pl.col("_width").median().cast(pl.Float64).alias("median_rank_interval_width"),
    ]
    bands = list(BANDS) + ([UNKNOWN_BAND] if (t["band"] == UNKNOWN_BAND).any() else [])
    per_band = t.group_by("band").agg(aggs)
    frame = pl.DataFrame({"band": bands}).join(per_band, on="band", how="left").with_columns(
        pl.col(c).fill_null(0) for c in ("schools", "below", "above", "cannot_tell"))
    total = t.select(pl.lit(ALL_BANDS).alias("band"), *aggs)
    return pl.concat([frame, total], how="vertical_relaxed")


def _band_words(band: str) -> str:
    return f"schools of {band.replace('<=', '≤').replace('-', '–')} students"


def _n(value) -> str:
    return f"{int(value):,}"


def rankings_finding(by_band: pl.DataFrame) -> str:
    """The report's words on :func:`distinguishable_by_band`, every number taken from it."""
    rows = {r["band"]: r for r in by_band.iter_rows(named=True)}
    total = rows[ALL_BANDS]
    j = total["schools"]
    verb = "is" if total["below"] == 1 else "are"
    text = [
        f"Of {_n(j)} schools, {_n(total['below'])} {verb} below the average school at 95% (the 95% interval of the "
        f"difference from it lies entirely below 0: posterior probability of being below at least 97.5%), "
        f"{_n(total['above'])} above and "
        f"{_n(total['cannot_tell'])} cannot be told apart from it."
    ]
    parts = []
    for band in [b for b in rows if b != ALL_BANDS]:
        r = rows[band]
        if r["schools"]:
            parts.append(f"{_n(r['below'])} below, {_n(r['above'])} above and {_n(r['cannot_tell'])} cannot tell "
                         f"among the {_n(r['schools'])} {_band_words(band)}")
        else:
            parts.append(f"there are no {_band_words(band)}")
    text.append("By size: " + "; ".join(parts) + ".")
    small, large = rows[BANDS[0]], rows[BANDS[-1]]
    width = lambda r: _n(round(r["median_rank_interval_width"]))  # noqa: E731
    if small["schools"] and large["schools"]:
        text.append(f"A typical (median) 95% rank interval spans {width(small)} of the {_n(j)} places for "
                    f"{_band_words(BANDS[0])} and {width(large)} for {_band_words(BANDS[-1])}.")
    elif small["schools"] or large["schools"]:
        only = BANDS[0] if small["schools"] else BANDS[-1]
        text.append(f"A typical (median) 95% rank interval spans {width(rows[only])} of the {_n(j)} places for "
                    f"{_band_words(only)}.")
    return " ".join(text)
