"""The cohort models' design (M2, M3), built here once and handed to Stan as data.

* The year_subject treatment contrasts X, in distinct rows: each cohort's mean row (Xbar), each
  school's mean cohort row (Xss) and each observation's row minus its cohort's (X - Xbar). Stan
  multiplies the few distinct rows by ``b`` and indexes; Python derives ``r_school`` and
  ``r_cohort`` from the same arrays (:func:`group_effects`).
* The parameterisation of each school and cohort: centred where the data identify the group
  mean sharply (data precision x prior variance >= 1), non-centred (``sd * z``) where they do not.
  Both are exact; the choice only changes how well the sampler mixes.
* Sampling scales: approximate posterior SDs of each parameter, used as Stan multipliers.

The group SDs behind the choice and the scales come from a moment estimate on the data, or from a
previous posterior of the same partition when one is given (``prior_sds``).
"""

from __future__ import annotations

import numpy as np

FLOOR_SD = {"school": 0.1, "cohort": 0.05}


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique rows, 1-based index of each input row into them)."""
    unique, inverse = np.unique(np.round(rows, 12), axis=0, return_inverse=True)
    return unique, inverse.reshape(-1).astype(np.int64) + 1


def group_mean_rows(rows: np.ndarray, index0: np.ndarray, groups: int) -> np.ndarray:
    total = np.zeros((groups, rows.shape[1]))
    np.add.at(total, index0, rows)
    return total / np.bincount(index0, minlength=groups)[:, None]


def cohort_design(X: np.ndarray, cohort: np.ndarray, cohort_school: np.ndarray, J_cohort: int, J_school: int) -> dict:
    """Stan data for the design: ``X_mean`` and the distinct Xss, Xbar and X - Xbar rows."""
    xbar = group_mean_rows(X, cohort - 1, J_cohort)
    xss = group_mean_rows(xbar, cohort_school - 1, J_school)
    xss_rows, school_row = distinct_rows(xss)
    xbar_rows, cohort_row = distinct_rows(xbar)
    xw_rows, within_row = distinct_rows(X - xbar[cohort - 1])
    return {
        "X_mean": X.mean(axis=0),
        "R_school": len(xss_rows), "Xss_rows": xss_rows, "school_row": school_row,
        "R_cohort": len(xbar_rows), "Xbar_rows": xbar_rows, "cohort_row": cohort_row,
        "R_within": len(xw_rows), "Xw_rows": xw_rows, "within_row": within_row,
    }


def information(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Binomial Fisher information n p (1 - p) about each cohort's logit, and the empirical logits."""
    y, n = data["y_success"], data["n_trials"]
    p = np.clip((y + 0.5) / (n + 1.0), 0.05, 0.95)
    info = np.bincount(data["cohort"] - 1, weights=n * p * (1 - p), minlength=data["J_cohort"])
    ys = np.bincount(data["cohort"] - 1, weights=y, minlength=data["J_cohort"])
    ns = np.bincount(data["cohort"] - 1, weights=n, minlength=data["J_cohort"])
    return info, np.log((ys + 0.5) / (ns - ys + 0.5))


def moment_sds(data: dict) -> dict[str, float]:
    """Rough school and cohort SDs from the cohorts' empirical logits (sampling noise subtracted).

    Year effects are ignored, so the cohort SD is overstated a little; it only steers the
    parameterisation and the multipliers, never the model.
    """
    info, logit = information(data)
    noise = 1.0 / np.maximum(info, 1e-9)
    school = data["cohort_school"] - 1
    count = np.bincount(school, minlength=data["J_school"])
    school_mean = np.bincount(school, weights=logit, minlength=data["J_school"]) / np.maximum(count, 1)
    several = count[school] > 1
    dev = (logit - school_mean[school])[several]
    shrink = (1 - 1 / count[school][several])  # E[dev^2] = (1 - 1/T) (sd_c^2 + noise)
    var_cohort = np.mean(dev**2 / shrink - noise[several]) if several.any() else FLOOR_SD["cohort"] ** 2
    sd_cohort = float(np.sqrt(max(var_cohort, FLOOR_SD["cohort"] ** 2)))
    within = np.bincount(school, weights=sd_cohort**2 + noise, minlength=data["J_school"]) / np.maximum(count, 1) ** 2
    var_school = np.var(school_mean) - np.mean(within)
    return {"school": float(np.sqrt(max(var_school, FLOOR_SD["school"] ** 2))), "cohort": sd_cohort}


def parameterisation(data: dict, sds: dict[str, float]) -> tuple[dict, dict]:
    """Stan data choosing centred / non-centred groups, and the sampling scales to go with them."""
    info, _ = information(data)
    cohort_var = 1.0 / (info + sds["cohort"] ** -2)                  # posterior variance of a cohort mean
    school_info = np.bincount(data["cohort_school"] - 1, weights=1.0 / (sds["cohort"] ** 2 + 1.0 / np.maximum(info, 1e-9)),
                              minlength=data["J_school"])
    school_var = 1.0 / (school_info + sds["school"] ** -2)
    cohort_centred = info * sds["cohort"] ** 2 >= 1.0
    school_centred = school_info * sds["school"] ** 2 >= 1.0
    choice = {
        "J_school_c": int(school_centred.sum()),
        "school_c": np.flatnonzero(school_centred) + 1, "school_nc": np.flatnonzero(~school_centred) + 1,
        "J_cohort_c": int(cohort_centred.sum()),
        "cohort_c": np.flatnonzero(cohort_centred) + 1, "cohort_nc": np.flatnonzero(~cohort_centred) + 1,
    }
    scales = {  # in the units of each parameter: the mean itself (centred) or z (non-centred)
        "fixed_scale": sds["school"] / np.sqrt(data["J_school"]),
        "school_c_scale": np.sqrt(school_var[school_centred]),
        "school_nc_scale": np.sqrt(school_var[~school_centred]) / sds["school"],
        "cohort_c_scale": np.sqrt(cohort_var[cohort_centred]),
        "cohort_nc_scale": np.sqrt(cohort_var[~cohort_centred]) / sds["cohort"],
    }
    return choice, scales


def group_effects(p: dict, data: dict, cohorts: bool = True) -> dict[str, np.ndarray]:
    """r_school and (with ``cohorts``) r_cohort, (chain, draw, group), from the cohort programs' draws."""
    b = p["b"]
    fixed = lambda rows, index: np.einsum("cdk,rk->cdr", b, rows)[..., index - 1]  # noqa: E731
    school_fixed = fixed(data["Xss_rows"], data["school_row"])
    school_mean = p["Intercept"][..., None] - np.einsum("cdk,k->cd", b, data["X_mean"])[..., None] + school_fixed
    mu_school = _assemble(school_mean, data["school_c"], p["mu_school_c"], data["school_nc"], p["sd_school"], p["z_school"])
    if not cohorts:
        return {"r_school": mu_school - school_mean}
    cs = data["cohort_school"] - 1
    cohort_mean = mu_school[..., cs] + fixed(data["Xbar_rows"], data["cohort_row"]) - school_fixed[..., cs]
    r_cohort = np.empty_like(cohort_mean)
    r_cohort[..., data["cohort_c"] - 1] = p["mu_cohort_c"] - cohort_mean[..., data["cohort_c"] - 1]
    r_cohort[..., data["cohort_nc"] - 1] = p["sd_cohort"][..., None] * p["z_cohort"]
    return {"r_school": mu_school - school_mean, "r_cohort": r_cohort, "mu_school": mu_school}


def _assemble(mean, centred, mu, noncentred, sd, z) -> np.ndarray:
    out = np.empty_like(mean)
    out[..., centred - 1] = mu
    out[..., noncentred - 1] = mean[..., noncentred - 1] + sd[..., None] * z
    return out
