"""M1 on its sufficient statistics (one row per school) against the row-level data, on the full
built-in synthetic province: wall time of the fit (compile excluded), draws needed and the gate.

    .venv/bin/python benchmarks/m1_collapsed.py [--rows]   # --rows also fits the row-level data

Default sampler settings of the `full` partition (4 chains, warmup 300, until the gate holds).
"""

import argparse
import time

from schoolquality_assets.ingest import contract, filters, synthetic

from schoolquality_assets.models import diagnostics, specs
from schoolquality_assets.defs.resources import SamplerResource
import polars as pl


def cleaned_province(seed: int = 2024) -> pl.DataFrame:
    province = synthetic.generate_province(seed=seed)
    obs = province.observations.with_columns(pl.all().cast(pl.Utf8))
    raw = obs.with_columns(source_file=pl.lit("synthetic"), source_row=pl.int_range(1, obs.height + 1, dtype=pl.Int64))
    cleaned, _ = filters.clean(contract.validate(raw)[0])
    return cleaned


def fit(sample: pl.DataFrame, collapse: bool) -> None:
    spec = specs.MODELS["m1"]
    settings = SamplerResource().settings("full")
    limits = diagnostics.Thresholds()
    original = specs.stan_data
    if not collapse:
        specs.stan_data = lambda s, mi, collapse=True: original(s, mi, collapse=False)  # noqa: E731
    try:
        start = time.monotonic()
        idata = specs.fit(spec, sample, settings, progress=lambda m: None, limits=limits)
        wall = time.monotonic() - start
    finally:
        specs.stan_data = original
    s = diagnostics.convergence_summary(idata, limits)
    print(f"M1 {'school totals' if collapse else 'row level'}: {wall:.1f} s in all "
          f"(compile {float(idata.attrs['compile_seconds']):.1f} s, sampling {float(idata.attrs['sample_seconds']):.1f} s), "
          f"{idata.posterior.sizes['draw']} draws/chain, max R-hat {s['max_rhat']:.4f}, min ESS bulk {s['min_ess_bulk']:.0f}, "
          f"sd_school {float(idata.posterior['sd_school'].mean()):.4f}; {idata.attrs.get('stop_status', '')}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", action="store_true", help="also fit the row-level data (slow)")
    args = parser.parse_args()
    sample = cleaned_province()
    print(f"full synthetic province: {sample['school_id'].n_unique()} schools, {sample.height} observations")
    fit(sample, collapse=True)
    if args.rows:
        fit(sample, collapse=False)


if __name__ == "__main__":
    main()
