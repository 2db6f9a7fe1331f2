"""Landing-file contract: find, read and validate the raw Grade 3 result files.

Landing files are ``*.csv`` / ``*.parquet`` files in the raw folder or its sub-folders (a
publisher's year folders can be copied in as they are). Every file is read with all columns as
strings, so nothing is coerced silently; typing happens in :func:`validate`, which splits rows
into ``valid`` and ``rejected`` (with a stable reason code). Invariant:
``len(valid) + len(rejected) == len(raw)``.

Decisions:
- Counts and years must be written as plain integers (``"12"``, ``" 12 "``, ``"+12"``);
  anything else, including ``"12.0"``, is ``non_integer_count`` / ``non_integer_year``.
- A file with non-UTF-8 bytes is refused whole (the message gives the byte offset).
- Extra columns are kept in the raw frame (and in ``rejected``) but not in ``valid``.
- Optional columns, when a file has them (EQAO's files always do, see :mod:`eqao`):
  ``publisher_suppressed`` (the publisher's suppression flag, ``0`` = published) and the
  parts of two identities, ``n_exempted``, ``n_absent``, ``n_no_data`` (with ``n_participating``
  they sum to ``n_eligible``) and ``n_level4`` ... ``n_ne1`` (they sum to ``n_participating``;
  ``n_level4 + n_level3 = n_l3l4``). A row whose identity fails is rejected, naming it.
- A count cell holding a publisher's marker (:data:`MARKERS`) is ``not_reported``, or
  ``suppressed_by_publisher`` when the row's ``publisher_suppressed`` is not ``0``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

REQUIRED_COLUMNS = ("school_id", "year", "subject", "n_eligible", "n_participating", "n_l3l4")
COUNT_COLUMNS = ("n_eligible", "n_participating", "n_l3l4")
SUBJECTS = ("reading", "writing", "math")
PROVENANCE = ("source_file", "source_row", "source_format")
KEY = ("school_id", "year", "subject")
YEAR_RANGE = (1990, 2100)
LANDING_SUFFIXES = (".csv", ".parquet")
CONTRACT_FORMAT = "contract"
PUBLISHER_FORMAT = "eqao"   # rows of a publisher's wide file (eqao.py): every identity part must be given

# Publishers' "no number" markers: EQAO writes N/R (not reported), S. R. (French) and N/D (no data).
MARKERS = ("N/R", "S. R.", "S.R.", "N/D")
SUPPRESSED_FLAG = "publisher_suppressed"
PARTICIPATION_PARTS = ("n_exempted", "n_absent", "n_no_data")
LEVEL_PARTS = ("n_level4", "n_level3", "n_level2", "n_level1", "n_ne1")
IDENTITY_COLUMNS = PARTICIPATION_PARTS + LEVEL_PARTS

# Reason codes in priority order: a row with several problems gets the first.
REASONS = (
    "suppressed_by_publisher",
    "not_reported",
    "missing_value",
    "unknown_subject",
    "non_integer_year",
    "implausible_year",
    "non_integer_count",
    "negative_count",
    "successes_exceed_participants",
    "participants_exceed_eligible",
    "zero_eligible",
    "inconsistent_l34",
    "inconsistent_levels",
    "inconsistent_participation",
    "duplicate_exact",
    "duplicate_conflict",
)

_INT_PATTERN = r"^[+-]?[0-9]+$"


class LandingFileError(ValueError):
    """A landing file cannot be used at all; the message names the file and the problem."""


# ---------------------------------------------------------------- finding files


def _is_landing_name(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in LANDING_SUFFIXES


def _check_inside(path: Path, raw_dir: Path) -> None:
    root = raw_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise LandingFileError(f"{path.name}: resolves outside the raw folder {root} (refused)")


def _walk(folder: Path, raw_dir: Path) -> tuple[list[Path], list[Path]]:
    """(landing files, other entries) under ``folder``, sorted; hidden entries skipped. A sub-folder
    with no landing file in it counts as one other entry."""
    files, others = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        _check_inside(path, raw_dir)
        if path.is_dir():
            inner, inner_others = _walk(path, raw_dir)
            files += inner
            others += inner_others if inner else [path]
        elif _is_landing_name(path) and path.is_file():
            files.append(path)
        else:
            others.append(path)
    return files, others


def list_landing_files(raw_dir: Path) -> list[Path]:
    """Landing files (``*.csv`` / ``*.parquet``, any case) in ``raw_dir`` and its sub-folders,
    sorted by folder then name.

    Hidden files and folders are skipped. A path (e.g. a symlink) that resolves outside
    ``raw_dir`` raises :class:`LandingFileError`.
    """
    raw_dir = Path(raw_dir)
    return _walk(raw_dir, raw_dir)[0] if raw_dir.is_dir() else []


def ignored_files(raw_dir: Path) -> list[Path]:
    """Non-hidden entries under ``raw_dir`` that are not landing files (for reporting)."""
    raw_dir = Path(raw_dir)
    return _walk(raw_dir, raw_dir)[1] if raw_dir.is_dir() else []


def relative_name(path: Path, raw_dir: Path) -> str:
    """How a landing file is named in tables and messages: its path below the raw folder."""
    return Path(path).relative_to(raw_dir).as_posix()


# ---------------------------------------------------------------- reading files


def _check_utf8(path: Path, data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LandingFileError(
            f"{path.name}: not valid UTF-8 (byte offset {exc.start}); re-export the file as UTF-8"
        ) from None


def _read_raw(path: Path) -> pl.DataFrame:
    """Read ``path`` with every column as a string, or raise LandingFileError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LandingFileError(f"{path.name}: cannot read file: {exc.strerror}") from None
    if not data.strip():
        raise LandingFileError(f"{path.name}: file is empty")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pl.read_parquet(data)
            return frame.select(pl.all().cast(pl.Utf8))
        _check_utf8(path, data)
        frame = pl.read_csv(data, infer_schema=False)
        # polars renames a repeated header ("year", "year_duplicated_0"), so check the header as written
        header = pl.read_csv(data, has_header=False, n_rows=1, infer_schema=False).row(0)
        _stripped_unique_names(path, ["" if name is None else name for name in header])
        return frame
    except LandingFileError:
        raise
    except Exception as exc:  # polars/arrow raise many types; report them all the same way
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LandingFileError(f"{path.name}: cannot be parsed: {first_line}") from None


def _stripped_unique_names(path: Path, columns: list[str]) -> list[str]:
    names = [c.strip().lstrip("\ufeff").strip() for c in columns]
    if len(set(names)) != len(names):
        raise LandingFileError(f"{path.name}: duplicate column names after stripping: {names}")
    return names


def _clean_headers(path: Path, frame: pl.DataFrame) -> pl.DataFrame:
    names = _stripped_unique_names(path, frame.columns)
    return frame.rename(dict(zip(frame.columns, names)))


def _check_required(path: Path, frame: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if not missing:
        return
    hint = ""
    if len(frame.columns) == 1 and any(sep in frame.columns[0] for sep in ";\t|"):
        hint = " (wrong delimiter? the file must be comma-separated)"
    raise LandingFileError(
        f"{path.name}: missing required column(s) {', '.join(missing)}; "
        f"found column(s) {frame.columns}{hint}"
    )


def read_text_frame(path: Path) -> pl.DataFrame:
    """Any landing file as written: every column a string, header names stripped (of a BOM too)."""
    path = Path(path)
    return _clean_headers(path, _read_raw(path))


def with_provenance(frame: pl.DataFrame, name: str, source_format: str) -> pl.DataFrame:
    """``frame`` plus ``source_file`` (``name``), 1-based ``source_row`` and ``source_format``."""
    return frame.with_columns(
        pl.lit(name, dtype=pl.Utf8).alias("source_file"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row"),
        pl.lit(source_format, dtype=pl.Utf8).alias("source_format"),
    )


def contract_rows(path: Path, frame: pl.DataFrame, name: str | None = None) -> pl.DataFrame:
    """A file in the landing contract (from :func:`read_text_frame`) with its provenance."""
    path = Path(path)
    _check_required(path, frame)
    for column in PROVENANCE:
        if column in frame.columns:
            raise LandingFileError(f"{path.name}: column {column} is reserved for provenance")
    return with_provenance(frame, name or path.name, CONTRACT_FORMAT)


def read_landing_file(path: Path, name: str | None = None) -> pl.DataFrame:
    """One contract file as strings, plus ``source_file`` (``name``, default the file's name),
    1-based ``source_row`` and ``source_format``."""
    return contract_rows(path, read_text_frame(path), name)


def empty_raw() -> pl.DataFrame:
    schema = {c: pl.Utf8 for c in REQUIRED_COLUMNS} | {"source_file": pl.Utf8, "source_row": pl.Int64,
                                                       "source_format": pl.Utf8}
    return pl.DataFrame(schema=schema)


def concat_raw(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Landing rows concatenated (diagonally); required, provenance, then extra columns."""
    raw = pl.concat([empty_raw(), *frames], how="diagonal")
    extras = [c for c in raw.columns if c not in REQUIRED_COLUMNS + PROVENANCE]
    return raw.select(*REQUIRED_COLUMNS, *PROVENANCE, *extras)


def load_landing(raw_dir: Path) -> pl.DataFrame:
    """Every landing file of the contract format under ``raw_dir``, concatenated (see
    :func:`landing.load` for a folder that may hold publishers' files too)."""
    raw_dir = Path(raw_dir)
    return concat_raw([read_landing_file(p, relative_name(p, raw_dir)) for p in list_landing_files(raw_dir)])


# ---------------------------------------------------------------- validation


def _stripped(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars()


def _as_int(name: str) -> pl.Expr:
    """Integer value of a strictly integer string, else null."""
    text = _stripped(name)
    return pl.when(text.str.contains(_INT_PATTERN)).then(text.str.strip_prefix("+").cast(pl.Int64, strict=False))


def _is_marker(name: str) -> pl.Expr:
    return _stripped(name).is_in(MARKERS)


def _suppression_checks() -> list[tuple[str, pl.Expr, pl.Expr]]:
    """A row with no numbers: the publisher suppressed it, or reported none for it."""
    cells = COUNT_COLUMNS + IDENTITY_COLUMNS
    flag = _stripped(SUPPRESSED_FLAG)
    flagged = flag.is_not_null() & (flag != "") & (flag != "0")
    no_number = pl.any_horizontal([_as_int(c).is_null() for c in COUNT_COLUMNS])
    marked = pl.sum_horizontal([_is_marker(c).fill_null(False).cast(pl.Int32) for c in cells])
    listed = pl.concat_str([pl.when(_is_marker(c)).then(pl.format("{} '{}'", pl.lit(c), _stripped(c)))
                            for c in cells], separator=", ", ignore_nulls=True)
    first = pl.coalesce([pl.when(_is_marker(c)).then(_stripped(c)) for c in cells])
    markers = pl.when(marked == len(cells)).then(pl.format("every count is '{}'", first)).otherwise(listed)
    return [
        ("suppressed_by_publisher", flagged & no_number,
         pl.format("suppressed by the publisher (publisher_suppressed = {})", flag)),
        ("not_reported", pl.any_horizontal([_is_marker(c) for c in cells]),
         pl.format("the publisher reports no number: {}", markers)),
    ]


def _identity_checks() -> list[tuple[str, pl.Expr, pl.Expr]]:
    """The row's own arithmetic, where the file gives the parts (EQAO's files do)."""
    elig, part, succ = (_as_int(c) for c in COUNT_COLUMNS)
    l4, l3, l2, l1, ne1 = (_as_int(c) for c in LEVEL_PARTS)
    exempted, absent, no_data = (_as_int(c) for c in PARTICIPATION_PARTS)
    levels = l4 + l3 + l2 + l1 + ne1
    statuses = exempted + absent + no_data + part
    return [
        ("inconsistent_l34", l4 + l3 != succ,
         pl.format("L4 + L3 = L34 fails: {} + {} != {}", l4, l3, succ)),
        ("inconsistent_levels", levels != part,
         pl.format("L4 + L3 + L2 + L1 + NE1 = fully participating fails: {} != {}", levels, part)),
        ("inconsistent_participation", statuses != elig,
         pl.format("exempted + absent + no data + fully participating = students fails: {} != {}", statuses, elig)),
    ]


def _row_checks(identity_required: pl.Expr) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(reason, condition, detail) per-row checks, in priority order. ``identity_required``
    marks rows whose identity parts must all be present (rows of a publisher's file)."""
    checks = _suppression_checks()
    for c in REQUIRED_COLUMNS:
        missing = pl.col(c).is_null() | (_stripped(c) == "")
        checks.append(("missing_value", missing, pl.lit(f"missing value in column {c}")))
    for c in IDENTITY_COLUMNS:
        missing = identity_required & (pl.col(c).is_null() | (_stripped(c) == ""))
        checks.append(("missing_value", missing, pl.lit(f"missing value in column {c}")))
    subject = _stripped("subject").str.to_lowercase()
    checks.append(("unknown_subject", ~subject.is_in(SUBJECTS),
                   pl.format("unknown subject '{}' (expected one of {})", pl.col("subject"), pl.lit("/".join(SUBJECTS)))))
    year = _as_int("year")
    checks.append(("non_integer_year", year.is_null(), pl.format("year '{}' is not an integer", pl.col("year"))))
    lo, hi = YEAR_RANGE
    checks.append(("implausible_year", ~year.is_between(lo, hi),
                   pl.format("year {} outside {}..{}", year, pl.lit(lo), pl.lit(hi))))
    for c in COUNT_COLUMNS + IDENTITY_COLUMNS:  # a marker is reported as such above
        checks.append(("non_integer_count", pl.col(c).is_not_null() & _as_int(c).is_null() & ~_is_marker(c),
                       pl.format("{} '{}' is not an integer", pl.lit(c), pl.col(c))))
    for c in COUNT_COLUMNS + IDENTITY_COLUMNS:
        checks.append(("negative_count", _as_int(c) < 0, pl.format("{} is negative ({})", pl.lit(c), _as_int(c))))
    elig, part, succ = (_as_int(c) for c in COUNT_COLUMNS)
    checks += [
        ("successes_exceed_participants", succ > part, pl.format("n_l3l4 {} > n_participating {}", succ, part)),
        ("participants_exceed_eligible", part > elig, pl.format("n_participating {} > n_eligible {}", part, elig)),
        ("zero_eligible", elig == 0, pl.lit("n_eligible is 0")),
        *_identity_checks(),
    ]
    return [(r, cond.fill_null(False), detail) for r, cond, detail in checks]


def _first_reason(checks: list[tuple[str, pl.Expr, pl.Expr]]) -> tuple[pl.Expr, pl.Expr]:
    reason = pl.when(checks[0][1]).then(pl.lit(checks[0][0]))
    for code, cond, _ in checks[1:]:
        reason = reason.when(cond).then(pl.lit(code))
    details = [pl.when(cond).then(detail) for _, cond, detail in checks]
    return reason.otherwise(None), pl.concat_str(details, separator="; ", ignore_nulls=True)


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        _stripped("school_id").alias("school_id"),
        _as_int("year").cast(pl.Int32).alias("year"),
        _stripped("subject").str.to_lowercase().alias("subject"),
        *[_as_int(c).alias(c) for c in COUNT_COLUMNS],
        "source_file",
        "source_row",
        "_row",
    )


def _duplicate_reasons(typed: pl.DataFrame) -> pl.DataFrame:
    """Per typed row: reason (null if kept), detail, among rows that passed per-row checks."""
    counts = pl.concat_str([pl.col(c).cast(pl.Utf8) for c in COUNT_COLUMNS], separator="/")
    ordered = typed.sort("source_file", "source_row")
    marked = ordered.with_columns(
        (counts.n_unique().over(KEY) > 1).alias("_conflict"),
        pl.int_range(pl.len()).over(KEY).alias("_copy"),
        pl.col("source_file").first().over(KEY).alias("_first_file"),
        pl.col("source_row").first().over(KEY).alias("_first_row"),
        pl.len().over(KEY).alias("_copies"),
    )
    return marked.select(
        "_row",
        pl.when("_conflict").then(pl.lit("duplicate_conflict"))
        .when(pl.col("_copy") > 0).then(pl.lit("duplicate_exact"))
        .alias("reason"),
        pl.when("_conflict")
        .then(pl.format("{} rows for this school/year/subject with different counts", pl.col("_copies")))
        .when(pl.col("_copy") > 0)
        .then(pl.format("exact repeat of {} row {}", pl.col("_first_file"), pl.col("_first_row")))
        .alias("detail"),
    )


def _derive(valid: pl.DataFrame) -> pl.DataFrame:
    return valid.with_columns(
        pl.col("n_participating").alias("n_trials"),
        pl.col("n_l3l4").alias("y_success"),
        (pl.col("n_participating") / pl.col("n_eligible")).cast(pl.Float64).alias("participation"),
    )


def validate(raw: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``raw`` (from :func:`load_landing` or :func:`landing.load`) into typed ``valid`` rows
    and ``rejected`` rows.

    ``rejected`` keeps the raw columns and adds ``reason`` (first applicable code of
    :data:`REASONS`) and ``detail`` (all per-row problems). Duplicates are judged only
    among rows that passed the per-row checks: an exact repeat keeps the first copy
    (by ``source_file``, ``source_row``); a conflicting key rejects every copy.
    """
    columns = raw.columns
    optional = [c for c in (SUPPRESSED_FLAG, "source_format", *IDENTITY_COLUMNS) if c not in columns]
    raw = raw.with_columns(pl.col(REQUIRED_COLUMNS).cast(pl.Utf8), pl.int_range(pl.len()).alias("_row"),
                           *[pl.lit(None, dtype=pl.Utf8).alias(c) for c in optional])
    raw = raw.with_columns(pl.col(SUPPRESSED_FLAG, *IDENTITY_COLUMNS).cast(pl.Utf8))
    from_publisher = (pl.col("source_format") == PUBLISHER_FORMAT).fill_null(False)
    reason, detail = _first_reason(_row_checks(from_publisher))
    checked = raw.with_columns(reason.alias("reason"), detail.alias("detail"))
    row_bad = checked.filter(pl.col("reason").is_not_null())
    typed = _typed(checked.filter(pl.col("reason").is_null()))
    dups = _duplicate_reasons(typed)
    valid = typed.join(dups.filter(pl.col("reason").is_null()).select("_row"), on="_row").sort("_row")
    dup_bad = raw.join(dups.filter(pl.col("reason").is_not_null()), on="_row")
    rejected = pl.concat([row_bad, dup_bad.select(row_bad.columns)]).sort("_row")
    return _derive(valid.drop("_row")), rejected.select(*columns, "reason", "detail")


def landing_fingerprint(raw_dir: Path) -> str | None:
    """SHA-256 over the names and contents of the landing files (None when there are none)."""
    raw_dir = Path(raw_dir)
    files = list_landing_files(raw_dir) if raw_dir.exists() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(relative_name(path, raw_dir).encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
