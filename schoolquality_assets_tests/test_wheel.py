"""The installed wheel works outside the checkout: the Stan programs come from the package, the
warehouse defaults to ./warehouse in the working directory, and the code version comes from the
package when there is no git checkout."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from schoolquality_assets.ingest import synthetic

pytestmark = pytest.mark.stan
REPO_ROOT = Path(__file__).resolve().parent.parent

PROBE = """
from schoolquality_assets.models import specs
from schoolquality_assets.defs.production import code_version
from schoolquality_assets.warehouse import Warehouse
print("STAN_DIR", specs.STAN_DIR)
print("ROOT", Warehouse.from_env().root)
print("CODE", code_version())
"""


def test_wheel_installed_outside_the_checkout_runs_a_job(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO_ROOT)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("schoolquality-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    # the dependencies come from this test's environment, appended after the new venv's own
    # site-packages (its .pth files, the checkout's editable install among them, are not read)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "work"
    synthetic.write_province(synthetic.generate_province(seed=5, n_schools=20), work / "warehouse" / "raw")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHOOLQUALITY_", "DAGSTER_HOME", "PYTHONPATH"))}
    env |= {"SCHOOLQUALITY_WARMUP": "200"}
    probe = subprocess.run([str(python), "-c", PROBE], cwd=work, env=env, check=True, capture_output=True, text=True)
    found = dict(line.split(" ", 1) for line in probe.stdout.splitlines())
    assert Path(found["STAN_DIR"]).is_relative_to(venv), found
    assert Path(found["ROOT"]) == work / "warehouse"
    assert found["CODE"].startswith("schoolquality 0.1.0 (source "), found

    run = subprocess.run([str(python), "-m", "dagster", "asset", "materialize", "-m", "schoolquality_assets.definitions",
                          "--select", "*posterior_m1", "--partition", "subsample"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert (work / "warehouse" / "posteriors" / "subsample" / "posterior_m1.nc").exists()
    assert (work / "warehouse" / "schoolquality.duckdb").exists()
