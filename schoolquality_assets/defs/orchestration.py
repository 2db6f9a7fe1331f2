"""Jobs, the annual schedule and the new-results sensor."""


import dagster as dg

from schoolquality_assets.defs.assets import ASSETS, CHECKS
from schoolquality_assets.defs.resources import WarehouseResource, default_resources
from schoolquality_assets.ingest import contract
from schoolquality_assets.partitions import FULL

# Dagster's run monitoring (dagster.yaml) cancels a run older than this: a backstop for a worker
# that is alive but stuck, far above any measured run (production 25 min, each fit's budget 20 min).
MAX_RUNTIME = {"dagster/max_runtime": str(6 * 3600)}

# Every asset: a report is built in the same run as every table it shows (the g3_school_quality
# on the subsample is the dry run).
COMPARISON_SELECTION = dg.AssetSelection.groups("ingest", "sample", "models", "analyses", "production", "report")
# Production needs only part of the models and analyses groups: M3 and the comparisons that
# need it (variance, caterpillar, LOO, frequentist) are the comparison job's.
PRODUCTION_SELECTION = (
    dg.AssetSelection.groups("ingest", "sample", "production", "report")
    | dg.AssetSelection.assets("posterior_m0", "posterior_m1", "posterior_m2", "shrinkage", "shrinkage_by_band",
                               "school_sd_by_model", "mcmc_diagnostics")
)
# What the comparison adds to a production run of the same partition: what production does not
# build, and everything M3 feeds (the school SD table, the diagnostics and the report show M3 too).
AFTER_PRODUCTION_SELECTION = ((COMPARISON_SELECTION - PRODUCTION_SELECTION) | dg.AssetSelection.assets(
    "posterior_m3").downstream()) & COMPARISON_SELECTION

comparison_job = dg.define_asset_job(
    "comparison_job",
    selection=COMPARISON_SELECTION,
    description="Everything on the partition: M0-M3, the page's analyses, g3_school_quality and the report. "
    "After an automated production run on full, the automation runs only the part production did not build "
    "(M3 and what it feeds, LOO, frequentist) on full.",
    tags=MAX_RUNTIME,
)
production_job = dg.define_asset_job(
    "production_job",
    selection=PRODUCTION_SELECTION,
    description="Stage 1 on every eligible school: M0, M1, M2, shrinkage, school SD, g3_school_quality, report "
    "(a section whose tables were not built from this run's fits, such as M3's, says so instead of showing them).",
    tags=MAX_RUNTIME,
)
# An asset job either materializes or observes, so observing landing_files is a run of its own.
landing_observation_job = dg.define_asset_job(
    "landing_observation_job", selection=dg.AssetSelection.assets("landing_files"),
    description="Observe landing_files: record the landing folder's content fingerprint as its data version.",
)
# In the order the queue starts them (first in, first out): the observation, so that raw_observations
# records the version it reads, then production. The comparison follows when production ends
# (the run-status sensors below), so that it never starts on what a failed production left.
JOB_PARTITIONS = {"landing_observation_job": None, "production_job": FULL}
AUTOMATED = ("annual-", "landing-")   # trigger tags of the schedule's and the sensor's runs


def _run_requests(tag: str) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(run_key=f"{tag}:{job}", job_name=job, partition_key=partition, tags={"schoolquality/trigger": tag})
        for job, partition in JOB_PARTITIONS.items()
    ]


@dg.schedule(
    cron_schedule="0 6 15 9 *",
    execution_timezone="America/Toronto",
    job=production_job,
    description="Results are released once a year (late summer): on 15 September, 06:00 Toronto time, run "
    "production_job (full); annual_comparison_follow_up then runs the rest of comparison_job on full when it ends.",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def annual_rerun_schedule(context: dg.ScheduleEvaluationContext):
    # A schedule launches only its own job (Dagster ignores job_name on its run requests),
    # so the second job follows through the run-status sensors below.
    tag = f"annual-{context.scheduled_execution_time.year}"
    return dg.RunRequest(run_key=f"{tag}:production_job", partition_key=FULL, tags={"schoolquality/trigger": tag})


def after_production_keys() -> tuple[list[dg.AssetKey], list[dg.AssetCheckKey]]:
    """The assets of AFTER_PRODUCTION_SELECTION and their checks, resolved on the code location."""
    graph = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, resources=default_resources()).resolve_asset_graph()
    return sorted(AFTER_PRODUCTION_SELECTION.resolve(graph)), sorted(AFTER_PRODUCTION_SELECTION.resolve_checks(graph))


def _comparison_on_full(tag: str, production_passed: bool) -> dg.RunRequest:
    """After production passed: only what it did not build (it reads production's fits, as the report
    does). After it failed: the whole comparison again, so a bad input fails at once and a fit that
    failed says so again in this run, while M3 and what does not need the failed step are still built."""
    subset = {}
    if production_passed:
        assets, checks = after_production_keys()
        subset = {"asset_selection": assets, "asset_check_keys": checks}
    return dg.RunRequest(run_key=f"{tag}:comparison_job", partition_key=FULL, tags={"schoolquality/trigger": tag},
                         **subset)


def _follow_up(production_passed: bool):
    def follow_up(context: dg.RunStatusSensorContext):
        tag = context.dagster_run.tags.get("schoolquality/trigger", "")
        if not tag.startswith(AUTOMATED):
            return dg.SkipReason("not a production run of the schedule or the new-results sensor")
        return _comparison_on_full(tag, production_passed)
    return follow_up


annual_comparison_follow_up = dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[production_job], request_job=comparison_job,
    name="annual_comparison_follow_up", default_status=dg.DefaultSensorStatus.RUNNING,
    description="After an automated production run (annual schedule or new-results sensor) succeeds, launch "
    "comparison_job on full for what production did not build: M3 and what it feeds, LOO, frequentist, the report.",
)(_follow_up(production_passed=True))
annual_comparison_after_failure = dg.run_failure_sensor(
    monitored_jobs=[production_job], request_job=comparison_job,
    name="annual_comparison_after_failure", default_status=dg.DefaultSensorStatus.RUNNING,
    description="After an automated production run fails, launch the whole comparison_job on full: the failure "
    "shows again with its numbers, and what does not need the failed step (M3 among them) is still built.",
)(_follow_up(production_passed=False))


@dg.sensor(
    jobs=[landing_observation_job, production_job],
    minimum_interval_seconds=300,
    description="When the landing files' content changes: observe landing_files (its new data version marks "
    "raw_observations and what follows stale), then production_job (full), once per content; the run-status "
    "sensors then run comparison_job on full.",
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def new_results_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    """A sensor, not declarative automation: an AutomationCondition materializes stale assets, each
    partition on its own, so it cannot say "the production selection on full, then the comparison
    selection on full, one run each, in that order, once per content". The cursor is the content
    fingerprint, and the run keys carry it: Dagster itself never launches the same key twice, so one
    content gives one run per job even if the cursor were lost."""
    fingerprint = contract.landing_fingerprint(warehouse.get().raw_dir)
    if fingerprint is None:
        return dg.SkipReason("no landing files in raw/")
    if fingerprint == context.cursor:
        return dg.SkipReason("landing files unchanged since the last launch")
    return dg.SensorResult(run_requests=_run_requests(f"landing-{fingerprint[:16]}"), cursor=fingerprint)
