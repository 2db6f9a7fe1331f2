"""The cohort models' design (M2, M3), built here once and handed to Stan as data.

* The year_subject treatment contrasts X, in distinct rows: each cohort's mean row (Xbar), each
  school's mean cohort row (Xss) and each observation's row minus its cohort's (X - Xbar). Stan
  multiplies the few distinct rows by ``b`` and indexes; Python derives ``r_school`` and
  ``r_cohort`` from the same arrays (:func:`group_effects`).
* The parameterisation of each school, cohort and (M3) subject profile: centred where the data identify the group
  mean sharply (data precision x prior variance >= 1), non-centred (``sd * z``) where they do not.
  Both are exact; the choice only changes how well the sampler mixes.
* Sampling scales: approximate posterior SDs of each parameter, used as Stan multipliers.

The group SDs behind the choice and the scales come from a moment estimate on the data, or from a
previous posterior of the same partition when one is given (``prior_sds``).
"""

from __future__ import annotations

import numpy as np

FLOOR_SD = {"school": 0.1, "cohort": 0.05, "profile": 0.03}


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


def _observation_information(data: dict) -> np.ndarray:
    """Binomial Fisher information n p (1 - p) of each observation about its logit."""
    y, n = data["y_success"], data["n_trials"]
    p = np.clip((y + 0.5) / (n + 1.0), 0.05, 0.95)
    return n * p * (1 - p)


def information(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Binomial Fisher information n p (1 - p) about each cohort's logit, and the empirical logits."""
    y, n = data["y_success"], data["n_trials"]
    info = np.bincount(data["cohort"] - 1, weights=_observation_information(data), minlength=data["J_cohort"])
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


def profile_information(data: dict) -> np.ndarray:
    """Binomial Fisher information n p (1 - p) about each subject profile's logit."""
    return np.bincount(data["subject_profile"] - 1, weights=_observation_information(data), minlength=data["J_profile"])


def moment_profile_sd(data: dict) -> float:
    """Rough profile SD from the covariance between years of a profile: each observation's
    empirical logit minus its cohort's mean logit (the school and the cohort cancel) and minus
    its year_subject cell's mean of that (the fixed effects) keeps the profile's effect, less its
    cohort's mean over the S subjects, in every year, and noise that is independent between
    years; so the mean product of two years of one profile estimates (1 - 1/S) sd_profile^2 with
    no model of the noise (which is ~40 times larger), less twice its standard error. Like :func:`moment_sds`, it only steers the
    parameterisation and the multipliers."""
    y, n = data["y_success"], data["n_trials"]
    logit = np.log((y + 0.5) / (n - y + 0.5))
    cohort = data["cohort"] - 1
    size = np.bincount(cohort, minlength=data["J_cohort"])[cohort].astype(float)
    mean = lambda x, index: (np.bincount(index, weights=x) / np.maximum(np.bincount(index), 1))[index]  # noqa: E731
    dev = logit - mean(logit, cohort)
    cells = np.unique(data["X"], axis=0, return_inverse=True)[1].reshape(-1)
    dev = (dev - mean(dev, cells))[size > 1]
    profile = data["subject_profile"][size > 1] - 1
    total = np.bincount(profile, weights=dev, minlength=data["J_profile"])
    square = np.bincount(profile, weights=dev**2, minlength=data["J_profile"])
    years = np.bincount(profile, minlength=data["J_profile"])
    weights = (years * (years - 1)).astype(float)   # pairs of distinct years per profile
    pairs = float(weights.sum())
    if pairs == 0:
        return FLOOR_SD["profile"]
    products = total**2 - square
    covariance = float(np.sum(products)) / pairs
    # its standard error over profiles; the lower end (estimate - 2 SE) is returned, so that a
    # small sample, whose estimate is noisy, never centres profiles on an SD the data do not show
    # (a profile centred with too wide an SD is a funnel: 12 schools gave 0.15 against a true 0.06)
    se = float(np.sqrt(np.sum((products - covariance * weights) ** 2))) / pairs
    loss = float(np.mean(1 - 1 / size[size > 1]))
    return float(np.sqrt(max((covariance - 2 * se) / loss, FLOOR_SD["profile"] ** 2)))


def profile_parameterisation(data: dict, sd_profile: float) -> tuple[dict, dict, float]:
    """Stan data choosing centred / non-centred profile effects (as :func:`parameterisation` does
    for schools and cohorts), their sampling scales, and the sampling scale of log sd_profile:
    1 / sqrt(2 J_eff), J_eff the profiles' summed squared shrinkage factors (the number the data
    identify), at most 0.3."""
    info = profile_information(data)
    var = 1.0 / (info + sd_profile**-2)
    ratio = info * sd_profile**2             # data precision x prior variance
    centred = ratio >= 1.0
    shrink = ratio / (1.0 + ratio)
    choice = {"J_profile_c": int(centred.sum()),
              "profile_c": np.flatnonzero(centred) + 1, "profile_nc": np.flatnonzero(~centred) + 1}
    scales = {"profile_c_scale": np.sqrt(var[centred]), "profile_nc_scale": np.sqrt(var[~centred]) / sd_profile}
    return choice, scales, float(min(0.3, 1.0 / np.sqrt(2.0 * max(float(np.sum(shrink**2)), 1.0))))


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


def profile_effects(p: dict, data: dict) -> np.ndarray:
    """r_profile (chain, draw, profile) from M3's centred r_profile_c and non-centred z_profile."""
    shape = p["sd_profile"].shape + (data["J_profile"],)
    return _assemble(np.zeros(shape), data["profile_c"], p["r_profile_c"], data["profile_nc"], p["sd_profile"],
                     p["z_profile"])


def _assemble(mean, centred, mu, noncentred, sd, z) -> np.ndarray:
    out = np.empty_like(mean)
    out[..., centred - 1] = mu
    out[..., noncentred - 1] = mean[..., noncentred - 1] + sd[..., None] * z
    return out
