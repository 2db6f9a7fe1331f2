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
    "synthetic_truth", "valid_observations", "filtered_observations", "landing_files",
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
    result = dg.materialize([*ASSETS, *CHECKS], selection=dg.AssetSelection.assets("raw_observations").required_multi_asset_neighbors(),
                            resources={"warehouse": WarehouseResource(root=str(tmp_path)), "sampler": SamplerResource(),
                                       "convergence": ConvergenceResource()})
    assert result.success
    observations = [e.event_specific_data.asset_observation for e in result.all_events
                    if e.event_type_value == "ASSET_OBSERVATION"]
    assert [o.asset_key for o in observations] == [dg.AssetKey("landing_files")]
    assert observations[0].tags["dagster/data_version"] == landing_fingerprint(raw)
    deps = defs.get_repository_def().asset_graph.get(dg.AssetKey("raw_observations")).parent_keys
    assert dg.AssetKey("landing_files") in deps
