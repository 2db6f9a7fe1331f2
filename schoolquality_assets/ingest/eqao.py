"""EQAO's published Grade 3 school-level results, as they are, turned into landing rows.

EQAO (Ontario) publishes "Grade 3 Achievement Results" as one wide CSV per school year: one row
per province, board or school, with per subject (``Read``, ``Write``, ``Math``) the counts of
students, of each participation status and of each achievement level. The format is recognised
by its header (the columns :func:`is_eqao_header` needs, in any order: the 164 columns of
2021-22 and the 134 since both carry them), never by its values.

Each school row (``OrgType`` = ``S``) becomes three landing rows, one per subject:
``school_id`` = ``SchoolMident``, ``n_eligible`` = ``cntStudents_<S>``, ``n_participating`` =
``cntFullyParticipating_<S>``, ``n_l3l4`` = ``cntOverall<R|W|M>_L34``, with the parts of the
row's identities (exempted, absent, no data; levels 4..1 and NE1) and the ``Suppressed`` flag
(as ``publisher_suppressed``) for :func:`contract.validate` to check. Values stay text.
Province and board rows go to the publisher's aggregates; names, boards and language to a
table of schools. The file has no year column: the year is the spring of the school year, from
the file or folder name (:func:`year_from_names`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from schoolquality_assets.ingest.contract import PUBLISHER_FORMAT, SUPPRESSED_FLAG, with_provenance

FORMAT = PUBLISHER_FORMAT
GRADE = 3
SUBJECTS = {"reading": "Read", "writing": "Write", "math": "Math"}
SCHOOL, PROVINCE, BOARD = "S", "P", "B"
ORG_COLUMNS = ("OrgType", "SchoolMident", "Suppressed")
NAME_COLUMNS = ("BoardMident", "BoardName", "SchoolName")   # kept when present (null otherwise)
LANGUAGE_COLUMNS = ("Language", "Lang")  # 2022-23 on / 2021-22


def subject_columns(subject: str) -> dict[str, str]:
    """Landing column -> EQAO column for one subject (``reading``, ``writing``, ``math``)."""
    code = SUBJECTS[subject]
    level = f"cntOverall{code[0]}"
    return {
        "n_eligible": f"cntStudents_{code}",
        "n_participating": f"cntFullyParticipating_{code}",
        "n_l3l4": f"{level}_L34",
        "n_exempted": f"cntExempted_{code}",
        "n_absent": f"cntAbsent_{code}",
        "n_no_data": f"cntNoData_{code}",
        "n_level4": f"{level}_L4",
        "n_level3": f"{level}_L3",
        "n_level2": f"{level}_L2",
        "n_level1": f"{level}_L1",
        "n_ne1": f"{level}_NE1",
    }


REQUIRED = (*ORG_COLUMNS, *(c for s in SUBJECTS for c in subject_columns(s).values()))


class NotGradeThree(ValueError):
    """A results file of another grade: kept apart, never mixed into the Grade 3 sample."""


def is_eqao_header(columns: Sequence[str]) -> bool:
    """True when the header has every column the mapping needs (names, boards and language are
    kept when present, but not required)."""
    return set(columns).issuperset(REQUIRED)


def layout(columns: Sequence[str]) -> str:
    return f"EQAO Grade 3 school-level results ({len(columns)} columns)"


# ------------------------------------------------------------------ year and grade from names

_SPAN = re.compile(r"(?<!\d)((?:19|20)\d\d)[-_ ]((?:19|20)?\d\d)(?!\d)")
_YEAR = re.compile(r"(?<!\d)((?:19|20)\d\d)(?!\d)")
_GRADE = re.compile(r"(?:^|[^a-z])(?:grade|g)[-_ ]?(\d{1,2})(?!\d)", re.IGNORECASE)


def year_of_name(name: str) -> int | None:
    """The spring year a file or folder name gives: ``2023-2024`` / ``2023-24`` -> 2024, a single
    year (``G3_2024_1.csv``) -> 2024; None when it gives none or several."""
    for first, second in _SPAN.findall(name):
        start, end = int(first), int(second)
        if end == start + 1 or (len(second) == 2 and end == (start + 1) % 100):
            return start + 1
    years = set(_YEAR.findall(name))
    return int(years.pop()) if len(years) == 1 else None


def year_from_names(names: Sequence[str]) -> int:
    """The year from a file's path below the raw folder: the file name first, then its folders
    (nearest first). A name and a folder that disagree, or no year at all, raise ValueError."""
    found = [(n, y) for n in reversed(names) if (y := year_of_name(n)) is not None]
    if not found:
        raise ValueError(
            "EQAO's files have no year column, and neither the file name nor its folder gives the year: "
            "name the file after the spring of the school year, as EQAO does (G3_2024_1.csv for 2023-2024), "
            "or put it in a folder named for the school year (Grade-3-2023-2024-Achievement-Results/)")
    if len({y for _, y in found}) > 1:
        raise ValueError(f"the file and folder names give different years: {dict(found)}; rename one of them")
    return found[0][1]


_PUBLISHER_NAME = re.compile(r"^G(\d{1,2})_(?:19|20)\d\d", re.IGNORECASE)


def grade_of_publisher_name(name: str) -> int | None:
    """The grade of a file named as EQAO names its files (``G6_2024_1.csv`` -> 6), else None."""
    match = _PUBLISHER_NAME.match(name)
    return int(match.group(1)) if match else None


def grade_of_names(names: Sequence[str]) -> int | None:
    """The grade the file name gives (``G6_2024_1.csv`` -> 6), else its nearest folder's."""
    for name in reversed(names):
        if match := _GRADE.search(name):
            return int(match.group(1))
    return None


def check_grade(names: Sequence[str], frame: pl.DataFrame) -> None:
    """Raise NotGradeThree for a file of another grade, by its name or its ``Grade`` column."""
    named = grade_of_names(names)
    if named is not None and named != GRADE:
        raise NotGradeThree(f"named as a Grade {named} file")
    if "Grade" in frame.columns:
        grades = sorted(set(frame["Grade"].drop_nulls().str.strip_chars()) - {"", str(GRADE)})
        if grades:
            raise NotGradeThree(f"its Grade column holds {', '.join(grades)}")


# ------------------------------------------------------------------ wide rows to landing rows


def _language(frame: pl.DataFrame) -> pl.Expr:
    name = next((c for c in LANGUAGE_COLUMNS if c in frame.columns), None)
    return (pl.col(name).str.strip_chars() if name else pl.lit(None, pl.Utf8)).alias("language")


def _text(frame: pl.DataFrame, column: str, alias: str) -> pl.Expr:
    """A name column, stripped, or null when this file's header has no such column."""
    return (pl.col(column).str.strip_chars() if column in frame.columns else pl.lit(None, pl.Utf8)).alias(alias)


def _long(frame: pl.DataFrame, year: int, org: pl.Expr, org_columns: list[pl.Expr]) -> pl.DataFrame:
    """One row per wide row and subject (subjects in the order reading, writing, math)."""
    parts = []
    for order, subject in enumerate(SUBJECTS):
        counts = [pl.col(eqao).alias(ours) for ours, eqao in subject_columns(subject).items()]
        parts.append(frame.filter(org).select(
            *org_columns, pl.lit(str(year)).alias("year"), pl.lit(subject).alias("subject"), *counts,
            pl.col("Suppressed").alias(SUPPRESSED_FLAG), "source_file", "source_row",
            "source_format", pl.lit(order).alias("_subject_order")))
    return pl.concat(parts).sort("source_row", "_subject_order").drop("_subject_order")


def school_rows(frame: pl.DataFrame, year: int) -> pl.DataFrame:
    """Landing rows of the school rows: three per school (one per subject), values as published."""
    school = pl.col("SchoolMident").str.strip_chars().alias("school_id")
    return _long(frame, year, pl.col("OrgType").str.strip_chars() == SCHOOL, [school])


def aggregate_rows(frame: pl.DataFrame, year: int) -> pl.DataFrame:
    """The publisher's own aggregates (province and board rows, and any other non-school row), by subject."""
    org = [pl.col("OrgType").str.strip_chars().alias("org_type"), pl.col("OrgID").alias("org_id")
           if "OrgID" in frame.columns else pl.lit(None, pl.Utf8).alias("org_id"),
           _text(frame, "BoardMident", "board_id"), _text(frame, "BoardName", "board_name"), _language(frame)]
    return _long(frame, year, pl.col("OrgType").str.strip_chars().fill_null("") != SCHOOL, org)


def schools(frame: pl.DataFrame, year: int) -> pl.DataFrame:
    """Name, board and language of each school row, with the year and file they come from."""
    return frame.filter(pl.col("OrgType").str.strip_chars() == SCHOOL).select(
        pl.col("SchoolMident").str.strip_chars().alias("school_id"),
        _text(frame, "SchoolName", "school_name"), _text(frame, "BoardMident", "board_id"),
        _text(frame, "BoardName", "board_name"),
        _language(frame), pl.lit(year, pl.Int32).alias("year"), "source_file", "source_row",
    )


def read(frame: pl.DataFrame, names: Sequence[str]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """An EQAO file (strings, from :func:`contract.read_text_frame`) at path ``names`` below the
    raw folder: (landing rows, aggregate rows, schools). Raises NotGradeThree or ValueError (no year)."""
    check_grade(names, frame)
    year = year_from_names(names)
    frame = with_provenance(frame, "/".join(names), FORMAT)
    return school_rows(frame, year), aggregate_rows(frame, year), schools(frame, year)
