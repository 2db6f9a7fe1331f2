"""Model comparison by leave-one-out: PSIS per observation, and leave-one-cohort-out with each
cohort effect integrated out (adaptive Gauss-Hermite). Pure functions on arviz posteriors.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager

import arviz as az
import numba
import numpy as np
import polars as pl
from scipy.special import gammaln, logsumexp

from schoolquality_assets.analyses import psis
from schoolquality_assets.engine.cohort_density import exp_nonpositive, log_1_to_2
from schoolquality_assets.models import specs
from schoolquality_assets.models.draw_diagnostics import mean_ess
from schoolquality_assets.models.specs import draws_matrix as _flat

LL_KEPT_BYTES = 1 << 30   # a model's pointwise log-likelihood up to this size is computed once
M0_NOTE = "M0 excluded: a Normal density on proportions is not comparable with binomial probabilities"


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


def relative_efficiency(ll: np.ndarray) -> tuple[float, int]:
    """(sum, count) of ESS(exp(log-likelihood)) / draws over units; ll is (chain, draw, unit)."""
    if ll.shape[0] == 1:
        return float(ll.shape[2]), ll.shape[2]
    lik = np.exp(ll - ll.max(axis=(0, 1), keepdims=True))
    ess = mean_ess(np.moveaxis(lik, 2, 0)) / (ll.shape[0] * ll.shape[1])  # az.ess(method="mean"), vectorised
    return float(np.nansum(np.clip(ess, 0.01, 1.0))), int(np.isfinite(ess).sum())


def _log_likelihood_chunks(idata, chunk: int) -> Iterator[np.ndarray]:
    """The pointwise log-likelihood, (chain, draw, observation), ``chunk`` observations at a time."""
    n_obs = idata.constant_data.sizes["obs"]
    return (specs.log_likelihood(idata, slice(a, min(a + chunk, n_obs))) for a in range(0, n_obs, chunk))


def _reff(idata, chunk: int = 2000, lls: Iterable[np.ndarray] | None = None) -> float:
    """Relative efficiency for PSIS: the mean over observations of ESS(exp(log-likelihood)) / draws
    (as the loo package's relative_eff), from the log-likelihood draws in chunks (``lls``, each
    (chain, draw, observation), when already computed)."""
    total, count = 0.0, 0
    for ll in _log_likelihood_chunks(idata, chunk) if lls is None else lls:
        t, c = relative_efficiency(ll)
        total, count = total + t, count + c
    return total / max(count, 1)


def k_threshold(draws: int) -> float:
    """arviz's sample-size dependent Pareto k threshold: min(1 - 1/log10(S), 0.7)."""
    return float(min(1 - 1 / np.log10(draws), 0.7))


def _psis_loo(ll: np.ndarray, reff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ll: (units, S) -> (elpd_i, p_loo_i, pareto_k) with arviz's PSIS (last axis = draws)."""
    lw, k = psis.psislw(-ll, reff)  # normalised, smoothed log weights
    elpd = logsumexp(lw + ll, axis=-1)
    lppd = logsumexp(ll, axis=-1) - math.log(ll.shape[-1])
    return elpd, lppd - elpd, np.asarray(k)


def _exit_with_parent() -> None:
    """A worker's initializer: exit when the step's process is gone (even SIGKILLed), not idle on."""
    import threading

    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (parent.join(), os._exit(1)), daemon=True).start()


@contextmanager
def loo_workers(n: int | None = None) -> Iterator[Executor | None]:
    """Worker processes for the LOO work done chunk by chunk (PSIS smoothing, the cohort
    integrals), one per core this process may use, up to 4. None (everything runs in this
    process, the same numbers) with one core, or where this process may not start children (a
    daemonic one, e.g. a Celery prefork worker)."""
    n = n or min(len(os.sched_getaffinity(0)), 4)
    if n < 2 or multiprocessing.current_process().daemon:
        yield None
        return
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _map_in_order(fn: Callable, arguments: Iterable[tuple], pool: Executor | None, in_flight: int = 4) -> Iterator:
    """fn(*args) for each of ``arguments``, in order; on ``pool`` when given, with at most
    ``in_flight`` calls sent ahead (each sends a copy of its arrays)."""
    if pool is None:
        yield from (fn(*args) for args in arguments)
        return
    pending: deque = deque()
    for args in arguments:
        pending.append(pool.submit(fn, *args))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _psis_chunks(chunks: Iterable[np.ndarray], reff: float, pool: Executor | None) -> tuple[np.ndarray, ...]:
    """:func:`_psis_loo` over chunks of units (each (units, S)), concatenated in order."""
    # contiguous either way, so that both sum in the same order (numpy's pairwise sum)
    parts = _map_in_order(_psis_loo, ((np.ascontiguousarray(c), reff) for c in chunks), pool)
    return tuple(np.concatenate(x) for x in zip(*parts))


def pointwise_loo(idata, max_draws: int | None = None, chunk: int = 2000, pool: Executor | None = None) -> dict:
    """PSIS-LOO per observation, computing the log-likelihood in chunks of observations (smoothed
    on ``pool``'s processes when given). The chunks are computed once and kept for both passes
    (relative efficiency, then smoothing) when they fit in LL_KEPT_BYTES, else computed again."""
    thin = _thin(idata, max_draws)
    S = _n_draws(thin)
    N = idata.constant_data.sizes["obs"]
    lls = list(_log_likelihood_chunks(thin, chunk)) if N * S * 8 <= LL_KEPT_BYTES else None
    reff = _reff(thin, chunk, lls)
    lls = _log_likelihood_chunks(thin, chunk) if lls is None else lls
    elpd, p, k = _psis_chunks((ll.reshape(S, -1).T for ll in lls), reff, pool)
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
        # units whose PSIS estimate is unreliable in this model or the best one: left uncorrected,
        # so the table says how much of the difference they carry
        high_k = (v["pareto_k"] > k_threshold(v["draws_used"])) | (
            pointwise[best]["pareto_k"] > k_threshold(pointwise[best]["draws_used"]))
        rows.append({
            "model": m.upper(), "description": specs.MODELS[m].description if m in specs.MODELS else m,
            "unit": unit, "n_units": n, "elpd_loo": elpd[m], "se": float(np.sqrt(n * np.var(v["elpd_i"]))),
            "p_loo": float(v["p_loo_i"].sum()), "elpd_diff": elpd[m] - elpd[best],
            "se_diff": None if m == best else float(np.sqrt(n * np.var(diff))),
            "pareto_k_gt_0_7": int((v["pareto_k"] > 0.7).sum()), "pareto_k_share": float((v["pareto_k"] > 0.7).mean()),
            "k_threshold": k_threshold(v["draws_used"]),
            "share_k_above_threshold": float((v["pareto_k"] > k_threshold(v["draws_used"])).mean()),
            "n_k_above_threshold": int((v["pareto_k"] > k_threshold(v["draws_used"])).sum()),
            "n_units_high_k_diff": None if m == best else int(high_k.sum()),
            "elpd_diff_high_k": None if m == best else float(diff[high_k].sum()),
            "draws_used": int(v["draws_used"]), "note": note,
        })
    t = pl.DataFrame(rows).sort("elpd_loo", descending=True)
    return t.with_columns(pl.int_range(1, t.height + 1).alias("rank"))


def _with_m0_row(table: pl.DataFrame, idatas: dict) -> pl.DataFrame:
    if "m0" not in idatas:
        return table
    row = pl.DataFrame({"model": ["M0"], "description": [specs.MODELS["m0"].description], "note": [M0_NOTE]})
    return pl.concat([table, row], how="diagonal_relaxed")


def comparison(obs: pl.DataFrame, cohort: pl.DataFrame, idatas: dict) -> pl.DataFrame:
    """Both comparisons in one table, one M0 row at the end. ``reliable`` per row, as the loo
    package judges PSIS: no unit of that model has Pareto k above the sample-size threshold. A
    comparison whose two best models are both reliable comes first; otherwise the one in which
    the uncorrected high-k units carry the smaller share of the top difference."""
    parts = []
    for t in (obs, cohort):
        ranked = t.filter(pl.col("rank").is_not_null()).with_columns(reliable=pl.col("n_k_above_threshold") == 0)
        top = ranked.filter(pl.col("rank") <= 2)
        carried = 0.0
        if top.height == 2:
            second = top.row(1, named=True)
            carried = abs(second["elpd_diff_high_k"]) / max(abs(second["elpd_diff"]), 1e-12)
        parts.append((not bool(top["reliable"].all()), carried, ranked))
    table = pl.concat([t for *_, t in sorted(parts, key=lambda r: r[:2])], how="diagonal_relaxed").drop("note")
    return _with_m0_row(table, idatas)


def mark_unconverged_inputs(table: pl.DataFrame, idatas: dict) -> pl.DataFrame:
    """Column ``group_effects_converged`` per model: whether the cohort and profile effects that
    observation-level LOO conditions on passed the same convergence rules as the gated quantities
    (posterior attributes ``diag_r_cohort_gate_passed`` / ``diag_r_profile_gate_passed``; they are
    reported, not blocking). Null for models without such effects."""
    flags = {}
    for key, idata in idatas.items():
        if idata is None:
            continue
        values = [int(idata.attrs[f"diag_{v}_gate_passed"]) for v in ("r_cohort", "r_profile")
                  if f"diag_{v}_gate_passed" in idata.attrs]
        flags[key.upper()] = bool(min(values)) if values else None
    return table.with_columns(pl.col("model").replace_strict(flags, default=None, return_dtype=pl.Boolean)
                              .alias("group_effects_converged"))


def loo_finding(table: pl.DataFrame) -> str:
    """Which comparison to read and why, from the table: the lead, its SE, and how much of it the
    units with unreliable PSIS estimates (Pareto k above the threshold, not corrected) carry."""
    ranked = table.filter(pl.col("rank").is_not_null())
    parts = []
    for unit in ranked["unit"].unique(maintain_order=True).to_list():
        t = ranked.filter(pl.col("unit") == unit).sort("rank")
        top = t.head(2).rows(named=True)
        text = f"Leave-one-{unit}-out: {top[0]['model']} best"
        if len(top) == 2:
            lead, carried, n_high = -top[1]["elpd_diff"], -top[1]["elpd_diff_high_k"], top[1]["n_units_high_k_diff"]
            text += f" ahead of {top[1]['model']} by {lead:.1f} (SE {top[1]['se_diff']:.1f})"
            if n_high:
                text += (f"; {n_high:,} {unit}s have Pareto k above {top[0]['k_threshold']:.2f} in one of the two "
                         f"models (PSIS unreliable for them, not corrected) and carry {carried:.1f} of that lead, "
                         f"so without them {top[0]['model']} leads by {lead - carried:.1f}")
            else:
                text += f"; every {unit} has Pareto k below {top[0]['k_threshold']:.2f}: reliable"
        parts.append(text + ".")
    if "group_effects_converged" in table.columns:
        off = table.filter(pl.col("group_effects_converged") == False)["model"].to_list()  # noqa: E712
        if off:
            parts.append(f"The cohort or profile effects of {', '.join(off)} did not pass the convergence rules that "
                         "gate the published quantities: their observation-level LOO values are uncertain beyond their SE.")
    return " ".join(parts) + " " + M0_NOTE + "."


def loo_table(idatas: dict, max_draws: int | None = None, chunk: int = 2000,
              on_done: Callable[[str], None] = lambda label: None, pool: Executor | None = None) -> pl.DataFrame:
    """PSIS-LOO per observation for the binomial models m1..m3 present, compared; ``on_done`` is
    told as each model is finished."""
    pw = {}
    for m in ("m1", "m2", "m3"):
        if m in idatas:
            pw[m] = pointwise_loo(idatas[m], max_draws, chunk, pool)
            on_done(f"{m.upper()} per observation")
    return _with_m0_row(_compare(pw, "observation", M0_NOTE), idatas)


def cohort_groups(sample: pl.DataFrame) -> np.ndarray:
    """Cohort label (school_year_id) of each observation in model order."""
    return sample.sort("school_id", "year", "subject")["school_year_id"].to_numpy()


def _group_index(idata, groups) -> tuple[np.ndarray, list]:
    """The model's own cohorts when it has them, else ``groups`` (labels sorted, as specs._index)."""
    if "cohort_idx" in idata.constant_data:
        return idata.constant_data["cohort_idx"].values, [str(c) for c in idata.posterior["cohort"].values]
    if groups is None:
        raise ValueError("model has no cohorts: pass groups (e.g. cohort_groups(sample))")
    labels, idx = np.unique(np.asarray(groups), return_inverse=True)
    return idx, [str(x) for x in labels]


def _agh_log_marginal(eta, y, n, logc, gid, G, sd, u0, nodes, weights, newton=12):
    """log ∫ Π_i Binom(y_i|n_i, expit(eta_i+u)) N(u|0,sd) du per (draw, group) by adaptive GH.

    eta (S, n_obs); gid (n_obs,) sorted local group ids 0..G-1, every group present; sd (S,); u0
    (S, G) start values.
    """
    starts = np.searchsorted(gid, np.arange(G + 1))
    if np.any(np.diff(gid) < 0) or np.any(np.diff(starts) == 0):
        raise ValueError("group ids must be sorted, with every group 0..G-1 present")
    return _agh_kernel(np.ascontiguousarray(eta, dtype=float), np.asarray(y, float), np.asarray(n, float),
                       np.asarray(logc, float), starts, np.asarray(sd, float), np.ascontiguousarray(u0, dtype=float),
                       np.asarray(nodes, float), np.log(np.asarray(weights, float)), newton)


@numba.njit(inline="always", error_model="numpy")
def _expit(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _agh_kernel(eta, y, n, logc, starts, sd, u0, nodes, log_weights, newton):
    """For each draw s and group g (rows starts[g]..starts[g + 1]): Newton's method to the mode of
    the integrand in u (strictly concave; steps clipped to 1), the Laplace scale there, then
    Gauss-Hermite with ``nodes`` centred and scaled on them, summed as a log-sum-exp."""
    S, G, K = eta.shape[0], starts.shape[0] - 1, nodes.shape[0]
    out = np.empty((S, G))
    terms, v = np.empty(K), np.empty(K)   # per node: the log integrand, the node's u
    root2 = math.sqrt(2.0)
    for s in range(S):
        prec = 1.0 / (sd[s] * sd[s])
        const = -math.log(sd[s]) - 0.5 * math.log(2.0 * math.pi)
        for g in range(G):
            lo, hi = starts[g], starts[g + 1]
            u = u0[s, g]
            for _ in range(newton):
                grad, hess = -u * prec, -prec
                for i in range(lo, hi):
                    p = _expit(eta[s, i] + u)
                    grad += y[i] - n[i] * p
                    hess -= n[i] * p * (1.0 - p)
                step = min(max(grad / hess, -1.0), 1.0)
                u -= step
                if abs(step) < 1e-9:
                    break
            info = prec
            for i in range(lo, hi):
                p = _expit(eta[s, i] + u)
                info += n[i] * p * (1.0 - p)
            scale = 1.0 / math.sqrt(info)
            for k in range(K):
                v[k] = u + root2 * scale * nodes[k]
                terms[k] = -0.5 * v[k] * v[k] * prec + const + nodes[k] * nodes[k] + log_weights[k]
            for i in range(lo, hi):
                for k in range(K):   # log binomial at each node: y e - n log(1 + exp(e)); vectorised over nodes
                    e = eta[s, i] + v[k]
                    terms[k] += logc[i] + y[i] * e - n[i] * (max(e, 0.0) + log_1_to_2(1.0 + exp_nonpositive(-abs(e))))
            top = -np.inf
            for k in range(K):
                top = max(top, terms[k])
            if not math.isfinite(top):
                out[s, g] = top
                continue
            total = 0.0
            for k in range(K):
                total += math.exp(terms[k] - top)
            out[s, g] = top + math.log(total) + math.log(root2 * scale)
    return out


def _gsum(a: np.ndarray, gid: np.ndarray, G: int) -> np.ndarray:
    """Sum columns of a (S, n) into groups -> (S, G); gid sorted, every group 0..G-1 present."""
    starts = np.flatnonzero(np.r_[True, gid[1:] != gid[:-1]])
    assert len(starts) == G
    return np.add.reduceat(np.broadcast_to(a, (a.shape[0], len(gid))), starts, axis=1)


def cohort_log_marginal(idata, groups=None, n_nodes: int = 15, max_draws: int | None = None,
                        chunk: int = 2000, pool: Executor | None = None) -> tuple[list, np.ndarray, np.ndarray]:
    """(labels, n_obs per group, log p_s(y_c) of shape (S, C)) with the cohort effect integrated out.

    Models with cohorts use their own cohort index (``groups`` ignored); models without
    ``r_cohort`` (M1) need ``groups`` and get the plain sum of binomial log-likelihoods per group.
    Groups are processed in chunks of ~``chunk`` observations to bound memory; the integrals of
    each chunk on ``pool``'s processes when given (at most 4 chunks sent ahead).
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
    spans, c0 = [], 0   # (first, last + 1) cohort of each chunk
    while c0 < C:
        c1 = min(max(int(np.searchsorted(bounds, bounds[c0] + chunk, side="right")) - 1, c0 + 1), C)
        spans.append((c0, c1))
        c0 = c1
    out = np.empty((S, C))
    if not integrate:
        for c0, c1 in spans:
            obs = order[bounds[c0]:bounds[c1]]
            out[:, c0:c1] = _gsum(specs.log_likelihood(thin, obs).reshape(S, -1), gidx[obs] - c0, c1 - c0)
        return labels, counts, out

    def integrals():
        for c0, c1 in spans:
            obs = order[bounds[c0]:bounds[c1]]
            eta = specs.linear_predictor(thin, obs).reshape(S, -1) - r[:, gidx[obs]]  # eta without cohort
            y = thin.observed_data["y_success"].values[obs].astype(float)
            n = thin.constant_data["n_trials"].values[obs].astype(float)
            logc = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
            u0 = np.ascontiguousarray(r[:, c0:c1])  # start Newton at the current draw of the cohort effect
            yield eta, y, n, logc, gidx[obs] - c0, c1 - c0, sd, u0, nodes, weights

    for (c0, c1), value in zip(spans, _map_in_order(_agh_log_marginal, integrals(), pool)):
        out[:, c0:c1] = value
    return labels, counts, out


def cohort_integrated_loo(idata, n_nodes: int = 15, groups=None, max_draws: int | None = None,
                          chunk: int = 2000, pool: Executor | None = None) -> pl.DataFrame:
    """Leave-one-cohort-out PSIS with the cohort effect integrated out (adaptive GH)."""
    labels, counts, logp = cohort_log_marginal(idata, groups, n_nodes, max_draws, chunk, pool)
    thin = _thin(idata, max_draws)
    C = thin.posterior.sizes["chain"]
    total, count = relative_efficiency(logp.reshape(C, -1, logp.shape[1]))
    units = logp.T
    elpd, p, k = _psis_chunks((units[a:a + chunk] for a in range(0, len(units), chunk)), total / max(count, 1), pool)
    return pl.DataFrame({"cohort": [str(x) for x in labels], "n_obs": counts, "elpd": elpd, "p_loo": p,
                         "pareto_k": k, "draws_used": np.full(len(labels), logp.shape[0])})


def cohort_loo_table(idatas: dict, groups=None, n_nodes: int = 15, max_draws: int | None = None,
                     chunk: int = 2000, on_done: Callable[[str], None] = lambda label: None,
                     pool: Executor | None = None) -> pl.DataFrame:
    """Leave-one-cohort-out comparison of m1..m3 (same shape as :func:`loo_table`, unit='cohort')."""
    pw = {}
    for m in ("m1", "m2", "m3"):
        if m in idatas:
            t = cohort_integrated_loo(idatas[m], n_nodes, groups, max_draws, chunk, pool)
            pw[m] = {"elpd_i": t["elpd"].to_numpy(), "p_loo_i": t["p_loo"].to_numpy(),
                     "pareto_k": t["pareto_k"].to_numpy(), "draws_used": int(t["draws_used"][0]),
                     "labels": t["cohort"].to_list()}
            on_done(f"{m.upper()} per cohort")
    return _with_m0_row(_compare(pw, "cohort", M0_NOTE), idatas)

