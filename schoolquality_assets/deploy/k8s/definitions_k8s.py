"""The schoolquality code location on Kubernetes: the project's definitions, with dagster-k8s's
``k8s_job_executor`` (every step in its own pod) in place of the local multiprocess executor.

A run's config cannot change a job's executor, only configure it, so the swap is made here. The
code server in the image loads this file (values.yaml: ``dagsterApiGrpcArgs``, ``--python-file``)
and needs ``dagster-k8s`` (the Dockerfile installs it; the project itself does not depend on it).

The executor's defaults are ``executor.yaml`` next to this file, so runs started by the schedule
and the sensors, which carry no run config, get them too. A run's own ``execution: config:``
(the launchpad's config editor) is laid over the defaults key by key, and
``per_step_k8s_config`` step by step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster_k8s import k8s_job_executor

from schoolquality_assets import definitions as local

EXECUTOR_YAML = Path(__file__).with_name("executor.yaml")
DEFAULTS: dict[str, Any] = yaml.safe_load(EXECUTOR_YAML.read_text())["execution"]["config"]


def with_defaults(run_config: dict[str, Any]) -> dict[str, Any]:
    """``executor.yaml`` with the run's own executor config laid over it."""
    merged = {**DEFAULTS, **run_config}
    merged["per_step_k8s_config"] = {
        **DEFAULTS.get("per_step_k8s_config", {}),
        **(run_config.get("per_step_k8s_config") or {}),
    }
    return merged


# The run's executor config is accepted as given (no defaults filled in, which would hide the ones
# in executor.yaml) and checked against the k8s executor's own schema once merged: a wrong key or
# value still fails the run config's validation (in the launchpad, or when the run is submitted),
# naming the key.
K8S_EXECUTOR = k8s_job_executor.configured(
    with_defaults,
    name="schoolquality_k8s",
    config_schema=dg.Permissive(),
)

defs = dg.Definitions(
    assets=local.defs.assets,
    asset_checks=local.defs.asset_checks,
    jobs=local.defs.jobs,
    schedules=local.defs.schedules,
    sensors=local.defs.sensors,
    resources=local.defs.resources,
    executor=K8S_EXECUTOR,
)
