"""The landing folder as a whole: each file read in its own format (the landing contract, or a
publisher's published files, see :mod:`eqao`), into one frame of landing rows, the publisher's
aggregates, a table of schools and an account of what was read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from schoolquality_assets.ingest import contract, eqao

SCHOOL_COLUMNS = ("school_name", "board_id", "board_name", "language")
SCHOOLS_SCHEMA = {"school_id": pl.Utf8, **{c: pl.Utf8 for c in SCHOOL_COLUMNS}, "year": pl.Int32,
                  "source_file": pl.Utf8, "source_row": pl.Int64}
AGGREGATES_SCHEMA = {"org_type": pl.Utf8, "org_id": pl.Utf8, "board_id": pl.Utf8, "board_name": pl.Utf8,
                     "language": pl.Utf8, "year": pl.Utf8, "subject": pl.Utf8, **{c: pl.Utf8 for c in contract.COUNT_COLUMNS},
                     **{c: pl.Utf8 for c in contract.IDENTITY_COLUMNS}, contract.SUPPRESSED_FLAG: pl.Utf8,
                     "source_file": pl.Utf8, "source_row": pl.Int64, "source_format": pl.Utf8}


@dataclass
class Landing:
    """What the landing folder holds, read."""
    raw: pl.DataFrame                                  # landing rows (text), every format
    schools: pl.DataFrame                              # one row per school with a name (latest year wins)
    aggregates: pl.DataFrame                           # the publisher's province and board rows, by subject
    files: list[dict] = field(default_factory=list)    # per file read: name, format, years, rows, schools
    kept_apart: list[dict] = field(default_factory=list)  # files of another grade: name, why


@dataclass
class _File:
    rows: pl.DataFrame
    info: dict
    aggregates: pl.DataFrame | None = None
    schools: pl.DataFrame | None = None


def _read(path: Path, raw_dir: Path) -> _File:
    """One landing file in its own format; raises LandingFileError or eqao.NotGradeThree."""
    name = contract.relative_name(path, raw_dir)
    parts = name.split("/")
    named = eqao.grade_of_publisher_name(path.name)
    if named is not None and named != eqao.GRADE:    # kept apart whatever its header
        raise eqao.NotGradeThree(f"named as a Grade {named} file")
    frame = contract.read_text_frame(path)
    if not eqao.is_eqao_header(frame.columns):
        rows = contract.contract_rows(path, frame, name)
        years = rows["year"].str.strip_chars().cast(pl.Int64, strict=False).drop_nulls()
        return _File(rows, {"file": name, "format": "landing contract", "rows": rows.height,
                            "years": f"{years.min()}-{years.max()}" if years.len() else "?"})
    try:
        rows, aggregates, schools = eqao.read(frame, parts)
    except eqao.NotGradeThree:
        raise
    except ValueError as exc:  # no year in the names
        raise contract.LandingFileError(f"{name}: {exc}") from None
    info = {"file": name, "format": eqao.layout(frame.columns), "rows": frame.height,
            "years": str(rows["year"][0] if rows.height else aggregates["year"][0] if aggregates.height else "?"),
            "schools": schools.height,
            "school_rows_suppressed": rows.filter(
                pl.col(contract.SUPPRESSED_FLAG).str.strip_chars() != "0")["source_row"].n_unique(),
            "aggregate_rows": frame.height - schools.height}
    return _File(rows, info, aggregates, schools)


def latest_names(schools: pl.DataFrame) -> pl.DataFrame:
    """One row per school: the name, board and language of its latest year (then latest file and row)."""
    return (schools.sort("school_id", "year", "source_file", "source_row")
            .group_by("school_id", maintain_order=True).last().sort("school_id"))


def load(raw_dir: Path) -> Landing:
    """Read every landing file under ``raw_dir``. A file of another grade is kept apart (in
    ``kept_apart``); any other unreadable file raises LandingFileError naming it."""
    raw_dir = Path(raw_dir)
    read, kept_apart = [], []
    for path in contract.list_landing_files(raw_dir):
        try:
            read.append(_read(path, raw_dir))
        except eqao.NotGradeThree as exc:
            kept_apart.append({"file": contract.relative_name(path, raw_dir),
                               "why": f"not Grade {eqao.GRADE}: {exc}; kept out of the sample"})
    aggregates = [f.aggregates for f in read if f.aggregates is not None]
    schools = [f.schools for f in read if f.schools is not None]
    return Landing(
        raw=contract.concat_raw([f.rows for f in read]),
        schools=latest_names(pl.concat([pl.DataFrame(schema=SCHOOLS_SCHEMA), *schools], how="diagonal_relaxed")),
        aggregates=pl.concat([pl.DataFrame(schema=AGGREGATES_SCHEMA), *aggregates], how="diagonal_relaxed"),
        files=[f.info for f in read], kept_apart=kept_apart)


def describe(raw_dir: Path) -> list[dict]:
    """Name, size, SHA-256 and, where readable, format, rows and years of each landing file."""
    raw_dir = Path(raw_dir)
    out = []
    for path in contract.list_landing_files(raw_dir):
        info = {"file": contract.relative_name(path, raw_dir), "bytes": path.stat().st_size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
        try:
            f = _read(path, raw_dir).info
            info |= {k: f[k] for k in ("format", "rows", "years")}
        except eqao.NotGradeThree as exc:
            info |= {"format": f"kept apart ({exc})"}
        except Exception as exc:  # the same errors surface, in full, in raw_observations
            info |= {"format": "unreadable", "unreadable": str(exc)[:200]}
        out.append(info)
    return out


def with_school_names(frame: pl.DataFrame, names: pl.DataFrame | None) -> pl.DataFrame:
    """``frame`` with ``school_name``, ``board_id``, ``board_name``, ``language`` right after
    ``school_id`` (null where the data names no school)."""
    names = names if names is not None else pl.DataFrame(schema=SCHOOLS_SCHEMA)
    names = names.select("school_id", *SCHOOL_COLUMNS).with_columns(pl.col(SCHOOL_COLUMNS).cast(pl.Utf8))
    joined = frame.drop(SCHOOL_COLUMNS, strict=False).join(names, on="school_id", how="left")
    rest = [c for c in frame.columns if c not in SCHOOL_COLUMNS]
    position = rest.index("school_id") + 1
    return joined.select(*rest[:position], *SCHOOL_COLUMNS, *rest[position:])
