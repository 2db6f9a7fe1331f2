"""The code location as the webserver serves it: everything is listed over GraphQL; runs launched
over GraphQL (as the UI's Materialize button) materialize one table of an ingest multi-asset
alone, and the sample's partitioned checks are listed with their partition.

No Stan: only ingest and sample assets are launched.

Run queue: warehouse/dagster_home/dagster.yaml sets ``concurrency: runs: max_concurrent_runs``, which
makes the instance use the QueuedRunCoordinator (the default in Dagster 1.13 anyway). A run launched
through GraphQL (``launchRun``) is only *submitted*: it stays QUEUED until ``dagster-daemon`` dequeues
it. So the test keeps the project's real dagster.yaml (its run and pool limits are part of what is
tested) and starts ``dagster-daemon run`` next to the webserver, as ``dagster dev`` would. The
daemon's other work is harmless here: the schedule and new_results_sensor default to STOPPED, the
two run-status sensors only act on annual production_job runs, and dead_run_worker_sensor only
fails runs whose worker is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import requests

from schoolquality_assets.ingest import synthetic

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOCATION = "schoolquality"
REPOSITORY = "__repository__"

ASSETS = {
    "raw_observations", "rejected_observations", "cleaned_observations", "eligible_schools", "analysis_sample",
    "posterior_m0", "posterior_m1", "posterior_m2", "posterior_m3", "shrinkage", "variance_components",
    "school_sd_by_model", "school_random_effects", "loo_comparison", "mcmc_diagnostics",
    "frequentist_comparison", "report", "g3_school_quality",
    "synthetic_truth", "valid_observations", "filtered_observations", "landing_files", "shrinkage_by_band",
    "school_rankings", "schools", "publisher_aggregates", "posterior_predictive_checks", "holdout_validation",
}
CHECKS = {
    ("cleaned_observations", "participation_at_least_half"),
    ("analysis_sample", "sample_schools_eligible"),
    ("analysis_sample", "sample_size_as_configured"),
    ("g3_school_quality", "matches_eligible_schools"),
    *((f"posterior_{m}", c) for m in ("m0", "m1", "m2", "m3") for c in ("rhat", "no_divergences", "ess", "bfmi")),
}

REPOSITORY_QUERY = """
query SchoolqualityRepository($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    __typename
    ... on Repository {
      name
      location { name }
      jobs { name }
      schedules { name cronSchedule }
      sensors { name }
      assetNodes {
        assetKey { path }
        isObservable
        internalFreshnessPolicy {
          __typename
          ... on CronFreshnessPolicy { deadlineCron lowerBoundDeltaSeconds timezone }
        }
        assetChecksOrError {
          __typename
          ... on AssetChecks { checks { name blocking } }
        }
      }
    }
    ... on PythonError { message stack }
    ... on RepositoryNotFoundError { message }
  }
}
"""

LOCATION_STATUS_QUERY = """
query LocationStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
        }
      }
    }
  }
}
"""

LAUNCH_MUTATION = """
mutation LaunchAssets($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
    ... on Error { message }
  }
}
"""

RUN_QUERY = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      assetSelection { path }
      eventConnection(afterCursor: null) {
        events {
          __typename
          ... on MessageEvent { message level stepKey }
        }
      }
    }
    ... on PythonError { message }
    ... on RunNotFoundError { message }
  }
}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group this test started (the server and its code-server children)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Server:
    def __init__(self, url: str, logs: dict[str, Path], procs: dict[str, subprocess.Popen]):
        self.url, self.logs, self.procs = url, logs, procs

    def diagnostics(self) -> str:
        parts = []
        for name, path in self.logs.items():
            proc = self.procs.get(name.split(".")[0])
            state = "running" if proc and proc.poll() is None else f"exited {proc.poll() if proc else '?'}"
            parts.append(f"----- {name} ({state}) -----\n{_tail(path)}")
        return "\n".join(parts)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        resp = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
        assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text[:2000]}\n{self.diagnostics()}"
        body = resp.json()
        assert not body.get("errors"), f"GraphQL errors: {body['errors']}\n{self.diagnostics()}"
        return body["data"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Temporary DAGSTER_HOME + warehouse with a tiny landed province; webserver and daemon running."""
    base = tmp_path_factory.mktemp("webserver")
    home, warehouse, logs_dir = base / "dagster_home", base / "warehouse", base / "logs"
    for d in (home, warehouse, logs_dir):
        d.mkdir()
    shutil.copy(REPO_ROOT / "warehouse" / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    province = synthetic.generate_province(seed=3, n_schools=30)
    synthetic.write_province(province, warehouse / "raw")

    env = dict(os.environ, DAGSTER_HOME=str(home), SCHOOLQUALITY_WAREHOUSE=str(warehouse), PYTHONUNBUFFERED="1")
    port = _free_port()
    workspace = str(REPO_ROOT / "workspace.yaml")
    commands = {
        "webserver": [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(port)],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", workspace],
    }
    # Create the instance's SQLite storage once, before two processes race to create it
    # ("table alembic_version already exists", seen on a clean CI run).
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=REPO_ROOT, env=env, check=True,
                   capture_output=True)
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    handles = []
    try:
        for name, cmd in commands.items():
            out, err = logs_dir / f"{name}.stdout", logs_dir / f"{name}.stderr"
            logs[f"{name}.stdout"], logs[f"{name}.stderr"] = out, err
            fo, fe = out.open("w"), err.open("w")
            handles += [fo, fe]
            # own session so teardown can signal exactly this process group (server + code servers)
            procs[name] = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=fo, stderr=fe, start_new_session=True)
        server = Server(f"http://127.0.0.1:{port}", logs, procs)

        deadline = time.monotonic() + 90
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode} during startup\n{server.diagnostics()}")
            try:
                if requests.get(f"{server.url}/server_info", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"webserver not up after 90 s\n{server.diagnostics()}")
            time.sleep(1)

        # the code location loads in its own gRPC server; wait until it reports LOADED
        while True:
            entries = server.graphql(LOCATION_STATUS_QUERY)["workspaceOrError"]["locationEntries"]
            entry = next((e for e in entries if e["name"] == LOCATION), None)
            if entry and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"]
                assert error["__typename"] == "RepositoryLocation", f"{error}\n{server.diagnostics()}"
                break
            if time.monotonic() > deadline:
                pytest.fail(f"code location {LOCATION!r} not loaded after 90 s: {entries}\n{server.diagnostics()}")
            time.sleep(1)

        server.warehouse = warehouse
        server.province_rows = province.observations.height
        yield server
    finally:
        for proc in procs.values():
            _stop(proc)
        for handle in handles:
            handle.close()


def test_webserver_lists_assets_checks_jobs_schedule_sensor(stack):
    data = stack.graphql(REPOSITORY_QUERY, {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}})
    repo = data["repositoryOrError"]
    assert repo["__typename"] == "Repository", f"{repo}\n{stack.diagnostics()}"
    assert repo["location"]["name"] == LOCATION

    nodes = repo["assetNodes"]
    keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
    assert keys == ASSETS

    checks = set()
    for node in nodes:
        result = node["assetChecksOrError"]
        assert result["__typename"] == "AssetChecks", result
        checks |= {("/".join(node["assetKey"]["path"]), c["name"]) for c in result["checks"]}
    missing = CHECKS - checks
    assert not missing, f"asset checks missing from the webserver: {sorted(missing)}"

    assert {"comparison_job", "production_job", "landing_observation_job"} <= {j["name"] for j in repo["jobs"]}
    schedules = {s["name"]: s["cronSchedule"] for s in repo["schedules"]}
    assert schedules.get("annual_rerun_schedule") == "0 6 15 9 *"
    assert {"new_results_sensor", "dead_run_worker_sensor"} <= {s["name"] for s in repo["sensors"]}

    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert [k for k, n in by_key.items() if n["isObservable"]] == ["landing_files"]   # the UI's Observe button
    assert by_key["g3_school_quality"]["internalFreshnessPolicy"] == {
        "__typename": "CronFreshnessPolicy", "deadlineCron": "0 6 1 10 *", "lowerBoundDeltaSeconds": 16 * 86400,
        "timezone": "America/Toronto"}


CHECK_EXECUTIONS_QUERY = """
query CheckExecutions($assetKey: AssetKeyInput!, $checkName: String!, $partition: String) {
  assetCheckExecutions(assetKey: $assetKey, checkName: $checkName, limit: 10, partition: $partition) {
    runId
    status
    partition
  }
}
"""


def _launch(stack, assets: tuple[str, ...], partition: str | None = None) -> dict:
    """Launch the assets as the UI's Materialize button does; wait for the run to end."""
    params = {
        "selector": {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": [k]} for k in assets],
        },
        "mode": "default",
        "runConfigData": {},
    }
    if partition:
        params["executionMetadata"] = {"tags": [{"key": "dagster/partition", "value": partition}]}
    launched = stack.graphql(LAUNCH_MUTATION, {"executionParams": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", f"{launched}\n{stack.diagnostics()}"
    run_id = launched["run"]["runId"]

    # QUEUED -> (daemon dequeues) STARTING -> STARTED -> SUCCESS
    deadline, seen = time.monotonic() + 120, []
    while True:
        run = stack.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        status = run["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("SUCCESS", "FAILURE", "CANCELED") or time.monotonic() > deadline:
            break
        time.sleep(1)
    events = "\n".join(
        f"{e['__typename']} {e.get('stepKey') or ''}: {e.get('message', '')}" for e in run["eventConnection"]["events"]
    )
    assert status == "SUCCESS", f"run {run_id} ended {status} (seen {seen})\n{events}\n{stack.diagnostics()}"
    assert {"/".join(a["path"]) for a in run["assetSelection"]} == set(assets)
    return {"run_id": run_id, "seen": seen}


def _tables(stack) -> set[str]:
    con = duckdb.connect(str(stack.warehouse / "schoolquality.duckdb"), read_only=True)
    try:
        return {r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()}
    finally:
        con.close()


def test_launch_one_table_of_a_multi_asset_through_graphql(stack):
    """Materialize on one table of an ingest multi-asset, as a click in the UI does: it runs, and
    writes only that table."""
    run = _launch(stack, ("raw_observations",))
    print(f"run {run['run_id']}: statuses {run['seen']}")
    assert _tables(stack) == {"raw_observations"}
    _launch(stack, ("valid_observations",))
    assert _tables(stack) == {"raw_observations", "valid_observations"}   # not its twin rejected_observations


def test_check_executions_carry_their_partition_over_graphql(stack):
    """The check page of a partitioned asset lists each evaluation with its partition."""
    _launch(stack, ("cleaned_observations", "eligible_schools", "analysis_sample"), partition="subsample")
    key = {"path": ["analysis_sample"]}
    executions = stack.graphql(CHECK_EXECUTIONS_QUERY, {"assetKey": key, "checkName": "sample_schools_eligible",
                                                       "partition": "subsample"})["assetCheckExecutions"]
    assert [(e["partition"], e["status"]) for e in executions] == [("subsample", "SUCCEEDED")]
    none_on_full = stack.graphql(CHECK_EXECUTIONS_QUERY, {"assetKey": key, "checkName": "sample_schools_eligible",
                                                         "partition": "full"})["assetCheckExecutions"]
    assert none_on_full == []


STALE_QUERY = """
query Stale($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    staleStatus
    staleCauses { key { path } reason dependency { path } }
  }
}
"""


def _stale(stack, asset: str) -> dict:
    (node,) = stack.graphql(STALE_QUERY, {"keys": [{"path": [asset]}]})["assetNodes"]
    return node


def test_new_landing_content_observed_marks_raw_observations_stale(stack):
    """Observe landing_files (as the UI's Observe button), materialize raw_observations: fresh. A
    file changes and landing_files is observed again: the UI shows raw_observations stale, because
    of landing_files. (Last in this module: it changes the landing folder.)"""
    _launch(stack, ("landing_files",))
    _launch(stack, ("raw_observations",))
    assert _stale(stack, "raw_observations")["staleStatus"] == "FRESH"
    (stack.warehouse / "raw" / "late_delivery.csv").write_text(
        "school_id,year,subject,n_eligible,n_participating,n_l3l4\nLATE,2024,math,10,9,4\n")
    _launch(stack, ("landing_files",))
    node = _stale(stack, "raw_observations")
    assert node["staleStatus"] == "STALE", node
    assert {"key": {"path": ["landing_files"]}, "reason": "has a new data version", "dependency": None} in node["staleCauses"]
