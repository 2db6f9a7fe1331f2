"""The code location on dagster-celery, for real: redis-server on 127.0.0.1 and two Celery workers
started here, then `dagster job execute` of schoolquality_assets.deploy.celery_location's
comparison_job on a tiny province, with the repo's instance and worker configuration. Every step
runs in a worker, the Stan steps one at a time (the instance's "stan" pool), and the posteriors and
the published table equal an in-process run's (same seed)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from schoolquality_assets.ingest import synthetic
from schoolquality_assets.models import specs
from schoolquality_assets.warehouse import Warehouse

pytestmark = pytest.mark.stan
pytest.importorskip("dagster_celery", reason="dagster-celery is not installed (.ci/setup installs it)")
redis = pytest.importorskip("redis", reason="the redis client is not installed (.ci/setup installs it)")
if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (.ci/setup installs Debian's redis-server)", allow_module_level=True)

REPO_ROOT = Path(__file__).parents[1]
DEPLOY = REPO_ROOT / "schoolquality_assets" / "deploy"
BIN = Path(sys.executable).parent
MODELS = ("m0", "m1", "m2", "m3")
E = dg.DagsterEventType


def _run_config(root: Path) -> dict:
    # test_pipeline's settings: every posterior passes its gate on this province
    return {"resources": {"warehouse": {"config": {"root": str(root), "subsample_size": 25}},
                          "sampler": {"config": {"chains": 4, "warmup": 300, "seed": 11}}}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, seconds: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


def _stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM (a Celery worker's warm shutdown) to the process group, then SIGKILL."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def celery_cluster(tmp_path):
    """redis-server on a free port of 127.0.0.1 and two workers of concurrency 1 on the `dagster`
    queue, with an instance (DAGSTER_HOME) configured by deploy/celery_dagster.yaml."""
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "celery_dagster.yaml", home / "dagster.yaml")
    env = os.environ | {
        "DAGSTER_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SCHOOLQUALITY_CELERY_BROKER": f"redis://127.0.0.1:{port}/0",
        "SCHOOLQUALITY_CELERY_BACKEND": f"redis://127.0.0.1:{port}/1",
    }
    procs = []
    try:
        server = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                   "--appendonly", "no", "--dir", str(tmp_path)],
                                  stdout=(tmp_path / "redis.log").open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        procs.append(server)
        client = redis.Redis(host="127.0.0.1", port=port)
        _wait_for(lambda: _pings(client), 30, "redis-server")
        from dagster_celery.make_app import make_app

        app = make_app({"broker": env["SCHOOLQUALITY_CELERY_BROKER"], "backend": env["SCHOOLQUALITY_CELERY_BACKEND"]})
        for n, name in enumerate(("worker1", "worker2"), 1):  # one by one: each creates the instance's storage if new
            procs.append(subprocess.Popen(
                [BIN / "dagster-celery", "worker", "start", "-A", "dagster_celery.app",
                 "-y", DEPLOY / "celery_worker.yaml", "-q", "dagster", "-n", name, "--", "--concurrency=1"],
                cwd=REPO_ROOT, env=env, stdout=(tmp_path / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                start_new_session=True))
            _wait_for(lambda: len(app.control.ping(timeout=1.0)) == n, 120, f"Celery worker {name}", poll=1.0)
        yield env, home, procs[1:]
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_comparison_job_on_celery_workers_matches_an_in_process_run(celery_cluster, tmp_path):
    env, home, workers = celery_cluster
    province = synthetic.generate_province(seed=5, n_schools=45)
    roots = {"celery": tmp_path / "wh_celery", "in_process": tmp_path / "wh_in_process"}
    for root in roots.values():
        synthetic.write_province(province, root / "raw")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_run_config(roots["celery"])))

    start = time.monotonic()
    events = execute_on_celery(env, home, tmp_path, roots["celery"], "job", "execute", "-j", "comparison_job",
                               "--tags", json.dumps({"dagster/partition": "subsample"}), "-c", str(config))
    print(f"comparison_job on Celery: {time.monotonic() - start:.0f} s")
    where = steps_ran_in_workers(events, workers)
    posteriors = sorted(k for k in where if re.fullmatch(r"posterior_m\d", k))
    assert posteriors == [f"posterior_{m}" for m in MODELS]
    assert len(set(where.values())) == 2, where      # both workers took steps
    # the stan pool: no Stan step (the posteriors and the held-out fits) started before the previous one ended
    stan = posteriors + ["holdout_validation"]
    assert "holdout_validation" in where
    spans = sorted((min(t for k, ev, t in events if k == key and ev.event_type == E.STEP_START),
                    max(t for k, ev, t in events if k == key and ev.event_type == E.STEP_SUCCESS), key)
                   for key in stan)
    print("Stan steps (start, end, step, worker):", [(round(a - spans[0][0], 1), round(b - spans[0][0], 1), k, where[k])
                                                     for a, b, k in spans])
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        assert begin >= end, f"{second} started before {first} ended: {spans}"

    # the same job in this process (in-process executor), same data and seed: the same numbers
    from schoolquality_assets.definitions import defs
    start = time.monotonic()
    result = defs.resolve_job_def("comparison_job").execute_in_process(
        run_config=_run_config(roots["in_process"]), partition_key="subsample", instance=dg.DagsterInstance.ephemeral())
    print(f"comparison_job in process: {time.monotonic() - start:.0f} s")
    assert result.success
    celery_wh, local_wh = (Warehouse.from_env(roots[k]) for k in ("celery", "in_process"))
    for m in MODELS:
        a, b = (specs.load_posterior(wh.posterior_path(m, "subsample")) for wh in (celery_wh, local_wh))
        for name in b.posterior.data_vars:
            np.testing.assert_array_equal(a.posterior[name].values, b.posterior[name].values, err_msg=f"{m} {name}")
    a, b = (pl.read_parquet(wh.output_path("subsample")) for wh in (celery_wh, local_wh))
    assert a.height == 25 and a.equals(b)


def execute_on_celery(env, home: Path, tmp_path: Path, root: Path, *command: str) -> list:
    """``dagster COMMAND -m schoolquality_assets.deploy.celery_location`` (its run must succeed);
    (step key, event, timestamp) of the run's Dagster events."""
    log = tmp_path / "launcher.log"
    launcher = subprocess.run([BIN / "dagster", *command, "-m", "schoolquality_assets.deploy.celery_location"],
                              cwd=REPO_ROOT, env=env | {"SCHOOLQUALITY_WAREHOUSE": str(root)},
                              stdout=log.open("w"), stderr=subprocess.STDOUT, timeout=2400)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS and launcher.returncode == 0, log.read_text()[-5000:]
        return [(e.step_key, e.dagster_event, e.timestamp) for e in instance.all_logs(run.run_id) if e.dagster_event]


def steps_ran_in_workers(events: list, workers: list[subprocess.Popen]) -> dict[str, str]:
    """Every step of the run executed in a worker: the worker's name in the step's engine event,
    the step's pid a process of a worker's pool (not the launching process). Step -> worker."""
    (run_start,) = [ev for _, ev, _ in events if ev.event_type == E.RUN_START]
    where = {key: ev.engine_event_data.metadata["Celery worker"].value for key, ev, _ in events
             if key and ev.event_type == E.ENGINE_EVENT and "in celery worker" in (ev.message or "")}
    steps = {key for key, ev, _ in events if ev.event_type == E.STEP_SUCCESS}
    assert steps and set(where) == steps, (steps, where)
    assert {w.split("@")[0] for w in where.values()} <= {"worker1", "worker2"}, where
    pools = {child for w in workers for child in _children(w.pid)}     # each worker's `celery worker` process
    pids = {key: ev.pid for key, ev, _ in events if ev.event_type == E.STEP_START}
    for key in steps:
        assert pids[key] not in (run_start.pid, os.getpid()) and _ppid(pids[key]) in pools, (key, pids[key], pools)
    print("steps per worker:", {w: sorted(k for k in where if where[k] == w) for w in sorted(set(where.values()))})
    return where


def _children(pid: int) -> list[int]:
    return [int(p) for p in filter(str.isdigit, os.listdir("/proc")) if _ppid(int(p)) == pid]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None
