"""What Dagster shows is true: every selection a user can type runs, check results belong to the
partition they judged, a failed check is recorded with its numbers and without a materialization,
and a report shows only tables built from the partition's current fits.

One tiny province; the runs share an instance (as a user's DAGSTER_HOME) and a warehouse.
"""

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest
from dagster._core.event_api import (
    PartitionKeyFilter,  # the instance API's partition filter
)

from schoolquality_assets.definitions import ASSETS, CHECKS, defs
from schoolquality_assets.defs.resources import (
    ConvergenceResource,
    SamplerResource,
    WarehouseResource,
)
from schoolquality_assets.ingest import synthetic
from schoolquality_assets.warehouse import PROVENANCE, Warehouse

from .conftest import failure_text

pytestmark = pytest.mark.stan

GRAPH = defs.get_repository_def().asset_graph
# landing_files is an external asset: Dagster observes it and never materializes it
MATERIALIZABLE = sorted(k.to_user_string() for k in GRAPH.materializable_asset_keys)
PARTITIONED = {k.to_user_string() for k in GRAPH.materializable_asset_keys if GRAPH.get(k).is_partitioned}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("warehouse")
    synthetic.write_province(synthetic.generate_province(seed=5, n_schools=30), root / "raw")
    resources = {"warehouse": WarehouseResource(root=str(root), subsample_size=12),
                 "sampler": SamplerResource(chains=4, warmup=300, seed=11),
                 "convergence": ConvergenceResource()}
    with dg.instance_for_test() as instance:
        yield root, resources, instance


def _run(env, selection, partition=None) -> dg.ExecuteInProcessResult:
    root, resources, instance = env
    return dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, selection=selection,
                          partition_key=partition, raise_on_error=False)


def _latest_check(instance, asset: str, check: str, partition: str):
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [key], partition_filter=PartitionKeyFilter(key=partition))
    record = records[key]
    return record, record.event.dagster_event.event_specific_data


def test_every_upstream_selection_runs_and_checks_keep_their_partition(env):
    """`*X` for every asset X of the code location, as typed on the CLI (`--select '*X'`). The
    full fit runs first and a subsample fit after it: the check badges of posterior_m2 on full
    still show the full fit."""
    root, _, instance = env
    full = _run(env, "*g3_school_quality", "full")
    assert full.success, failure_text(full)
    assert {"raw_observations", "valid_observations", "cleaned_observations", "eligible_schools",
            "analysis_sample", "posterior_m2", "g3_school_quality"} <= {
        e.asset_key.to_user_string() for e in full.get_asset_materialization_events()}

    for asset in MATERIALIZABLE:
        result = _run(env, f"*{asset}", "subsample" if asset in PARTITIONED else None)
        assert result.success, (asset, failure_text(result))
        built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert asset in built or asset == "synthetic_truth", (asset, built)  # truth: only when raw/ is empty

    for check in ("rhat", "ess", "no_divergences"):
        record, evaluation = _latest_check(instance, "posterior_m2", check, "full")
        assert record.run_id == full.run_id, check       # not the later subsample run
        assert evaluation.partition == "full" and evaluation.passed
        assert evaluation.metadata["judged"].value == "published posterior"
        sub, sub_eval = _latest_check(instance, "posterior_m2", check, "subsample")
        assert sub.run_id != full.run_id and sub_eval.partition == "subsample"
    full_rhat = _latest_check(instance, "posterior_m2", "rhat", "full")[1].metadata["max_rhat"].value
    sub_rhat = _latest_check(instance, "posterior_m2", "rhat", "subsample")[1].metadata["max_rhat"].value
    assert full_rhat != sub_rhat      # two fits on other data: their figures differ

    # lineage: every DuckDB table written is an asset (or the provenance of the analysis tables)
    wh = Warehouse.from_env(root)
    with wh.connect(read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert tables - {PROVENANCE} <= set(MATERIALIZABLE), tables - set(MATERIALIZABLE)
    assert "shrinkage_by_band" in tables
    report_parents = {k.to_user_string() for k in GRAPH.get(dg.AssetKey("report")).parent_keys}
    assert {"analysis_sample", "posterior_m0", "posterior_m1", "posterior_m2", "posterior_m3",
            "shrinkage_by_band", "rejected_observations"} <= report_parents


def test_every_asset_alone_runs_on_each_partition(env):
    """`X` alone (a click on Materialize in the UI) for every asset, on both partitions, once its
    upstream exists (the test above built it)."""
    for asset in MATERIALIZABLE:
        for partition in (("full", "subsample") if asset in PARTITIONED else (None,)):
            if asset in ("posterior_m0", "posterior_m1", "posterior_m3") and partition == "full":
                continue  # a full fit of each model costs minutes; M2 on full stands for them
            if partition == "full" and asset in {"shrinkage", "shrinkage_by_band", "variance_components",
                                                 "school_random_effects", "loo_comparison",
                                                 "frequentist_comparison", "school_sd_by_model"}:
                continue  # their posteriors were not fitted on full here; test_report_... covers that case
            result = _run(env, asset, partition)
            assert result.success, (asset, partition, failure_text(result))


def test_failed_output_check_records_no_materialization(env):
    """g3_school_quality whose own check fails: the failed check is recorded with its numbers, no
    materialization is recorded, and the file is byte-for-byte unchanged."""
    root, _, instance = env
    wh = Warehouse.from_env(root)
    target = wh.output_path("full")
    before = target.read_bytes()
    eligible = wh.read_table("eligible_schools")
    wh.write_table("eligible_schools", pl.concat([eligible, eligible.head(1).with_columns(school_id=pl.lit("ZZZ-new"))]))
    try:
        result = _run(env, "g3_school_quality", "full")
    finally:
        wh.write_table("eligible_schools", eligible)
    assert not result.success
    assert not result.get_asset_materialization_events()
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    evaluation = evals["matches_eligible_schools"]
    assert not evaluation.passed and evaluation.partition == "full"
    assert evaluation.metadata["missing_schools"].value == 1
    assert evals["ranking_mcse"].passed and evals["ranking_mcse"].metadata["max_mcse"].value <= 0.025
    assert "was not written" in failure_text(result)
    assert target.read_bytes() == before
    record, latest = _latest_check(instance, "g3_school_quality", "matches_eligible_schools", "full")
    assert record.run_id == result.run_id and not latest.passed


def test_report_shows_only_tables_of_the_current_fits(env):
    """After M2 on the subsample is refitted alone, the report built alone shows the sections
    from M0/M1 and says, for each M2-based section, that its tables came from another fit."""
    root, _, _ = env
    assert _run(env, "*report", "subsample").success
    html_before = Warehouse.from_env(root).report_path("subsample").read_text()
    assert "Not shown" not in html_before
    assert 'id="table-school-rankings-by-size-band"' in html_before and "cannot be told apart" in html_before
    assert _run(env, "posterior_m2", "subsample").success
    result = _run(env, "report", "subsample")
    assert result.success, failure_text(result)
    html = Warehouse.from_env(root).report_path("subsample").read_text()
    for asset in ("variance_components", "loo_comparison", "frequentist_comparison"):
        assert f"Not shown: {asset} was built from the M2 fit of run" in html, asset
    assert "g3_school_quality dry run" in html and 'id="table-variance-components"' not in html
    assert 'id="table-shrinkage-by-band"' in html         # M0 and M1 were not refitted
    (materialization,) = result.get_asset_materialization_events()
    not_shown = materialization.materialization.metadata["sections_not_shown"].value
    assert {"Variance decomposition", "Model comparison (LOO-CV)", "Stage 1 production model",
            "School rankings"} <= set(not_shown)
    # the production file was written from the full M2 fit, which is still current
    meta = pq.read_schema(Warehouse.from_env(root).output_path("full")).metadata
    assert meta[b"partition"] == b"full"
