"""The code location loads; schedule and sensor request the right runs."""

import ast
import datetime as dt
from pathlib import Path

import dagster as dg

import schoolquality_assets
from schoolquality_assets import definitions
from schoolquality_assets.definitions import defs
from schoolquality_assets.defs.orchestration import (
    MAX_RUNTIME,
    annual_comparison_after_failure,
    annual_comparison_follow_up,
    annual_rerun_schedule,
    new_results_sensor,
)
from schoolquality_assets.defs.resources import WarehouseResource
from schoolquality_assets.ingest.contract import landing_fingerprint

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = "school_id,year,subject,n_eligible,n_participating,n_l3l4\n"

ASSETS = {
    "raw_observations", "rejected_observations", "cleaned_observations", "eligible_schools", "analysis_sample",
    "posterior_m0", "posterior_m1", "posterior_m2", "posterior_m3", "shrinkage", "variance_components",
    "school_sd_by_model", "school_random_effects", "loo_comparison", "mcmc_diagnostics",
    "frequentist_comparison", "report", "g3_school_quality",
    "synthetic_truth", "valid_observations", "filtered_observations", "landing_files", "shrinkage_by_band",
    "school_rankings", "schools", "publisher_aggregates", "posterior_predictive_checks", "holdout_validation",
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
    assert {"comparison_job", "production_job", "landing_observation_job"} <= {j.name for j in repo.get_all_jobs()}
    assert repo.get_schedule_def("annual_rerun_schedule")
    assert repo.get_sensor_def("new_results_sensor")
    assert repo.get_sensor_def("dead_run_worker_sensor").default_status == dg.DefaultSensorStatus.RUNNING


def test_no_private_dagster_import():
    """Only Dagster's public API (`import dagster as dg`): no module of the package imports dagster._*."""
    package = Path(schoolquality_assets.__file__).parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 20
    for source in sources:
        text = source.read_text()
        assert "dagster._" not in text, source
        for node in ast.walk(ast.parse(text)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("dagster._") for n in names), (source, names)


def _observe(tmp_path, instance) -> dg.AssetObservation:
    job = defs.resolve_job_def("landing_observation_job")
    assert job.execute_in_process(instance=instance, resources={"warehouse": WarehouseResource(root=str(tmp_path))}).success
    return instance.fetch_observations(dg.AssetKey("landing_files"), limit=1).records[0].asset_observation


def test_landing_files_is_observed_with_its_content_fingerprint_as_data_version(tmp_path):
    """landing_files is an observable asset (the UI's Observe button): each observation records the
    content fingerprint as its data version, with per-file metadata; a changed file, a new version."""
    node = defs.get_repository_def().asset_graph.get(dg.AssetKey("landing_files"))
    assert node.is_observable and not node.is_materializable
    raw = tmp_path / "raw"
    raw.mkdir()
    with dg.instance_for_test() as instance:
        assert _observe(tmp_path, instance).data_version == "synthetic-province-seed-2024"   # empty: the synthetic seed
        (raw / "g3_2024.csv").write_text(HEADER + "A,2024,math,10,9,4\n")
        first = _observe(tmp_path, instance)
        assert first.data_version == landing_fingerprint(raw)
        assert first.metadata["fingerprint"].value == first.data_version and "g3_2024.csv" in first.metadata["files"].value
        assert _observe(tmp_path, instance).data_version == first.data_version              # same content, same version
        (raw / "g3_2024.csv").write_text(HEADER + "A,2024,math,10,9,5\n")
        second = _observe(tmp_path, instance)
        assert second.data_version not in (first.data_version, None)
        # raw_observations no longer logs observations of its own; it records the version it read
        result = dg.materialize([*definitions.ASSETS, *definitions.CHECKS], instance=instance,
                                selection=dg.AssetSelection.assets("raw_observations"),
                                resources={**defs.resources, "warehouse": WarehouseResource(root=str(tmp_path))})
        assert not [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
        (materialization,) = result.asset_materializations_for_node("raw_observations")
        assert materialization.metadata["landing_files_version"].value == second.data_version
        deps = defs.get_repository_def().asset_graph.get(dg.AssetKey("raw_observations")).parent_keys
        assert dg.AssetKey("landing_files") in deps


def _sensor(tmp_path, instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      resources={"warehouse": WarehouseResource(root=str(tmp_path))})
    return new_results_sensor(context)


def test_sensor_launches_once_per_new_content(tmp_path):
    """New content: observe, then production on full, in that order (the queue starts runs first in,
    first out; the comparison follows production's end); the same content: nothing."""
    raw = tmp_path / "raw"
    raw.mkdir()
    with dg.instance_for_test() as instance:
        assert isinstance(_sensor(tmp_path, instance), dg.SkipReason)          # nothing landed yet
        (raw / "g3_2025.csv").write_text(HEADER + "A,2025,math,10,9,5\n")
        (raw / "g3_2024.csv").write_text(HEADER + "A,2024,math,10,9,4\n")
        result = _sensor(tmp_path, instance)
        requests = result.run_requests
        assert [(r.job_name, r.partition_key) for r in requests] == [
            ("landing_observation_job", None), ("production_job", "full")]
        cursor = result.cursor
        assert cursor == landing_fingerprint(raw)
        assert not result.asset_events                      # the observation is Dagster's own run
        assert all(cursor[:16] in r.run_key for r in requests)
        # a lost cursor gives the same run keys, which Dagster never launches twice
        assert [r.run_key for r in _sensor(tmp_path, instance).run_requests] == [r.run_key for r in requests]
        assert isinstance(_sensor(tmp_path, instance, cursor=cursor), dg.SkipReason)   # same content: no new runs
        (raw / "g3_2025.csv").write_text(HEADER + "A,2025,math,10,9,6\n")
        changed = _sensor(tmp_path, instance, cursor=cursor)
        assert len(changed.run_requests) == 2 and changed.cursor != cursor
        assert not {r.run_key for r in changed.run_requests} & {r.run_key for r in requests}


def _after_production(sensor, tag: str):
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(defs.resolve_job_def("production_job"), tags={"schoolquality/trigger": tag})
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_instance=instance, dagster_run=run,
            dagster_event=dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name="production_job"))
        return sensor(context)


def test_an_automated_production_run_is_followed_by_the_comparison_on_full():
    """After the schedule's or the sensor's production run: the page on every school. A passed run is
    followed by what production did not build (M3, what it feeds, the report), with their checks, as
    one launchable subset of comparison_job; a failed one by the whole comparison_job."""
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("comparison_job")
    for tag in ("annual-2026", "landing-0123456789abcdef"):
        request = _after_production(annual_comparison_follow_up, tag)
        assert (request.partition_key, request.run_key) == ("full", f"{tag}:comparison_job")
        assets = {k.to_user_string() for k in request.asset_selection}
        assert {"posterior_m3", "variance_components", "school_random_effects", "loo_comparison",
                "frequentist_comparison", "school_sd_by_model", "mcmc_diagnostics", "report"} <= assets
        assert not assets & {"raw_observations", "analysis_sample", "posterior_m0", "posterior_m1", "posterior_m2",
                             "g3_school_quality", "school_rankings", "shrinkage"}
        checks = set(request.asset_check_keys)
        assert {c for c in graph.asset_check_keys if c.asset_key.to_user_string() in assets} == checks
        assert dg.AssetCheckKey(dg.AssetKey("posterior_m3"), "rhat") in checks
        subset = job.get_subset(asset_selection=set(request.asset_selection), asset_check_selection=checks)
        assert {n.name for n in subset.nodes} >= {"posterior_m3", "loo_comparison", "report"}
        after_failure = _after_production(annual_comparison_after_failure, tag)
        assert after_failure.partition_key == "full"
        assert after_failure.asset_selection is None and after_failure.asset_check_keys is None   # all of it
    assert isinstance(_after_production(annual_comparison_follow_up, ""), dg.SkipReason)   # a run by hand


def test_jobs_carry_a_max_runtime_for_run_monitoring():
    repo = defs.get_repository_def()
    for job in ("production_job", "comparison_job"):
        assert repo.get_job(job).tags["dagster/max_runtime"] == MAX_RUNTIME["dagster/max_runtime"]
    assert int(MAX_RUNTIME["dagster/max_runtime"]) >= 4 * 3600


def test_annual_schedule_requests_production_on_full():
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2026, 9, 15, 6, 0))
    request = annual_rerun_schedule(context)
    assert request.partition_key == "full"
    assert request.tags["schoolquality/trigger"] == "annual-2026"
    assert annual_rerun_schedule.job_name == "production_job"


def test_g3_school_quality_is_expected_once_a_year_after_the_annual_run():
    """A freshness policy (Dagster 1.13's FreshnessPolicy.cron): the window opens when
    annual_rerun_schedule fires (15 September, 06:00 Toronto) and closes on 1 October, 06:00; past
    that without a materialization since the window opened, the UI shows the asset failing."""
    policy = defs.get_repository_def().asset_graph.get(dg.AssetKey("g3_school_quality")).freshness_policy
    assert isinstance(policy, dg.FreshnessPolicy)
    assert (policy.deadline_cron, policy.timezone) == ("0 6 1 10 *", annual_rerun_schedule.execution_timezone)
    toronto = dt.timezone(dt.timedelta(hours=-4))   # EDT, in force in September and October
    deadline = dt.datetime(2026, 10, 1, 6, 0, tzinfo=toronto)
    opens = deadline - policy.lower_bound_delta
    assert opens == dt.datetime(2026, 9, 15, 6, 0, tzinfo=toronto)
    assert annual_rerun_schedule.cron_schedule == f"{opens.minute} {opens.hour} {opens.day} {opens.month} *"


def test_instance_config_where_dagster_looks_by_default(tmp_path):
    """Without DAGSTER_HOME, `dg dev` / `dagster dev` / `dg launch` from the checkout configure their
    temporary instance from ./dagster.yaml; warehouse/dagster_home/dagster.yaml (the persistent
    instance) is the same file. Both give one run at a time, one step per pool, run monitoring."""
    default = REPO_ROOT / "dagster.yaml"
    assert (REPO_ROOT / "warehouse" / "dagster_home" / "dagster.yaml").resolve() == default.resolve()
    (tmp_path / "dagster.yaml").write_text(default.read_text())
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        concurrency = instance.get_concurrency_config()   # without the file: 10 runs at once, pools unlimited
        assert concurrency.run_queue_config.max_concurrent_runs == 1
        assert concurrency.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert type(instance.run_launcher) is dg.DefaultRunLauncher    # nothing of the project in the instance
    finally:
        instance.dispose()


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
    from schoolquality_assets.defs.common import code_version_of

    source = tmp_path / "template.j2"
    source.write_text("a")
    first = code_version_of(source)
    assert code_version_of(source) == first
    source.write_text("b")
    assert code_version_of(source) != first


def test_stale_reason_names_the_fit_a_table_came_from():
    from schoolquality_assets.analyses.report import stale_reason

    current = {"m1": "run-aaaa1111", "m2": "run-bbbb2222"}
    assert stale_reason("shrinkage", "full", {"m1": "run-aaaa1111"}, current) is None
    assert "has not been built on the full partition" in stale_reason("variance_components", "full", None, current)
    moved = stale_reason("variance_components", "full", {"m2": "run-old00000", "m1": "run-aaaa1111"}, current)
    assert moved == ("variance_components was built from the M2 fit of run run-old0, but the current M2 posterior "
                     "on full is from run run-bbbb")
    assert "no longer has" in stale_reason("variance_components", "full", {"m3": "x"}, current)
