"""A job of two Stan assets under the code location's own executor (for test_executor.py)."""

import dagster as dg

from schoolquality_assets.definitions import ASSETS, CHECKS, EXECUTOR
from schoolquality_assets.defs.resources import (
    ConvergenceResource,
    SamplerResource,
    WarehouseResource,
)


def two_models_job():
    job = dg.define_asset_job("two_models", selection=dg.AssetSelection.assets("posterior_m0", "posterior_m1"))
    defs = dg.Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[job], executor=EXECUTOR, resources={
        "warehouse": WarehouseResource(), "sampler": SamplerResource(), "convergence": ConvergenceResource()})
    return defs.resolve_job_def("two_models")
