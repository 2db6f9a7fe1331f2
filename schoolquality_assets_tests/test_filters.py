import hashlib

import polars as pl
import pytest

from schoolquality_assets.ingest.filters import (
    analysis_sample,
    clean,
    eligible_schools,
    select_subsample,
)


def obs(rows):
    """rows: (school_id, year, subject, n_eligible, n_participating) -> a valid-like frame."""
    frame = pl.DataFrame(rows, schema=["school_id", "year", "subject", "n_eligible", "n_participating"], orient="row")
    return frame.with_columns(
        pl.col("year").cast(pl.Int32),
        pl.col("n_participating").alias("n_trials"),
        (pl.col("n_participating") // 2).alias("y_success"),
        (pl.col("n_participating") / pl.col("n_eligible")).alias("participation"),
    )


def test_participation_below_half_is_filtered():
    valid = obs([("A", 2015, "math", 10, 9), ("A", 2016, "math", 10, 9), ("A", 2017, "math", 10, 4),
                 ("A", 2018, "math", 10, 5)])
    cleaned, filtered = clean(valid)
    assert cleaned["year"].to_list() == [2015, 2016, 2018]
    assert filtered.select("year", "reason").rows() == [(2017, "participation_below_0.50")]
    assert len(cleaned) + len(filtered) == len(valid)


def test_exactly_two_obs_at_070_is_eligible_one_is_not():
    valid = obs([("A", 2015, "math", 10, 7), ("A", 2016, "math", 20, 14),
                 ("B", 2015, "math", 10, 7), ("B", 2016, "math", 10, 6)])
    cleaned, filtered = clean(valid)
    assert cleaned["school_id"].unique().to_list() == ["A"]
    assert filtered["reason"].to_list() == ["school_not_eligible"] * 2


def test_mid_participation_kept_for_eligible_school_but_not_counted():
    valid = obs([("A", 2015, "math", 10, 9), ("A", 2016, "math", 10, 9), ("A", 2017, "math", 10, 6),
                 ("B", 2015, "math", 10, 9), ("B", 2016, "math", 10, 6), ("B", 2017, "math", 10, 6)])
    cleaned, filtered = clean(valid)
    assert cleaned.filter(pl.col("school_id") == "A")["year"].to_list() == [2015, 2016, 2017]
    assert set(filtered["school_id"]) == {"B"}
    summary = eligible_schools(cleaned).row(0, named=True)
    assert (summary["n_obs"], summary["n_obs_high_participation"]) == (3, 2)


def test_low_participation_obs_do_not_count_for_eligibility():
    # a 0.4 row never counts, even if the school has just one other high row
    valid = obs([("A", 2015, "math", 10, 9), ("A", 2016, "math", 10, 4)])
    cleaned, filtered = clean(valid)
    assert cleaned.is_empty()
    assert sorted(filtered["reason"]) == ["participation_below_0.50", "school_not_eligible"]


def test_keys_and_sort():
    valid = obs([("S0002", 2016, "reading", 10, 9), ("S0001", 2015, "math", 10, 9),
                 ("S0001", 2015, "reading", 10, 9), ("S0002", 2015, "reading", 10, 9)])
    cleaned, _ = clean(valid)
    assert cleaned.select("school_id", "year", "subject").rows() == [
        ("S0001", 2015, "math"), ("S0001", 2015, "reading"), ("S0002", 2015, "reading"), ("S0002", 2016, "reading")]
    row = cleaned.row(0, named=True)
    assert (row["year_subject"], row["school_year_id"], row["school_subject_id"]) == (
        "2015_math", "S0001_2015", "S0001_math")


def test_eligible_schools_summary():
    valid = obs([("A", 2019, "math", 10, 9), ("A", 2015, "math", 30, 27), ("A", 2015, "reading", 30, 30)])
    summary = eligible_schools(clean(valid)[0]).row(0, named=True)
    assert summary == {"school_id": "A", "n_obs": 3, "n_obs_high_participation": 3, "mean_n_trials": 22.0,
                       "total_n_trials": 66, "first_year": 2015, "last_year": 2019, "n_years": 2,
                       "years": "2015,2019"}


IDS = [f"S{i:05d}" for i in range(2000)]


def test_subsample_reproducible_sorted_and_sized():
    first = select_subsample(IDS, size=500)
    assert first == select_subsample(list(reversed(IDS)), size=500) == select_subsample(pl.Series(IDS), size=500)
    assert len(first) == 500 and first == sorted(first)
    assert select_subsample(IDS, size=500, seed=1) != first


def test_subsample_fewer_than_size_returns_all():
    assert select_subsample(["B", "A", "A"], size=500) == ["A", "B"]


def test_subsample_stable_when_new_schools_arrive():
    old = set(select_subsample(IDS, size=500))
    new_ids = [f"N{i:04d}" for i in range(200)]
    new = set(select_subsample(IDS + new_ids, size=500))
    displaced, newcomers = old - new, new - old
    assert 0 < len(displaced) == len(newcomers) and newcomers <= set(new_ids)
    # only the lowest-ranked old members leave, and every newcomer outranks them
    rank = lambda s: hashlib.sha256(f"20240601:{s}".encode()).hexdigest()  # noqa: E731
    kept_worst = max(rank(s) for s in old & new)
    assert all(rank(d) > kept_worst for d in displaced)
    assert all(rank(n) < min(rank(d) for d in displaced) for n in newcomers)


def test_analysis_sample_partitions_and_stability_over_years():
    rows = [(s, y, "math", 10, 9) for s in IDS[:700] for y in (2015, 2016)]
    cleaned = clean(obs(rows))[0]
    assert analysis_sample(cleaned, "full").equals(cleaned)
    sub = analysis_sample(cleaned, "subsample", subsample_size=100)
    assert sub["school_id"].n_unique() == 100
    more_years = clean(obs(rows + [(s, 2017, "math", 10, 9) for s in IDS[:700]]))[0]
    sub2 = analysis_sample(more_years, "subsample", subsample_size=100)
    assert set(sub2["school_id"]) == set(sub["school_id"])
    with pytest.raises(ValueError, match="partition"):
        analysis_sample(cleaned, "half")
