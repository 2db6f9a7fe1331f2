"""The hand-written densities (cohort_density for M2 and M3, school_density for M0 and M1, sampled by
the nutpie engine) against their specification, the Stan programs compiled by httpstan, on the
data the engine gives them: at random points of the unconstrained space the log densities differ
by one constant and the gradients are equal; the output rows are Stan's write_array and the
initial values are unconstrained as Stan's transform_inits does. The C function nutpie calls
(c_density) gives the Python kernel's log density and gradient bit for bit."""

import importlib

import numpy as np
import pytest

from schoolquality_assets.engine import c_density, nutpie_engine
from schoolquality_assets.models import specs

pytestmark = pytest.mark.stan   # compiles the Stan programs (httpstan) to compare with them


@pytest.fixture(scope="module", params=["m0", "m1", "m2", "m3"])
def program(request, small_province):
    import httpstan.models

    from schoolquality_assets.engine.pystan_engine import compile_pystan

    spec = specs.MODELS[request.param]
    # M3: scales that centre some profiles, so that both of its forms are tested
    mi = specs.model_input(spec, small_province[1], prior_sds={"school": 0.1, "cohort": 0.15, "profile": 0.3}
                            if spec.profile else None)
    data = specs.stan_data(spec, mi)
    module = httpstan.models.import_services_extension_module(compile_pystan(spec.path, lambda m: None)[0])
    jsonable = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    density_module = importlib.import_module(nutpie_engine.DENSITIES[spec.stan_file][0])
    return spec, mi, data, module, jsonable, density_module


@pytest.mark.parametrize("prior_b_sd", [0.0, 0.7])
def test_log_density_and_gradient_equal_stans(program, prior_b_sd):
    spec, _, data, module, js, density_module = program
    if prior_b_sd and not spec.binomial:
        pytest.skip("M0 has no fixed effects")
    if spec.binomial:
        data, js = data | {"prior_b_sd": prior_b_sd}, js | {"prior_b_sd": prior_b_sd}
    if spec.cohort:   # both forms of every level
        assert 0 < data["J_school_c"] < data["J_school"] and 0 < data["J_cohort_c"] < data["J_cohort"]
        assert not spec.profile or 0 < data["J_profile_c"] < data["J_profile"]
    density = density_module.density(data)
    c_logp, table = density.c_logp()
    rng = np.random.default_rng(3)
    differences, lps = [], []
    for _ in range(8):
        u = rng.normal(0.0, 1.0, density.layout.size) * rng.uniform(0.2, 2.0)
        lp, grad = density(u)
        c_lp, c_grad, code = c_density.call(c_logp, u, table)
        assert code == 0 and c_lp == lp
        np.testing.assert_array_equal(c_grad, grad)
        stan_lp = module.log_prob(js, u.tolist(), True)
        stan_grad = np.asarray(module.log_prob_grad(js, u.tolist(), True))
        np.testing.assert_allclose(grad, stan_grad, rtol=1e-9, atol=1e-9 * np.abs(stan_grad).max())
        differences.append(lp - stan_lp)
        lps.append(stan_lp)
    assert np.ptp(lps) > 100     # the density moves between the points; the difference must not
    np.testing.assert_allclose(differences, differences[0], rtol=0, atol=1e-9 * np.abs(lps).max())


def test_output_rows_are_stans_write_array(program):
    _, _, data, module, js, density_module = program
    names = density_module.output_names(data)
    assert names == list(module.constrained_param_names(js))
    rng = np.random.default_rng(4)
    u = rng.normal(0.0, 1.0, (3, density_module.layout(data).size))
    rows = density_module.output_rows(u, data)
    stan = np.array([module.write_array(js, list(row), True, True) for row in u])
    np.testing.assert_allclose(rows, stan, rtol=1e-12, atol=1e-12)


def test_initial_values_unconstrain_as_stans(program):
    spec, mi, data, module, js, density_module = program
    init = specs.initial_values(spec, mi, 1, 17)[0]
    u = density_module.unconstrain(init, data)
    stan = np.asarray(module.transform_inits(js, {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in init.items()}))
    np.testing.assert_allclose(u, stan, rtol=1e-12, atol=1e-12)


def test_each_density_is_for_its_programs_text(tmp_path):
    """A density is used only for the program text it was written against: an edited program
    samples with PyStan (and this test fails until the density and its hash are brought up to date)."""
    for spec in specs.MODELS.values():
        assert nutpie_engine.has_density(spec.path), f"{spec.stan_file} changed since its hand-written density"
        edited = tmp_path / spec.stan_file
        edited.write_text(spec.path.read_text() + "\n// edited\n")
        assert not nutpie_engine.has_density(edited)
