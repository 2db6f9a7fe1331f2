"""The convergence gate on simulated chains (numpy + arviz, no Stan): non-finite diagnostics fail
and are named, the r_school block rule passes stationary chains of the full partition's size
(which the old max R-hat <= 1.01 rule failed) and fails chains that have not mixed, and the ESS
of the published 2.5%/97.5% quantiles is gated."""

from __future__ import annotations

import dataclasses
import os
import time

import arviz as az
import numpy as np
import pytest
from scipy import stats
from scipy.signal import lfilter

from schoolquality_assets.defs.resources import ConvergenceResource
from schoolquality_assets.models import diagnostics, draw_diagnostics

LIMITS = diagnostics.Thresholds()
CHAINS = 4


def ar1(rng, shape, ess_ratio: float) -> np.ndarray:
    """Stationary AR(1) draws along the last axis, unit variance, ESS/N ~ ess_ratio."""
    rho = (1 - ess_ratio) / (1 + ess_ratio)
    e = rng.standard_normal(shape)
    e[..., 1:] *= np.sqrt(1 - rho ** 2)
    return lfilter([1.0], [1.0, -rho], e, axis=-1)


def posterior(school: np.ndarray, rng, cohort: np.ndarray | None = None, **hyper) -> az.InferenceData:
    """An arviz posterior: r_school from (K, chain, draw) draws, iid hyperparameters unless given."""
    k, chains, draws = school.shape
    post = {"b_Intercept": rng.standard_normal((chains, draws)),
            "sd_school": 0.6 + 0.05 * rng.standard_normal((chains, draws)),
            "sigma": 1.0 + 0.05 * rng.standard_normal((chains, draws))}
    post |= hyper
    post["r_school"] = np.moveaxis(school, 0, 2)
    dims = {"r_school": ["school"]}
    coords = {"school": [f"S{i:04d}" for i in range(k)]}
    if cohort is not None:
        post["r_cohort"] = np.moveaxis(cohort, 0, 2)
        dims["r_cohort"] = ["cohort"]
    return az.from_dict(posterior=post, dims=dims, coords=coords)


def judged(idata):
    summary = diagnostics.convergence_summary(idata, LIMITS)
    return summary, {o.name: o for o in diagnostics.gate(summary, LIMITS)}


@pytest.fixture(scope="module")
def stationary():
    """3,000 school effects, 4 chains x 700 draws, ESS/N 0.36: the full partition's size."""
    rng = np.random.default_rng(20240601)
    return ar1(rng, (3000, CHAINS, 700), 0.36)


# ---------------------------------------------------------------- same numbers as arviz
def test_vectorised_diagnostics_equal_arviz():
    rng = np.random.default_rng(3)
    x = ar1(rng, (40, 3, 201), 0.3)  # odd draws: arviz drops the middle draw when splitting
    x[:, 0] += 0.3 * rng.standard_normal((40, 1))
    x[0] = np.round(x[0])             # ties
    x[1] = np.round(x[1] * 3) / 3
    x[2] = -0.4 * x[2] + ar1(rng, (3, 201), 1.5)  # antithetic
    x[3, 1] = 2.0                     # one chain constant
    d = draw_diagnostics.diagnose(x)
    ds = az.from_dict(posterior={"v": np.moveaxis(x, 0, 2)}).posterior
    q = [az.ess(ds, method="quantile", prob=p)["v"].values for p in (0.025, 0.975)]
    np.testing.assert_allclose(d["rhat"], az.rhat(ds)["v"].values, rtol=1e-10)
    np.testing.assert_allclose(d["ess_bulk"], az.ess(ds, method="bulk")["v"].values, rtol=1e-10)
    np.testing.assert_allclose(d["ess_tail"], az.ess(ds, method="tail")["v"].values, rtol=1e-10)
    np.testing.assert_allclose(d["ess_quantile"], np.minimum(*q), rtol=1e-10)


def _recording_parts(monkeypatch, tmp_path, in_copy=None):
    """diagnose_draws that notes which process judged how many parameters (and, in a forked copy,
    runs ``in_copy`` first)."""
    real, parent = draw_diagnostics.diagnose_draws, os.getpid()

    def recorded(x, quantiles, screen):
        if in_copy is not None and os.getpid() != parent:
            in_copy()
        with open(tmp_path / "parts.txt", "a") as f:
            f.write(f"{os.getpid()} {len(x)}\n")
        return real(x, quantiles, screen)

    monkeypatch.setattr(draw_diagnostics, "diagnose_draws", recorded)
    monkeypatch.setattr(draw_diagnostics, "PARALLEL_MIN_VALUES", 1)
    return lambda: [tuple(map(int, line.split())) for line in (tmp_path / "parts.txt").read_text().splitlines()]


def test_a_block_judged_in_parallel_equals_one_process(monkeypatch, tmp_path):
    x = np.random.default_rng(3).normal(size=(45, 4, 60)).cumsum(-1)  # autocorrelated, unequal rows
    x[7] = 1.0  # constant: NaN R-hat
    x[8, 2, 5] = np.nan
    one = draw_diagnostics.diagnose_draws(x, draw_diagnostics.PUBLISHED_QUANTILES, screen=False)
    parts = _recording_parts(monkeypatch, tmp_path)
    parallel = draw_diagnostics.diagnose_in_parallel(x, workers=3)  # this process and two forked copies
    assert one.keys() == parallel.keys()
    for k in one:
        np.testing.assert_array_equal(parallel[k], one[k])
    assert np.isnan(parallel["rhat"][7]) and np.isnan(parallel["ess_bulk"][8])
    judged = parts()
    assert len({pid for pid, _ in judged}) == 3 and sorted(n for _, n in judged) == [15, 15, 15]


def test_the_cached_arviz_judgement_of_a_large_block_uses_every_core(monkeypatch, tmp_path):
    x = np.random.default_rng(5).normal(size=(30, 4, 40))
    parts = _recording_parts(monkeypatch, tmp_path)
    monkeypatch.setattr(draw_diagnostics, "usable_cores", lambda: 2, raising=False)
    d = draw_diagnostics.diagnose(x)
    np.testing.assert_array_equal(d["ess_bulk"], draw_diagnostics.diagnose_draws(x, (0.025, 0.975), False)["ess_bulk"])
    assert len({pid for pid, _ in parts()}) >= 2


@pytest.mark.parametrize("failure", ["raises", "hangs"])
def test_a_failed_or_hung_forked_part_is_redone_here(monkeypatch, tmp_path, failure):
    x = np.random.default_rng(4).normal(size=(20, 4, 50))

    def in_copy():
        if failure == "raises":
            raise RuntimeError("a forked part failed")
        time.sleep(600)

    parts = _recording_parts(monkeypatch, tmp_path, in_copy)
    monkeypatch.setattr(draw_diagnostics, "FORK_GRACE_SECONDS", 0.5)
    start = time.monotonic()
    parallel = draw_diagnostics.diagnose_in_parallel(x, workers=2)
    assert time.monotonic() - start < 60
    np.testing.assert_array_equal(parallel["ess_bulk"],
                                  draw_diagnostics.diagnose_draws(x, draw_diagnostics.PUBLISHED_QUANTILES, False)["ess_bulk"])
    assert {pid for pid, _ in parts()} == {os.getpid()}  # both halves judged here


@pytest.mark.parametrize("draws", [201, 9, 400])
def test_the_stop_rules_screen_equals_arviz(draws):
    """The screen (vectorised, no arviz) must give arviz's figures: it decides when arviz is asked."""
    rng = np.random.default_rng(draws)
    x = ar1(rng, (60, 4, draws), 0.2)
    x[:, 1] += 0.5 * rng.standard_normal((60, 1))
    x[0] = np.round(x[0])
    x[1] = 3.0                         # constant: R-hat NaN, ESS = size (arviz)
    x[2, 3, draws // 2] = np.nan
    x[3] = ar1(rng, (4, draws), 0.01)  # barely moving
    arviz, screen = draw_diagnostics.diagnose(x), draw_diagnostics.diagnose(x, screen=True)
    for key in ("rhat", "ess_bulk", "ess_tail", "ess_quantile"):
        np.testing.assert_array_equal(np.isnan(screen[key]), np.isnan(arviz[key]))
        np.testing.assert_allclose(screen[key], arviz[key], rtol=1e-10, err_msg=key)
    assert np.isnan(screen["rhat"][1]) and np.isnan(screen["ess_bulk"][2])


def test_screened_and_arviz_summaries_agree(stationary):
    rng = np.random.default_rng(8)
    school = stationary[:800, :, :300].copy()
    school[:40, 0] += 0.3
    idata = posterior(school, rng)
    a = diagnostics.convergence_summary(idata, LIMITS, reported=False)
    s = diagnostics.convergence_summary(idata, LIMITS, screen=True, reported=False)
    assert a.keys() == s.keys() and a.pop("r_school_arviz_rechecked") > 0 and s.pop("r_school_arviz_rechecked") is None
    for key, v in a.items():
        assert s[key] == pytest.approx(v, rel=1e-9) if isinstance(v, float) else s[key] == v, key


# ---------------------------------------------------------------- non-finite diagnostics fail
@pytest.mark.parametrize("where", ["r_school", "sd_school"])
def test_a_constant_gated_quantity_fails_and_is_named(where):
    """R-hat of a quantity constant over draws is NaN; it sits in the middle of the values (not
    first), where max() over Python floats skips it."""
    rng = np.random.default_rng(1)
    school = rng.standard_normal((50, CHAINS, 400))
    hyper = {}
    if where == "r_school":
        school[20] = 0.25
        name = "r_school[S0020]"
    else:
        hyper["sd_school"] = np.full((CHAINS, 400), 0.6)
        name = "sd_school"
    summary, checks = judged(posterior(school, rng, **hyper))
    assert summary["n_non_finite"] == 1 and summary["non_finite"] == name
    assert name in summary["worst_rhat"] and summary["n_rhat_failing"] == 1
    assert not checks["rhat"].passed and checks["rhat"].metadata["non_finite"] == name
    assert name in diagnostics.describe(list(checks.values()))
    # everything else is fine: the finite maximum is far below the threshold
    assert summary["max_rhat"] < 1.01 and checks["ess"].passed


def test_a_nan_draw_fails_and_is_named():
    rng = np.random.default_rng(2)
    school = rng.standard_normal((50, CHAINS, 400))
    school[33, 2, 200] = np.nan
    summary, checks = judged(posterior(school, rng))
    assert summary["non_finite"] == "r_school[S0033]"
    assert not checks["rhat"].passed and not checks["ess"].passed
    assert checks["ess"].metadata["non_finite"] == "r_school[S0033]" and summary["n_ess_failing"] == 1
    assert all(v is None or isinstance(v, (str, int, float)) for v in summary.values())


# ---------------------------------------------------------------- the r_school block rule
def test_stationary_chains_of_3000_school_effects_pass(stationary):
    """The case the old rule failed: max R-hat over 3,000 stationary effects is above 1.01."""
    rng = np.random.default_rng(4)
    summary, checks = judged(posterior(stationary, rng))
    assert summary["max_rhat"] > 1.01 and summary["r_school_max_rhat"] > 1.01  # old rule: fail
    assert summary["r_school_block_passed"] == 1 and summary["r_school_n_rhat_gt_limit"] == 0
    assert summary["r_school_max_rhat"] < summary["r_school_rhat_limit"] < 1.06
    assert max(summary["r_school_ratio_bulk"], summary["r_school_ratio_folded"]) < summary["r_school_ratio_limit"]
    assert checks["rhat"].passed and checks["ess"].passed
    assert not diagnostics.failed_blocking(list(checks.values()))


@pytest.mark.parametrize("share, delta", [(1.0, 0.1), (0.05, 0.3)])
def test_one_chain_offset_in_school_effects_fails(stationary, share, delta):
    """One chain offset by delta posterior SDs (random sign) in all, or 5%, of the effects: no
    single R-hat reaches the per-parameter limit, the between/within ratio catches it."""
    rng = np.random.default_rng(5)
    school = stationary.copy()
    hit = rng.choice(len(school), size=round(share * len(school)), replace=False)
    school[hit, 0] += delta * rng.choice([-1.0, 1.0], size=(len(hit), 1))
    summary, checks = judged(posterior(school, rng))
    assert summary["r_school_block_passed"] == 0 and not checks["rhat"].passed
    assert summary["r_school_n_rhat_gt_limit"] == 0
    assert summary["r_school_ratio_bulk"] > summary["r_school_ratio_limit"]
    assert "r_school block" in summary["worst_rhat"]


@pytest.mark.parametrize("kind", ["frozen", "stuck"])
def test_a_stuck_or_frozen_chain_fails(kind):
    rng = np.random.default_rng(6)
    school = ar1(rng, (300, CHAINS, 500), 0.36)
    school[:, 0] = rng.standard_normal((300, 1)) if kind == "frozen" else ar1(rng, (300, 500), 0.005)
    summary, checks = judged(posterior(school, rng))
    assert summary["r_school_block_passed"] == 0 and summary["r_school_n_rhat_gt_limit"] > 0
    assert not checks["rhat"].passed


def test_hyperparameters_keep_rhat_1_01():
    """A hyperparameter whose R-hat is above 1.01 fails even though it is below the block limit."""
    rng = np.random.default_rng(7)
    sd = 0.6 + 0.05 * rng.standard_normal((CHAINS, 400))
    sd[0] += 0.02  # R-hat ~ 1.03
    summary, checks = judged(posterior(rng.standard_normal((100, CHAINS, 400)), rng, sd_school=sd))
    assert 1.01 < summary["max_rhat_hyper"] < summary["r_school_rhat_limit"]
    assert summary["n_rhat_hyper_failing"] == 1 and summary["worst_rhat"].startswith("sd_school")
    assert summary["r_school_block_passed"] == 1 and not checks["rhat"].passed


def test_block_limit_follows_its_formula():
    d = {k: np.ones(3300) for k in ("rhat", "ssb_bulk", "ssw_bulk", "ssb_folded", "ssw_folded")}
    d |= {f"contrasts_{k}": np.random.default_rng(0).standard_normal((3300, 12)) for k in ("bulk", "folded")}
    rule = diagnostics.block_rule(d, CHAINS, 700, LIMITS)
    m, n, alpha = 8, 350, LIMITS.block_false_fail_rate
    q = stats.chi2.isf(alpha / (4 * 3300), m - 1) / (m - 1)
    assert rule["rhat_limit"] == pytest.approx(np.sqrt((n - 1) / n + m / LIMITS.min_ess * q))
    smaller = diagnostics.block_rule({k: v[:100] for k, v in d.items()}, CHAINS, 700, LIMITS)
    assert 1.01 < smaller["rhat_limit"] < rule["rhat_limit"]  # more parameters, higher noise floor
    assert rule["ratio_limit"] == pytest.approx(1 + LIMITS.block_tolerance)  # the floor at K = 3,300
    assert smaller["ratio_limit"] > rule["ratio_limit"]       # the F quantile for few parameters


# ---------------------------------------------------------------- ESS of the published quantiles
def _clumped_lower_tail(rng, draws: int = 1000, run: int = 16) -> np.ndarray:
    """iid draws per chain, except that the values below the 2.5% quantile come in runs: bulk
    and tail (5%/95%) ESS stay high, the ESS of the 2.5% quantile falls below 400."""
    x = rng.standard_normal((CHAINS, draws))
    q = np.quantile(x, 0.025)
    for c in range(CHAINS):
        low, rest = np.sort(x[c][x[c] <= q]), rng.permutation(x[c][x[c] > q])
        cuts = np.sort(rng.choice(len(rest) + 1, -(-len(low) // run), replace=False))
        pieces, prev = [], 0
        for i, cut in enumerate(cuts):
            pieces += [rest[prev:cut], low[i * run:(i + 1) * run]]
            prev = cut
        x[c] = np.concatenate(pieces + [rest[prev:]])
    return x


def test_ess_of_the_published_quantiles_is_gated():
    rng = np.random.default_rng(8)
    school = rng.standard_normal((20, CHAINS, 1000))
    school[11] = _clumped_lower_tail(rng)
    summary, checks = judged(posterior(school, rng))
    ds = az.from_dict(posterior={"v": school[11]}).posterior
    q025 = float(az.ess(ds, method="quantile", prob=0.025)["v"])
    assert summary["min_ess_bulk"] >= 400 and summary["min_ess_tail"] >= 400
    assert summary["min_ess_q025_q975"] == pytest.approx(q025) and q025 < 400
    assert not checks["ess"].passed and checks["ess"].metadata["min_ess_q025_q975"] == pytest.approx(q025)
    assert summary["worst_ess"] == "r_school[S0011]" and summary["n_ess_failing"] == 1


def test_quantile_ess_is_the_minimum_over_both_quantiles(stationary):
    idata = posterior(stationary[:200], np.random.default_rng(9))
    summary = diagnostics.convergence_summary(idata, LIMITS)
    post = idata.posterior[["b_Intercept", "sd_school", "sigma", "r_school"]]
    ref = min(float(min(az.ess(post[[v]], method="quantile", prob=p)[v].min() for p in (0.025, 0.975)))
              for v in post.data_vars)
    assert summary["min_ess_q025_q975"] == pytest.approx(ref, rel=1e-10)


# ---------------------------------------------------------------- cohort effects: reported, not blocking
def test_cohort_effects_are_judged_but_not_blocking():
    rng = np.random.default_rng(10)
    school = ar1(rng, (200, CHAINS, 600), 0.5)
    cohort = ar1(rng, (400, CHAINS, 600), 0.5)
    summary, checks = judged(posterior(school, rng, cohort=cohort))
    assert summary["r_cohort_gate_passed"] == 1 and summary["r_profile_gate_passed"] is None
    cohort[:, 0] += 0.3 * rng.choice([-1.0, 1.0], size=(400, 1))
    summary, checks = judged(posterior(school, rng, cohort=cohort))
    assert summary["r_cohort_gate_passed"] == 0 and summary["r_cohort_ratio_bulk"] > summary["r_cohort_ratio_limit"]
    assert checks["rhat"].passed and checks["rhat"].metadata["cohort_gate_passed"] == 0


@pytest.mark.parametrize("ess_ratio", [0.12, 0.5])  # many effects near min_ess / most far above it
def test_block_figures_equal_arviz_on_every_effect(monkeypatch, ess_ratio):
    """The school and cohort figures (arviz on the effects near a threshold or extreme, the screen
    elsewhere) equal those of arviz judging every effect, figure by figure, verdicts included."""
    rng = np.random.default_rng(11)
    cohort = ar1(rng, (1500, CHAINS, 300), ess_ratio)
    cohort[:40, 0] += 0.15                                   # R-hats near 1.01 and above
    cohort[40] = np.round(cohort[40])                        # ties
    cohort[41, 2, 7] = np.nan                                # non-finite
    school = ar1(rng, (800, CHAINS, 300), ess_ratio)
    school[:5, 0] += 0.3
    idata = posterior(school, rng, cohort=cohort)
    summary = diagnostics.convergence_summary(idata, LIMITS)
    rechecked = {v: summary.pop(f"{v}_arviz_rechecked") for v in ("r_school", "r_cohort")}
    monkeypatch.setattr(diagnostics, "_near_a_threshold", lambda d, *_: np.ones(len(d["rhat"]), bool))
    everywhere = diagnostics.convergence_summary(idata, LIMITS)
    assert {v: everywhere.pop(f"{v}_arviz_rechecked") for v in rechecked} == {"r_school": 800, "r_cohort": 1500}
    assert 40 < rechecked["r_cohort"] < 1500 and 10 <= rechecked["r_school"] < 800
    assert summary.keys() == everywhere.keys()
    for key, value in everywhere.items():
        if isinstance(value, float):
            assert summary[key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
        else:
            assert summary[key] == value, key
    assert 0 < summary["r_cohort_share_rhat_gt_1_01"] and summary["r_cohort_n_non_finite"] == 1
    assert [o.passed for o in diagnostics.gate(summary, LIMITS)] == [o.passed for o in diagnostics.gate(everywhere, LIMITS)]


def test_thresholds_and_resource_have_the_same_fields_and_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(diagnostics.Thresholds)}
    assert ConvergenceResource().model_dump() == fields
    assert ConvergenceResource().thresholds() == diagnostics.Thresholds()
    assert {"block_false_fail_rate", "block_tolerance"} <= set(fields)
