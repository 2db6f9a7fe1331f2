"""The code location's executor keeps Stan steps from sampling at once, on an empty instance."""

import dagster as dg
import pytest

from schoolquality_assets.definitions import ASSETS, CHECKS
from schoolquality_assets.defs.resources import (
    ConvergenceResource,
    SamplerResource,
    WarehouseResource,
)
from schoolquality_assets.ingest import synthetic

from . import executor_job

pytestmark = pytest.mark.stan


def test_two_stan_assets_in_one_run_never_sample_at_once(tmp_path, monkeypatch):
    synthetic.write_province(synthetic.generate_province(seed=21, n_schools=40), tmp_path / "raw")
    monkeypatch.setenv("SCHOOLQUALITY_WAREHOUSE", str(tmp_path))
    monkeypatch.setenv("SCHOOLQUALITY_WARMUP", "200")
    resources = {"warehouse": WarehouseResource(root=str(tmp_path)), "sampler": SamplerResource(),
                 "convergence": ConvergenceResource()}
    upstream = (dg.AssetSelection.groups("ingest") | dg.AssetSelection.assets("analysis_sample"))
    assert dg.materialize([*ASSETS, *CHECKS], resources=resources, partition_key="subsample", selection=upstream).success

    with dg.instance_for_test() as instance:   # empty instance: no run or pool limits of its own
        result = dg.execute_job(dg.reconstructable(executor_job.two_models_job), instance=instance,
                                tags={"dagster/partition": "subsample"})
        assert result.success
        spans = {}
        for event in instance.all_logs(result.run_id):
            dagster_event = event.dagster_event
            if dagster_event is None or not (event.step_key or "").startswith("posterior_"):
                continue
            if dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS"):
                spans.setdefault(event.step_key, {})[dagster_event.event_type_value] = event.timestamp
    (a, b) = sorted(spans.values(), key=lambda s: s["STEP_START"])
    assert b["STEP_START"] >= a["STEP_SUCCESS"], spans        # the second started after the first ended
