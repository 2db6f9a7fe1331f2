"""Per-parameter R-hat and ESS of blocks of draws (K, chain, draw): arviz's own, plus the block
rule's between/within sums of squares from the same rank-normalised split chains, a vectorised
screen of the same figures for the stop rule, and a parallel form for large blocks (forked
copies of this process). The gate that judges them is diagnostics.py."""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import time
from pathlib import Path

import arviz as az
import numpy as np
import xarray as xr
from scipy.fft import next_fast_len
from scipy.special import ndtri

from schoolquality_assets.engine.processes import usable_cores

PUBLISHED_QUANTILES = (0.025, 0.975)     # g3_school_quality publishes these quantiles of r_school
TAIL_QUANTILES = (0.05, 0.95)            # arviz's tail ESS
_CHUNK = 4_000_000                       # draws per chunk of parameters (memory)


def _split(x: np.ndarray) -> np.ndarray:
    """(K, C, N) -> (K, 2C, N//2): first halves of every chain, then second halves (arviz)."""
    h = x.shape[-1] // 2
    return np.concatenate([x[..., :h], x[..., x.shape[-1] - h:]], axis=-2)


def _z_scale(x: np.ndarray, median: bool = False):
    """Rank-normalised values (average ranks of ties, Blom offsets: arviz ``_z_scale``), per
    parameter over all chains and draws of a (K, M, n) array; with ``median`` also each row's
    median (from the same sort)."""
    k = x.shape[0]
    flat = x.reshape(k, -1)
    s = flat.shape[1]
    order = np.argsort(flat, axis=1)
    srt = np.take_along_axis(flat, order, axis=1)
    z = np.empty_like(flat)
    # without ties the sorted z-values are the same for every row
    np.put_along_axis(z, order, ndtri((np.arange(1.0, s + 1) - 0.375) / (s + 0.25))[None, :], axis=1)
    row, pos = np.nonzero(srt[:, 1:] == srt[:, :-1])  # sorted positions pos and pos + 1 tie
    if row.size:
        first = np.ones(row.size, bool)
        first[1:] = (row[1:] != row[:-1]) | (pos[1:] != pos[:-1] + 1)
        last = np.zeros(row.size, bool)
        last[:-1] = first[1:]
        last[-1] = True
        start, stop, g_row = pos[first], pos[last] + 1, row[first]  # tie group: sorted positions start..stop
        size = stop - start + 1
        z_tie = ndtri(((start + stop) / 2.0 + 1 - 0.375) / (s + 0.25))  # average rank (start + stop)/2 + 1
        members = np.repeat(np.arange(start.size), size)
        offsets = np.arange(members.size) - np.repeat(np.cumsum(size) - size, size)
        z[g_row[members], order[g_row[members], start[members] + offsets]] = z_tie[members]
    if not median:
        return z.reshape(x.shape)
    h = s // 2
    med = srt[:, h] if s % 2 else (srt[:, h - 1] + srt[:, h]) / 2
    return z.reshape(x.shape), med


def _rhat_parts(z: np.ndarray):
    """Split R-hat of (K, M, n) transformed split chains (M = 2C: first halves, then second halves),
    with the between-chain (SSB, C-1 df) and within-chain (SSW, first vs second half of each
    chain, C df) sums of squares of the split-chain means, both divided by the within-chain
    variance W, and (K, 3C) within-chain contrasts (Helmert, of each chain's four quarter means,
    divided by sqrt(W)) from which block_rule estimates how correlated the effects' Monte Carlo
    errors are."""
    k, m, n = z.shape
    c = m // 2
    means = z.mean(-1)
    w = np.var(z, axis=-1, ddof=1).mean(1)
    grand = means.mean(1, keepdims=True)
    h = n // 2
    quarters = np.stack([z[:, :c, :h].mean(-1), z[:, :c, n - h:].mean(-1),
                         z[:, c:, :h].mean(-1), z[:, c:, n - h:].mean(-1)], axis=-1)  # (K, C, 4)
    helmert = np.array([[1, -1, 0, 0], [1, 1, -2, 0], [1, 1, 1, -3]], float)
    helmert /= np.linalg.norm(helmert, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = np.sqrt((n * np.var(means, axis=1, ddof=1) / w + n - 1) / n)
        ssb = 2 * (((means[:, :c] + means[:, c:]) / 2 - grand) ** 2).sum(1) / w
        ssw = ((means[:, :c] - means[:, c:]) ** 2).sum(1) / 2 / w
        contrasts = (quarters @ helmert.T).reshape(k, 3 * c) / np.sqrt(w)[:, None]
    return rhat, ssb, ssw, contrasts


def _screen_ess(x: np.ndarray) -> np.ndarray:
    """arviz's ``_ess`` (FFT autocovariance, Geyer's initial positive then monotone sequence) for
    every row of a (K, M, n) array at once (``diagnose(..., screen=True)``, ``mean_ess``): it
    decides when and for which effects arviz is asked (diagnostics.arviz_where_it_matters) and
    gives LOO's relative efficiency; test_diagnostics and test_analyses check it against arviz."""
    k, m, n = x.shape
    out = np.full(k, np.nan)
    ok = np.isfinite(x.reshape(k, -1)).all(1)
    flat = np.where(ok[:, None, None], x, 0.0)
    constant = (flat.max((1, 2)) - flat.min((1, 2))) < np.finfo(float).resolution
    size = next_fast_len(2 * n)
    centred = flat - flat.mean(-1, keepdims=True)
    f = np.fft.rfft(centred, n=size, axis=-1)
    acov = np.fft.irfft(f * np.conjugate(f), n=size, axis=-1)[..., :n] / n
    mean_acov = acov.mean(1)                               # (K, n)
    mean_var = mean_acov[:, 0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + np.var(flat.mean(-1), axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var[:, None] - mean_acov) / var_plus[:, None]
        kept = np.zeros((k, n))
        kept[:, 0], kept[:, 1] = 1.0, rho[:, 1]
        even, odd = np.ones(k), rho[:, 1].copy()
        t = np.ones(k, dtype=int)                              # Geyer's initial positive sequence
        active = np.full(k, n - 3 > 1) & (even + odd > 0.0)
        for lag in range(1, n - 3, 2):
            if not active.any():
                break
            e, o = rho[:, lag + 1], rho[:, lag + 2]
            even, odd = np.where(active, e, even), np.where(active, o, odd)
            keep = active & (e + o >= 0)
            kept[keep, lag + 1], kept[keep, lag + 2] = e[keep], o[keep]
            t = np.where(active, lag + 2, t)
            active = active & (lag + 2 < n - 3) & (e + o > 0.0)
        max_t = t - 2
        rows = np.arange(k)
        last = np.where(even > 0, even, kept[rows, max_t + 1])
        kept[rows, max_t + 1] = last
        pairs = kept[:, 0::2][:, : n // 2] + kept[:, 1::2][:, : n // 2]   # pair j = lags (2j, 2j + 1)
        n_pairs = (max_t + 1) // 2                                     # pairs inside 0..max_t
        monotone = np.minimum.accumulate(pairs, axis=1)                # Geyer's initial monotone sequence
        inside = np.arange(pairs.shape[1])[None, :] < n_pairs[:, None]
        tau = -1.0 + 2.0 * np.where(inside, monotone, 0.0).sum(1) + last
        total = m * n
        tau = np.maximum(tau, 1 / np.log10(total))
        ess = total / tau
    out[ok] = np.where(constant, float(m * n), np.where(np.isnan(kept).any(1), np.nan, ess))[ok]
    return out


def mean_ess(x: np.ndarray) -> np.ndarray:
    """arviz's ESS of the mean (``az.ess(method="mean")``: split chains, no rank normalisation) of
    every row of (K, chain, draw) draws at once (tested equal to arviz): LOO's relative efficiency
    needs it for every observation, where arviz's loop over rows took ~30 s per model on ``full``."""
    x = np.asarray(x, dtype=float)
    if x.shape[-1] < 4:
        return np.full(x.shape[0], np.nan)
    return _screen_ess(_split(x))


def _screen_quantile_ess(part: np.ndarray, prob: float) -> np.ndarray:
    """arviz's quantile ESS (of ``prob``: indicator of draws <= the type-7 quantile, split) per row."""
    k = part.shape[0]
    q = np.quantile(part.reshape(k, -1), prob, axis=1)
    return _screen_ess(_split((part <= q[:, None, None]).astype(float)))


_DIAGNOSED: dict = {}  # the last few arviz results by content: the stop rule's final judgement is reused


def diagnose(x: np.ndarray, quantiles=PUBLISHED_QUANTILES, screen: bool = False) -> dict[str, np.ndarray]:
    """Per-parameter diagnostics of (K, chain, draw) draws: R-hat (arviz rank), bulk ESS, tail ESS,
    the smallest ESS of ``quantiles``, and the block sums of squares (bulk and folded).
    ``screen``: the same figures vectorised (the stop rule's screen), not arviz's. A large block
    is judged on every core (diagnose_in_parallel)."""
    x = np.ascontiguousarray(x, dtype=float)
    key = (x.shape, hashlib.blake2b(x.data, digest_size=16).digest(), tuple(quantiles), screen)
    if key not in _DIAGNOSED:
        while len(_DIAGNOSED) >= 16:
            _DIAGNOSED.pop(next(iter(_DIAGNOSED)))
        _DIAGNOSED[key] = diagnose_in_parallel(x, quantiles=quantiles, screen=screen)
    return {k: v.copy() for k, v in _DIAGNOSED[key].items()}


def diagnose_in_parallel(x: np.ndarray, workers: int | None = None, quantiles=PUBLISHED_QUANTILES,
                         screen: bool = False) -> dict[str, np.ndarray]:
    """``diagnose_draws`` (arviz's figures, or with ``screen`` the vectorised ones) of a large
    (K, chain, draw) block, its parameters split between this process and ``workers - 1`` forked
    copies of it (default: one part per core this process may use). Each parameter's figures
    depend on its own draws only, so the result equals the one-process result exactly. A fork
    starts in milliseconds with arviz already imported (a fresh interpreter took ~4 s to import
    it). Used where the cores are free: the stop rule's checkpoints (the chains wait) and the
    reported cohort and profile blocks (after sampling). A block too small to repay a fork is
    judged here alone; a part whose copy fails or outlives ``FORK_PATIENCE`` times this process's
    own part (plus ``FORK_GRACE_SECONDS``) is redone here. Without ``os.fork`` (Windows) every
    part is judged here."""
    workers = workers or usable_cores()
    parts = max(1, min(workers, x.size // PARALLEL_MIN_VALUES, x.shape[0]))
    if parts == 1 or not hasattr(os, "fork"):
        return diagnose_draws(x, quantiles, screen)
    bounds = np.linspace(0, x.shape[0], parts + 1).astype(int)
    with tempfile.TemporaryDirectory(prefix="schoolquality-diagnose-") as tmp:
        children = [(lo, hi, f"{tmp}/part_{i}.npz", _fork_part(x[lo:hi], quantiles, screen, f"{tmp}/part_{i}.npz"))
                    for i, (lo, hi) in enumerate(zip(bounds[1:-1], bounds[2:]), start=1)]
        start = time.monotonic()
        pieces = [diagnose_draws(x[: bounds[1]], quantiles, screen)]
        deadline = time.monotonic() + FORK_PATIENCE * (time.monotonic() - start) + FORK_GRACE_SECONDS
        for lo, hi, out, pid in children:
            if _wait(pid, deadline) and Path(out).exists():
                with np.load(out) as f:
                    pieces.append({k: f[k] for k in f.files})
            else:
                pieces.append(diagnose_draws(x[lo:hi], quantiles, screen))
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


PARALLEL_MIN_VALUES = 500_000  # draws per part below which a fork costs more than it saves
FORK_PATIENCE = 3.0            # a forked part may take this many times this process's own part,
FORK_GRACE_SECONDS = 10.0      # plus this


def _fork_part(x: np.ndarray, quantiles, screen: bool, out: str) -> int:
    """Judge ``x`` in a forked copy of this process, writing the figures to ``out``; returns its pid.
    The copy runs only NumPy, SciPy and arviz code already imported, and never returns."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        result = diagnose_draws(x, quantiles, screen)
        np.savez(out + ".part.npz", **result)
        os.replace(out + ".part.npz", out)
        code = 0
    finally:
        os._exit(code)


def _wait(pid: int, deadline: float) -> bool:
    """Whether the forked part ``pid`` succeeded by ``deadline`` (past it, the copy is killed)."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.01)


def diagnose_draws(x: np.ndarray, quantiles, screen: bool) -> dict[str, np.ndarray]:
    k, chains, draws = x.shape
    keys = ("rhat", "ess_bulk", "ess_tail", "ess_quantile", "ssb_bulk", "ssw_bulk", "ssb_folded", "ssw_folded")
    out = {key: np.full(k, np.nan) for key in keys}
    out |= {f"contrasts_{kind}": np.full((k, 3 * chains), np.nan) for kind in ("bulk", "folded")}
    if k == 0 or draws < 4:
        return out
    step = max(1, _CHUNK // (chains * draws))
    for lo in range(0, k, step):
        part = np.asarray(x[lo:lo + step], dtype=float)
        sl = slice(lo, lo + len(part))
        finite = np.isfinite(part.reshape(len(part), -1)).all(1)  # NaN or inf in the draws: every figure NaN
        part = np.where(finite[:, None, None], part, 0.0)
        split = _split(part)
        z, median = _z_scale(split, median=True)
        folded = _z_scale(np.abs(split - median[:, None, None]))
        if screen:
            qess = {p: _screen_quantile_ess(part, p) for p in set(quantiles) | set(TAIL_QUANTILES)}
            res = {"ess_bulk": _screen_ess(z), "ess_tail": np.minimum(*(qess[p] for p in TAIL_QUANTILES)),
                   "ess_quantile": np.min([qess[p] for p in quantiles], axis=0)}
        else:  # R-hat and ESS are arviz's own; only the block sums of squares are computed here
            ds = xr.Dataset({"x": (("chain", "draw", "k"), np.moveaxis(part, 0, -1))})
            res = {"ess_bulk": az.ess(ds, method="bulk")["x"].values,
                   "ess_tail": az.ess(ds, method="tail")["x"].values,
                   "ess_quantile": np.min([az.ess(ds, method="quantile", prob=p)["x"].values for p in quantiles],
                                          axis=0)}
        if chains >= 2:
            rhat_bulk, res["ssb_bulk"], res["ssw_bulk"], res["contrasts_bulk"] = _rhat_parts(z)
            rhat_folded, res["ssb_folded"], res["ssw_folded"], res["contrasts_folded"] = _rhat_parts(folded)
            res["rhat"] = (np.maximum(rhat_bulk, rhat_folded) if screen
                           else az.rhat(ds, method="rank")["x"].values)  # max of bulk and folded split R-hat
        for key, v in res.items():
            out[key][sl] = np.where(finite.reshape(-1, *[1] * (v.ndim - 1)), v, np.nan)
    return out
