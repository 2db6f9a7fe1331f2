"""Synthetic province: Grade 3 L3/L4 results with a known truth.

The generator mimics the real landing data so the pipeline can be tested end to end
and the model checked against known parameters. On the logit scale,

    logit p = intercept + year_subject + school + cohort (school x year) + profile (school x subject)

with true variance components taken from the page: school 0.395, cohort 0.156,
profile 0.004. ``year_subject`` effects are subject offsets (writing -0.10, math -0.30)
plus N(0, 0.15^2) deviations per year.

Structure (sizes and participation matched to the real EQAO Grade 3 excerpt in
``schoolquality_assets_tests/fixtures/eqao/``, its school rows; per published school x year x subject,
participants at the 5/25/50/75/95th percentiles 13 / 24 / 36 / 50 / 80, never below 10,
participation median 0.97, 1.7% of observations below 0.70):
- school size (Grade 3 eligible) ~ lognormal, median 38, log-sd 0.65 below the median and
  0.49 above (the real lower tail is longer), clipped to [5, 260], varying +-10% by year;
  all three subjects share a year's eligible count;
- 12% of the regular schools are *small*: 3-15 Grade 3 students, reporting in only 1-2
  consecutive years (tiny rural schools, schools that open or close). Most of their
  observations are suppressed (below); those with 10-15 participants are the eligible schools
  with the fewest observations and are shrunk hardest;
- participation ~ Beta(25, 1.2) (median 0.97 after the binomial draw), with ~1% of rows at
  low participation (0.48-0.70);
- ~8% of regular schools open late / close early (at least 3 years present);
- ~3% "fringe" schools exist for only 1-2 years, all at low participation, so they are
  not eligible; the default ``n_schools`` is tuned so ~3,250 schools are eligible;
- successes ~ Binomial(n_participating, inv_logit(eta));
- publisher suppression: an observation with fewer than 10 participants keeps its row but
  has ``publisher_suppressed`` = 1 and null counts (EQAO publishes no numbers for groups
  under 10): ~3% of rows, many of them the small schools' (the excerpt: 3.9% of the school
  rows of its three files after 2021-22). ``write_province`` writes those cells as ``N/R``.
  The truth still covers every school and cohort drawn.

Everything comes from ``np.random.default_rng(seed)`` (the small-school segment from a second
stream seeded by ``(seed, 1)``): same seed, identical frame.

Only sizes and participation are fitted to the excerpt (a few hundred schools a year); the
years a school reports (partial spans, small and fringe schools) remain assumptions. Drop real
landing files into ``warehouse/raw/`` and they replace this generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

DEFAULT_YEARS = (2015, 2016, 2017, 2018, 2019, 2022, 2023, 2024)
DEFAULT_SUBJECTS = ("reading", "writing", "math")
SUBJECT_OFFSET = {"reading": 0.0, "writing": -0.10, "math": -0.30}
DEFAULT_N_SCHOOLS = 3630  # gives ~3,250 eligible schools

SIZE_MEDIAN, SIZE_SIGMA, SIZE_RANGE = 38.0, (0.65, 0.49), (5, 260)  # log-sd below / above the median
PARTICIPATION_BETA = (25.0, 1.2)  # mean 0.954
LOW_ROW_SHARE, LOW_RANGE = 0.01, (0.48, 0.70)
PARTIAL_SPAN_SHARE, FRINGE_SHARE = 0.08, 0.03
SMALL_SHARE, SMALL_RANGE, SMALL_MAX_YEARS = 0.12, (3, 15), 2
SUPPRESS_BELOW, SUPPRESSED_MARKER = 10, "N/R"  # EQAO publishes no numbers for fewer than 10 participants
COUNTS = ("n_eligible", "n_participating", "n_l3l4")
YEAR_SUBJECT_SD = 0.15


@dataclass
class Truth:
    intercept: float = 0.25  # ~56% L3/L4
    year_subject: dict[str, float] = field(default_factory=dict)
    var_school: float = 0.395
    var_cohort: float = 0.156
    var_profile: float = 0.004
    school_effect: dict[str, float] = field(default_factory=dict)
    cohort_effect: dict[str, float] = field(default_factory=dict)  # key school_year_id
    profile_effect: dict[str, float] = field(default_factory=dict)  # key school_subject_id

    @property
    def sd_school(self) -> float:
        return self.var_school**0.5

    @property
    def sd_cohort(self) -> float:
        return self.var_cohort**0.5

    @property
    def sd_profile(self) -> float:
        return self.var_profile**0.5


@dataclass
class Province:
    observations: pl.DataFrame
    truth: Truth


def _presence(rng: np.random.Generator, n_schools: int, n_years: int, fringe: np.ndarray) -> np.ndarray:
    """Boolean (school, year) matrix: who reports in which year."""
    start = np.zeros(n_schools, dtype=int)
    length = np.full(n_schools, n_years)
    partial = (rng.random(n_schools) < PARTIAL_SPAN_SHARE) & ~fringe
    min_len = min(3, n_years)
    start[partial] = rng.integers(0, n_years - min_len + 1, partial.sum())
    length[partial] = rng.integers(min_len, n_years - start[partial] + 1)
    start[fringe] = rng.integers(0, n_years, fringe.sum())
    length[fringe] = rng.integers(1, 3, fringe.sum())
    idx = np.arange(n_years)
    return (idx >= start[:, None]) & (idx < (start + length)[:, None])


def _add_small_schools(rng: np.random.Generator, present: np.ndarray, size: np.ndarray,
                       fringe: np.ndarray) -> None:
    """Turn SMALL_SHARE of the regular schools into small ones, in place: 3-15 students,
    present in 1-SMALL_MAX_YEARS consecutive years."""
    n_schools, ny = present.shape
    small = np.nonzero((rng.random(n_schools) < SMALL_SHARE) & ~fringe)[0]
    length = rng.integers(1, min(SMALL_MAX_YEARS, ny) + 1, small.size)
    start = rng.integers(0, ny - length + 1)
    years = np.arange(ny)
    present[small] = (years >= start[:, None]) & (years < (start + length)[:, None])
    size[small] = rng.integers(SMALL_RANGE[0], SMALL_RANGE[1] + 1, small.size)[:, None]


def _participation(rng: np.random.Generator, n_elig: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Participants: binomial around Beta(25, 1.2); low rows get floor(n * U(0.48, 0.70))."""
    p = rng.beta(*PARTICIPATION_BETA, n_elig.size)
    regular = rng.binomial(n_elig, p)
    low_count = np.floor(n_elig * rng.uniform(*LOW_RANGE, n_elig.size)).astype(np.int64)
    return np.where(low, low_count, regular)


def _year_subject(rng: np.random.Generator, years, subjects) -> dict[str, float]:
    dev = rng.normal(0.0, YEAR_SUBJECT_SD, (len(years), len(subjects)))
    return {
        f"{y}_{s}": SUBJECT_OFFSET.get(s, 0.0) + float(dev[i, j])
        for i, y in enumerate(years)
        for j, s in enumerate(subjects)
    }


def generate_province(
    seed: int = 2024,
    n_schools: int = DEFAULT_N_SCHOOLS,
    years=DEFAULT_YEARS,
    subjects=DEFAULT_SUBJECTS,
    truth: Truth | None = None,
) -> Province:
    """Draw a province; ``truth`` supplies intercept, variances (and year_subject if set)."""
    rng = np.random.default_rng(seed)
    truth = truth or Truth()
    years, subjects = tuple(years), tuple(subjects)
    ny, ns = len(years), len(subjects)
    ids = np.array([f"S{i:05d}" for i in range(1, n_schools + 1)])

    year_subject = truth.year_subject or _year_subject(rng, years, subjects)
    school = rng.normal(0.0, truth.sd_school, n_schools)
    cohort = rng.normal(0.0, truth.sd_cohort, (n_schools, ny))
    profile = rng.normal(0.0, truth.sd_profile, (n_schools, ns))

    fringe = rng.random(n_schools) < FRINGE_SHARE
    present = _presence(rng, n_schools, ny, fringe)
    z = rng.normal(0.0, 1.0, n_schools)
    base = SIZE_MEDIAN * np.exp(z * np.where(z < 0, *SIZE_SIGMA))
    size = np.clip(np.rint(base[:, None] * rng.uniform(0.9, 1.1, (n_schools, ny))), *SIZE_RANGE).astype(np.int64)
    _add_small_schools(np.random.default_rng((seed, 1)), present, size, fringe)

    # one row per (school, year, subject) present
    si, yi = np.nonzero(present)
    si, yi = np.repeat(si, ns), np.repeat(yi, ns)
    ji = np.tile(np.arange(ns), si.size // ns)
    n_elig = size[si, yi]
    low = fringe[si] | (rng.random(si.size) < LOW_ROW_SHARE)
    n_part = _participation(rng, n_elig, low)

    ys_labels = np.array([f"{y}_{s}" for y in years for s in subjects])
    ys_effect = np.array([year_subject[label] for label in ys_labels])
    eta = truth.intercept + ys_effect[yi * ns + ji] + school[si] + cohort[si, yi] + profile[si, ji]
    n_succ = rng.binomial(n_part, 1.0 / (1.0 + np.exp(-eta)))

    observations = pl.DataFrame({
        "school_id": ids[si],
        "year": np.asarray(years, dtype=np.int64)[yi],
        "subject": np.asarray(subjects)[ji],
        "n_eligible": n_elig,
        "n_participating": n_part.astype(np.int64),
        "n_l3l4": n_succ.astype(np.int64),
        "publisher_suppressed": (n_part < SUPPRESS_BELOW).astype(np.int8),
    }).with_columns(pl.when(pl.col("publisher_suppressed") == 0).then(pl.col(c)).alias(c) for c in COUNTS)
    drawn = replace(
        truth,
        year_subject=dict(year_subject),
        school_effect=dict(zip(ids.tolist(), school.tolist())),
        cohort_effect={f"{ids[s]}_{years[y]}": float(cohort[s, y]) for s, y in zip(*np.nonzero(present))},
        profile_effect={f"{ids[s]}_{subjects[j]}": float(profile[s, j])
                        for s in np.nonzero(present.any(axis=1))[0] for j in range(ns)},
    )
    return Province(observations=observations, truth=drawn)


def write_province(province: Province, raw_dir: Path) -> list[Path]:
    """Write one landing CSV per year, ``g3_results_{year}.csv`` (suppressed counts as ``N/R``); return the paths."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (year,), frame in province.observations.group_by("year", maintain_order=True):
        path = raw_dir / f"g3_results_{year}.csv"
        frame.with_columns(pl.col(COUNTS).cast(pl.Utf8).fill_null(SUPPRESSED_MARKER)).write_csv(path)
        paths.append(path)
    return sorted(paths)


def truth_frame(truth: Truth) -> pl.DataFrame:
    """School-level truth: ``school_id``, ``school_effect``, sorted by school."""
    return pl.DataFrame(
        {"school_id": list(truth.school_effect), "school_effect": list(truth.school_effect.values())},
        schema={"school_id": pl.Utf8, "school_effect": pl.Float64},
    ).sort("school_id")
