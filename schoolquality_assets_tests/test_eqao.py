"""EQAO's published Grade 3 files load as they are (fixtures/eqao/: real excerpts, as published).

The expected landing rows are computed here another way, with the csv module from the wide rows,
and compared with what :func:`landing.load` and :func:`contract.validate` make of the files."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from schoolquality_assets.definitions import ASSETS, CHECKS
from schoolquality_assets.defs.resources import (
    ConvergenceResource,
    SamplerResource,
    WarehouseResource,
)
from schoolquality_assets.ingest import contract, eqao, landing
from schoolquality_assets.warehouse import Warehouse

from .conftest import failure_text

EXCERPT = Path(__file__).parent / "fixtures" / "eqao"
FILES = sorted(EXCERPT.glob("Grade-3-*/G3_*.csv"))
LETTER = {"reading": ("Read", "R"), "writing": ("Write", "W"), "math": ("Math", "M")}


def _wide(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _expected(path: Path, year: int) -> tuple[set, dict]:
    """(valid rows, reason per rejected (school, subject)) computed from the wide rows directly."""
    valid, rejected = set(), {}
    for row in _wide(path):
        if row["OrgType"] != "S":
            continue
        for subject, (name, letter) in LETTER.items():
            cells = {k: row[k] for k in (f"cntStudents_{name}", f"cntFullyParticipating_{name}",
                                         f"cntExempted_{name}", f"cntAbsent_{name}", f"cntNoData_{name}",
                                         *(f"cntOverall{letter}_{lv}" for lv in ("L4", "L3", "L2", "L1", "NE1", "L34")))}
            key = (row["SchoolMident"], subject)
            if not all(v.isdigit() for v in cells.values()):
                rejected[key] = "suppressed_by_publisher" if row["Suppressed"] != "0" else "not_reported"
                continue
            n = {k: int(v) for k, v in cells.items()}
            lv = [n[f"cntOverall{letter}_{x}"] for x in ("L4", "L3", "L2", "L1", "NE1")]
            part, students, l34 = n[f"cntFullyParticipating_{name}"], n[f"cntStudents_{name}"], n[f"cntOverall{letter}_L34"]
            assert lv[0] + lv[1] == l34 and sum(lv) == part          # the published excerpt is consistent
            assert n[f"cntExempted_{name}"] + n[f"cntAbsent_{name}"] + n[f"cntNoData_{name}"] + part == students
            valid.add((row["SchoolMident"], year, subject, students, part, l34))
    return valid, rejected


def _load(raw_dir: Path) -> tuple[landing.Landing, pl.DataFrame, pl.DataFrame]:
    read = landing.load(raw_dir)
    valid, rejected = contract.validate(read.raw)
    return read, valid, rejected


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    for path in FILES:
        shutil.copy(path, raw / path.name)          # as a user would: cp Grade-3-*/G3_*.csv raw/
    return _load(raw)


def test_the_excerpt_has_both_layouts():
    widths = {len(_wide(p)[0]) for p in FILES}
    assert widths == {164, 134}
    assert all(eqao.is_eqao_header(list(_wide(p)[0])) for p in FILES)


def test_long_rows_equal_the_wide_rows_computed_another_way(excerpt):
    read, valid, rejected = excerpt
    expected_valid, expected_rejected = set(), {}
    for path in FILES:
        year = int(path.stem.split("_")[1])
        v, r = _expected(path, year)
        expected_valid |= v
        expected_rejected |= {(school, year, subject): reason for (school, subject), reason in r.items()}
    got = set(valid.select("school_id", "year", "subject", "n_eligible", "n_participating", "n_l3l4").iter_rows())
    assert got == expected_valid
    got_rejected = {(s, int(y), sub): reason for s, y, sub, reason in
                    rejected.select("school_id", "year", "subject", "reason").iter_rows()}
    assert got_rejected == expected_rejected
    assert {"suppressed_by_publisher", "not_reported"} <= set(got_rejected.values())
    school_rows = sum(1 for p in FILES for r in _wide(p) if r["OrgType"] == "S")
    assert read.raw.height == 3 * school_rows == valid.height + rejected.height   # a wide row counts three times


def test_province_and_board_rows_are_kept_apart(excerpt):
    read, valid, _ = excerpt
    aggregate_rows = sum(1 for p in FILES for r in _wide(p) if r["OrgType"] != "S")
    assert aggregate_rows > 0
    assert read.aggregates.height == 3 * aggregate_rows
    assert set(read.aggregates["org_type"]) == {"P", "B"}
    assert not set(read.aggregates["org_id"]) & set(valid["school_id"])


def test_schools_carry_names_boards_and_language_latest_year_first(excerpt):
    read, _, _ = excerpt
    schools = read.schools
    assert schools["school_id"].is_unique().all()
    assert set(schools["language"]) == {"en", "fr"}
    latest = {}
    for path in FILES:
        year = int(path.stem.split("_")[1])
        for r in _wide(path):
            if r["OrgType"] == "S" and year >= latest.get(r["SchoolMident"], (0,))[0]:
                latest[r["SchoolMident"]] = (year, r["SchoolName"].strip(), r["BoardName"].strip())
    got = {s: (y, n, b) for s, y, n, b in schools.select("school_id", "year", "school_name", "board_name").iter_rows()}
    assert got == latest
    assert any("’" in name or "é" in name for name in schools["school_name"])   # UTF-8 as published


def test_a_subject_with_no_number_is_rejected_and_the_others_kept(tmp_path):
    rows = _wide(FILES[0])
    header = list(rows[0])
    school = next(r for r in rows if r["OrgType"] == "S" and r["Suppressed"] == "0" and r["cntStudents_Math"].isdigit())
    for column in header:
        if column.endswith("_Math") or column.startswith("cntOverallM_"):
            school[column] = "N/D"
    _write(tmp_path / "G3_2022_1.csv", header, [school])
    _, valid, rejected = _load(tmp_path)
    assert sorted(valid["subject"]) == ["reading", "writing"]
    assert rejected.select("subject", "reason").rows() == [("math", "not_reported")]
    assert "N/D" in rejected["detail"][0]


@pytest.mark.parametrize(("column", "reason", "identity"), [
    ("cntOverallR_L34", "inconsistent_l34", "L4 + L3 = L34"),
    ("cntOverallR_L2", "inconsistent_levels", "L4 + L3 + L2 + L1 + NE1 = fully participating"),
    ("cntAbsent_Read", "inconsistent_participation", "exempted + absent + no data + fully participating = students"),
])
def test_a_row_whose_arithmetic_fails_is_rejected_naming_the_identity(tmp_path, column, reason, identity):
    rows = _wide(FILES[1])
    header = list(rows[0])
    school = next(r for r in rows if r["OrgType"] == "S" and r["Suppressed"] == "0" and r["cntStudents_Read"].isdigit())
    school[column] = str(int(school[column]) + 1)
    _write(tmp_path / "G3_2023_1.csv", header, [school])
    _, valid, rejected = _load(tmp_path)
    assert sorted(valid["subject"]) == ["math", "writing"]
    assert rejected.select("subject", "reason").rows() == [("reading", reason)]
    assert identity in rejected["detail"][0]


def test_percent_columns_are_not_inputs(tmp_path):
    rows = _wide(FILES[1])
    header = list(rows[0])
    school = next(r for r in rows if r["OrgType"] == "S" and r["Suppressed"] == "0" and r["cntStudents_Read"].isdigit())
    for column in header:
        if column.startswith("pct"):
            school[column] = "<1 %"
    _write(tmp_path / "G3_2023_1.csv", header, [school])
    _, valid, rejected = _load(tmp_path)
    assert valid.height == 3 and rejected.is_empty()


def test_another_grade_is_kept_apart_by_name_or_by_its_grade_column(tmp_path):
    shutil.copy(FILES[1], tmp_path / "G6_2023_1.csv")
    rows = _wide(FILES[2])
    for r in rows:
        r["Grade"] = "6"
    _write(tmp_path / "G3_2024_1.csv", list(rows[0]), rows)
    read, valid, rejected = _load(tmp_path)
    assert read.raw.is_empty() and valid.is_empty() and rejected.is_empty()
    why = {k["file"]: k["why"] for k in read.kept_apart}
    assert "Grade 6" in why["G6_2023_1.csv"] and "Grade column holds 6" in why["G3_2024_1.csv"]


def test_a_file_whose_name_gives_no_year_is_refused_saying_how_to_name_it(tmp_path):
    shutil.copy(FILES[1], tmp_path / "results.csv")
    with pytest.raises(contract.LandingFileError, match=r"results.csv.*G3_2024_1.csv"):
        landing.load(tmp_path)


def test_the_year_comes_from_the_file_or_the_folder_name():
    assert eqao.year_from_names(["G3_2024_1.csv"]) == 2024
    assert eqao.year_from_names(["Grade-3-2023-2024-Achievement-Results", "results.csv"]) == 2024
    assert eqao.year_from_names(["Grade-3-2023-2024-Achievement-Results", "G3_2024_2.csv"]) == 2024
    assert eqao.year_from_names(["g3 2023-24.csv"]) == 2024
    with pytest.raises(ValueError, match="different years"):
        eqao.year_from_names(["Grade-3-2022-2023-Achievement-Results", "G3_2024_1.csv"])


def test_year_folders_copied_as_published_load_too(tmp_path):
    for path in FILES:
        shutil.copytree(path.parent, tmp_path / path.parent.name)
    read, valid, _ = _load(tmp_path)
    assert sorted(valid["year"].unique()) == [2022, 2023, 2024, 2026]
    assert all(f["file"].startswith("Grade-3-") for f in read.files)


def test_a_folder_mixing_eqao_files_and_contract_csvs_works(tmp_path):
    shutil.copy(FILES[3], tmp_path / FILES[3].name)
    (tmp_path / "board_extra.csv").write_text(
        "school_id,year,subject,n_eligible,n_participating,n_l3l4\nX1,2026,math,30,29,20\nX1,2026,reading,30,28,21\n")
    read, valid, _ = _load(tmp_path)
    assert {"X1", FILES[3].name} <= set(valid["school_id"]) | set(valid["source_file"])
    assert valid.filter(pl.col("school_id") == "X1").height == 2
    assert {f["format"] for f in read.files} == {"landing contract", eqao.layout(list(_wide(FILES[3])[0]))}
    assert read.schools.filter(pl.col("school_id") == "X1").is_empty()       # a contract file names no school


def test_the_same_school_twice_in_a_year_follows_the_duplicate_rules(tmp_path):
    shutil.copy(FILES[3], tmp_path / "G3_2026_1.csv")
    shutil.copy(FILES[3], tmp_path / "G3_2026_2.csv")
    _, valid, rejected = _load(tmp_path)
    duplicates = rejected.filter(pl.col("reason") == "duplicate_exact")
    assert duplicates.height == valid.height and set(duplicates["source_file"]) == {"G3_2026_2.csv"}


def test_names_join_beside_school_id_and_are_null_without_them():
    frame = pl.DataFrame({"school_id": ["A", "B"], "g3_school_re": [0.1, -0.2]})
    names = pl.DataFrame({"school_id": ["A"], "school_name": ["École A"], "board_id": ["1"], "board_name": ["B1"],
                          "language": ["fr"]})
    named = landing.with_school_names(frame, names)
    assert named.columns == ["school_id", "school_name", "board_id", "board_name", "language", "g3_school_re"]
    assert named["school_name"].to_list() == ["École A", None]
    assert landing.with_school_names(frame, None)["board_name"].null_count() == 2


def test_the_ingest_assets_on_the_excerpt_write_the_tables_and_say_what_was_read(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in FILES:
        shutil.copy(path, raw / path.name)
    result = dg.materialize(
        [*ASSETS, *CHECKS], selection=dg.AssetSelection.assets(
            "raw_observations", "schools", "publisher_aggregates", "rejected_observations", "valid_observations"),
        resources={"warehouse": WarehouseResource(root=str(tmp_path)), "sampler": SamplerResource(),
                   "convergence": ConvergenceResource()})
    assert result.success
    meta = {m.asset_key.to_user_string(): m.metadata for m in result.get_asset_materialization_events()
            for m in [m.materialization]}
    assert meta["raw_observations"]["years"].value == [2022, 2023, 2024, 2026]
    assert meta["raw_observations"]["school_subjects_suppressed_by_publisher"].value > 0
    wh = Warehouse.from_env(tmp_path)
    assert wh.read_table("schools").height == meta["raw_observations"]["schools"].value
    assert set(wh.read_table("publisher_aggregates")["org_type"]) == {"P", "B"}
    assert set(wh.read_table("rejected_observations")["reason"]) == {"suppressed_by_publisher", "not_reported"}


def test_a_file_with_no_year_fails_raw_observations_with_the_message(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(FILES[0], raw / "download.csv")
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.assets("raw_observations"),
                            resources={"warehouse": WarehouseResource(root=str(tmp_path)), "sampler": SamplerResource(),
                                       "convergence": ConvergenceResource()}, raise_on_error=False)
    assert not result.success
    assert "download.csv" in failure_text(result) and "G3_2024_1.csv" in failure_text(result)


def _write(path: Path, header: list[str], rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)


def test_a_file_without_name_or_language_columns_still_loads(tmp_path):
    rows = _wide(FILES[3])
    header = [c for c in rows[0] if c not in ("SchoolName", "BoardName", "Language")]
    _write(tmp_path / "G3_2026_1.csv", header, [{k: r[k] for k in header} for r in rows])
    read, valid, _ = _load(tmp_path)
    assert valid.height == len(_expected(FILES[3], 2026)[0])
    assert read.schools["school_name"].null_count() == read.schools.height
    assert read.schools["board_id"].null_count() == 0
