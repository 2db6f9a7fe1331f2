"""The Dagster code location loaded by workspace.yaml."""

import dagster as dg

from schoolquality_assets.assets import analysis_assets, ingest, posteriors, production, report
from schoolquality_assets.orchestration import (
    annual_comparison_after_failure,
    annual_comparison_follow_up,
    annual_rerun_schedule,
    comparison_job,
    new_results_sensor,
    production_job,
)
from schoolquality_assets.run_liveness import schoolquality_executor
from schoolquality_assets.resources import ConvergenceResource, SamplerResource, WarehouseResource

ASSETS = [ingest.landing_files, *dg.load_assets_from_modules([ingest, analysis_assets, production, report]),
          *posteriors.posterior_assets]
CHECKS = dg.load_asset_checks_from_modules([ingest])

# Whatever instance runs the code (a fresh DAGSTER_HOME included): at most one Stan step at a
# time (each samples 4 chains on the machine's cores), and at most two steps of any kind. Before
# any step, pool slots left by dead runs are freed (run_liveness).
EXECUTOR = schoolquality_executor.configured({
    "max_concurrent": 2,
    "tag_concurrency_limits": [{"key": posteriors.STAN_TAG, "value": "true", "limit": 1}],
})

defs = dg.Definitions(
    assets=ASSETS,
    executor=EXECUTOR,
    asset_checks=CHECKS,
    jobs=[comparison_job, production_job],
    schedules=[annual_rerun_schedule],
    sensors=[new_results_sensor, annual_comparison_follow_up, annual_comparison_after_failure],
    resources={
        "warehouse": WarehouseResource(),
        "sampler": SamplerResource(),
        "convergence": ConvergenceResource(),
    },
)
