"""Warehouse paths and partitioned table writes."""

import polars as pl

from schoolquality_assets.warehouse import Warehouse


def test_partition_write_replaces_only_its_rows_and_widens_older_tables(tmp_path):
    wh = Warehouse.from_env(tmp_path)
    wh.write_partition("t", "full", pl.DataFrame({"a": [1, 2]}))
    wh.write_partition("t", "subsample", pl.DataFrame({"a": [3], "b": ["x"]}))   # a newer version adds a column
    assert sorted(wh.read_partition("t", "full")["a"].to_list()) == [1, 2]
    assert wh.read_partition("t", "full")["b"].to_list() == [None, None]
    wh.write_partition("t", "full", pl.DataFrame({"a": [5], "b": ["y"]}))
    table = wh.read_table("t").sort("a")
    assert table.select("a", "b", "partition").rows() == [(3, "x", "subsample"), (5, "y", "full")]


def test_paths_have_one_home(tmp_path):
    wh = Warehouse.from_env(tmp_path)
    assert wh.output_path("full") == wh.root / "outputs" / "g3_school_quality.parquet"
    assert wh.output_path("subsample").parent.name == "dry_run"
    assert wh.posterior_path("m2", "full").name == "posterior_m2.nc"
    assert wh.failed_posterior_path("m2", "full").parent == wh.posterior_path("m2", "full").parent
    assert wh.figure_path("subsample", "shrinkage_vs_n").name == "shrinkage_vs_n.png"
