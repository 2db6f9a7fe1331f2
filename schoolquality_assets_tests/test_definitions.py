"""The code location loads; schedule and sensor request the right runs."""

import datetime as dt

import dagster as dg

from schoolquality_assets.definitions import defs
from schoolquality_assets.contract import landing_fingerprint
from schoolquality_assets.orchestration import annual_rerun_schedule, new_results_sensor
from schoolquality_assets.resources import WarehouseResource

ASSETS = {
    "raw_observations", "rejected_observations", "cleaned_observations", "eligible_schools", "analysis_sample",
    "posterior_m0", "posterior_m1", "posterior_m2", "posterior_m3", "shrinkage", "variance_components",
    "school_sd_by_model", "school_random_effects", "loo_comparison", "mcmc_diagnostics",
    "frequentist_comparison", "report", "g3_school_quality",
    "synthetic_truth", "valid_observations", "filtered_observations", "landing_files", "shrinkage_by_band",
    "school_rankings",
}


def test_code_location_resolves_everything():
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == ASSETS
    checks = {(c.asset_key.to_user_string(), c.name) for c in repo.asset_graph.asset_check_keys}
    for model in ("m0", "m1", "m2", "m3"):
        assert {(f"posterior_{model}", n) for n in ("rhat", "no_divergences", "ess", "bfmi")} <= checks
    assert ("cleaned_observations", "participation_at_least_half") in checks
    assert ("analysis_sample", "sample_schools_eligible") in checks
    assert ("g3_school_quality", "matches_eligible_schools") in checks
    assert {"comparison_job", "production_job"} <= {j.name for j in repo.get_all_jobs()}
    assert repo.get_schedule_def("annual_rerun_schedule")
    assert repo.get_sensor_def("new_results_sensor")


def _sensor(tmp_path, cursor=None):
    context = dg.build_sensor_context(cursor=cursor, resources={"warehouse": WarehouseResource(root=str(tmp_path))})
    return new_results_sensor(context), context


def test_sensor_launches_once_per_new_content(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    result, _ = _sensor(tmp_path)
    assert isinstance(result, dg.SkipReason)          # nothing landed yet
    (raw / "g3_2025.csv").write_text("school_id,year,subject,n_eligible,n_participating,n_l3l4\nA,2025,math,10,9,5\n")
    (raw / "g3_2024.csv").write_text("school_id,year,subject,n_eligible,n_participating,n_l3l4\nA,2024,math,10,9,4\n")
    result, context = _sensor(tmp_path)
    requests = result.run_requests
    assert sorted((r.job_name, r.partition_key) for r in requests) == [("comparison_job", "subsample"), ("production_job", "full")]
    cursor = result.cursor
    assert cursor == landing_fingerprint(raw)
    (observation,) = result.asset_events             # the landing folder's new data version, for lineage
    assert observation.asset_key == dg.AssetKey("landing_files")
    assert observation.tags["dagster/data_version"] == cursor
    assert all(cursor[:16] in r.run_key for r in requests)
    again, _ = _sensor(tmp_path, cursor=cursor)
    assert isinstance(again, dg.SkipReason)           # same content: no new runs
    (raw / "g3_2025.csv").write_text("school_id,year,subject,n_eligible,n_participating,n_l3l4\nA,2025,math,10,9,6\n")
    changed, _ = _sensor(tmp_path, cursor=cursor)
    assert len(changed.run_requests) == 2 and changed.cursor != cursor


def test_annual_schedule_requests_production_on_full():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 9, 15, 6, 0))
    request = annual_rerun_schedule(context)
    assert request.partition_key == "full"
    assert request.tags["schoolquality/trigger"] == "annual-2026"
    assert annual_rerun_schedule.job_name == "production_job"


def test_raw_observations_records_the_landing_files_version(tmp_path):
    """raw_observations depends on the external landing_files asset and records the data version
    (content fingerprint) it read, so the UI can mark it stale when new files land."""
    from schoolquality_assets.definitions import ASSETS, CHECKS
    from schoolquality_assets.resources import ConvergenceResource, SamplerResource

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "g3.csv").write_text("school_id,year,subject,n_eligible,n_participating,n_l3l4\nA,2024,math,10,9,4\n")
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.assets("raw_observations"),
                            resources={"warehouse": WarehouseResource(root=str(tmp_path)), "sampler": SamplerResource(),
                                       "convergence": ConvergenceResource()})
    assert result.success
    observations = [e.event_specific_data.asset_observation for e in result.all_events
                    if e.event_type_value == "ASSET_OBSERVATION"]
    assert [o.asset_key for o in observations] == [dg.AssetKey("landing_files")]
    assert observations[0].tags["dagster/data_version"] == landing_fingerprint(raw)
    deps = defs.get_repository_def().asset_graph.get(dg.AssetKey("raw_observations")).parent_keys
    assert dg.AssetKey("landing_files") in deps


def test_every_asset_has_a_code_version_and_checks_share_its_partitions():
    """Code changes mark assets stale (code versions); a check of a partitioned asset is partitioned
    like it, so each evaluation belongs to the partition it judged."""
    graph = defs.get_repository_def().asset_graph
    for key in graph.materializable_asset_keys:
        assert graph.get(key).code_version, key.to_user_string()
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        assert spec.partitions_def == graph.get(check_key.asset_key).partitions_def, check_key.to_user_string()


def test_code_version_follows_the_source(tmp_path):
    from schoolquality_assets.assets.common import code_version_of

    source = tmp_path / "template.j2"
    source.write_text("a")
    first = code_version_of(source)
    assert code_version_of(source) == first
    source.write_text("b")
    assert code_version_of(source) != first


def test_stale_reason_names_the_fit_a_table_came_from():
    from schoolquality_assets.report import stale_reason

    current = {"m1": "run-aaaa1111", "m2": "run-bbbb2222"}
    assert stale_reason("shrinkage", "full", {"m1": "run-aaaa1111"}, current) is None
    assert "has not been built on the full partition" in stale_reason("variance_components", "full", None, current)
    moved = stale_reason("variance_components", "full", {"m2": "run-old00000", "m1": "run-aaaa1111"}, current)
    assert moved == ("variance_components was built from the M2 fit of run run-old0, but the current M2 posterior "
                     "on full is from run run-bbbb")
    assert "no longer has" in stale_reason("variance_components", "full", {"m3": "x"}, current)
