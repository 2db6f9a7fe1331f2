"""The hand-written densities of M2 and M3 (cohort_density, sampled by the nutpie engine) against
their specification, stan/m2_cohort.stan and stan/m3_profile.stan compiled by httpstan: at random
points of the unconstrained space the log densities differ by one constant and the gradients are
equal; the output rows are Stan's."""

import numpy as np
import pytest

from schoolquality_assets import cohort_density, models


@pytest.fixture(scope="module", params=["m2", "m3"])
def m2(request, small_province):
    import httpstan.models

    from schoolquality_assets.stan_engine import compile_pystan

    spec = models.MODELS[request.param]
    # M3: scales that centre some profiles, so that both of its forms are tested
    mi = models.model_input(spec, small_province[1], prior_sds={"school": 0.1, "cohort": 0.15, "profile": 0.3}
                            if spec.profile else None)
    data = models.stan_data(spec, mi)
    module = httpstan.models.import_services_extension_module(compile_pystan(spec.path, lambda m: None)[0])
    jsonable = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    return data, module, jsonable


@pytest.mark.parametrize("prior_b_sd", [0.0, 0.7])
def test_log_density_and_gradient_equal_stans(m2, prior_b_sd):
    data, module, js = m2
    data, js = data | {"prior_b_sd": prior_b_sd}, js | {"prior_b_sd": prior_b_sd}
    density = cohort_density.density(data)
    assert 0 < data["J_school_c"] < data["J_school"] and 0 < data["J_cohort_c"] < data["J_cohort"]  # both forms
    assert "J_profile" not in data or 0 < data["J_profile_c"] < data["J_profile"]
    rng = np.random.default_rng(3)
    differences, lps = [], []
    for _ in range(8):
        u = rng.normal(0.0, 1.0, density.layout.size) * rng.uniform(0.2, 2.0)
        lp, grad = density(u)
        stan_lp = module.log_prob(js, u.tolist(), True)
        stan_grad = np.asarray(module.log_prob_grad(js, u.tolist(), True))
        np.testing.assert_allclose(grad, stan_grad, rtol=1e-9, atol=1e-9 * np.abs(stan_grad).max())
        differences.append(lp - stan_lp)
        lps.append(stan_lp)
    assert np.ptp(lps) > 100     # the density moves between the points; the difference must not
    np.testing.assert_allclose(differences, differences[0], rtol=0, atol=1e-9 * np.abs(lps).max())


def test_output_rows_are_stans_write_array(m2):
    data, module, js = m2
    names = cohort_density.output_names(data)
    assert names == list(module.constrained_param_names(js))
    rng = np.random.default_rng(4)
    u = rng.normal(0.0, 1.0, (3, cohort_density.layout(data).size))
    rows = cohort_density.output_rows(u, data)
    stan = np.array([module.write_array(js, list(row), True, True) for row in u])
    np.testing.assert_allclose(rows, stan, rtol=1e-12, atol=1e-12)


def test_unconstrain_inverts_the_initial_values(m2):
    data, module, js = m2
    mi_init = {"Intercept": 0.4, "delta": np.full(data["K"], 0.1), "log_sd_school": -1.0, "log_sd_cohort": -1.5,
               "mu_school_c": np.full(data["J_school_c"], 0.3), "z_school": np.full(data["J_school"] - data["J_school_c"], 0.2),
               "mu_cohort_c": np.full(data["J_cohort_c"], 0.5), "z_cohort": np.full(data["J_cohort"] - data["J_cohort_c"], -0.1)}
    if "J_profile" in data:
        mi_init |= {"log_sd_profile": -2.0, "r_profile_c": np.full(data["J_profile_c"], 0.05),
                    "z_profile": np.full(data["J_profile"] - data["J_profile_c"], 0.3)}
    u = cohort_density.unconstrain(mi_init, data)
    stan = np.asarray(module.transform_inits(js, {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in mi_init.items()}))
    np.testing.assert_allclose(u, stan, rtol=1e-12)
