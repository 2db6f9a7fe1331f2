import numpy as np
import polars as pl
import pytest

from schoolquality_assets.ingest.contract import REQUIRED_COLUMNS, load_landing, validate
from schoolquality_assets.ingest.filters import clean, eligible_schools
from schoolquality_assets.ingest.synthetic import (
    DEFAULT_SUBJECTS, DEFAULT_YEARS, SUBJECT_OFFSET, Truth, generate_province, truth_frame, write_province,
)

COUNTS = ("n_eligible", "n_participating", "n_l3l4")
# The EQAO Grade 3 excerpt (schoolquality_assets_tests/fixtures/eqao/, the shared excerpt), per published school x year x subject.
EQAO_PARTICIPANT_PERCENTILES = {5: 13, 25: 24, 50: 36, 75: 50, 95: 80}
EQAO_MEDIAN_PARTICIPATION, EQAO_SHARE_BELOW_070 = 0.97, 0.017


@pytest.fixture(scope="module")
def province():
    return generate_province()


@pytest.fixture(scope="module")
def published(province):
    return province.observations.filter(pl.col("publisher_suppressed") == 0)


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
    assert tuple(obs.columns) == (*REQUIRED_COLUMNS, "publisher_suppressed")
    assert all(obs.schema[c] == pl.Int64 for c in ("year", "n_eligible", "n_participating", "n_l3l4"))
    assert obs.schema["publisher_suppressed"] == pl.Int8


def test_landing_roundtrip_rejects_exactly_the_suppressed_rows(province, published, landed):
    valid, rejected = validate(landed)
    assert len(valid) == len(published) and len(valid) + len(rejected) == len(province.observations)
    assert set(rejected["publisher_suppressed"]) == {"1"}
    assert set(rejected.select(COUNTS).unpivot()["value"]) == {"N/R"}  # EQAO's marker, as written
    key = ["school_id", "year", "subject"]
    suppressed = province.observations.filter(pl.col("publisher_suppressed") == 1).select(key)
    assert rejected.select(key).cast({"year": pl.Int64}).sort(key).equals(suppressed.sort(key))
    assert sorted(set(valid["source_file"])) == [f"g3_results_{y}.csv" for y in (2015, 2016, 2017, 2018, 2019,
                                                                                  2022, 2023, 2024)]


def test_suppressed_rows_are_rejected_as_suppressed_by_publisher(landed):
    assert set(validate(landed)[1]["reason"]) == {"suppressed_by_publisher"}


def test_eligible_count_near_target(landed):
    cleaned, filtered = clean(validate(landed)[0])
    n_eligible = eligible_schools(cleaned).height
    assert 3150 <= n_eligible <= 3350
    assert set(filtered["reason"]) == {"participation_below_0.50", "school_not_eligible"}


def test_structure(province, published):
    obs = province.observations
    sizes = published.group_by("school_id").agg(pl.col("n_eligible").mean())["n_eligible"]
    assert sizes.min() < 15 and sizes.max() > 120  # the excerpt's largest: 116 eligible
    assert published["n_eligible"].min() >= 10 and published["n_eligible"].max() <= 260
    assert not set(obs["year"]) & {2020, 2021}
    assert set(obs["year"]) == set(DEFAULT_YEARS) and set(obs["subject"]) == set(DEFAULT_SUBJECTS)
    years_per_school = obs.group_by("school_id").agg(pl.col("year").n_unique())["year"]
    assert years_per_school.min() <= 2 and (years_per_school < 8).mean() > 0.05


def test_sizes_and_participation_match_the_eqao_excerpt(published):
    """Within 10% of each measured participant percentile (the default seed: 14 / 24 / 36 / 50 / 79,
    within 8%; seeds 1-10 within 5%; the old lognormal(45, 0.8) province: 9 / 22 / 39 / 69 / 154),
    median participation 0.97 +- 0.01 (old 0.940), share below 0.70 at 1.7% +- 0.5 points (old 5.0%)."""
    participants = published["n_participating"].to_numpy()
    for q, target in EQAO_PARTICIPANT_PERCENTILES.items():
        assert abs(np.percentile(participants, q) / target - 1) < 0.10, (q, np.percentile(participants, q), target)
    assert participants.min() >= 10
    participation = participants / published["n_eligible"].to_numpy()
    assert abs(np.median(participation) - EQAO_MEDIAN_PARTICIPATION) < 0.01
    assert abs((participation < 0.70).mean() - EQAO_SHARE_BELOW_070) < 0.005


def test_publisher_suppression(province, published):
    """Fewer than 10 participants: the row stays, flagged 1, with no numbers (about 3% of rows)."""
    obs = province.observations
    assert set(obs["publisher_suppressed"]) == {0, 1}
    suppressed = obs.filter(pl.col("publisher_suppressed") == 1)
    assert 0.01 < suppressed.height / obs.height < 0.06
    assert all(suppressed[c].null_count() == suppressed.height for c in COUNTS)
    assert all(published[c].null_count() == 0 for c in COUNTS)
    assert published["n_participating"].min() >= 10
    # schools under 10 students throughout publish nothing at all; their truth is still drawn
    per_school = obs.group_by("school_id").agg(pl.col("publisher_suppressed").min().alias("all_suppressed"))
    silent = per_school.filter(pl.col("all_suppressed") == 1)["school_id"]
    assert silent.len() > 50 and set(silent) <= set(province.truth.school_effect)


def test_small_schools_with_few_observations_are_eligible(landed):
    """The small end that is published: 10-15 participants, only the observations the filter requires."""
    cleaned, _ = clean(validate(landed)[0])
    schools = eligible_schools(cleaned)
    tiny = schools.filter((pl.col("mean_n_trials") <= 15) & (pl.col("n_obs") <= 6))
    assert tiny.height / schools.height > 0.04
    assert tiny["n_obs"].min() >= 2 and tiny["mean_n_trials"].min() >= 10


def test_truth_effects_match_variance_components(province):
    """The drawn effects have the variances the truth states, within 4 sampling SDs of a variance
    estimated from K draws (sqrt(2 / K) relative): about ±10% for the schools, ±3% for cohorts."""
    truth = province.truth
    assert (truth.intercept, truth.var_school, truth.var_cohort, truth.var_profile) == (0.25, 0.395, 0.156, 0.004)
    for subject, offset in SUBJECT_OFFSET.items():  # year deviations N(0, 0.15^2) around the subject offset
        deviations = [truth.year_subject[f"{y}_{subject}"] - offset for y in DEFAULT_YEARS]
        assert abs(np.mean(deviations)) < 4 * 0.15 / np.sqrt(len(DEFAULT_YEARS))
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


def test_an_empty_landing_folder_gives_the_synthetic_provinces_published_rows(tmp_path):
    """With raw/ empty the synthetic province stands in, through the real ingest assets: every
    published row is valid, and only the suppressed rows are rejected."""
    import dagster as dg

    from schoolquality_assets.definitions import ASSETS, CHECKS
    from schoolquality_assets.defs.resources import ConvergenceResource, SamplerResource, WarehouseResource
    from schoolquality_assets.warehouse import Warehouse

    (tmp_path / "raw").mkdir()
    result = dg.materialize(
        [*ASSETS, *CHECKS], selection=dg.AssetSelection.assets("raw_observations", "rejected_observations",
                                                               "valid_observations"),
        resources={"warehouse": WarehouseResource(root=str(tmp_path), synthetic_seed=7), "sampler": SamplerResource(),
                   "convergence": ConvergenceResource()})
    assert result.success
    wh = Warehouse.from_env(tmp_path)
    obs = generate_province(seed=7).observations
    published = obs.filter(pl.col("publisher_suppressed") == 0)
    assert wh.read_table("valid_observations").height == published.height
    rejected = wh.read_table("rejected_observations")
    assert rejected.height == obs.height - published.height
    assert set(rejected["reason"]) == {"suppressed_by_publisher"}
