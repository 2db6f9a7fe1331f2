"""Next year's results against the models' predictions (analyses/holdout.py): the scoring
arithmetic on known predictive distributions, the mapping of a posterior to a new year's linear
predictor on a hand-made posterior, and, where the model is true, coverage near nominal and the
models ahead of the raw proportion."""

import time

import arviz as az
import numpy as np
import polars as pl
import pytest
from scipy import stats

from schoolquality_assets.analyses import holdout
from schoolquality_assets.engine.base import SamplerSettings
from schoolquality_assets.ingest import synthetic
from schoolquality_assets.models import specs

from .conftest import province_sample


def _rows(n: list[int], y: list[int]) -> pl.DataFrame:
    k = len(n)
    return pl.DataFrame({"school_id": [f"S{i:03d}" for i in range(k)], "year": [2024] * k,
                         "subject": ["math"] * k, "n_trials": n, "y_success": y})


def test_scores_of_a_known_predictive_distribution():
    # Binomial(1, 0.5): either count's randomised PIT is uniform on half of [0, 1], a quarter of which
    # (50%) or 0.45 of which (90%) lies in the central band; log density log 0.5
    rows = _rows([1, 1], [0, 1])
    pred = holdout.predictive_frame(rows, holdout.mixture_pmf(np.zeros((5, 2)), rows["n_trials"].to_numpy()))
    s = holdout.holdout_scores(pred, rows, "coin")
    assert s["coverage_50"] == pytest.approx(0.5) and s["coverage_90"] == pytest.approx(0.9)
    assert s["mean_lpd"] == pytest.approx(np.log(0.5))
    assert s["coverage_50_inclusive"] == 1.0   # inclusive bounds [0, 1] hold both counts: discreteness
    # a mixture over draws: the pmf is the mean of the binomial pmfs; under it the expected
    # coverage is exactly nominal for any n, and the scores' log density is log P(Y = y)
    rng = np.random.default_rng(1)
    eta = rng.normal(0.3, 0.6, (400, 3))
    n = np.array([3, 12, 40])
    pmfs = holdout.mixture_pmf(eta, n)
    for j, pmf in enumerate(pmfs):
        want = stats.binom.pmf(np.arange(n[j] + 1)[None, :], n[j], 1 / (1 + np.exp(-eta[:, j:j + 1]))).mean(0)
        np.testing.assert_allclose(pmf, want, rtol=1e-10, atol=1e-15)
        cdf = np.cumsum(pmf)
        below = np.concatenate([[0.0], cdf[:-1]])
        for level in holdout.LEVELS:
            assert pmf @ holdout.pit_coverage(below, cdf, level) == pytest.approx(level, abs=1e-12)
    y = [2, 5, 31]
    rows = _rows(n.tolist(), y)
    s = holdout.holdout_scores(holdout.predictive_frame(rows, pmfs), rows, "mix")
    assert s["mean_lpd"] == pytest.approx(np.mean([np.log(p[k]) for p, k in zip(pmfs, y)]), rel=1e-12)
    # the frequentist discretisation is a distribution over 0..n that tightens onto the predicted count
    pmf = holdout.empirical_logit_pmf(0.4, 0.1, 1.0, 30)
    assert len(pmf) == 31 and pmf.sum() == pytest.approx(1.0) and np.all(pmf >= 0)
    sharp = holdout.empirical_logit_pmf(np.log(20.5 / 10.5), 1e-8, 1e-8, 30)
    assert sharp.argmax() == 20 and sharp.max() > 0.999


def test_school_blups_equal_the_mixed_model_formula():
    """BLUP = G Z' V^-1 r and its conditional variance G - G Z' V^-1 Z G, on a dense toy model."""
    rng = np.random.default_rng(2)
    schools = np.repeat(["a", "b", "c"], 6)
    cohorts = np.char.add(schools, np.tile(np.repeat(["1", "2"], 3), 3))
    w = rng.uniform(2, 12, 18)
    r = rng.normal(0, 1, 18)
    vs, vc, s2 = 0.4, 0.15, 0.9
    Zs = (schools[:, None] == np.unique(schools)[None, :]).astype(float)
    Zc = (cohorts[:, None] == np.unique(cohorts)[None, :]).astype(float)
    V = vs * Zs @ Zs.T + vc * Zc @ Zc.T + np.diag(s2 / w)
    want = vs * Zs.T @ np.linalg.solve(V, r)
    want_var = vs - vs**2 * np.diag(Zs.T @ np.linalg.solve(V, Zs))
    got = holdout.school_blups(r, w, schools, cohorts, vs, vc, s2).sort("school_id")
    np.testing.assert_allclose(got["blup"].to_numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(got["blup_var"].to_numpy(), want_var, rtol=1e-10)


def _toy_m3(draws: int):
    """Training frame (schools A, B; 2015-2016; math, reading) and an M3 posterior whose every draw
    is the same point: cells math -0.3, -0.1 and reading 0.2, 0.4 (subject means -0.2 and 0.3, tau^2 =
    4 x 0.01 / 2 = 0.02), sd_school 0.5, sd_cohort 0.3, sd_profile 0.2."""
    train = pl.DataFrame({"school_id": ["A"] * 4 + ["B"] * 4, "year": [2015, 2015, 2016, 2016] * 2,
                          "subject": ["math", "reading"] * 4, "n_trials": [30] * 8, "y_success": [15] * 8})
    train = train.with_columns(year_subject=pl.format("{}_{}", "year", "subject"),
                               school_subject_id=pl.format("{}_{}", "school_id", "subject"))
    def const(v):
        return np.full((1, draws) + np.shape(v), v)

    posterior = {"b_Intercept": const(-0.3), "b": const([0.5, 0.2, 0.7]), "sd_school": const(0.5),
                 "sd_cohort": const(0.3), "sd_profile": const(0.2), "r_school": const([0.6, -0.6]),
                 "r_cohort": const([0.0] * 4), "r_profile": const([0.1, -0.05, 0.0, 0.0]), "Intercept": const(0.0)}
    coords = {"school": ["A", "B"], "coef": ["year_subject2015_reading", "year_subject2016_math", "year_subject2016_reading"],
              "cohort": ["A_2015", "A_2016", "B_2015", "B_2016"], "profile": ["A_math", "A_reading", "B_math", "B_reading"]}
    dims = {"r_school": ["school"], "b": ["coef"], "r_cohort": ["cohort"], "r_profile": ["profile"]}
    return train, az.from_dict(posterior=posterior, coords=coords, dims=dims, attrs={"model": "m3"})


def test_new_year_new_cohort_new_school_on_a_known_posterior():
    draws = 40_000
    train, idata = _toy_m3(draws)
    heldout = pl.DataFrame({"school_id": ["A", "A", "C"], "year": [2017] * 3, "subject": ["math", "reading", "math"],
                            "n_trials": [30] * 3, "y_success": [15] * 3})
    eta, info = holdout.heldout_linear_predictor(idata, train, heldout, "m3", seed=4, draws=draws)
    assert info["new_school"].to_list() == [False, False, True]
    assert info["new_profile"].to_list() == [False, False, True]
    year = 0.02 * (1 + 1 / 2)                       # new cell: subject mean + N(0, tau^2 (1 + 1/T))
    want_mean = [-0.2 + 0.6 + 0.1, 0.3 + 0.6 - 0.05, -0.2]
    want_cov = np.array([[year + 0.09, 0.09, year],  # A's subjects share its new cohort; math its year cell
                         [0.09, year + 0.09, 0.0],
                         [year, 0.0, year + 0.25 + 0.09 + 0.04]])   # C: new school, cohort and profile
    se = np.sqrt(np.diag(want_cov) / draws)
    assert np.all(np.abs(eta.mean(0) - want_mean) < 4 * se), eta.mean(0)
    np.testing.assert_allclose(np.cov(eta.T), want_cov, atol=0.03 * want_cov.max())
    latest, _ = holdout.heldout_linear_predictor(idata, train, heldout, "m3", seed=4, draws=draws, new_year="latest")
    assert abs(latest[:, 0].mean() - (-0.1 + 0.6 + 0.1)) < 4 * 0.3 / np.sqrt(draws)
    assert latest[:, 0].var() == pytest.approx(0.09, rel=0.03)     # the cohort only: no spread between years
    with pytest.raises(ValueError, match="also training years"):
        holdout.heldout_linear_predictor(idata, train, train, "m3", seed=4)


@pytest.mark.stan
def test_models_predict_next_year_where_the_model_is_true():
    """M3's structure with the year x subject cells the same every year (a new year's cells are then
    known up to the fit's uncertainty: a realised year deviation would move every school's
    prediction of a subject together, and one held-out year could not show coverage within
    sampling error). Six schools lose their training years, to be predicted as new schools.
    Coverage within 3 binomial SEs of the held-out observations: a school's subjects share its
    cohort, but scoring the share of each PIT interval in the band varies less than a 0/1 hit, and
    over six provinces (seeds 1-6) M2/M3's coverage had SD 0.013 (90%) and 0.028 (50%) against
    binomial SEs of 0.016 and 0.026; measured 0.88-0.92 and 0.48-0.55."""
    cells = {f"{y}_{s}": synthetic.SUBJECT_OFFSET[s] for y in synthetic.DEFAULT_YEARS for s in synthetic.DEFAULT_SUBJECTS}
    province = synthetic.generate_province(seed=11, n_schools=150, truth=synthetic.Truth(year_subject=cells))
    sample = province_sample(province)
    latest = sample["year"].max()
    unseen = sorted(sample.filter(pl.col("year") == latest)["school_id"].unique().to_list())[::20][:6]
    sample = sample.filter(~(pl.col("school_id").is_in(unseen) & (pl.col("year") < latest)))
    seconds = {}

    def fit(key, train):
        t0 = time.perf_counter()
        settings = SamplerSettings(chains=4, warmup=300, draws=250, seed=5, until_converged=False)
        idata = specs.fit(specs.MODELS[key], train, settings, progress=lambda m: None)
        seconds[key] = time.perf_counter() - t0
        return idata

    table = holdout.run_holdout(sample, fit, seed=3)
    print(table.drop("description"), seconds)
    row = {r["model"]: r for r in table.iter_rows(named=True)}
    observations = row["M3"]["observations"]
    assert row["M3"]["new_school_observations"] >= 3 * len(unseen)
    for model in ("M2", "M3"):
        for level in holdout.LEVELS:
            got = row[model][f"coverage_{int(100 * level)}"]
            assert abs(got - level) < 3 * np.sqrt(level * (1 - level) / observations), (model, level, got)
        assert row[model]["mean_lpd"] > row["Raw proportion"]["mean_lpd"]
    # the check has power: the raw proportion leaves out the cohort variance and is far too narrow
    assert row["Raw proportion"]["coverage_90"] < 0.9 - 3 * np.sqrt(0.09 / observations)
    assert "fell inside the 90% interval" in holdout.holdout_finding(table)
