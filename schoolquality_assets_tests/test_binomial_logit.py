"""The binomial likelihood on the logit scale that the hand-written densities share
(cohort_density.binomial_logit), and the exp and log it is built from, against numpy."""

import math

import numba
import numpy as np
import pytest
from scipy import special

from schoolquality_assets.engine.cohort_density import (
    binomial_logit,
    exp_nonpositive,
    log_1_to_2,
)


@numba.njit
def _each(f, x):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = f(x[i])
    return out


@numba.njit
def _exp(x):
    return _each(exp_nonpositive, x)


@numba.njit
def _log(x):
    return _each(log_1_to_2, x)


def test_exp_within_three_ulp_down_to_minus_700():
    x = -np.concatenate([np.linspace(0.0, 700.0, 1_000_001), np.geomspace(1e-300, 1.0, 10_000)])
    ref = np.exp(x)
    assert np.max(np.abs(_exp(x) - ref) / np.spacing(ref)) <= 3
    assert _exp(np.array([0.0]))[0] == 1.0
    # below -700 the value stays at exp(-700) (1e-304: against 1 in log(1 + e) it is nothing)
    assert np.all(_exp(np.array([-700.5, -1e4, -np.inf])) == np.exp(-700.0))


def test_log_within_one_ulp_on_one_to_two():
    w = np.concatenate([np.linspace(1.0, 2.0, 1_000_001), 1.0 + np.geomspace(1e-300, 1.0, 10_000)])
    ref = np.log(w)
    assert np.max(np.abs(_log(w) - ref)) <= np.spacing(1.0) / 2
    assert _log(np.array([1.0]))[0] == 0.0 and _log(np.array([2.0]))[0] == math.log(2.0)


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 1000, 4099])
def test_binomial_logit_equals_the_reference(rows):
    rng = np.random.default_rng(rows)
    n = rng.integers(1, 200, rows).astype(float)
    y = np.floor(rng.uniform(0, 1, rows) * (n + 1))
    eta = rng.normal(0.0, 3.0, rows)
    eta[: rows // 10] *= 100.0   # far in both tails
    d = np.empty(rows)
    lp = binomial_logit(y, n, eta.copy(), d)
    terms = y * eta - n * np.logaddexp(0.0, eta)
    assert lp == pytest.approx(math.fsum(terms), rel=1e-13, abs=1e-10)
    np.testing.assert_allclose(d, y - n * special.expit(eta), rtol=1e-14, atol=1e-13 * n.max())


def test_binomial_logit_non_finite():
    one = lambda v: binomial_logit(np.array([3.0]), np.array([5.0]), np.array([v]), np.empty(1))  # noqa: E731
    assert math.isnan(one(np.nan)) and math.isnan(one(np.inf)) and one(-np.inf) == -np.inf


def test_the_log_likelihoods_binomial_kernel_equals_two_log_expits():
    """specs.binomial_log_kernel (LOO's pointwise log-likelihood) against scipy's log_expit form,
    from eta = -40 to 40, on y = 0, y = n and ordinary rows."""
    from schoolquality_assets.models.specs import binomial_log_kernel

    rng = np.random.default_rng(5)
    eta = np.concatenate([np.linspace(-40, 40, 801), rng.normal(0, 2, 2000)])[None, :].repeat(3, 0)
    n = np.array([[40.0], [1.0], [73.0]])
    y = np.array([[0.0], [1.0], [31.0]])
    got = binomial_log_kernel(y, n, eta)
    ref = y * special.log_expit(eta) + (n - y) * special.log_expit(-eta)
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=1e-300)
