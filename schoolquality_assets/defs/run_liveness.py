"""A run whose worker died (SIGKILL, out of memory, a reboot) must not block the next run.

What Dagster itself does (warehouse/dagster_home/dagster.yaml, also ./dagster.yaml):
- a run launched by a code server (UI, schedule, sensor, daemon) whose worker process exits
  without ending the run is marked failed by that code server, while the code server lives;
- ``run_monitoring.free_slots_after_run_end_seconds``: the daemon frees the pool slots of a
  finished run, so the next run's Stan step can start;
- ``dagster/max_runtime`` (the jobs' tag): the daemon cancels a run that runs too long.

What stays home-made, and why: Dagster's DefaultRunLauncher cannot tell a dead worker from a
live one (it has no worker health check, and writing one needs Dagster's private
CheckRunHealthResult/WorkerStatus). So a run whose code server died too (``dg dev`` killed, a
reboot), or a ``dg launch`` that was killed (it has no code server), stays STARTED: with one run
at a time it blocks the queue until max_runtime, and its slot blocks the ``stan`` pool. Two
pieces, on public APIs only, end such runs:
- ``dead_run_worker_sensor`` (the daemon, every 30 s) marks every started run whose worker is
  gone as failed; Dagster then frees its slots and starts the next queued run;
- ``schoolquality_executor`` runs ``release_stale_slots`` before any step: it fails the dead runs
  that hold pool slots and frees the slots of finished runs, so ``dg launch`` heals without a
  daemon, on any instance.

A run's worker is the process that logged its RUN_START event (``dg launch`` itself, or the
process a code server starts for the run). It is alive when a process with that pid exists, is
not a zombie and started before RUN_START (so a recycled pid does not count). Pids only mean
something on one machine, so the test runs only when the instance's storage is a local SQLite
file, as this project's instance is; on a shared database it answers "unknown" and nothing is
touched.
"""

from __future__ import annotations

import os

import dagster as dg

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
    starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
    if not starts or starts[-1].dagster_event is None or starts[-1].dagster_event.pid is None:
        return None
    started = process_started_at(starts[-1].dagster_event.pid)
    return started is not None and started <= starts[-1].timestamp + SLACK_SECONDS


def fail_dead_runs(instance: dg.DagsterInstance, run_ids: list[str] | None = None) -> list[str]:
    """Mark failed each started (or canceling) run whose worker is gone, with the reason; returns their ids."""
    if run_ids == []:
        return []
    in_progress = dg.RunsFilter(run_ids=run_ids, statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING])
    failed = []
    for record in instance.get_run_records(filters=in_progress):
        run_id = record.dagster_run.run_id
        if worker_alive(instance, run_id) is not False:
            continue
        run = instance.get_run_by_id(run_id)   # read after the worker test: a worker that ended its run is gone too
        if run is None or run.is_finished:
            continue
        instance.report_run_failed(run, f"Run worker of {run_id} is gone (killed or crashed); marking the run failed.")
        failed.append(run_id)
    return failed


def release_stale_slots(instance: dg.DagsterInstance) -> list[str]:
    """Free pool slots held by finished runs or by runs whose worker died; returns their run ids.

    A run that is still in progress with a dead worker is first marked failed (``fail_dead_runs``);
    each freed run's own log says that its slots were freed.
    """
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = sorted(storage.get_concurrency_run_ids())
    fail_dead_runs(instance, holders)
    released = []
    for run_id in holders:
        run = instance.get_run_by_id(run_id)
        if run is None or not run.is_finished:
            continue
        storage.free_concurrency_slots_for_run(run_id)
        instance.report_engine_event(f"Freed the pool slots still held by this run ({run.status.value}).", run)
        released.append(run_id)
    return released


@dg.sensor(
    name="dead_run_worker_sensor", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed every started run whose worker process is gone (the default run launcher cannot "
    "tell), so it no longer blocks the run queue; the daemon then frees its pool slots.",
)
def dead_run_worker_sensor(context: dg.SensorEvaluationContext):
    """The worker health check the default run launcher lacks (module docstring), as a sensor."""
    failed = fail_dead_runs(context.instance)
    return dg.SkipReason(f"marked failed (worker gone): {failed}" if failed else "no started run with a dead worker")


@dg.executor(
    name="schoolquality_executor",
    config_schema=dg.multiprocess_executor.config_schema,
    requirements=dg.multiple_process_executor_requirements(),
)
def schoolquality_executor(init_context: dg.InitExecutorContext):
    """Dagster's multiprocess executor, after freeing pool slots left by dead runs."""
    release_stale_slots(init_context.instance)
    # Steps forked from a forkserver end with os._exit, which drops what their buffered stdout
    # still holds (the step's last event lines in the terminal); the forkserver inherits this.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return dg.multiprocess_executor.executor_creation_fn(init_context)
