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


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    metadata: dict = field(default_factory=dict)


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


GATE = {  # check name -> (description, blocking)
    "rhat": ("R-hat <= threshold for hyperparameters, fixed effects and school effects", True),
    "no_divergences": ("No more divergent transitions than allowed (default 0)", True),
    "ess": ("Bulk and tail ESS >= threshold for the SD hyperparameters", False),
    "bfmi": ("E-BFMI >= threshold in every chain", False),
}


def gate(summary: dict, limits: Thresholds) -> list[CheckOutcome]:
    """Every convergence check of one posterior, with the figures and thresholds behind it."""
    figures = {
        "rhat": (summary["max_rhat"] <= limits.max_rhat, {
            "max_rhat": summary["max_rhat"], "threshold": limits.max_rhat,
            "cohort_max_rhat": summary["r_cohort_max_rhat"],
            "cohort_share_rhat_gt_1_01": summary["r_cohort_share_rhat_gt_1_01"],
            "profile_max_rhat": summary["r_profile_max_rhat"],
            "profile_share_rhat_gt_1_01": summary["r_profile_share_rhat_gt_1_01"],
        }),
        "no_divergences": ((summary["divergences"] or 0) <= limits.max_divergences, {
            "divergences": summary["divergences"], "threshold": limits.max_divergences,
        }),
        "ess": (min(summary["min_ess_bulk_sd"], summary["min_ess_tail_sd"]) >= limits.min_ess, {
            "min_ess_bulk": summary["min_ess_bulk_sd"], "min_ess_tail": summary["min_ess_tail_sd"],
            "threshold": limits.min_ess,
        }),
        "bfmi": (summary["min_bfmi"] is None or summary["min_bfmi"] >= limits.min_bfmi,
                 {"min_bfmi": summary["min_bfmi"], "threshold": limits.min_bfmi}),
    }
    return [
        CheckOutcome(name, bool(passed), GATE[name][1], {k: v for k, v in meta.items() if v is not None})
        for name, (passed, meta) in figures.items()
    ]


def failed_blocking(outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
    return [o for o in outcomes if o.blocking and not o.passed]
