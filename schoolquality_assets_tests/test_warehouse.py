"""Warehouse paths and partitioned table writes."""

import re

import polars as pl

from schoolquality_assets.warehouse import Warehouse

from .conftest import failure_text


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


def test_a_table_not_built_yet_says_what_to_materialize(tmp_path):
    """Reading a table that is not in the warehouse (no database yet, or a database without it)
    names the table and the '*' selection that builds it, instead of DuckDB's error; a step run
    alone on an empty warehouse fails with that message."""
    import dagster as dg
    import pytest

    from schoolquality_assets.definitions import ASSETS, CHECKS
    from schoolquality_assets.defs.resources import (
        ConvergenceResource,
        SamplerResource,
        WarehouseResource,
    )
    from schoolquality_assets.ingest import synthetic
    from schoolquality_assets.warehouse import MissingTable

    wh = Warehouse.from_env(tmp_path)
    for attempt in ("no database", "another table only"):
        with pytest.raises(MissingTable, match=r"no table eligible_schools yet.*leading '\*'"):
            wh.read_partition("eligible_schools", "full")
        assert wh.row_count("eligible_schools") is None
        wh.write_partition("other", "full", pl.DataFrame({"a": [1]}))
    synthetic.write_province(synthetic.generate_province(seed=5, n_schools=30), tmp_path / "empty" / "raw")
    result = dg.materialize([*ASSETS, *CHECKS], selection="analysis_sample", partition_key="subsample",
                            resources={"warehouse": WarehouseResource(root=str(tmp_path / "empty")),
                                       "sampler": SamplerResource(), "convergence": ConvergenceResource()},
                            raise_on_error=False)
    assert not result.success
    assert re.search(r"has no table \w+ yet: materialize \w+ first", failure_text(result)), failure_text(result)
