"""A run killed hard never blocks the next one (issue 12 §3).

Each test kills a run that holds the `stan` pool slot, then starts another run that needs the
slot, on an instance configured like warehouse/dagster_home. Without the fix the second run
waits forever ("blocked by limit for pool stan"), so these tests fail by timing out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from schoolquality_assets.defs.run_liveness import (
    dead_run_worker_sensor,
    release_stale_slots,
    worker_alive,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXECUTE = ("import sys, dagster as dg; from schoolquality_assets_tests import liveness_job; "
           "r = dg.execute_job(dg.reconstructable(getattr(liveness_job, sys.argv[1])), "
           "instance=dg.DagsterInstance.get()); sys.exit(0 if r.success else 1)")


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "warehouse" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), SCHOOLQUALITY_LIVENESS_MARKER=str(tmp_path / "holding"),
               PYTHONUNBUFFERED="1")
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=REPO_ROOT, env=env, check=True,
                   capture_output=True)
    return home, env, tmp_path / "holding"


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"{what}: not within {timeout:.0f} s")


def _slot_holders(instance) -> int:
    return len(instance.event_log_storage.get_concurrency_info("stan").claimed_slots)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_slot_holder(env) -> subprocess.Popen:
    """A run (in its own session, so killpg takes its step too) whose step holds the stan slot."""
    return subprocess.Popen([sys.executable, "-c", EXECUTE, "holds_slot"], cwd=REPO_ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _when_holding(home, marker) -> dg.DagsterInstance:
    _wait_for(marker.exists, 120, "the holding run's step started")
    return dg.DagsterInstance.from_config(str(home))


def test_dg_launch_after_a_killed_run_heals_without_a_daemon(home):
    """`dg launch` executes in its own process: SIGKILL it while its step holds the slot."""
    home, env, marker = home
    holder = _start_slot_holder(env)
    try:
        instance = _when_holding(home, marker)
        assert _slot_holders(instance) == 1
        (killed,) = instance.get_runs()
        assert worker_alive(instance, killed.run_id) is True
        os.killpg(holder.pid, signal.SIGKILL)            # the run worker and its step process
        holder.wait(timeout=30)
        killed = instance.get_run_by_id(killed.run_id)
        assert killed.status == dg.DagsterRunStatus.STARTED  # nothing noticed the kill yet
        assert worker_alive(instance, killed.run_id) is False

        started = time.monotonic()
        follower = subprocess.run([sys.executable, "-c", EXECUTE, "needs_slot"], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=180)
        print(f"next run finished {time.monotonic() - started:.1f} s after the kill")
        assert follower.returncode == 0, follower.stderr[-3000:]
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    killed = instance.get_run_by_id(killed.run_id)
    assert killed.status == dg.DagsterRunStatus.FAILURE
    messages = [e.message for e in instance.all_logs(killed.run_id)]
    assert any("Run worker of" in (m or "") and "is gone" in (m or "") for m in messages), messages
    assert any("Freed the pool slots" in (m or "") for m in messages), messages
    assert _slot_holders(instance) == 0


def test_dead_run_worker_sensor_fails_a_run_no_code_server_reports(home):
    """A killed run that no code server watches (a `dg launch`, or a run whose code server died too)
    stays STARTED; the sensor, the health check Dagster's default run launcher lacks, fails it.
    Its slot is then Dagster's to free (free_slots_after_run_end_seconds) or the next run's executor's."""
    home, env, marker = home
    holder = _start_slot_holder(env)
    try:
        instance = _when_holding(home, marker)
        (run,) = instance.get_runs()
        alive = dead_run_worker_sensor(dg.build_sensor_context(instance=instance))
        assert alive.skip_message == "no started run with a dead worker"
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        dead = dead_run_worker_sensor(dg.build_sensor_context(instance=instance))
        assert run.run_id in dead.skip_message
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert any("is gone" in (e.message or "") for e in instance.all_logs(run.run_id))
    assert _slot_holders(instance) == 1
    assert release_stale_slots(instance) == [run.run_id] and _slot_holders(instance) == 0


def _launch(env, workspace: Path, job: str) -> None:
    subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", job], cwd=REPO_ROOT,
                   env=env, check=True, capture_output=True, timeout=120)


def _run_of(instance, job: str):
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job))
    return runs[0] if runs else None


def test_daemon_frees_the_slot_of_a_killed_run_and_starts_the_queued_one(home, tmp_path):
    """Runs queued through the daemon: SIGKILL only the run worker (its step process keeps sleeping).

    Here the code server that started the worker reports its death (Dagster's own). When the code
    server dies too, dead_run_worker_sensor does (tested above). Killing the code
    server in this test would also fail the next launch ("Unexpected error in IPC client").
    That is Dagster's behaviour and is not what is tested here."""
    home, env, marker = home
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text("load_from:\n  - python_module:\n      module_name: schoolquality_assets_tests.liveness_job\n"
                         "      location_name: liveness\n")
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], cwd=REPO_ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    instance = dg.DagsterInstance.from_config(str(home))
    step_pid = None
    try:
        _launch(env, workspace, "holds_slot")
        _wait_for(marker.exists, 180, "the holding run's step started (daemon dequeued it)")
        step_pid = int(marker.read_text())
        holder = _run_of(instance, "holds_slot")
        (start,) = instance.all_logs(holder.run_id, of_type=dg.DagsterEventType.RUN_START)
        worker = start.dagster_event.pid
        assert worker != step_pid and _slot_holders(instance) == 1

        _launch(env, workspace, "needs_slot")
        _kill(worker)
        killed_at = time.monotonic()
        follower = _wait_for(lambda: (r := _run_of(instance, "needs_slot")) and r.is_finished and r, 240,
                             "the queued run finished after the kill", poll=1.0)
        print(f"queued run finished {time.monotonic() - killed_at:.1f} s after the kill")
        assert follower.status == dg.DagsterRunStatus.SUCCESS, [e.message for e in instance.all_logs(follower.run_id)]
        holder = instance.get_run_by_id(holder.run_id)
        assert holder.status == dg.DagsterRunStatus.FAILURE
    finally:
        if step_pid:
            _kill(step_pid)
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()


ORPHAN = """
import sys
from pathlib import Path
from schoolquality_assets.engine import base, sampling
settings = base.SamplerSettings(chains=2, warmup=100, draws=100000, until_converged=False, engine="pystan")
try:
    sampling.sample(Path(sys.argv[1]), {}, settings, progress=lambda line: print(line, flush=True))
except base.SamplingError as exc:
    print("stopped:", exc, flush=True)
    sys.exit(3)
"""


@pytest.mark.stan
def test_a_fit_whose_run_worker_dies_stops_its_chains(tmp_path):
    """The step process (here: a fit) is orphaned when its parent is SIGKILLed; it must not sample on."""
    program = tmp_path / "slow.stan"   # a few ms per iteration: still sampling when its parent dies
    program.write_text("parameters { real x; } model { for (i in 1:20000) x ~ normal(0, 100); }")
    out = tmp_path / "fit.log"
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.Popen(sys.argv[1:]).wait())",
         sys.executable, "-c", ORPHAN, str(program)],
        cwd=REPO_ROOT, stdout=out.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: "iterations/s" in out.read_text() or "sampling" in out.read_text(), 240,
                  "the fit started sampling", poll=1.0)
        fit_pid = next(int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == parent.pid)
        chains = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == fit_pid]
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        _wait_for(lambda: _gone(fit_pid) and all(_gone(c) for c in chains), 30,
                  f"the orphaned fit and its chains exited\n{out.read_text()[-2000:]}")
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
    assert "stopped: the process that started this fit" in out.read_text()


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None


def _gone(pid: int) -> bool:
    with contextlib.suppress(FileNotFoundError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    return True
