"""Convergence diagnostics (arviz) and the convergence gate: one function decides pass or fail.

The gate is used by the posterior assets (as asset checks) and by everything downstream of a
posterior (which refuses a fit that failed it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import arviz as az
import numpy as np
import polars as pl

HYPER = ("b_Intercept", "Intercept", "b", "sd_school", "sd_cohort", "sd_profile", "sigma")


@dataclass(frozen=True)
class Thresholds:
    max_rhat: float = 1.01
    max_divergences: int = 0
    min_ess: float = 400.0
    min_bfmi: float = 0.3
    max_treedepth_share: float = 0.01


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    metadata: dict = field(default_factory=dict)


def _per_parameter(ds) -> dict[str, np.ndarray]:
    """Flatten an arviz result (one value per parameter element) to name[index] -> value."""
    out = {}
    for v in ds.data_vars:
        values = np.atleast_1d(ds[v].values).ravel()
        coords = [str(c) for c in ds[v][ds[v].dims[0]].values] if ds[v].dims else [""]
        out |= {(f"{v}[{c}]" if c else v): float(x) for c, x in zip(coords, values)}
    return out


def _worst(values: dict[str, float], bad, n: int = 5) -> list[str]:
    failing = sorted((k for k, x in values.items() if bad(x)), key=lambda k: values[k], reverse=bad(np.inf))
    return failing[:n]


def convergence_summary(idata, limits: Thresholds | None = None) -> dict:
    """Convergence figures for one model (arviz): R-hat and bulk/tail ESS over every gated
    quantity (intercepts, b, SDs, sigma, every r_school), cohort and profile effects reported."""
    limits = limits or Thresholds()
    post, stats = idata.posterior, idata.get("sample_stats")
    gated = [v for v in HYPER if v in post] + ["r_school"]
    rhat = _per_parameter(az.rhat(post[gated]))
    bulk = _per_parameter(az.ess(post[gated], method="bulk"))
    tail = _per_parameter(az.ess(post[gated], method="tail"))
    sds = [v for v in ("sd_school", "sd_cohort", "sd_profile", "sigma") if v in post]
    out = {
        "model": str(idata.attrs.get("model", "")),
        "draws": int(post.sizes["chain"] * post.sizes["draw"]),
        "max_rhat": max(rhat.values()),
        "n_rhat_failing": sum(x > limits.max_rhat for x in rhat.values()),
        "min_ess_bulk": min(bulk.values()), "min_ess_tail": min(tail.values()),
        "median_ess_bulk_school": float(np.median([x for k, x in bulk.items() if k.startswith("r_school")])),
        "n_ess_failing": sum(min(bulk[k], tail[k]) < limits.min_ess for k in bulk),
        "min_ess_bulk_sd": min(bulk[v] for v in sds), "min_ess_tail_sd": min(tail[v] for v in sds),
        "worst_rhat": ", ".join(_worst(rhat, lambda x: x > limits.max_rhat)),
        "worst_ess": ", ".join(_worst({k: min(bulk[k], tail[k]) for k in bulk}, lambda x: x < limits.min_ess)),
    }
    for v in ("r_cohort", "r_profile"):
        if v in post:
            r = az.rhat(post[[v]])[v].values
            e = az.ess(post[[v]], method="bulk")[v].values
            out[f"{v}_share_rhat_gt_1_01"] = float((r > 1.01).mean())
            out[f"{v}_max_rhat"] = float(np.nanmax(r))
            out[f"{v}_min_ess_bulk"] = float(np.nanmin(e))
            out[f"{v}_share_ess_lt_min"] = float((e < limits.min_ess).mean())
        else:
            for k in ("share_rhat_gt_1_01", "max_rhat", "min_ess_bulk", "share_ess_lt_min"):
                out[f"{v}_{k}"] = None
    has = lambda v: stats is not None and v in stats  # noqa: E731
    out["divergences"] = int(stats["diverging"].values.sum()) if has("diverging") else None
    out["min_bfmi"] = float(np.min(az.bfmi(idata))) if has("energy") else None
    out["max_treedepth_hits"] = int(stats["max_treedepth_hit"].values.sum()) if has("max_treedepth_hit") else None
    out["max_treedepth_share"] = (out["max_treedepth_hits"] / out["draws"]) if out["max_treedepth_hits"] is not None else None
    sec = idata.attrs.get("sample_seconds")
    out["sample_seconds"] = float(sec) if sec is not None else None
    return out


def mcmc_diagnostics(idatas: dict) -> pl.DataFrame:
    rows = []
    for key, idata in idatas.items():
        rows.append(convergence_summary(idata) | {"model": key.upper()})
    return pl.DataFrame(rows, infer_schema_length=None)


GATE = {  # check name -> (description, blocking)
    "rhat": ("Rank-normalised split R-hat <= threshold for b_Intercept, Intercept, b, the SDs, sigma and every "
             "r_school (cohort/profile reported, not gated)", True),
    "no_divergences": ("No more divergent transitions than allowed (default 0)", True),
    "ess": ("Bulk and tail ESS >= threshold for b_Intercept, Intercept, b, the SDs, sigma and every r_school", True),
    "bfmi": ("E-BFMI >= threshold in every chain (WARN)", False),
    "max_treedepth": ("Share of iterations at the maximum tree depth <= threshold (WARN)", False),
}


def gate(summary: dict, limits: Thresholds) -> list[CheckOutcome]:
    """Every convergence check of one posterior, with the figures and thresholds behind it."""
    figures = {
        "rhat": (summary["max_rhat"] <= limits.max_rhat, {
            "max_rhat": summary["max_rhat"], "threshold": limits.max_rhat,
            "parameters_failing": summary["n_rhat_failing"], "worst": summary["worst_rhat"],
            "cohort_max_rhat": summary["r_cohort_max_rhat"],
            "cohort_share_rhat_gt_1_01": summary["r_cohort_share_rhat_gt_1_01"],
            "profile_max_rhat": summary["r_profile_max_rhat"],
            "profile_share_rhat_gt_1_01": summary["r_profile_share_rhat_gt_1_01"],
        }),
        "no_divergences": ((summary["divergences"] or 0) <= limits.max_divergences, {
            "divergences": summary["divergences"], "threshold": limits.max_divergences,
        }),
        "ess": (min(summary["min_ess_bulk"], summary["min_ess_tail"]) >= limits.min_ess, {
            "min_ess_bulk": summary["min_ess_bulk"], "min_ess_tail": summary["min_ess_tail"],
            "min_ess_bulk_sd": summary["min_ess_bulk_sd"], "min_ess_tail_sd": summary["min_ess_tail_sd"],
            "parameters_failing": summary["n_ess_failing"], "worst": summary["worst_ess"],
            "cohort_min_ess_bulk": summary["r_cohort_min_ess_bulk"],
            "cohort_share_ess_below": summary["r_cohort_share_ess_lt_min"],
            "threshold": limits.min_ess,
        }),
        "bfmi": (summary["min_bfmi"] is None or summary["min_bfmi"] >= limits.min_bfmi,
                 {"min_bfmi": summary["min_bfmi"], "threshold": limits.min_bfmi}),
        "max_treedepth": (summary["max_treedepth_share"] is None or summary["max_treedepth_share"] <= limits.max_treedepth_share,
                          {"share_at_max_treedepth": summary["max_treedepth_share"], "threshold": limits.max_treedepth_share}),
    }
    return [
        CheckOutcome(name, bool(passed), GATE[name][1], {k: v for k, v in meta.items() if v is not None})
        for name, (passed, meta) in figures.items()
    ]


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
