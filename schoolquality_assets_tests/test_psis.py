"""The vectorised PSIS gives arviz's psislw, unit by unit, in the usual case and in every case it
hands back to arviz."""

import arviz as az
import numpy as np
import pytest

from schoolquality_assets.analyses import psis


def _units(rng: np.random.Generator, draws: int) -> np.ndarray:
    ll = rng.normal(-3, 1, (60, draws)) * rng.gamma(1, 1, (60, 1))
    ll[1] = -2.0                                       # every draw tied
    ll[2, : draws // 2] = -1e4                          # half the weights underflow
    ll[3] = rng.standard_t(1, draws) * 10               # heavy tail, weights spanning thousands
    ll[4] = np.round(ll[4], 1)                          # ties at and around the cutoff
    ll[5] = -rng.exponential(1e-3, draws)               # nearly flat weights
    ll[6] = rng.standard_t(2, draws) * 3                # heavy tail within the floats: smoothed here
    return -ll


@pytest.mark.parametrize("draws", [12, 40, 400, 1200])
@pytest.mark.parametrize("reff", [0.2, 0.8, 1.0])
def test_psislw_equals_arviz(draws, reff):
    lw = _units(np.random.default_rng(draws), draws)
    ours, k = psis.psislw(lw, reff)
    theirs, k_az = az.psislw(lw, reff)
    np.testing.assert_allclose(k, k_az, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-11)
    assert np.isinf(k[1]) or k[1] == k_az[1]


def test_the_usual_case_is_not_handed_back(monkeypatch):
    """The ordinary, heavy-tailed (6) and nearly flat (5) units are smoothed here (so the speed is real); arviz gets
    exactly the unusual ones: every draw tied (1), weights below the smallest float at the cutoff
    (2, and 3, whose t(1) log weights span thousands), ties at the cutoff (4). Both paths agree
    with arviz (above)."""
    lw = _units(np.random.default_rng(0), 1200)
    handed, psislw = [], az.psislw

    def recording(units, reff):
        handed.append(np.asarray(units).copy())
        return psislw(units, reff)

    monkeypatch.setattr(psis.az, "psislw", recording)
    psis.psislw(lw, 0.8)
    back = np.concatenate(handed) if handed else np.empty((0, 1200))
    back_rows = {i for i in range(len(lw)) if any(np.array_equal(lw[i], b) for b in back)}
    assert back_rows == {1, 2, 3, 4}


def test_gpd_fit_recovers_a_known_shape():
    """Tails drawn from a generalised Pareto with k = 0.2 and sigma = 2 (away from the prior's 0.5):
    the fit finds them."""
    rng = np.random.default_rng(7)
    u = rng.uniform(size=(200, 400))
    tails = np.sort(2 * (u ** -0.2 - 1) / 0.2, axis=1)
    k, sigma = psis.gpd_fit(tails)
    assert abs(k.mean() - 0.2) < 0.03 and abs(np.median(sigma) - 2) < 0.2
