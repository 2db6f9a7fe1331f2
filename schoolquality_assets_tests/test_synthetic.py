import numpy as np
import polars as pl
import pytest

from schoolquality_assets.ingest.contract import (
    REQUIRED_COLUMNS,
    load_landing,
    validate,
)
from schoolquality_assets.ingest.filters import clean, eligible_schools
from schoolquality_assets.ingest.synthetic import (
    Truth,
    generate_province,
    truth_frame,
    write_province,
)


@pytest.fixture(scope="module")
def province():
    return generate_province()


@pytest.fixture(scope="module")
def landed(province, tmp_path_factory):
    raw_dir = tmp_path_factory.mktemp("raw")
    write_province(province, raw_dir)
    return load_landing(raw_dir)


def test_same_seed_identical_other_seed_differs(province):
    assert generate_province().observations.equals(province.observations)
    assert not generate_province(seed=7).observations.equals(province.observations)


def test_contract_columns_and_types(province):
    obs = province.observations
    assert tuple(obs.columns) == REQUIRED_COLUMNS
    assert all(obs.schema[c] == pl.Int64 for c in ("year", "n_eligible", "n_participating", "n_l3l4"))


def test_landing_roundtrip_is_fully_valid(province, landed):
    valid, rejected = validate(landed)
    assert rejected.is_empty()
    assert len(valid) == len(province.observations)
    assert sorted(set(valid["source_file"])) == [f"g3_results_{y}.csv" for y in (2015, 2016, 2017, 2018, 2019,
                                                                                  2022, 2023, 2024)]


def test_eligible_count_near_target(landed):
    cleaned, filtered = clean(validate(landed)[0])
    n_eligible = eligible_schools(cleaned).height
    assert 3150 <= n_eligible <= 3350
    assert set(filtered["reason"]) == {"participation_below_0.50", "school_not_eligible"}


def test_structure(province):
    obs = province.observations
    sizes = obs.group_by("school_id").agg(pl.col("n_eligible").mean())["n_eligible"]
    assert sizes.min() < 15 and sizes.max() > 200
    assert obs["n_eligible"].min() >= 3 and obs["n_eligible"].max() <= 260
    assert not set(obs["year"]) & {2020, 2021}
    years_per_school = obs.group_by("school_id").agg(pl.col("year").n_unique())["year"]
    assert years_per_school.min() <= 2 and (years_per_school < 8).mean() > 0.05
    assert 0.88 < (obs["n_participating"] / obs["n_eligible"]).mean() < 0.95


def test_many_small_schools_with_few_observations_are_eligible(landed):
    """The small end a real province has: a handful of students, only the observations the filter requires."""
    cleaned, _ = clean(validate(landed)[0])
    schools = eligible_schools(cleaned)
    tiny = schools.filter((pl.col("mean_n_trials") <= 15) & (pl.col("n_obs") <= 6))
    assert tiny.height / schools.height > 0.08
    assert tiny["n_obs"].min() >= 2 and tiny["mean_n_trials"].min() < 5


def test_truth_effects_match_variance_components(province):
    """The drawn effects have the variances the truth states, within 4 sampling SDs of a variance
    estimated from K draws (sqrt(2 / K) relative): about ±10% for the schools, ±3% for cohorts."""
    truth = province.truth
    for effects, variance in ((truth.school_effect, truth.var_school), (truth.cohort_effect, truth.var_cohort)):
        values = np.array(list(effects.values()))
        assert abs(values.var() / variance - 1) < 4 * np.sqrt(2 / values.size), (values.size, values.var(), variance)
        assert abs(values.mean()) < 4 * np.sqrt(variance / values.size)
    assert len(truth.year_subject) == 24 and truth.year_subject.keys() >= {"2015_math", "2024_reading"}
    assert set(truth.cohort_effect) == set(province.observations.select(
        pl.format("{}_{}", "school_id", "year")).to_series())
    frame = truth_frame(truth)
    assert frame.height == len(truth.school_effect) and frame.columns == ["school_id", "school_effect"]


def test_custom_truth_is_used():
    small = generate_province(seed=3, n_schools=300, truth=Truth(intercept=2.0, var_school=0.01))
    obs = small.observations
    assert (obs["n_l3l4"].sum() / obs["n_participating"].sum()) > 0.8
    assert small.truth.intercept == 2.0 and small.truth.sd_school == pytest.approx(0.1)
