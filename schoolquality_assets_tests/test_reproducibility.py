"""Same seed, same data, same numbers on any machine: a fit under two OpenBLAS core types (which
give different bits for the same matrix product here) stops at the same draw with bit-identical
draws, because no floating-point path of the densities goes through BLAS."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIT = """
import ctypes, glob, hashlib, json, os
import numpy as np
from schoolquality_assets.engine.base import SamplerSettings
from schoolquality_assets.ingest import synthetic
from schoolquality_assets.models import specs
from schoolquality_assets_tests.conftest import province_sample

lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libscipy_openblas*.so"))[0])
lib.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
rng = np.random.default_rng(0)
product = rng.normal(size=(2000, 23)) @ rng.normal(size=23)   # BLAS: its bits depend on the core type
sample = province_sample(synthetic.generate_province(seed=3, n_schools=90))
idata = specs.fit(specs.MODELS["m2"], sample, SamplerSettings(seed=11), progress=lambda m: None)
post = idata.posterior
print(json.dumps({
    "core": lib.scipy_openblas_get_corename64_().decode(),
    "blas_product": hashlib.sha256(product.tobytes()).hexdigest(),
    "draws": int(post.sizes["draw"]),
    "posterior": hashlib.sha256(b"".join(post[v].values.tobytes() for v in sorted(post.data_vars))).hexdigest(),
}))
"""


def _fit(core_type: str) -> dict:
    env = os.environ | {"OPENBLAS_CORETYPE": core_type, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", FIT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.stan
def test_the_same_fit_under_two_blas_core_types_gives_the_same_draws():
    haswell, old = _fit("Haswell"), _fit("Prescott")
    if haswell["core"] == old["core"] or haswell["blas_product"] == old["blas_product"]:
        pytest.skip(f"this CPU's OpenBLAS gives the same bits under both core types ({haswell['core']}, {old['core']})")
    assert haswell["draws"] == old["draws"]
    assert haswell["posterior"] == old["posterior"]
