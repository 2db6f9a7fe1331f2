"""Two jobs in the `stan` pool under the code location's executor (for test_liveness.py).

``holds_slot`` claims the pool, writes its step's pid to $SCHOOLQUALITY_LIVENESS_MARKER and
waits to be killed; ``needs_slot`` claims the pool and finishes at once.
"""

import os
import time
from pathlib import Path

import dagster as dg

from schoolquality_assets.definitions import EXECUTOR
from schoolquality_assets.defs.run_liveness import dead_run_worker_sensor


@dg.op(pool="stan")
def hold_stan_slot():
    Path(os.environ["SCHOOLQUALITY_LIVENESS_MARKER"]).write_text(str(os.getpid()))
    time.sleep(900)


@dg.op(pool="stan")
def use_stan_slot():
    return "done"


@dg.job(executor_def=EXECUTOR)
def holds_slot():
    hold_stan_slot()


@dg.job(executor_def=EXECUTOR)
def needs_slot():
    use_stan_slot()


defs = dg.Definitions(jobs=[holds_slot, needs_slot], sensors=[dead_run_worker_sensor])
