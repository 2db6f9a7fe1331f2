"""Convergence diagnostics and the convergence gate: one function decides pass or fail.

The gate is used by the posterior assets (as asset checks), by the stop rule of the sampler
(specs.convergence_judge, at every checkpoint) and by everything downstream of a posterior
(which refuses a fit that failed it).

R-hat and ESS are arviz's (``az.rhat`` rank-normalised split R-hat, ``az.ess`` bulk / tail /
quantile ESS, Vehtari et al. 2021). For the blocks of thousands of effects (r_school, r_cohort,
r_profile), a vectorised copy of arviz's algorithms (equal to arviz to ~1e-12, tested) judges
every effect and arviz judges again every effect within 5% of a threshold, the extremes and the
median (``arviz_where_it_matters``): every verdict and reported figure is arviz's, tested equal to
arviz judging every effect. Only the block rule's between/within sums of squares below
are computed here (arviz has no such statistic), from the same rank-normalised split chains.

The R-hat rule (check ``rhat``):

* every gated quantity needs finite R-hat and ESS (a quantity constant over draws has R-hat NaN;
  NaN never passes, and the names are listed);
* hyperparameters (b_Intercept / Intercept, b, the SDs, sigma): R-hat <= ``max_rhat`` (1.01);
* the block of school effects ``r_school`` (K parameters, M = 2 x chains split chains of n draws)
  by a rule calibrated for K: under stationarity, per parameter,
  ``R-hat^2 = (n-1)/n + V/W`` with ``V/W ~ (M/ESS) chi2_{M-1}/(M-1)`` (V the variance of the M
  split-chain means, W the within-chain variance). Two parts, with a family-wise false-fail rate
  ``block_false_fail_rate`` (alpha; Bonferroni, half to each part):

  1. per parameter: ``R-hat <= L = sqrt((n-1)/n + (M/min_ess) q / (M-1))``, q the
     ``1 - alpha/(4K)`` quantile of chi2_{M-1} (bulk and folded R-hat: 2K tests). The reference
     ESS is ``min_ess`` - the least ESS the ESS check lets pass - not the observed ESS (a chain
     that has not mixed lowers the observed ESS, which would loosen the limit).
  2. over the block: the split-chain means' sum of squares splits into a between-chain part
     (C-1 degrees of freedom per parameter) and a within-chain part (first vs second half of
     each chain, C degrees of freedom); under stationarity both estimate the variance of a
     half-chain mean, so ``ratio = [sum_k SSB_k/W_k/(C-1)] / [sum_k SSW_k/W_k/C]`` is about 1
     (F distributed with (C-1)K_eff, C K_eff degrees of freedom). A chain that has not mixed -
     offset in all or some of the effects, stuck or frozen - inflates the between-chain part
     only. The block fails when ``ratio > max(1 + block_tolerance, F quantile 1 - alpha/4)``
     (bulk and folded z-values). K_eff <= K is estimated from within-chain contrasts of quarter
     means (unaffected by an offset chain): it falls below K when the effects' Monte Carlo errors
     are correlated (a common intercept or scale) or unequal, which widens the F quantile.
     ``block_tolerance`` (0.1) is a floor for what the F approximation misses (non-Gaussian
     chains, estimation noise of K_eff); the F quantile alone is about 1.045 for K = 3,300
     independent effects and 4 chains.

``r_cohort`` / ``r_profile`` get the same rule and the ESS rule, reported, not blocking
(``r_cohort_gate_passed``): observation-level LOO and published cohort effects depend on them.
Their figures are arviz's in the same way (``arviz_where_it_matters``).

The ESS rule (check ``ess``): bulk ESS, tail ESS (5%/95% quantiles) and the ESS of the published
2.5%/97.5% quantiles >= ``min_ess`` on every gated quantity, all finite.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import numpy as np
import polars as pl
from scipy import stats

from schoolquality_assets.models.draw_diagnostics import diagnose

HYPER = ("b_Intercept", "Intercept", "b", "sd_school", "sd_cohort", "sd_profile", "sigma")
BLOCK = "r_school"                       # gated by the block rule
REPORTED_BLOCKS = ("r_cohort", "r_profile")  # same rules, reported (not blocking)


@dataclass(frozen=True)
class Thresholds:
    max_rhat: float = 1.01             # hyperparameters
    max_divergences: int = 0
    min_ess: float = 400.0             # bulk, tail and 2.5%/97.5% quantile ESS; reference ESS of the block rule
    min_bfmi: float = 0.3
    max_treedepth_share: float = 0.01
    block_false_fail_rate: float = 0.01  # family-wise false-fail rate of the r_school block rule (stationary chains)
    block_tolerance: float = 0.1       # the block's between/within ratio may exceed 1 by at least this much


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    metadata: dict = field(default_factory=dict)


def _draws(da) -> tuple[list[str], np.ndarray]:
    """Names (``v[coord]``) and draws (K, chain, draw) of one posterior variable."""
    v = da.name
    extra = [d for d in da.dims if d not in ("chain", "draw")]
    values = da.transpose("chain", "draw", *extra).values
    values = values.reshape(values.shape[0], values.shape[1], -1)
    if not extra:
        names = [v]
    else:
        grids = np.meshgrid(*[[str(c) for c in da[d].values] for d in extra], indexing="ij")
        names = [f"{v}[{','.join(t)}]" for t in zip(*(g.ravel() for g in grids))]
    return names, np.moveaxis(values, 2, 0)


def _effective_size(u: np.ndarray) -> float:
    """Effective number of independent parameters behind a ratio of sums over a block, from the
    (K, J = 3C) within-chain contrasts u (unaffected by a chain offset; contrasts of different
    chains independent under stationarity): (sum_k var u_k)^2 / sum_kl cov(u_k, u_l)^2, the
    numerator estimated from the squares and the denominator from the mean of (u_j . u_j')^2 over
    pairs of contrasts from different chains. Equals K for
    independent equal-variance parameters; less with unequal variances (Satterthwaite) or
    correlated Monte Carlo errors (e.g. a common intercept)."""
    k, j = u.shape
    chain_of = np.repeat(np.arange(j // 3), 3)  # column = chain * 3 + contrast
    rows, cols = np.triu_indices(j, 1)
    other = chain_of[rows] != chain_of[cols]  # pairs from different chains only: independent under the null
    if k == 0 or not other.any():
        return float(k)
    pairs = (u.T @ u)[rows[other], cols[other]] ** 2
    scale = (u ** 2).mean(1).sum()
    return float(min(k, scale ** 2 / pairs.mean())) if pairs.mean() > 0 else float(k)


def block_rhat_limit(k: int, chains: int, draws: int, limits: Thresholds) -> float | None:
    """The per-parameter R-hat limit L of a block of K parameters (module doc, part 1); None where
    the block rule does not apply (no parameters, one chain, fewer than 4 draws)."""
    if k == 0 or chains < 2 or draws < 4:
        return None
    m, n = 2 * chains, draws // 2
    q = stats.chi2.isf(limits.block_false_fail_rate / (4 * k), m - 1) / (m - 1)
    return float(np.sqrt((n - 1) / n + (m / limits.min_ess) * q))


def block_rule(d: dict[str, np.ndarray], chains: int, draws: int, limits: Thresholds) -> dict:
    """The multiplicity-aware R-hat rule for a block of K exchangeable parameters (module doc)."""
    k = len(d["rhat"])
    out = {"rhat_limit": None, "n_rhat_gt_limit": None, "ratio_bulk": None, "ratio_folded": None,
           "ratio_limit": None, "effective_k": None, "passed": False}
    limit = block_rhat_limit(k, chains, draws, limits)
    if limit is None:
        return out
    alpha = limits.block_false_fail_rate
    finite = np.isfinite(d["rhat"])
    ratios, k_eff = {}, {}
    for kind in ("bulk", "folded"):
        ssb, ssw, u = d[f"ssb_{kind}"], d[f"ssw_{kind}"], d[f"contrasts_{kind}"]
        ok = finite & np.isfinite(ssb) & np.isfinite(ssw) & np.isfinite(u).all(1)
        num, den = ssb[ok].sum() / (chains - 1), ssw[ok].sum() / chains
        ratios[kind] = float(num / den) if den > 0 else float("inf") if num > 0 else 1.0
        k_eff[kind] = _effective_size(u[ok])
    ke = max(min(k_eff.values()), 1.0)
    ratio_limit = max(1 + limits.block_tolerance, float(stats.f.isf(alpha / 4, (chains - 1) * ke, chains * ke)))
    n_over = int((d["rhat"][finite] > limit).sum())
    out.update(rhat_limit=limit, n_rhat_gt_limit=n_over, ratio_bulk=ratios["bulk"], ratio_folded=ratios["folded"],
               ratio_limit=ratio_limit, effective_k=ke,
               passed=bool(finite.all() and n_over == 0 and max(ratios.values()) <= ratio_limit))
    return out


def _min(values) -> float | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(values.min()) if values.size else None


def _max(values) -> float | None:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else None


def _names_by(names, values, bad, descending: bool, n: int = 5) -> list[str]:
    """Up to n names with ``bad``: non-finite values first, then by value."""
    idx = np.flatnonzero(bad)
    finite = np.isfinite(values[idx])
    ordered = list(idx[~finite]) + list(idx[finite][np.argsort(values[idx][finite] * (-1 if descending else 1),
                                                                kind="stable")])
    return [names[i] for i in ordered[:n]]


def convergence_summary(idata, limits: Thresholds | None = None, screen: bool = False, reported: bool = True) -> dict:
    """Convergence figures for one model: R-hat and bulk/tail/2.5%-97.5% quantile ESS over every
    gated quantity (intercepts, b, SDs, sigma, every r_school), with the hyperparameter rule and
    the r_school block rule (module doc); cohort and profile effects judged the same way, reported
    (``reported``). Values are str/int/float or None (they are stored as NetCDF attributes).
    ``screen``: vectorised figures instead of arviz's (the stop rule's cheap first look)."""
    limits = limits or Thresholds()
    post, sample_stats = idata.posterior, idata.get("sample_stats")
    chains, draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    hyper = [v for v in HYPER if v in post]
    names, parts, limit_of = [], [], []
    block = None
    for v in hyper + ([BLOCK] if BLOCK in post else []):
        nm, x = _draws(post[v])
        if v == BLOCK and not screen:
            d, rechecked = arviz_where_it_matters(x, chains, draws, limits, rhat_limits=())
        else:
            d = diagnose(x, screen=screen)
        if v == BLOCK:
            block, school = block_rule(d, chains, draws, limits), d
            limit = block["rhat_limit"] if block["rhat_limit"] is not None else np.nan
        else:
            limit = limits.max_rhat
        names += nm
        parts.append(d)
        limit_of.append(np.full(len(nm), limit))
    col = lambda key, ds: np.concatenate([d[key] for d in ds]) if ds else np.array([])  # noqa: E731
    rhat, bulk, tail, quant = (col(k, parts) for k in ("rhat", "ess_bulk", "ess_tail", "ess_quantile"))
    limit_of = np.concatenate(limit_of) if limit_of else np.array([])
    ess = np.minimum(np.minimum(bulk, tail), quant)  # NaN if any is NaN
    finite = np.isfinite(rhat) & np.isfinite(bulk) & np.isfinite(tail) & np.isfinite(quant)
    with np.errstate(invalid="ignore"):
        rhat_bad = ~np.isfinite(rhat) | ~(rhat <= limit_of)  # NaN R-hat or limit fails
        ess_bad = ~(np.isfinite(bulk) & np.isfinite(tail) & np.isfinite(quant)) | ~(ess >= limits.min_ess)
    non_finite = [nm for nm, ok in zip(names, finite) if not ok]
    n_hyper = len(names) - (len(school["rhat"]) if block is not None else 0)
    sds = [d for v, d in zip(hyper, parts) if v in ("sd_school", "sd_cohort", "sd_profile", "sigma")]
    worst_rhat = _names_by(names, rhat, rhat_bad, descending=True)
    if block is not None and block["ratio_bulk"] is not None \
            and max(block["ratio_bulk"], block["ratio_folded"]) > block["ratio_limit"]:
        worst_rhat.append(f"{BLOCK} block (between/within ratio {max(block['ratio_bulk'], block['ratio_folded']):.3f} "
                          f"> {block['ratio_limit']:.3f})")
    out = {
        "model": str(idata.attrs.get("model", "")),
        "draws": chains * draws,
        "max_rhat": _max(rhat),            # over every gated quantity (finite values)
        "n_rhat_failing": int(rhat_bad.sum()),  # fail their R-hat rule (non-finite, hyper > max_rhat, r_school > limit)
        "min_ess_bulk": _min(bulk), "min_ess_tail": _min(tail),
        "median_ess_bulk_school": (float(np.median(school["ess_bulk"][np.isfinite(school["ess_bulk"])]))
                                   if block is not None and np.isfinite(school["ess_bulk"]).any() else None),
        "n_ess_failing": int(ess_bad.sum()),   # bulk, tail or 2.5%/97.5% quantile ESS < min_ess, or non-finite
        "min_ess_bulk_sd": _min(col("ess_bulk", sds)), "min_ess_tail_sd": _min(col("ess_tail", sds)),
        "worst_rhat": ", ".join(worst_rhat),
        "worst_ess": ", ".join(_names_by(names, ess, ess_bad, descending=False)),
        # added with the multiplicity-aware rule
        "n_non_finite": len(non_finite),
        "non_finite": ", ".join(non_finite[:20]) + (f" (+{len(non_finite) - 20} more)" if len(non_finite) > 20 else ""),
        "min_ess_q025_q975": _min(quant),
        "max_rhat_hyper": _max(rhat[:n_hyper]),
        "n_rhat_hyper_failing": int(rhat_bad[:n_hyper].sum()),
    }
    rule = block or dict.fromkeys(("rhat_limit", "n_rhat_gt_limit", "ratio_bulk", "ratio_folded", "ratio_limit",
                                   "effective_k"))
    out |= {
        f"{BLOCK}_max_rhat": _max(school["rhat"]) if block is not None else None,
        f"{BLOCK}_rhat_limit": rule["rhat_limit"], f"{BLOCK}_n_rhat_gt_limit": rule["n_rhat_gt_limit"],
        f"{BLOCK}_ratio_bulk": rule["ratio_bulk"], f"{BLOCK}_ratio_folded": rule["ratio_folded"],
        f"{BLOCK}_ratio_limit": rule["ratio_limit"], f"{BLOCK}_effective_k": rule["effective_k"],
        f"{BLOCK}_block_passed": int(block["passed"]) if block is not None else None,
        f"{BLOCK}_arviz_rechecked": rechecked if block is not None and not screen else None,
    }
    out |= (_reported_blocks(post, chains, draws, limits) if reported
            else {f"{v}_{k}": None for v in REPORTED_BLOCKS for k in _BLOCK_KEYS})
    has = lambda v: sample_stats is not None and v in sample_stats  # noqa: E731
    out["divergences"] = int(sample_stats["diverging"].values.sum()) if has("diverging") else None
    out["min_bfmi"] = float(np.min(az.bfmi(idata))) if has("energy") else None
    out["max_treedepth_hits"] = int(sample_stats["max_treedepth_hit"].values.sum()) if has("max_treedepth_hit") else None
    out["max_treedepth_share"] = (out["max_treedepth_hits"] / out["draws"]) if out["max_treedepth_hits"] is not None else None
    sec = idata.attrs.get("sample_seconds")
    out["sample_seconds"] = float(sec) if sec is not None else None
    return out


_BLOCK_KEYS = ("share_rhat_gt_1_01", "max_rhat", "min_ess_bulk", "share_ess_lt_min", "gate_passed", "rhat_limit",
               "n_rhat_gt_limit", "ratio_bulk", "ratio_folded", "ratio_limit", "effective_k", "min_ess_tail", "min_ess_q025_q975",
               "n_non_finite", "non_finite", "arviz_rechecked")


def _reported_blocks(post, chains: int, draws: int, limits: Thresholds) -> dict:
    """r_cohort / r_profile: the block rule and the ESS rule, reported (not blocking), their
    figures arviz's (arviz_where_it_matters)."""
    out = {}
    for v in REPORTED_BLOCKS:
        if v not in post:
            out |= {f"{v}_{k}": None for k in _BLOCK_KEYS}
            continue
        names, x = _draws(post[v])
        d, rechecked = arviz_where_it_matters(x, chains, draws, limits, rhat_limits=(1.01,))
        rule = block_rule(d, chains, draws, limits)
        r, e = d["rhat"], np.minimum(np.minimum(d["ess_bulk"], d["ess_tail"]), d["ess_quantile"])
        finite = np.isfinite(r) & np.isfinite(e)
        ess_ok = bool(finite.all() and (e >= limits.min_ess).all())
        with np.errstate(invalid="ignore"):
            out |= {
                f"{v}_share_rhat_gt_1_01": float((r > 1.01).mean()),
                f"{v}_max_rhat": _max(r),
                f"{v}_min_ess_bulk": _min(d["ess_bulk"]),
                f"{v}_share_ess_lt_min": float((d["ess_bulk"] < limits.min_ess).mean()),
                f"{v}_gate_passed": int(rule["passed"] and ess_ok),
                f"{v}_rhat_limit": rule["rhat_limit"], f"{v}_n_rhat_gt_limit": rule["n_rhat_gt_limit"],
                f"{v}_ratio_bulk": rule["ratio_bulk"], f"{v}_ratio_folded": rule["ratio_folded"],
                f"{v}_ratio_limit": rule["ratio_limit"], f"{v}_effective_k": rule["effective_k"],
                f"{v}_min_ess_tail": _min(d["ess_tail"]), f"{v}_min_ess_q025_q975": _min(d["ess_quantile"]),
                f"{v}_n_non_finite": int((~finite).sum()),
                f"{v}_non_finite": ", ".join(np.array(names)[~finite][:5]),
                f"{v}_arviz_rechecked": rechecked,
            }
    return out


def arviz_where_it_matters(x: np.ndarray, chains: int, draws: int, limits: Thresholds,
                           rhat_limits: tuple = ()) -> tuple[dict, int]:
    """arviz's figures of a block of (K, chain, draw) effects wherever a verdict or a reported
    figure depends on them: the vectorised screen (equal to arviz to ~1e-12, tested) judges every
    effect, and arviz judges again those within RECHECK_MARGIN of a threshold (the block rule's
    R-hat limit, ``rhat_limits``, min_ess), the extremes of each figure, those around the median
    bulk ESS, and any non-finite one; their figures replace the screen's. Returns the figures and
    how many effects arviz judged. Over thousands of effects this costs seconds, not a minute."""
    d = diagnose(x, screen=True)
    recheck = _near_a_threshold(d, (*rhat_limits, block_rhat_limit(len(d["rhat"]), chains, draws, limits)), limits)
    if recheck.any():
        arviz = diagnose(x[recheck])
        for key in ("rhat", "ess_bulk", "ess_tail", "ess_quantile"):
            d[key][recheck] = arviz[key]
    return d, int(recheck.sum())


RECHECK_MARGIN = 0.05  # relative: an ESS within 5% of min_ess, an R-hat within 5% of (limit - 1) of a limit
RECHECK_EXTREMES = 10  # the largest R-hats and smallest ESSs of each kind are always arviz's


def _near_a_threshold(d: dict, rhat_limits: tuple, limits: Thresholds) -> np.ndarray:
    """The effects arviz must judge (arviz_where_it_matters): non-finite figures, R-hat within
    RECHECK_MARGIN x (limit - 1) of a limit, an ESS within RECHECK_MARGIN x min_ess of min_ess, the
    RECHECK_EXTREMES largest R-hats and smallest ESSs of each kind, and as many around the median
    bulk ESS."""
    k = len(d["rhat"])
    near = np.zeros(k, bool)
    with np.errstate(invalid="ignore"):
        for key in ("rhat", "ess_bulk", "ess_tail", "ess_quantile"):
            near |= ~np.isfinite(d[key])
        for limit in filter(None, rhat_limits):
            near |= np.abs(d["rhat"] - limit) <= RECHECK_MARGIN * (limit - 1)
        for key in ("ess_bulk", "ess_tail", "ess_quantile"):
            near |= np.abs(d[key] - limits.min_ess) <= RECHECK_MARGIN * limits.min_ess
    n = min(RECHECK_EXTREMES, k)
    if n == 0:
        return near
    for key, sign in (("rhat", -1), ("ess_bulk", 1), ("ess_tail", 1), ("ess_quantile", 1)):
        values = np.where(np.isfinite(d[key]), sign * d[key], np.inf)
        near[np.argpartition(values, n - 1)[:n]] = True
    bulk = d["ess_bulk"]
    if np.isfinite(bulk).any():
        distance = np.where(np.isfinite(bulk), np.abs(bulk - np.nanmedian(bulk)), np.inf)
        near[np.argpartition(distance, n - 1)[:n]] = True
    return near


def summary_attrs(summary: dict, limits: Thresholds) -> dict:
    """The summary as NetCDF attributes of the posterior it judged (``diag_*``; None values are
    listed in ``diag_none``), with the thresholds and code that judged it (``gate_thresholds``)."""
    return ({f"diag_{k}": v for k, v in summary.items() if v is not None}
            | {"diag_none": ",".join(k for k, v in summary.items() if v is None),
               "gate_thresholds": thresholds_key(limits)})


def stored_summary(idata, limits: Thresholds) -> dict | None:
    """The summary stored with a posterior (summary_attrs) if it was judged with ``limits`` by this
    code, else None (then judge again)."""
    attrs = idata.attrs
    if attrs.get("gate_thresholds") != thresholds_key(limits) or "diag_none" not in attrs:
        return None
    plain = lambda v: v.item() if isinstance(v, np.generic) else v  # noqa: E731  (NetCDF gives numpy scalars)
    out = {k[5:]: plain(v) for k, v in attrs.items() if k.startswith("diag_") and k != "diag_none"}
    return out | dict.fromkeys(filter(None, str(attrs["diag_none"]).split(",")))


def summary_of(idata, limits: Thresholds | None = None) -> dict:
    """The posterior's convergence summary under ``limits``: the stored one when it applies."""
    limits = limits or Thresholds()
    return stored_summary(idata, limits) or convergence_summary(idata, limits)


def mcmc_diagnostics(idatas: dict, limits: Thresholds | None = None) -> pl.DataFrame:
    rows = []
    for key, idata in idatas.items():
        rows.append(summary_of(idata, limits) | {"model": key.upper()})
    return pl.DataFrame(rows, infer_schema_length=None)


GATE = {  # check name -> (description, blocking)
    "rhat": ("Finite rank-normalised split R-hat on every gated quantity; R-hat <= threshold (max_rhat) for "
             "b_Intercept, Intercept, b, the SDs and sigma; the r_school block rule (per-parameter limit for K "
             "effects and between/within-chain ratio, family-wise false-fail rate block_false_fail_rate); "
             "cohort/profile judged the same way, reported, not gated", True),
    "no_divergences": ("No more divergent transitions than allowed (default 0)", True),
    "ess": ("Finite bulk ESS, tail ESS (5%/95%) and ESS of the published 2.5%/97.5% quantiles >= threshold for "
            "b_Intercept, Intercept, b, the SDs, sigma and every r_school", True),
    "bfmi": ("E-BFMI >= threshold in every chain (WARN)", False),
    "max_treedepth": ("Share of iterations at the maximum tree depth <= threshold (WARN)", False),
}


def gate(summary: dict, limits: Thresholds) -> list[CheckOutcome]:
    """Every convergence check of one posterior, with the figures and thresholds behind it."""
    s = summary
    non_finite = s.get("non_finite") or None
    block_passed = s.get(f"{BLOCK}_block_passed")
    ratios = [r for r in (s.get(f"{BLOCK}_ratio_bulk"), s.get(f"{BLOCK}_ratio_folded")) if r is not None]
    figures = {
        "rhat": (s["n_rhat_failing"] == 0 and block_passed != 0, {
            "non_finite": non_finite,
            "max_rhat_hyper": s.get("max_rhat_hyper"), "threshold": limits.max_rhat,
            "school_max_rhat": s.get(f"{BLOCK}_max_rhat"), "school_rhat_limit": s.get(f"{BLOCK}_rhat_limit"),
            "school_block_ratio": max(ratios) if ratios else None,
            "school_block_ratio_limit": s.get(f"{BLOCK}_ratio_limit"),
            "parameters_failing": s["n_rhat_failing"], "worst": s["worst_rhat"],
            "max_rhat": s["max_rhat"], "block_false_fail_rate": limits.block_false_fail_rate,
            "cohort_gate_passed": s.get("r_cohort_gate_passed"),
            "cohort_max_rhat": s["r_cohort_max_rhat"],
            "cohort_share_rhat_gt_1_01": s["r_cohort_share_rhat_gt_1_01"],
            "profile_gate_passed": s.get("r_profile_gate_passed"),
            "profile_max_rhat": s["r_profile_max_rhat"],
            "profile_share_rhat_gt_1_01": s["r_profile_share_rhat_gt_1_01"],
        }),
        "no_divergences": ((s["divergences"] or 0) <= limits.max_divergences, {
            "divergences": s["divergences"], "threshold": limits.max_divergences,
        }),
        "ess": (s["n_ess_failing"] == 0, {
            "non_finite": non_finite,
            "min_ess_bulk": s["min_ess_bulk"], "min_ess_tail": s["min_ess_tail"],
            "min_ess_q025_q975": s.get("min_ess_q025_q975"),
            "min_ess_bulk_sd": s["min_ess_bulk_sd"], "min_ess_tail_sd": s["min_ess_tail_sd"],
            "parameters_failing": s["n_ess_failing"], "worst": s["worst_ess"],
            "cohort_min_ess_bulk": s["r_cohort_min_ess_bulk"],
            "cohort_share_ess_below": s["r_cohort_share_ess_lt_min"],
            "threshold": limits.min_ess,
        }),
        "bfmi": (s["min_bfmi"] is None or s["min_bfmi"] >= limits.min_bfmi,
                 {"min_bfmi": s["min_bfmi"], "threshold": limits.min_bfmi}),
        "max_treedepth": (s["max_treedepth_share"] is None or s["max_treedepth_share"] <= limits.max_treedepth_share,
                          {"share_at_max_treedepth": s["max_treedepth_share"], "threshold": limits.max_treedepth_share}),
    }
    return [
        CheckOutcome(name, bool(passed), GATE[name][1], {k: v for k, v in meta.items() if v is not None})
        for name, (passed, meta) in figures.items()
    ]


def screened_gate(idata, limits: Thresholds) -> tuple[dict, list[CheckOutcome], list[CheckOutcome]]:
    """The stop rule's judgement of a checkpoint: the vectorised screen first; arviz judges again
    only a checkpoint the screen passes (or that has divergences), so arviz has the final say at
    the cost of one arviz pass per fit. Returns the summary, the failed blocking checks, and those
    the screen failed."""
    summary = convergence_summary(idata, limits, screen=True, reported=False)
    screen_failed = failed = failed_blocking(gate(summary, limits))
    if not failed or (summary["divergences"] or 0) > limits.max_divergences:
        summary = convergence_summary(idata, limits, reported=False)
        failed = failed_blocking(gate(summary, limits))
    return summary, failed, screen_failed


def failed_blocking(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    return [o for o in outcomes if o.blocking and not o.passed]


def describe(outcomes: list[CheckOutcome]) -> str:
    """One line per failed blocking check, with the figures behind it."""
    return "; ".join(f"{o.name} failed ({', '.join(f'{k} {_fmt(v)}' for k, v in o.metadata.items())})"
                     for o in failed_blocking(outcomes))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


BRMS_SDS = {"sd_school": "sd(school)", "sd_cohort": "sd(cohort)", "sd_profile": "sd(profile)", "sigma": "sigma"}
_STATS = {"estimate": np.mean, "est_error": lambda x: np.std(x, ddof=1),
          "lower_95": lambda x: np.quantile(x, 0.025), "upper_95": lambda x: np.quantile(x, 0.975)}


def posterior_summary(idata) -> pl.DataFrame:
    """brms-style summary of one model (arviz): Intercept, fixed effects b and the SDs with posterior
    mean (estimate), SD (est_error), 95% quantile interval, R-hat and bulk/tail ESS."""
    post = idata.posterior
    intercept = "b_Intercept" if "b_Intercept" in post else "Intercept"
    names = [v for v in (intercept, "b", *BRMS_SDS) if v in post]
    s = az.summary(post[names], kind="diagnostics", stat_funcs=_STATS, extend=True, round_to="none")
    labels = {intercept: "Intercept", **BRMS_SDS}
    parameter = [labels.get(i, i.removeprefix("b[").removesuffix("]")) for i in s.index]
    return pl.DataFrame({"parameter": parameter, **{c: s[c].to_numpy(float) for c in _STATS},
                         "rhat": s["r_hat"].to_numpy(float), "ess_bulk": s["ess_bulk"].to_numpy(float),
                         "ess_tail": s["ess_tail"].to_numpy(float)})


_CODE = hashlib.blake2b(b"".join(Path(__file__).with_name(n).read_bytes() for n in ("diagnostics.py", "draw_diagnostics.py")),
                      digest_size=8).hexdigest()  # this module's source


def thresholds_key(limits: Thresholds) -> str:
    """The thresholds a fit was judged with, and the version of this module that judged it, as
    stored with the posterior (``gate_thresholds``): a consumer judges again when either differs."""
    import json
    from dataclasses import asdict

    return json.dumps(asdict(limits) | {"diagnostics_code": _CODE}, sort_keys=True)
