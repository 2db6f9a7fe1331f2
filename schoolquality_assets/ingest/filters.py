"""Observation filter, school eligibility, model keys and the stable subsample.

Rules (applied to the ``valid`` frame from :func:`contract.validate`):
- an observation with participation < 0.50 is dropped;
- a school is eligible with at least 2 remaining observations at participation >= 0.70;
  an eligible school keeps its observations in [0.50, 0.70) too.
"""

from __future__ import annotations

import hashlib

import polars as pl

from schoolquality_assets.partitions import FULL, PARTITIONS, SUBSAMPLE

MIN_PARTICIPATION = 0.50
ELIGIBLE_PARTICIPATION = 0.70
MIN_ELIGIBLE_OBS = 2
DEFAULT_SUBSAMPLE_SIZE = 500
DEFAULT_SEED = 20240601

LOW_PARTICIPATION = "participation_below_0.50"
NOT_ELIGIBLE = "school_not_eligible"


def _high() -> pl.Expr:
    # n/d is correctly rounded, so an exact 0.70 ratio equals the literal 0.70.
    return pl.col("participation") >= ELIGIBLE_PARTICIPATION


def _with_keys(frame: pl.DataFrame) -> pl.DataFrame:
    year = pl.col("year").cast(pl.Utf8)
    return frame.with_columns(
        pl.concat_str([year, pl.col("subject")], separator="_").alias("year_subject"),
        pl.concat_str([pl.col("school_id"), year], separator="_").alias("school_year_id"),
        pl.concat_str([pl.col("school_id"), pl.col("subject")], separator="_").alias("school_subject_id"),
    )


def clean(valid: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``valid`` into ``(cleaned, filtered)``; ``filtered`` carries a ``reason``.

    ``cleaned`` gains the model keys ``year_subject`` ("2015_math"), ``school_year_id``
    (cohort, "S0001_2015") and ``school_subject_id`` (profile, "S0001_math").
    """
    low = pl.col("participation") < MIN_PARTICIPATION
    kept = valid.filter(~low)
    eligible = kept.group_by("school_id").agg(_high().sum().alias("_n_high"))
    eligible = eligible.filter(pl.col("_n_high") >= MIN_ELIGIBLE_OBS).select("school_id")
    in_eligible = pl.col("school_id").is_in(eligible["school_id"].implode())
    filtered = pl.concat([
        valid.filter(low).with_columns(pl.lit(LOW_PARTICIPATION).alias("reason")),
        kept.filter(~in_eligible).with_columns(pl.lit(NOT_ELIGIBLE).alias("reason")),
    ])
    cleaned = _with_keys(kept.filter(in_eligible)).sort("school_id", "year", "subject")
    return cleaned, filtered


def eligible_schools(cleaned: pl.DataFrame) -> pl.DataFrame:
    """One row per school of ``cleaned`` with observation counts, sizes and years."""
    years = pl.col("year").unique().sort()
    return (
        cleaned.group_by("school_id")
        .agg(
            pl.len().alias("n_obs"),
            _high().sum().cast(pl.Int64).alias("n_obs_high_participation"),
            pl.col("n_trials").mean().alias("mean_n_trials"),
            pl.col("n_trials").sum().alias("total_n_trials"),
            pl.col("year").min().alias("first_year"),
            pl.col("year").max().alias("last_year"),
            pl.col("year").n_unique().alias("n_years"),
            years.cast(pl.Utf8).str.join(",").alias("years"),
        )
        .sort("school_id")
    )


def _rank_key(seed: int, school_id: str) -> str:
    return hashlib.sha256(f"{seed}:{school_id}".encode()).hexdigest()


def select_subsample(
    school_ids: list[str] | pl.Series, size: int = DEFAULT_SUBSAMPLE_SIZE, seed: int = DEFAULT_SEED
) -> list[str]:
    """The ``size`` schools with the smallest sha256(f"{seed}:{school_id}"), sorted by id.

    Reproducible (no RNG state, no Python ``hash()``) and stable: more data for the
    same schools changes nothing, and a member is only displaced when a new school
    hashes below it (pushing the member past ``size``). That is the best a stateless
    rule can do; it is not a guarantee that members never leave. Fewer than ``size``
    schools -> all of them.
    """
    unique = sorted(set(school_ids))
    chosen = sorted(unique, key=lambda s: _rank_key(seed, s))[:size]
    return sorted(chosen)


def analysis_sample(
    cleaned: pl.DataFrame,
    partition: str,
    subsample_size: int = DEFAULT_SUBSAMPLE_SIZE,
    seed: int = DEFAULT_SEED,
) -> pl.DataFrame:
    """Rows for a model partition: "full" = all of ``cleaned``; "subsample" = selected schools."""
    if partition == FULL:
        return cleaned
    if partition == SUBSAMPLE:
        chosen = select_subsample(cleaned["school_id"].unique(), subsample_size, seed)
        return cleaned.filter(pl.col("school_id").is_in(chosen))
    raise ValueError(f"unknown partition {partition!r}; expected one of {PARTITIONS}")
