"""Posterior predictive checks against truth: the statistics by hand, replication from the generating
parameters (an "oracle" posterior, no Stan), and fitted models (Stan) on provinces with known truth:
M3 holds the subject profiles the generator puts in, M2 leaves them out."""

import arviz as az
import numpy as np
import polars as pl
import pytest

from schoolquality_assets.analyses import predictive
from schoolquality_assets.engine.base import SamplerSettings
from schoolquality_assets.ingest import synthetic
from schoolquality_assets.models import specs

from .conftest import province_sample

QUIET = lambda m: None  # noqa: E731
# as the exploratory fits behind the numbers quoted below: 2 x 300 kept draws, thinned to 400
FIT_SETTINGS = SamplerSettings(chains=2, warmup=300, draws=300, seed=3, until_converged=False)
DISPERSION = {"cohort_dispersion", "profile_dispersion"}


def _frame(rows: list[tuple]) -> pl.DataFrame:
    """An analysis sample from (school, year, subject, n, y) rows."""
    d = pl.DataFrame(rows, schema=["school_id", "year", "subject", "n_trials", "y_success"], orient="row")
    year = pl.col("year").cast(pl.Utf8)
    return d.with_columns(year_subject=pl.concat_str([year, pl.col("subject")], separator="_"),
                          school_year_id=pl.concat_str([pl.col("school_id"), year], separator="_"),
                          school_subject_id=pl.concat_str([pl.col("school_id"), pl.col("subject")], separator="_"))


def _oracle(key: str, sample: pl.DataFrame, truth: synthetic.Truth, draws: int = 400) -> az.InferenceData:
    """A posterior whose every draw is the generating truth, in the layout of specs.to_inference_data
    (for M2 the truth without its profiles: the model's form, not its fit)."""
    spec = specs.MODELS[key]
    mi = specs.model_input(spec, sample)
    d, coords = mi.data, mi.coords
    rep = lambda v: np.broadcast_to(np.asarray(v, dtype=float), (1, draws) + np.shape(v)).copy()  # noqa: E731
    ys, levels = truth.year_subject, sorted(mi.frame["year_subject"].unique().to_list())
    post = {"sd_school": rep(truth.sd_school), "r_school": rep([truth.school_effect[s] for s in coords["school"]]),
            "b_Intercept": rep(truth.intercept + ys[levels[0]]), "b": rep([ys[v] - ys[levels[0]] for v in levels[1:]]),
            "sd_cohort": rep(truth.sd_cohort), "r_cohort": rep([truth.cohort_effect[c] for c in coords["cohort"]])}
    dims = {"r_school": ["school"], "b": ["coef"], "r_cohort": ["cohort"]}
    const = {"school_idx": d["school"] - 1, "n_trials": d["n_trials"], "X": d["X"], "cohort_idx": d["cohort"] - 1}
    cdims = {"school_idx": ["obs"], "n_trials": ["obs"], "X": ["obs", "coef"], "cohort_idx": ["obs"]}
    if spec.profile:
        post |= {"sd_profile": rep(truth.sd_profile),
                 "r_profile": rep([truth.profile_effect[p] for p in coords["profile"]])}
        dims["r_profile"] = ["profile"]
        const["profile_idx"] = d["subject_profile"] - 1
        cdims["profile_idx"] = ["obs"]
    return az.from_dict(posterior=post, observed_data={"y_success": d["y_success"]}, constant_data=const,
                        coords=dict(coords) | {"obs": np.arange(d["N"])},
                        dims=dims | cdims | {"y_success": ["obs"]})


def _p(table: pl.DataFrame) -> dict[str, float]:
    return dict(zip(table["statistic"], table["p_value"]))


# ---------------------------------------------------------------- the statistics by hand
def test_p_value_counts_ties_half():
    assert predictive.p_value(np.array([1.0, 2.0, 2.0, 3.0]), 2.0) == 0.5
    assert predictive.p_value(np.array([1.0, 1.0]), 2.0) == 0.0
    assert predictive.p_value(np.array([3.0, 3.0]), 2.0) == 1.0


def test_pearson_statistics_by_hand():
    # every subject's province proportion is the same (26/40), so each cohort's level is its pooled
    # proportion and cohort_dispersion is the classic Pearson chi-square of its three subjects
    one_year = _frame([("A", 2015, "math", 20, 10), ("A", 2015, "reading", 20, 12), ("A", 2015, "writing", 20, 14),
                       ("B", 2015, "math", 20, 16), ("B", 2015, "reading", 20, 14), ("B", 2015, "writing", 20, 12)])
    lay = predictive.Layout(one_year)
    stats, _ = predictive.statistics(lay.y, lay)
    pearson = 8 / (20 * 0.6 * 0.4) + 8 / (20 * 0.7 * 0.3)
    assert stats["cohort_dispersion"][0] == pytest.approx(pearson, rel=1e-9)
    assert stats["profile_dispersion"][0] == pytest.approx(pearson, rel=1e-9)  # one year: the same residuals
    assert stats["year_dispersion"][0] == 0.0                                  # one cohort per school
    assert stats["school_sd_le25"][0] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert (stats["school_min"][0], stats["school_max"][0]) == pytest.approx((0.6, 0.7))
    assert "school_sd_26_100" not in stats and "school_sd_gt100" not in stats   # empty bands: no row
    # two years, flat within each cohort: only the years differ (both schools 0.7 overall)
    flat = [(s, yr, subj, 20, y) for s, ys in (("A", (12, 16)), ("B", (16, 12))) for yr, y in zip((2015, 2016), ys)
            for subj in ("math", "reading", "writing")]
    lay = predictive.Layout(_frame(flat))
    stats, _ = predictive.statistics(lay.y, lay)
    assert stats["year_dispersion"][0] == pytest.approx(4 * 6**2 / (60 * 0.7 * 0.3), rel=1e-9)
    assert stats["cohort_dispersion"][0] == pytest.approx(0.0, abs=1e-9)
    assert stats["profile_dispersion"][0] == pytest.approx(0.0, abs=1e-9)


def test_outside_share_is_out_of_sample():
    """Each replicated data set's share is taken against the other replications' intervals: under
    exchangeability it has the observed share's expectation, 0.0547 for 400 draws, not 0.05."""
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(120, 50))
    _, replicated = predictive.outside_shares(draws[0], draws, block=16)
    by_hand = [((draws[s] < lo) | (draws[s] > hi)).mean()
               for s in range(120) for lo, hi in [np.quantile(np.delete(draws, s, axis=0), [0.025, 0.975], axis=0)]]
    np.testing.assert_allclose(replicated, by_hand)
    # 60 x 2000 exchangeable (observed, 100 replications): both shares have the same expectation,
    # about (2 + 0.05 * 99) / 101 = 0.0688 (0.0547 for 400); Monte Carlo SD of the observed mean 0.0007
    shares = [predictive.outside_shares(d[0], d[1:]) for d in (rng.normal(size=(101, 2000)) for _ in range(60))]
    observed = np.mean([s[0] for s in shares])
    replicated = np.mean([s[1].mean() for s in shares])
    assert replicated == pytest.approx((2 + 0.05 * 99) / 101, abs=0.002)  # about: linear interpolation in the tails
    assert observed == pytest.approx(replicated, abs=0.003)


def test_flags_and_finding_in_words():
    table = pl.DataFrame({"model": ["M2"] * 3, "statistic": ["a", "b", "c"], "description": ["A", "B", "C"],
                          "observed": [1.0, 2.0, 3.0], "replicated_mean": [1.0, 1.0, 4.0],
                          "replicated_lower": [0.5, 0.5, 3.5], "replicated_upper": [1.5, 1.5, 4.5],
                          "p_value": [0.5, 0.001, 0.99], "draws": [400] * 3}, schema=predictive.SCHEMA)
    assert predictive.ppc_flags(table) == ["b", "c"]
    assert predictive.ppc_flags(table, lower=0.0005, upper=0.995) == []
    finding = predictive.ppc_finding(table)
    assert "2 outside" in finding and "more than the model replicates" in finding and "less than" in finding
    assert "every p-value" in predictive.ppc_finding(table.filter(pl.col("statistic") == "a"))
    both = pl.concat([table, table.with_columns(model=pl.lit("M3"))])
    assert predictive.ppc_flags(both) == ["M2:b", "M2:c", "M3:b", "M3:c"]


# ---------------------------------------------------------------- replication from the truth (no Stan)
@pytest.fixture(scope="module")
def profile_province():
    """The page's truth but a subject-profile SD of 0.2 (variance 0.04, not 0.004): at 160 eligible
    schools the within-cohort check has little power against the page's SD of 0.063 (see below)."""
    province = synthetic.generate_province(seed=11, n_schools=180, truth=synthetic.Truth(var_profile=0.04))
    return province, province_sample(province)


def test_replicating_from_the_truth(profile_province):
    province, sample = profile_province
    m3 = predictive.posterior_predictive_checks(_oracle("m3", sample, province.truth), sample, "m3")
    assert m3.columns == predictive.COLUMNS and m3["model"].unique().to_list() == ["M3"]
    bands = set(predictive.BAND_CODES.values())
    assert [s for s in predictive.STATISTICS if s in set(m3["statistic"])] == m3["statistic"].to_list()
    assert set(predictive.STATISTICS) - bands <= set(m3["statistic"]) and m3.height >= 8
    assert (m3["draws"] == 400).all()
    assert np.isfinite(m3.select("observed", "replicated_mean", "replicated_lower", "replicated_upper", "p_value")
                       .to_numpy()).all()
    # the generating parameters replicate the data (dispersion checks in the body of their distribution) ...
    assert all(0.025 <= _p(m3)[s] <= 0.975 for s in DISPERSION | {"outside_95", "year_dispersion"}), _p(m3)
    # ... and the same truth without its profiles (M2's form) does not, on both dispersion checks
    m2 = predictive.posterior_predictive_checks(_oracle("m2", sample, province.truth), sample, "m2")
    assert DISPERSION <= set(predictive.ppc_flags(m2)), _p(m2)
    assert all(_p(m2)[s] < 0.025 for s in DISPERSION)  # more dispersed than replicated, not less


def test_same_seed_same_table_and_thinning(profile_province):
    province, sample = profile_province
    idata = _oracle("m3", sample, province.truth, draws=90)
    a = predictive.posterior_predictive_checks(idata, sample, "M3", seed=5, draws=400)
    b = predictive.posterior_predictive_checks(idata, sample, "M3", seed=5, draws=400)
    assert a.equals(b) and (a["draws"] == 90).all()            # fewer draws than asked: all of them
    c = predictive.posterior_predictive_checks(idata, sample, "M3", seed=6, draws=30)
    assert (c["draws"] == 30).all() and not c["replicated_mean"].equals(a["replicated_mean"])
    ppc = predictive.replicate(idata, sample, "m3", seed=5, draws=30)
    assert ppc.posterior_predictive["y_success"].shape == (1, 30, sample.height)
    assert {f"T_{s}" for s in c["statistic"]} <= set(ppc.observed_data.data_vars)


def test_refuses_a_sample_the_posterior_was_not_fitted_to(profile_province):
    province, sample = profile_province
    idata = _oracle("m3", sample, province.truth, draws=10)
    with pytest.raises(ValueError, match="not the one M3 was fitted to"):
        predictive.posterior_predictive_checks(idata, sample.slice(1), "m3")
    with pytest.raises(ValueError, match="unknown model"):
        predictive.posterior_predictive_checks(idata, sample, "m9")


# ---------------------------------------------------------------- fitted models (Stan)
@pytest.fixture(scope="module")
def profile_fits(profile_province):
    _, sample = profile_province
    return {key: specs.fit(specs.MODELS[key], sample, FIT_SETTINGS, progress=QUIET) for key in ("m2", "m3")}


@pytest.mark.stan
def test_m3_passes_and_m2_misses_the_profiles(profile_province, profile_fits):
    """Profile SD 0.2: both dispersion checks flag M2 (over-dispersed data), M3 passes every check.
    (Provinces 1-6 and 11 of this size, fitted alike: the same verdicts in all seven, M2's two
    p-values 0.000 each time, M3's within [0.07, 0.93].)"""
    _, sample = profile_province
    m2, m3 = (predictive.posterior_predictive_checks(profile_fits[k], sample, k) for k in ("m2", "m3"))
    assert predictive.ppc_flags(m3) == [], _p(m3)
    assert DISPERSION <= set(predictive.ppc_flags(m2)), _p(m2)
    assert all(_p(m2)[s] < 0.025 for s in DISPERSION)
    # what M2 misses is within-cohort variation, not between schools or years
    assert all(0.025 <= _p(m2)[s] <= 0.975 for s in ("year_dispersion", "school_min", "school_max"))
    assert "cohort_dispersion" in predictive.ppc_finding(m2) and "every p-value" in predictive.ppc_finding(m3)


@pytest.mark.stan
def test_fitted_effects_make_the_data_look_under_dispersed(profile_province, profile_fits):
    """Replicating with the fitted cohort and profile effects (not new ones) centres each replication on
    the value fitted to that very observation: the correctly specified M3 then sees far fewer observed
    values outside their 95% intervals than replicated ones (under-dispersion); with new effects it
    does not."""
    _, sample = profile_province
    fitted = predictive.posterior_predictive_checks(profile_fits["m3"], sample, "m3", effects="fitted")
    new = predictive.posterior_predictive_checks(profile_fits["m3"], sample, "m3")
    row = lambda t: t.filter(pl.col("statistic") == "outside_95").row(0, named=True)  # noqa: E731
    assert row(fitted)["p_value"] > 0.975 and row(fitted)["observed"] < row(fitted)["replicated_lower"]
    assert 0.025 <= row(new)["p_value"] <= 0.975
    assert row(new)["replicated_lower"] <= row(new)["observed"] <= row(new)["replicated_upper"]


@pytest.mark.stan
def test_the_foils_are_flagged(profile_province):
    """M1 has no cohort effects (the years of a school vary more than it replicates); M0's one sigma
    for every observation replicates far more within-cohort variation than binomial data of ~36
    students show."""
    _, sample = profile_province
    m0, m1 = (predictive.posterior_predictive_checks(specs.fit(specs.MODELS[k], sample, FIT_SETTINGS, progress=QUIET),
                                                     sample, k) for k in ("m0", "m1"))
    assert _p(m1)["year_dispersion"] < 0.025
    assert _p(m0)["cohort_dispersion"] > 0.975
    assert m0["model"][0] == "M0" and np.isfinite(m0["observed"].to_numpy()).all()


@pytest.mark.stan
def test_the_pages_profile_sd():
    """The page's truth (profile SD 0.063) at ~360 eligible schools. The persistent-profile check
    flags M2: p = 0.000 in each of provinces 1-6 of this size (at ~160 schools in 7 of 9). The
    within-cohort check alone lacks the power at this size: M2's p-values 0.02-0.24 (0.02-0.45 at
    ~160 schools), below 0.025 once in six, so it is only required to lean the right way here.
    M3 passes every check (in all 6, and all 9 at ~160 schools)."""
    province = synthetic.generate_province(seed=2, n_schools=400)
    sample = province_sample(province)
    m2, m3 = (predictive.posterior_predictive_checks(specs.fit(specs.MODELS[k], sample, FIT_SETTINGS, progress=QUIET),
                                                     sample, k) for k in ("m2", "m3"))
    assert "profile_dispersion" in predictive.ppc_flags(m2) and _p(m2)["profile_dispersion"] < 0.025, _p(m2)
    assert _p(m2)["cohort_dispersion"] < 0.5, _p(m2)
    assert predictive.ppc_flags(m3) == [], _p(m3)
