"""Faults: a run killed mid-sampling, two runs at once, a failed convergence gate."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from schoolquality_assets.definitions import ASSETS, CHECKS
from schoolquality_assets.defs.resources import (
    ConvergenceResource,
    SamplerResource,
    WarehouseResource,
)
from schoolquality_assets.ingest import synthetic
from schoolquality_assets.models import specs
from schoolquality_assets.warehouse import Warehouse

REPO = Path(__file__).resolve().parent.parent
DATA = "raw_observations,synthetic_truth,rejected_observations,valid_observations,cleaned_observations,filtered_observations,eligible_schools"


def _cli(root: Path, select: str, partition: str | None = None, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "schoolquality_assets.definitions",
           "--select", select]
    if partition:
        cmd += ["--partition", partition]
    environment = os.environ | {"SCHOOLQUALITY_WAREHOUSE": str(root), "DAGSTER_HOME": str(root / "dagster_home")} | env
    (root / "dagster_home").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _posterior_written(proc: subprocess.Popen, timeout=600) -> str:
    """The fit sampled until its gate held and wrote its posterior."""
    out, _ = proc.communicate(timeout=timeout)
    assert "ASSET_MATERIALIZATION" in out and "posterior_m2" in out, out[-3000:]
    return out


@pytest.fixture()
def province_root(tmp_path):
    synthetic.write_province(synthetic.generate_province(seed=12, n_schools=60), tmp_path / "raw")
    return tmp_path


def test_two_runs_at_once_both_finish_and_database_is_sound(province_root):
    _finish(_cli(province_root, DATA))
    runs = [_cli(province_root, "analysis_sample", p) for p in ("subsample", "full")]
    for proc in runs:
        _finish(proc)     # one waits for DuckDB's writer lock, neither fails
    sample = Warehouse.from_env(province_root).read_table("analysis_sample")
    counts = dict(sample.group_by("partition").agg(pl.col("school_id").n_unique()).iter_rows())
    eligible = Warehouse.from_env(province_root).read_table("eligible_schools").height
    assert counts == {"full": eligible, "subsample": min(500, eligible)}
    assert sample.filter(pl.struct("partition", "school_id", "year", "subject").is_duplicated()).height == 0


@pytest.mark.stan
def test_run_killed_mid_sampling_keeps_previous_output_and_rerun_matches(province_root):
    settings = {"SCHOOLQUALITY_CHAINS": "2", "SCHOOLQUALITY_WARMUP": "300", "SCHOOLQUALITY_SEED": "5"}
    _finish(_cli(province_root, DATA))
    _finish(_cli(province_root, "analysis_sample", "subsample"))
    _posterior_written(_cli(province_root, "posterior_m2", "subsample", **settings))
    path = province_root / "posteriors" / "subsample" / "posterior_m2.nc"
    before = path.read_bytes()
    reference = specs.load_posterior(path).posterior["r_school"].values

    long = settings | {"SCHOOLQUALITY_WARMUP": "5000000"}   # still warming up at the first heartbeat
    proc = _cli(province_root, "posterior_m2", "subsample", **long)
    deadline = time.monotonic() + 300
    for line in proc.stdout:                       # wait until the chains are sampling (first heartbeat)
        if "iterations/s per chain" in line or time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == before             # the previous posterior is untouched and readable
    assert not [p for p in path.parent.iterdir() if p.name != path.name]   # no half-written file beside it
    specs.load_posterior(path)

    _posterior_written(_cli(province_root, "posterior_m2", "subsample", **settings))
    np.testing.assert_array_equal(specs.load_posterior(path).posterior["r_school"].values, reference)


@pytest.mark.stan
def test_failed_gate_keeps_previous_production_file(province_root):
    resources = {
        "warehouse": WarehouseResource(root=str(province_root), subsample_size=30),
        "sampler": SamplerResource(chains=4, warmup=300, seed=3),
        "convergence": ConvergenceResource(),
    }
    everything = [*ASSETS, *CHECKS]
    upstream = dg.AssetSelection.groups("ingest") | dg.AssetSelection.assets("analysis_sample")
    good = dg.materialize(everything, resources=resources, partition_key="subsample",
                          selection=upstream | dg.AssetSelection.assets("posterior_m2", "g3_school_quality"))
    assert good.success
    target = Warehouse.from_env(province_root).outputs_dir / "dry_run" / "g3_school_quality_subsample.parquet"
    before = target.read_bytes()
    assert pq.read_schema(target).metadata[b"model"].startswith(b"M2")

    resources["sampler"] = SamplerResource(chains=4, warmup=20, seed=3, min_draws=20, check_every=20, max_draws=20)
    bad = dg.materialize(everything, resources=resources, partition_key="subsample",
                         selection=dg.AssetSelection.assets("posterior_m2", "g3_school_quality"), raise_on_error=False)
    assert not bad.success
    assert "g3_school_quality" not in {e.asset_key.to_user_string() for e in bad.get_asset_materialization_events()}
    assert target.read_bytes() == before
    # Materializing g3_school_quality on its own refuses the unconverged posterior too.
    alone = dg.materialize(everything, resources=resources, partition_key="subsample",
                           selection=dg.AssetSelection.assets("g3_school_quality"), raise_on_error=False)
    assert not alone.success
    assert target.read_bytes() == before
