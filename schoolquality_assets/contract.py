"""Landing-file contract: find, read and validate the raw Grade 3 result files.

Landing files are ``*.csv`` / ``*.parquet`` files directly in the raw folder. Every
file is read with all columns as strings, so nothing is coerced silently; typing
happens in :func:`validate`, which splits rows into ``valid`` and ``rejected`` (with a
stable reason code). Invariant: ``len(valid) + len(rejected) == len(raw)``.

Decisions:
- Counts and years must be written as plain integers (``"12"``, ``" 12 "``, ``"+12"``);
  anything else, including ``"12.0"``, is ``non_integer_count`` / ``non_integer_year``.
- A file with non-UTF-8 bytes is refused whole (the message gives the byte offset).
- Extra columns are kept in the raw frame (and in ``rejected``) but not in ``valid``.
"""

from __future__ import annotations

import hashlib

from pathlib import Path

import polars as pl

REQUIRED_COLUMNS = ("school_id", "year", "subject", "n_eligible", "n_participating", "n_l3l4")
COUNT_COLUMNS = ("n_eligible", "n_participating", "n_l3l4")
SUBJECTS = ("reading", "writing", "math")
PROVENANCE = ("source_file", "source_row")
KEY = ("school_id", "year", "subject")
YEAR_RANGE = (1990, 2100)
LANDING_SUFFIXES = (".csv", ".parquet")

# Reason codes in priority order: a row with several problems gets the first.
REASONS = (
    "missing_value",
    "unknown_subject",
    "non_integer_year",
    "implausible_year",
    "non_integer_count",
    "negative_count",
    "successes_exceed_participants",
    "participants_exceed_eligible",
    "zero_eligible",
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


def list_landing_files(raw_dir: Path) -> list[Path]:
    """Sorted landing files (``*.csv`` / ``*.parquet``, any case) directly in ``raw_dir``.

    Hidden files are skipped. A path (e.g. a symlink) that resolves outside
    ``raw_dir`` raises :class:`LandingFileError`.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return []
    files = []
    for path in sorted(raw_dir.iterdir()):
        if not _is_landing_name(path):
            continue
        _check_inside(path, raw_dir)
        if path.is_file():
            files.append(path)
    return files


def ignored_files(raw_dir: Path) -> list[Path]:
    """Non-hidden entries of ``raw_dir`` that are not landing files (for reporting)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        return []
    landing = set(list_landing_files(raw_dir))
    return [p for p in sorted(raw_dir.iterdir()) if not p.name.startswith(".") and p not in landing]


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


def read_landing_file(path: Path) -> pl.DataFrame:
    """One landing file as strings, plus ``source_file`` and 1-based ``source_row``."""
    path = Path(path)
    frame = _clean_headers(path, _read_raw(path))
    _check_required(path, frame)
    for name in PROVENANCE:
        if name in frame.columns:
            raise LandingFileError(f"{path.name}: column {name} is reserved for provenance")
    return frame.with_columns(
        pl.lit(path.name, dtype=pl.Utf8).alias("source_file"),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("source_row"),
    )


def empty_raw() -> pl.DataFrame:
    schema = {c: pl.Utf8 for c in REQUIRED_COLUMNS} | {"source_file": pl.Utf8, "source_row": pl.Int64}
    return pl.DataFrame(schema=schema)


def load_landing(raw_dir: Path) -> pl.DataFrame:
    """All landing files concatenated (diagonally); required, provenance, then extra columns."""
    frames = [empty_raw()] + [read_landing_file(p) for p in list_landing_files(raw_dir)]
    raw = pl.concat(frames, how="diagonal")
    extras = [c for c in raw.columns if c not in REQUIRED_COLUMNS + PROVENANCE]
    return raw.select(*REQUIRED_COLUMNS, *PROVENANCE, *extras)


# ---------------------------------------------------------------- validation


def _stripped(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars()


def _as_int(name: str) -> pl.Expr:
    """Integer value of a strictly integer string, else null."""
    text = _stripped(name)
    return pl.when(text.str.contains(_INT_PATTERN)).then(text.str.strip_prefix("+").cast(pl.Int64, strict=False))


def _row_checks() -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(reason, condition, detail) per-row checks, in priority order."""
    checks = []
    for c in REQUIRED_COLUMNS:
        missing = pl.col(c).is_null() | (_stripped(c) == "")
        checks.append(("missing_value", missing, pl.lit(f"missing value in column {c}")))
    subject = _stripped("subject").str.to_lowercase()
    checks.append(("unknown_subject", ~subject.is_in(SUBJECTS),
                   pl.format("unknown subject '{}' (expected one of {})", pl.col("subject"), pl.lit("/".join(SUBJECTS)))))
    year = _as_int("year")
    checks.append(("non_integer_year", year.is_null(), pl.format("year '{}' is not an integer", pl.col("year"))))
    lo, hi = YEAR_RANGE
    checks.append(("implausible_year", ~year.is_between(lo, hi),
                   pl.format("year {} outside {}..{}", year, pl.lit(lo), pl.lit(hi))))
    for c in COUNT_COLUMNS:
        checks.append(("non_integer_count", _as_int(c).is_null(),
                       pl.format("{} '{}' is not an integer", pl.lit(c), pl.col(c))))
    for c in COUNT_COLUMNS:
        checks.append(("negative_count", _as_int(c) < 0, pl.format("{} is negative ({})", pl.lit(c), _as_int(c))))
    elig, part, succ = (_as_int(c) for c in COUNT_COLUMNS)
    checks += [
        ("successes_exceed_participants", succ > part, pl.format("n_l3l4 {} > n_participating {}", succ, part)),
        ("participants_exceed_eligible", part > elig, pl.format("n_participating {} > n_eligible {}", part, elig)),
        ("zero_eligible", elig == 0, pl.lit("n_eligible is 0")),
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
    """Split ``raw`` (from :func:`load_landing`) into typed ``valid`` rows and ``rejected`` rows.

    ``rejected`` keeps the raw columns and adds ``reason`` (first applicable code of
    :data:`REASONS`) and ``detail`` (all per-row problems). Duplicates are judged only
    among rows that passed the per-row checks: an exact repeat keeps the first copy
    (by ``source_file``, ``source_row``); a conflicting key rejects every copy.
    """
    raw = raw.with_columns(pl.col(REQUIRED_COLUMNS).cast(pl.Utf8), pl.int_range(pl.len()).alias("_row"))
    reason, detail = _first_reason(_row_checks())
    checked = raw.with_columns(reason.alias("reason"), detail.alias("detail"))
    row_bad = checked.filter(pl.col("reason").is_not_null())
    typed = _typed(checked.filter(pl.col("reason").is_null()))
    dups = _duplicate_reasons(typed)
    valid = typed.join(dups.filter(pl.col("reason").is_null()).select("_row"), on="_row").sort("_row")
    dup_bad = raw.join(dups.filter(pl.col("reason").is_not_null()), on="_row")
    rejected = pl.concat([row_bad, dup_bad.select(row_bad.columns)]).sort("_row")
    return _derive(valid.drop("_row")), rejected.drop("_row")


def landing_fingerprint(raw_dir: Path) -> str | None:
    """SHA-256 over the names and contents of the landing files (None when there are none)."""
    files = list_landing_files(raw_dir) if Path(raw_dir).exists() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def describe_landing_file(path: Path) -> dict:
    """Name, size, SHA-256, rows and year range of one landing file (rows/years when readable)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info = {"name": path.name, "bytes": path.stat().st_size, "sha256": digest[:16]}
    try:
        frame = read_landing_file(path)
        years = pl.Series(frame["year"]).cast(pl.Int64, strict=False) if "year" in frame.columns else None
        info |= {"rows": frame.height,
                 "years": f"{years.min()}-{years.max()}" if years is not None and years.drop_nulls().len() else "?"}
    except Exception as exc:  # the contract's own errors surface in raw_observations
        info |= {"rows": None, "years": None, "unreadable": str(exc)[:200]}
    return info
