"""The hand-written densities (school_density for M0 and M1, cohort_density for M2 and M3) against
the Stan programs (httpstan) away from the origin, where test_cohort_density.py's random points
do not go: the project's initial values, a realistic posterior point, every log SD at +4 and at
-4, and linear predictors at +35 and -35 on observations with y = 0, y = n and neither (alone and
with the log SDs at +-4), on data that hold such observations; and M1 with fixed effects (K > 0;
the page's M1 has none, so the other tests only see K = 0).

At every point the log density differs from Stan's by the same constant as at the realistic point
and the gradient equals Stan's, each within a few thousand rounding errors of the magnitude of
what is summed (``RTOL``); the C function nutpie calls gives the kernel's value bit for bit."""

import importlib

import numpy as np
import polars as pl
import pytest

from schoolquality_assets.engine import c_density, nutpie_engine
from schoolquality_assets.models import specs

pytestmark = pytest.mark.stan   # compiles the Stan programs (httpstan) to compare with them

ETA, LOG_SD = 35.0, 4.0
# Tolerance, relative to the magnitude of what is summed: for the log density its value; for a group
# parameter's gradient the largest in its block (its own rows and prior are of that size), for the
# others' (Intercept, b or delta, the log SDs, which sum over every group or row) the largest of all.
# Seen: 5e-15 (log density), 4e-14 (gradient: M1's b, a sum over every observation).
RTOL = 1e-12
GROUP_BLOCKS = ("mu_school", "mu_school_c", "z_school", "mu_cohort_c", "z_cohort", "r_profile_c", "z_profile")
# scales that centre some schools, cohorts and profiles and leave others non-centred (cohorts at y = 0
# and y = n among both), so that both forms of every level are tested at the extremes
PRIOR_SDS = {"m2": {"school": 0.15, "cohort": 0.3}, "m3": {"school": 0.15, "cohort": 0.3, "profile": 0.3}}


@pytest.fixture(scope="module")
def extreme_sample(small_province):
    """The small province with whole schools at y = 0 and at y = n (so that M1's school totals
    have them too: small and large schools, so that both forms of the cohort levels have them),
    and single observations at y = 0 and y = n in other schools."""
    sample = small_province[1]
    sizes = sample.group_by("school_id").len().sort("len", "school_id")
    small, large = sizes["school_id"][:3].to_list(), sizes["school_id"][-3:].to_list()
    zero, full = [small[0], small[2], large[0]], [small[1], large[1], large[2]]
    row = pl.int_range(pl.len())
    single = ~pl.col("school_id").is_in(zero + full) & (row % 37 == 5)
    y = (pl.when(pl.col("school_id").is_in(zero)).then(0)
         .when(pl.col("school_id").is_in(full)).then(pl.col("n_trials"))
         .when(single & (row % 74 == 5)).then(0).when(single).then(pl.col("n_trials"))
         .otherwise(pl.col("y_success")))
    return sample.with_columns(y_success=y.cast(pl.Int64))


# M1 with fixed effects (K > 0), flat on b as brms and with b ~ normal(0, 0.7)
M1_FIXED_EFFECTS = {"m1 K>0": 0.0, "m1 K>0 prior_b_sd 0.7": 0.7}


@pytest.fixture(scope="module", params=["m0", "m1", *M1_FIXED_EFFECTS, "m2", "m3"])
def program(request, extreme_sample):
    import httpstan.models

    from schoolquality_assets.engine.pystan_engine import compile_pystan

    key = request.param
    spec = specs.MODELS[key[:2]]
    mi = specs.model_input(spec, extreme_sample, prior_sds=PRIOR_SDS[key] if spec.cohort else None)
    if key in M1_FIXED_EFFECTS:   # year_subject contrasts and a continuous column (participation)
        X, _ = specs.design_matrix(mi.frame["year_subject"])
        mi.data |= {"K": X.shape[1] + 1, "X": np.column_stack([X, mi.frame["participation"].to_numpy()]),
                    "prior_b_sd": M1_FIXED_EFFECTS[key]}
    data = specs.stan_data(spec, mi)   # M1 with K > 0 keeps its observation rows (nothing to collapse)
    assert key not in M1_FIXED_EFFECTS or (data["K"] > 1 and data["N"] == extreme_sample.height)
    module = httpstan.models.import_services_extension_module(compile_pystan(spec.path, lambda m: None)[0])
    js = jsonable(data)
    density_module = importlib.import_module(nutpie_engine.DENSITIES[spec.stan_file][0])
    return key, spec, mi, data, module, js, density_module


def jsonable(d: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def log_sd_coordinates(spec, data, density_module) -> dict[int, float]:
    """Index of each log SD (and M0's log sigma) in the unconstrained vector, and its multiplier."""
    s = density_module.layout(data).slices()
    if spec.cohort:
        mult = density_module.multipliers(data)
        return {s[f"log_{k}"].start: mult[s[f"log_{k}"].start] for k in spec.sd_names}
    return {s[k].start: 1.0 for k in spec.sd_names}


def with_log_sds(u, spec, data, density_module, value) -> np.ndarray:
    u = u.copy()
    for i, m in log_sd_coordinates(spec, data, density_module).items():
        u[i] = value / m
    return u


def posterior_point(spec, data, density_module, rng) -> np.ndarray:
    """A point like the posterior's: Intercept 0.5, sd_school 0.6, sd_cohort 0.4, sd_profile 0.06,
    small fixed effects, group effects drawn from their priors (M0: on the proportion scale)."""
    J = data["J_school"]
    if not spec.binomial:
        return density_module.unconstrain({"Intercept": 0.6, "sd_school": 0.1, "sigma": 0.15,
                                           "mu_school": 0.6 + 0.1 * rng.normal(size=J)}, data)
    K = int(data["K"])
    if not spec.cohort:
        return density_module.unconstrain({"Intercept": 0.5, "b": rng.normal(0.0, 0.2, K), "sd_school": 0.6,
                                           "mu_school": 0.5 + 0.6 * rng.normal(size=J)}, data)
    delta = rng.normal(0.0, 0.1, K)
    b = delta + delta.sum()
    school_fixed = (np.asarray(data["Xss_rows"]) @ b)[data["school_row"] - 1]
    school_mean = 0.5 - np.asarray(data["X_mean"]) @ b + school_fixed
    mu_school = school_mean + 0.6 * rng.normal(size=J)
    cs = data["cohort_school"] - 1
    cohort_mean = mu_school[cs] + (np.asarray(data["Xbar_rows"]) @ b)[data["cohort_row"] - 1] - school_fixed[cs]
    mu_cohort = cohort_mean + 0.4 * rng.normal(size=data["J_cohort"])
    init = {"Intercept": 0.5, "delta": delta, "log_sd_school": np.log(0.6), "log_sd_cohort": np.log(0.4)}
    for level, mu, mean, sd in (("school", mu_school, school_mean, 0.6), ("cohort", mu_cohort, cohort_mean, 0.4)):
        init |= {f"mu_{level}_c": mu[data[f"{level}_c"] - 1], f"z_{level}": ((mu - mean) / sd)[data[f"{level}_nc"] - 1]}
    if spec.profile:
        z = rng.normal(size=data["J_profile"])
        init |= {"log_sd_profile": np.log(0.06), "r_profile_c": 0.06 * z[data["profile_c"] - 1],
                 "z_profile": z[data["profile_nc"] - 1]}
    return density_module.unconstrain(init, data)


def linear_predictor(spec, data, module, js, density_module, u) -> np.ndarray:
    """Each observation's linear predictor at u: Stan's (emit_eta) for the cohort programs, M1's
    mu_school[school] + Xc b (its transformed data's centred X) computed here."""
    if spec.cohort:
        e = js | {"emit_eta": 1}
        names = module.constrained_param_names(e)
        values = np.asarray(module.write_array(e, list(u), True, True))
        return values[[i for i, n in enumerate(names) if n.startswith("eta.")]]
    s = density_module.layout(data).slices()
    X = np.asarray(data["X"], float).reshape(int(data["N"]), int(data["K"]))
    return u[s["mu_school"]][np.asarray(data["school"]) - 1] + (X - X.mean(axis=0)) @ u[s["b"]]


def eta_targets(spec, data) -> list[tuple[int, float]]:
    """(observation, target linear predictor): +35 and -35 on an observation with y = 0, one with
    y = n and one with neither, for each form (centred, non-centred) of the level whose parameter
    moves it (M1: the school; M2, M3: the cohort), one observation per group."""
    y, n = np.asarray(data["y_success"]), np.asarray(data["n_trials"])
    kind = np.where(y == 0, 0, np.where(y == n, 1, 2))
    if spec.cohort:
        group = np.asarray(data["cohort"]) - 1
        centred = np.isin(group, np.asarray(data["cohort_c"]) - 1)
    else:
        group, centred = np.asarray(data["school"]) - 1, np.ones(len(y), bool)
    out, used = [], set()
    for form in (True, False) if spec.cohort else (True,):
        for k in range(3):
            for target in (ETA, -ETA):
                rows = [i for i in np.flatnonzero((kind == k) & (centred == form)) if group[i] not in used]
                assert rows, f"no observation of kind {k}, centred {form} left for eta = {target}"
                out.append((rows[0], target))
                used.add(group[rows[0]])
    return out


def with_eta(u, spec, data, module, js, density_module) -> np.ndarray:
    """u with each target observation's linear predictor moved to +-35 by its group's parameter."""
    u = u.copy()
    s = density_module.layout(data).slices()
    eta = linear_predictor(spec, data, module, js, density_module, u)
    targets = eta_targets(spec, data)
    for i, target in targets:
        if not spec.cohort:
            u[s["mu_school"].start + data["school"][i] - 1] += target - eta[i]
            continue
        mult = density_module.multipliers(data)
        c = data["cohort"][i]
        if c in data["cohort_c"]:
            j = s["mu_cohort_c"].start + int(np.flatnonzero(data["cohort_c"] == c)[0])
            u[j] += (target - eta[i]) / mult[j]
        else:
            j = s["z_cohort"].start + int(np.flatnonzero(data["cohort_nc"] == c)[0])
            sd = np.exp(u[s["log_sd_cohort"].start] * mult[s["log_sd_cohort"].start])
            u[j] += (target - eta[i]) / (sd * mult[j])
    eta = linear_predictor(spec, data, module, js, density_module, u)
    for i, target in targets:
        assert abs(eta[i] - target) <= 1e-12, (i, eta[i], target)
    return u


def points(key, spec, mi, data, module, js, density_module) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    post = posterior_point(spec, data, density_module, rng)
    pts = {"posterior": post,
           "initial values": density_module.unconstrain(specs.initial_values(spec, mi, 1, 17)[0], data),
           "log sd +4": with_log_sds(post, spec, data, density_module, LOG_SD),
           "log sd -4": with_log_sds(post, spec, data, density_module, -LOG_SD)}
    if not spec.binomial:   # M0: the school SD and sigma at opposite extremes too
        i_sd, i_sigma = log_sd_coordinates(spec, data, density_module)
        pts["sd_school +4, sigma -4"] = post.copy()
        pts["sd_school +4, sigma -4"][[i_sd, i_sigma]] = LOG_SD, -LOG_SD
        pts["sd_school -4, sigma +4"] = post.copy()
        pts["sd_school -4, sigma +4"][[i_sd, i_sigma]] = -LOG_SD, LOG_SD
        return pts
    for name in ("posterior", "log sd +4", "log sd -4"):
        pts[f"eta +-35, {name}"] = with_eta(pts[name], spec, data, module, js, density_module)
    return pts


def test_data_hold_the_extreme_observations(program):
    _, spec, _, data, *_ = program
    if not spec.binomial:   # M0's school means: the schools at y = 0 and y = n
        assert {0.0, 1.0} <= set(np.round(data["proportion"], 12))
        return
    y, n = np.asarray(data["y_success"]), np.asarray(data["n_trials"])
    assert (y == 0).sum() >= 3 and (y == n).sum() >= 3
    assert not spec.cohort or (0 < data["J_school_c"] < data["J_school"] and 0 < data["J_cohort_c"] < data["J_cohort"])
    assert not spec.profile or 0 < data["J_profile_c"] < data["J_profile"]


def test_extreme_points_equal_stans(program):
    key, spec, mi, data, module, js, density_module = program
    density = density_module.density(data)
    c_logp, table = density.c_logp()
    block = np.empty(density.layout.size, dtype=object)
    for name, where in density.layout.slices().items():
        block[where] = name
    group = np.isin(block, GROUP_BLOCKS)
    pts = points(key, spec, mi, data, module, js, density_module)
    constant = None
    for name, u in pts.items():
        lp, grad = density(u)
        c_lp, c_grad, code = c_density.call(c_logp, u, table)
        assert code == 0 and c_lp == lp, name
        np.testing.assert_array_equal(c_grad, grad, err_msg=name)
        assert np.isfinite(lp) and np.isfinite(grad).all(), name
        stan_lp = module.log_prob(js, u.tolist(), True)
        stan_grad = np.asarray(module.log_prob_grad(js, u.tolist(), True))
        constant = lp - stan_lp if constant is None else constant   # at the first point, the posterior one
        assert abs(lp - stan_lp - constant) <= RTOL * max(abs(lp), abs(stan_lp)), (name, lp - stan_lp, constant)
        # each coordinate against the magnitude of what it sums (see RTOL)
        size = np.abs(stan_grad)
        block_max = {b: size[block == b].max() for b in set(block)}
        scale = np.maximum(size, [block_max[b] if g else size.max() for b, g in zip(block, group)])
        bad = np.abs(grad - stan_grad) > RTOL * scale
        assert not bad.any(), (name, [(block[i], grad[i], stan_grad[i]) for i in np.flatnonzero(bad)[:5]])
