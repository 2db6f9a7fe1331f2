"""Pareto smoothed importance sampling for many units at once: arviz's ``psislw`` (arviz 0.23,
Vehtari et al. 2024), its per-unit Python loop replaced by array operations over units.

Every unit whose right tail holds exactly M = ceil(min(S / 5, 3 sqrt(S / r_eff))) draws above the
cutoff (the usual case: no ties at the cutoff, no weights below the smallest float) is smoothed
here, with arviz's formulas in arviz's order; any other unit (a tie at the cutoff, an underflowed
tail, a tail of four draws or fewer, a fit that is not finite) goes to arviz's own per-unit
``psislw``, so every unit gets arviz's answer (to rounding: sums taken over whole rows; tested).
"""

from __future__ import annotations

import arviz as az
import numpy as np
from arviz.stats.stats_utils import logsumexp

PRIOR_BS, PRIOR_K = 3, 10
CUTOFF_MIN = float(np.log(np.finfo(float).tiny))
BLOCK = 128   # units smoothed together: the tail fit's (units, ~40, M) arrays stay in cache


def tail_length(draws: int, reff: float) -> int:
    """M, the number of draws in the right tail that arviz fits: ceil(min(S / 5, 3 sqrt(S / r_eff)))."""
    return int(np.ceil(min(draws / 5.0, 3 * (draws / reff) ** 0.5)))


def gpd_fit(tails: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """arviz's ``_gpdfit`` (Zhang and Stephens' empirical Bayes estimate, with its weakly
    informative prior on k) for each row of ``tails`` (units, n), each row sorted ascending and
    positive -> (k, sigma) per unit."""
    n = tails.shape[1]
    m = 30 + int(n ** 0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b = b / (PRIOR_BS * tails[:, int(n / 4 + 0.5) - 1, None]) + 1 / tails[:, -1, None]    # (units, m)
    k = np.log1p(-b[:, :, None] * tails[:, None, :]).mean(axis=2)
    len_scale = n * (np.log(-(b / k)) - k - 1)
    weights = 1 / np.exp(len_scale[:, None, :] - len_scale[:, :, None]).sum(axis=2)
    weights = np.where(weights >= 10 * np.finfo(float).eps, weights, 0.0)   # arviz drops negligible ones
    weights /= weights.sum(axis=1, keepdims=True)
    b_post = (b * weights).sum(axis=1)
    k_post = np.log1p(-b_post[:, None] * tails).mean(axis=1)
    sigma = -k_post / b_post
    return (n * k_post + PRIOR_K * 0.5) / (n + PRIOR_K), sigma


def gpd_quantiles(probs: np.ndarray, k: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """arviz's ``_gpinv`` for probabilities strictly inside (0, 1): (units,) k and sigma -> (units, len(probs))."""
    k, sigma = k[:, None], sigma[:, None]
    tiny_k = np.abs(k) < np.finfo(float).eps
    with np.errstate(divide="ignore", invalid="ignore"):
        general = np.expm1(-k * np.log1p(-probs)) / k
    return np.where(tiny_k, -np.log1p(-probs), general) * sigma


def psislw(log_weights: np.ndarray, reff: float = 1.0, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed, normalised log weights and Pareto k per unit: ``log_weights`` (units, S) ->
    ((units, S), (units,)), as ``arviz.psislw(log_weights, reff)``; ``block`` units at a time."""
    parts = [_psislw_block(log_weights[a:a + block], reff) for a in range(0, len(log_weights), block)]
    if not parts:
        return np.empty(np.shape(log_weights)), np.empty(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _psislw_block(log_weights: np.ndarray, reff: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.array(log_weights, dtype=float, order="C", copy=True)
    units, S = x.shape
    M = tail_length(S, reff)
    x -= x.max(axis=1, keepdims=True)
    usual = np.full(units, M > 4 and S > M)
    k = np.full(units, np.nan)
    rows = np.flatnonzero(usual)
    if rows.size:
        # the M + 1 largest weights in order (the rest need no order): the cutoff and the tail
        top = np.argpartition(x, S - M - 1, axis=1)[:, S - M - 1:]
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(x, top, axis=1), axis=1), axis=1)
        ranked = np.take_along_axis(x, top, axis=1)
        cutoff = np.maximum(ranked[:, 0], CUTOFF_MIN)
        usual &= (x > cutoff[:, None]).sum(axis=1) == M
        rows = np.flatnonzero(usual)
        cutoff, ranked, top = cutoff[rows], ranked[rows, 1:], top[rows, 1:]
        tails = np.exp(ranked) - np.exp(cutoff[:, None])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            k_rows, sigma = gpd_fit(tails)
            fitted = np.isfinite(k_rows) & (sigma > 0)
            smoothed = np.log(gpd_quantiles(np.arange(0.5, M) / M, k_rows, sigma) + np.exp(cutoff[:, None]))
        rows, k_rows, smoothed, top = rows[fitted], k_rows[fitted], smoothed[fitted], top[fitted]
        usual[:] = False
        usual[rows] = True
        k[rows] = k_rows
        x[rows[:, None], top] = smoothed
        x[rows] = np.minimum(x[rows], 0.0)
        x[rows] -= logsumexp(x[rows], axis=1, keepdims=True)
    others = np.flatnonzero(~usual)
    if others.size:   # arviz itself, from these units' raw weights
        x[others], k[others] = az.psislw(np.asarray(log_weights, dtype=float)[others], reff)
    return x, k
