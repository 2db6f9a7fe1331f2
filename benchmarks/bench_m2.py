"""Benchmark M2 (not a test): compile time, wall time, min ESS/s, peak RSS.

    .venv/bin/python benchmarks/bench_m2.py subsample full

On the subsample it also fits the brms-style non-centred M2 (m2_brms_noncentred.stan) in the
same run. Settings: SCHOOLQUALITY_CHAINS/WARMUP/DRAWS (default 4 x (1000 + 1000)).
"""

import os
import resource
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np

from schoolquality_assets import contract, filters, models, synthetic
from schoolquality_assets.stan_engine import SamplerSettings, compile_pystan, sample

NONCENTRED = Path(__file__).parent / "m2_brms_noncentred.stan"


def peak_rss_gb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024**2


def cleaned():
    import polars as pl

    obs = synthetic.generate_province().observations.with_columns(pl.all().cast(pl.Utf8))
    raw = obs.with_columns(source_file=pl.lit("synthetic"), source_row=pl.int_range(1, obs.height + 1, dtype=pl.Int64))
    return filters.clean(contract.validate(raw)[0])[0]


def min_ess_per_second(posterior: dict, seconds: float) -> float:
    ess = az.ess({k: v for k, v in posterior.items()}, method="bulk")
    return float(min(float(np.min(ess[k].values)) for k in ess.data_vars)) / seconds


def run(label: str, stan_file: Path, mi, settings, inits, school_effects):
    _, compile_s = compile_pystan(stan_file, progress=lambda m: None)
    start = time.monotonic()
    draws = sample(stan_file, mi.data, settings, inits=inits, progress=lambda m: None)
    wall = time.monotonic() - start
    p = draws.params
    post = {k: p[k] for k in ("sd_school", "sd_cohort")} | {"school": school_effects(draws)}
    print(f"{label:32s} compile {compile_s:6.1f} s  wall {wall:7.1f} s  "
          f"min ESS/s (SDs + school effects) {min_ess_per_second(post, draws.sample_seconds):8.3f}  "
          f"divergences {int(draws.sample_stats['diverging'].sum())}  peak RSS {peak_rss_gb():.2f} GB", flush=True)


def main(partitions):
    settings = SamplerSettings(
        chains=int(os.environ.get("SCHOOLQUALITY_CHAINS", 4)), warmup=int(os.environ.get("SCHOOLQUALITY_WARMUP", 1000)),
        draws=int(os.environ.get("SCHOOLQUALITY_DRAWS", 1000)), seed=1,
    )
    data = cleaned()
    spec = models.MODELS["m2"]
    for partition in partitions:
        mi = models.model_input(spec, filters.analysis_sample(data, partition))
        inits = models.initial_values(spec, mi, settings.chains, settings.seed)
        run(f"M2 project form [{partition}]", spec.path, mi, settings, inits,
            lambda d: models.to_inference_data(spec, mi, d).posterior["r_school"].values)
        if partition == "subsample":
            run(f"M2 brms non-centred [{partition}]", NONCENTRED, mi, settings, None,
                lambda d: d.params["sd_school"][..., None] * d.params["z_school"])


if __name__ == "__main__":
    main(sys.argv[1:] or ["subsample"])
