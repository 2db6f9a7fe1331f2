"""The Dagster code location loaded by workspace.yaml."""

import dagster as dg

from schoolquality_assets.defs import posteriors
from schoolquality_assets.defs.assets import ASSETS, CHECKS
from schoolquality_assets.defs.orchestration import (
    annual_comparison_after_failure,
    annual_comparison_follow_up,
    annual_rerun_schedule,
    comparison_job,
    landing_observation_job,
    new_results_sensor,
    production_job,
)
from schoolquality_assets.defs.resources import default_resources
from schoolquality_assets.defs.run_liveness import dead_run_worker_sensor, schoolquality_executor

# Whatever instance runs the code (a fresh DAGSTER_HOME included): at most one Stan step at a
# time (each samples 4 chains on the machine's cores), and at most two steps of any kind. Before
# any step, pool slots left by dead runs are freed; dead_run_worker_sensor fails runs whose worker
# died (run_liveness).
# Steps start from a forkserver that has imported the code location once, not as fresh interpreters
# that each import dagster, polars, arviz and the project again (benchmarks/README.md: step start-up).
EXECUTOR = schoolquality_executor.configured({
    "max_concurrent": 2,
    "tag_concurrency_limits": [{"key": posteriors.STAN_TAG, "value": "true", "limit": 1}],
    "start_method": {"forkserver": {"preload_modules": ["schoolquality_assets.definitions"]}},
})

defs = dg.Definitions(
    assets=ASSETS,
    executor=EXECUTOR,
    asset_checks=CHECKS,
    jobs=[comparison_job, production_job, landing_observation_job],
    schedules=[annual_rerun_schedule],
    sensors=[new_results_sensor, annual_comparison_follow_up, annual_comparison_after_failure, dead_run_worker_sensor],
    resources=default_resources(),
)
