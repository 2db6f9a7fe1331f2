import os

import polars as pl
import pytest

from schoolquality_assets.ingest.contract import (
    REQUIRED_COLUMNS,
    LandingFileError,
    ignored_files,
    list_landing_files,
    load_landing,
    read_landing_file,
    validate,
)

HEADER = ",".join(REQUIRED_COLUMNS)
GOOD = "S1,2015,math,20,18,10"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(tmp_path, *rows, header=HEADER):
    write(tmp_path, "a.csv", "\n".join([header, *rows]) + "\n")
    raw = load_landing(tmp_path)
    valid, rejected = validate(raw)
    assert len(valid) + len(rejected) == len(raw)
    return valid, rejected


def assert_one_rejected(tmp_path, bad_row, reason):
    valid, rejected = run(tmp_path, GOOD, bad_row)
    assert valid["school_id"].to_list() == ["S1"], "the good row next to the bad one is kept"
    assert rejected["reason"].to_list() == [reason]
    assert rejected["source_row"].to_list() == [2]
    return rejected


# ------------------------------------------------------------------ row rules


@pytest.mark.parametrize(
    "bad_row, column",
    [
        (",2015,math,20,18,10", "school_id"),
        ("S2,,math,20,18,10", "year"),
        ("S2,2015,,20,18,10", "subject"),
        ("S2,2015,math,,18,10", "n_eligible"),
        ("S2,2015,math,20,,10", "n_participating"),
        ("S2,2015,math,20,18,  ", "n_l3l4"),
    ],
)
def test_missing_value(tmp_path, bad_row, column):
    rejected = assert_one_rejected(tmp_path, bad_row, "missing_value")
    assert column in rejected["detail"][0]


@pytest.mark.parametrize(
    "bad_row, reason",
    [
        ("S2,2015,science,20,18,10", "unknown_subject"),
        ("S2,2015.5,math,20,18,10", "non_integer_year"),
        ("S2,1989,math,20,18,10", "implausible_year"),
        ("S2,2101,math,20,18,10", "implausible_year"),
        ("S2,2015,math,twenty,18,10", "non_integer_count"),
        ("S2,2015,math,20,12.5,10", "non_integer_count"),
        ("S2,2015,math,20,18,12.0", "non_integer_count"),
        ("S2,2015,math,20,18,-1", "negative_count"),
        ("S2,2015,math,20,18,19", "successes_exceed_participants"),
        ("S2,2015,math,20,21,10", "participants_exceed_eligible"),
        ("S2,2015,math,0,0,0", "zero_eligible"),
    ],
)
def test_row_rejections(tmp_path, bad_row, reason):
    assert_one_rejected(tmp_path, bad_row, reason)


def test_first_reason_wins_and_detail_lists_all(tmp_path):
    rejected = assert_one_rejected(tmp_path, "S2,2015,art,20,x,10", "unknown_subject")
    assert "n_participating" in rejected["detail"][0]


def test_mixed_case_subject_whitespace_and_quotes_accepted(tmp_path):
    valid, rejected = run(tmp_path, GOOD, ' S2 , 2016 ," MaTh ","12", 12 ,+3')
    assert rejected.is_empty()
    row = valid.filter(pl.col("school_id") == "S2").row(0, named=True)
    assert (row["year"], row["subject"], row["n_eligible"], row["n_participating"], row["n_l3l4"]) == (
        2016, "math", 12, 12, 3)


def test_valid_types_and_derived(tmp_path):
    valid, _ = run(tmp_path, GOOD)
    assert valid.schema["year"] == pl.Int32
    assert all(valid.schema[c] == pl.Int64 for c in ("n_eligible", "n_participating", "n_l3l4"))
    row = valid.row(0, named=True)
    assert (row["n_trials"], row["y_success"], row["participation"]) == (18, 10, 0.9)
    assert (row["source_file"], row["source_row"]) == ("a.csv", 1)


def test_duplicate_exact_keeps_first(tmp_path):
    valid, rejected = run(tmp_path, GOOD, "S2,2015,math,20,18,10", " S2 ,2015,MATH,20,18,10")
    assert valid["school_id"].to_list() == ["S1", "S2"]
    assert valid.filter(pl.col("school_id") == "S2")["source_row"].to_list() == [2]
    assert rejected["reason"].to_list() == ["duplicate_exact"]
    assert rejected["source_row"].to_list() == [3]


def test_duplicate_across_files_keeps_lowest_file(tmp_path):
    write(tmp_path, "b.csv", f"{HEADER}\nS2,2015,math,20,18,10\n")
    write(tmp_path, "a.csv", f"{HEADER}\n{GOOD}\nS2,2015,math,20,18,10\n")
    valid, rejected = validate(load_landing(tmp_path))
    assert valid.filter(pl.col("school_id") == "S2")["source_file"].to_list() == ["a.csv"]
    assert rejected["source_file"].to_list() == ["b.csv"]


def test_duplicate_conflict_rejects_all(tmp_path):
    valid, rejected = run(tmp_path, GOOD, "S2,2015,math,20,18,10", "S2,2015,math,20,18,11", "S2,2015,math,20,18,10")
    assert valid["school_id"].to_list() == ["S1"]
    assert rejected["reason"].to_list() == ["duplicate_conflict"] * 3


def test_duplicates_only_among_rows_passing_checks(tmp_path):
    valid, rejected = run(tmp_path, GOOD, "S1,2015,math,20,18,99")
    assert valid["source_row"].to_list() == [1]
    assert rejected["reason"].to_list() == ["successes_exceed_participants"]


def test_rejected_keeps_raw_and_extra_columns(tmp_path):
    valid, rejected = run(tmp_path, "S1,2015,math,20,18,10,keep", "S2,2015,math,x,18,10,me", header=HEADER + ",note")
    assert "note" not in valid.columns
    assert rejected["note"].to_list() == ["me"]
    assert rejected["n_eligible"].to_list() == ["x"]


def test_header_only_file_gives_no_rows(tmp_path):
    valid, rejected = run(tmp_path)
    assert valid.is_empty() and rejected.is_empty()


def test_empty_folder(tmp_path):
    valid, rejected = validate(load_landing(tmp_path))
    assert valid.is_empty() and rejected.is_empty()


# ------------------------------------------------------------------ whole-file errors


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("empty.csv", b"", "empty"),
        ("blank.csv", b"\n\n", "empty"),
        ("nocol.csv", b"school_id,year,subject,n_eligible,n_participating\nS1,2015,math,20,18\n", "n_l3l4"),
        ("semi.csv", (HEADER.replace(",", ";") + "\nS1;2015;math;20;18;10\n").encode(), "delimiter"),
        ("latin1.csv", (HEADER + "\nÉcole,2015,math,20,18,10\n").encode("latin-1"), "UTF-8"),
        ("garbage.csv", bytes(range(256)) * 4, "UTF-8"),
        ("garbage.parquet", b"PAR1 this is not parquet", "cannot be parsed"),
        ("text.csv", b"just some words\nand more\n", "missing required"),
    ],
)
def test_whole_file_errors(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(LandingFileError) as info:
        read_landing_file(path)
    assert name in str(info.value)
    assert fragment in str(info.value)
    with pytest.raises(LandingFileError):
        load_landing(tmp_path)


def test_non_utf8_reports_offset(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(HEADER.encode() + b"\nS\xff1,2015,math,20,18,10\n")
    with pytest.raises(LandingFileError, match=f"byte offset {len(HEADER) + 2}"):
        read_landing_file(path)


def test_parquet_strings_and_ints_are_read_as_strings(tmp_path):
    frame = pl.DataFrame({"school_id": ["S1", "S2"], "year": [2015, 2015], "subject": ["math"] * 2,
                          "n_eligible": ["20", "20"], "n_participating": [18, 18], "n_l3l4": [10, 9],
                          "extra": [1.5, 2.5]})
    frame.write_parquet(tmp_path / "a.parquet")
    raw = load_landing(tmp_path)
    assert all(raw.schema[c] == pl.Utf8 for c in REQUIRED_COLUMNS + ("extra",))
    valid, rejected = validate(raw)
    assert len(valid) == 2 and rejected.is_empty()


def test_parquet_float_counts_are_rejected_rows(tmp_path):
    frame = pl.DataFrame({"school_id": ["S1"], "year": [2015], "subject": ["math"],
                          "n_eligible": [20.0], "n_participating": [18], "n_l3l4": [10]})
    frame.write_parquet(tmp_path / "a.PARQUET")
    valid, rejected = validate(load_landing(tmp_path))
    assert valid.is_empty() and rejected["reason"].to_list() == ["non_integer_count"]


def test_parquet_missing_column(tmp_path):
    pl.DataFrame({"school_id": ["S1"], "year": [2015]}).write_parquet(tmp_path / "short.parquet")
    with pytest.raises(LandingFileError, match="short.parquet.*subject"):
        load_landing(tmp_path)


# ------------------------------------------------------------------ file listing


def test_listing_skips_hidden_and_reports_ignored(tmp_path):
    for name in ("b.CSV", "a.parquet", ".hidden.csv", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "dir.csv").mkdir()
    assert [p.name for p in list_landing_files(tmp_path)] == ["a.parquet", "b.CSV"]
    assert [p.name for p in ignored_files(tmp_path)] == ["dir.csv", "notes.txt"]


def test_symlink_escaping_raw_dir_is_refused(tmp_path):
    raw, outside = tmp_path / "raw", tmp_path / "secret.csv"
    raw.mkdir()
    outside.write_text(f"{HEADER}\n{GOOD}\n")
    os.symlink(outside, raw / "link.csv")
    with pytest.raises(LandingFileError, match="link.csv"):
        list_landing_files(raw)
    with pytest.raises(LandingFileError):
        load_landing(raw)


def test_provenance_rows_are_one_based_per_file(tmp_path):
    write(tmp_path, "a.csv", f"{HEADER}\n{GOOD}\nS2,2015,math,20,18,10\n")
    write(tmp_path, "b.csv", " school_id ,year,subject,n_eligible,n_participating,n_l3l4\nS3,2015,math,20,18,10\n")
    raw = load_landing(tmp_path)
    assert raw.select("source_file", "source_row").rows() == [("a.csv", 1), ("a.csv", 2), ("b.csv", 1)]
