"""Jobs, the annual schedule and the new-results sensor."""


import hashlib

import dagster as dg

from schoolquality_assets import contract
from schoolquality_assets.resources import WarehouseResource

DATA = ["raw_observations", "rejected_observations", "cleaned_observations", "eligible_schools", "analysis_sample"]
ANALYSES = ["shrinkage", "variance_components", "school_sd_by_model", "school_random_effects",
            "loo_comparison", "mcmc_diagnostics", "frequentist_comparison"]

comparison_job = dg.define_asset_job(
    "comparison_job",
    selection=dg.AssetSelection.assets(*DATA, "posterior_m0", "posterior_m1", "posterior_m2", "posterior_m3", *ANALYSES, "report"),
    description="Everything on the subsample: M0-M3, the page's analyses and the report.",
)
production_job = dg.define_asset_job(
    "production_job",
    selection=dg.AssetSelection.assets(*DATA, "posterior_m0", "posterior_m1", "posterior_m2", "shrinkage",
                                       "school_sd_by_model", "mcmc_diagnostics", "g3_school_quality", "report"),
    description="Stage 1 on every eligible school: M0, M1, M2, shrinkage, school SD, g3_school_quality, report.",
)
JOB_PARTITIONS = {"comparison_job": "subsample", "production_job": "full"}


def _run_requests(tag: str) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(run_key=f"{tag}:{job}", job_name=job, partition_key=partition, tags={"schoolquality/trigger": tag})
        for job, partition in JOB_PARTITIONS.items()
    ]


@dg.schedule(
    cron_schedule="0 6 15 9 *",
    execution_timezone="America/Toronto",
    job_name="comparison_job",
    description="Results are released once a year (late summer); rerun both jobs on 15 September, 06:00 Toronto time.",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def annual_rerun_schedule(context: dg.ScheduleEvaluationContext):
    year = context.scheduled_execution_time.year
    return _run_requests(f"annual-{year}")


def landing_fingerprint(raw_dir) -> str | None:
    """SHA-256 over the names and contents of the landing files (None when there are none)."""
    files = contract.list_landing_files(raw_dir) if raw_dir.exists() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dg.sensor(
    jobs=[comparison_job, production_job],
    minimum_interval_seconds=300,
    description="Launches both jobs once when the landing files' content changes (fingerprint kept in the cursor).",
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def new_results_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
    fingerprint = landing_fingerprint(warehouse.get().raw_dir)
    if fingerprint is None:
        return dg.SkipReason("no landing files in raw/")
    if fingerprint == context.cursor:
        return dg.SkipReason("landing files unchanged since the last launch")
    context.update_cursor(fingerprint)
    return _run_requests(f"landing-{fingerprint[:16]}")
