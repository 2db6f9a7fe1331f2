"""A run whose worker died (SIGKILL, out of memory, a reboot) must not keep the `stan` pool slot.

A run's worker is the process that logged its RUN_START event (``dg launch`` itself, or the
process the code server starts for a run launched from the UI or the daemon). It is alive
when a process with that pid exists, is not a zombie and started before RUN_START (so a
recycled pid does not count).

Two things use that test:
- ``LivenessRunLauncher`` (the instance's run launcher in ``warehouse/dagster_home``) answers
  the daemon's run monitoring. A STARTED run whose worker is gone is marked failed. The daemon
  then frees its pool slots (``run_monitoring.free_slots_after_run_end_seconds``) and dequeues
  the next run.
- ``schoolquality_executor`` (the code location's executor) runs ``release_stale_slots`` before
  any step. It frees the slots of finished runs and of runs whose worker is dead. So
  ``dg launch`` heals without a daemon, on any instance.

Pids only mean something on one machine. The test therefore runs only when the instance's
storage is a local SQLite file, as this project's instance is. On a shared database it answers
"unknown", and nothing is touched.
"""

from __future__ import annotations

import os
import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES, DagsterRunStatus

SLACK_SECONDS = 2.0  # clock granularity between a process's start time and its first event


def _boot_time() -> float:
    with open("/proc/stat") as f:
        return float(next(line for line in f if line.startswith("btime")).split()[1])


def process_started_at(pid: int) -> float | None:
    """Epoch seconds at which ``pid`` started; None if it is gone or a zombie.

    On Linux this comes from /proc. Elsewhere the start time is unknown (0.0), and the process
    is checked for existence with signal 0.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    if fields[0] in ("Z", "X"):  # state: zombie or dead
        return None
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime


def _local_instance(instance: dg.DagsterInstance) -> bool:
    storage = type(instance.event_log_storage).__name__
    return "Sqlite" in storage


def worker_alive(instance: dg.DagsterInstance, run_id: str) -> bool | None:
    """True / False for the run's worker; None when that cannot be told (not started, remote)."""
    if not _local_instance(instance):
        return None
    starts = instance.all_logs(run_id, of_type=DagsterEventType.RUN_START)
    if not starts or starts[-1].dagster_event is None or starts[-1].dagster_event.pid is None:
        return None
    started = process_started_at(starts[-1].dagster_event.pid)
    return started is not None and started <= starts[-1].timestamp + SLACK_SECONDS


def release_stale_slots(instance: dg.DagsterInstance) -> list[str]:
    """Free pool slots held by finished runs or by runs whose worker died; returns their run ids.

    A run that is still in progress with a dead worker is first marked failed, with the reason;
    each freed run's own log says that its slots were freed.
    """
    released = []
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return released
    for run_id in sorted(storage.get_concurrency_run_ids()):
        run = instance.get_run_by_id(run_id)
        if run is None:
            continue
        if run.status not in FINISHED_STATUSES:
            if run.status not in (DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING):
                continue
            if worker_alive(instance, run_id) is not False:
                continue
            message = (f"Run worker of {run_id} is gone (killed or crashed); "
                       "marking the run failed and freeing its pool slots.")
            instance.report_run_failed(run, message)
            run = instance.get_run_by_id(run_id)
        storage.free_concurrency_slots_for_run(run_id)
        instance.report_engine_event(f"Freed the pool slots still held by this run ({run.status.value}).", run)
        released.append(run_id)
    return released


class LivenessRunLauncher(dg.DefaultRunLauncher):
    """The default run launcher, plus the worker health check that run monitoring needs."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        alive = worker_alive(self._instance, run.run_id)
        if alive is False:
            return CheckRunHealthResult(WorkerStatus.FAILED, "run worker process is gone")
        # alive, or cannot tell (not started yet, or a shared instance): leave the run alone
        return CheckRunHealthResult(WorkerStatus.RUNNING, None if alive else "worker state unknown")


@dg.executor(
    name="schoolquality_executor",
    config_schema=dg.multiprocess_executor.config_schema,
    requirements=dg.multiple_process_executor_requirements(),
)
def schoolquality_executor(init_context: dg.InitExecutorContext):
    """Dagster's multiprocess executor, after freeing pool slots left by dead runs."""
    release_stale_slots(init_context.instance)
    return dg.multiprocess_executor.executor_creation_fn(init_context)
