"""Warmup evidence at full scale (issue 38, section 3): fit M2 and M3 on the built-in province's
``full`` partition by the production procedure (``specs.fit``: stop rule, dispersed initial values,
the model's adapt_delta) once with 300 and once with 1,000 warmup iterations, and say whether every
``g3_school_quality`` column agrees between the two within its Monte Carlo error.

    .venv/bin/python benchmarks/warmup_evidence.py [--models m2,m3] [--warmups 300 1000] [--partition full]

Per school, each column's difference between the two fits is divided by its Monte Carlo standard
error, sqrt(mcse_a^2 + mcse_b^2), each from arviz on the fit's own draws (``mean``: mcse of the
mean; ``sd``: of the sd; 95% limits, rank median and limits: quantile MCSE; probabilities: MCSE of
the indicator's mean). If the two fits sample the same posterior, these z are close to N(0, 1):
about 5% beyond 1.96 and about 0.3% beyond 3 (a little fewer for ranks and probabilities, whose
MCSE is conservative where draws tie). The hyperparameters' means are compared the same way.
A different seed is used for each fit (otherwise the two would share their noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_m2 import province_sample  # noqa: E402
from schoolquality_assets.analyses import rankings  # noqa: E402
from schoolquality_assets.engine.base import SamplerSettings  # noqa: E402
from schoolquality_assets.models import diagnostics, specs  # noqa: E402

QUANTILES = {"lower_95": 0.025, "median": 0.5, "upper_95": 0.975}
CHUNK = 512


def _mcse(draws: np.ndarray, method: str, prob: float | None = None) -> np.ndarray:
    """arviz MCSE per column of (chain, draw, k) draws, in chunks of columns."""
    out = np.empty(draws.shape[-1])
    if method == "sd":
        # arviz's own formula (its _mcse_sd, which fails on this numpy): delta method on the
        # variance, with the ESS of the squared centred draws
        c2 = (draws - draws.mean(axis=(0, 1))) ** 2
        ess = _ess_mean(c2)
        var = c2.mean(axis=(0, 1))
        return np.sqrt(((c2 ** 2).mean(axis=(0, 1)) - var ** 2) / ess / var / 4)
    for start in range(0, draws.shape[-1], CHUNK):
        block = draws[..., start:start + CHUNK]
        ds = az.convert_to_dataset({"x": block})
        kw = {"prob": prob} if prob is not None else {}
        out[start:start + CHUNK] = np.asarray(az.mcse(ds, method=method, **kw)["x"].values, dtype=float)
    return out


def _ess_mean(draws: np.ndarray) -> np.ndarray:
    out = np.empty(draws.shape[-1])
    for start in range(0, draws.shape[-1], CHUNK):
        ds = az.convert_to_dataset({"x": draws[..., start:start + CHUNK]})
        out[start:start + CHUNK] = np.asarray(az.ess(ds, method="mean")["x"].values, dtype=float)
    return out


def columns(idata) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each published quantity per school with its MCSE: {column: (value, mcse)}."""
    r = np.asarray(idata.posterior["r_school"].transpose("chain", "draw", "school").values, dtype=float)
    out = {"g3_school_re": (r.mean(axis=(0, 1)), _mcse(r, "mean")),
           "g3_re_sd": (r.std(axis=(0, 1)), _mcse(r, "sd"))}
    flat = r.reshape(-1, r.shape[-1])
    for name, q in (("g3_re_lower_95", 0.025), ("g3_re_upper_95", 0.975)):
        out[name] = (np.quantile(flat, q, axis=0), _mcse(r, "quantile", q))
    ranks = rankings.draw_ranks(r).astype(float)
    flat_ranks = ranks.reshape(-1, ranks.shape[-1])
    for name, q in (("rank_lower_95", 0.025), ("rank_median", 0.5), ("rank_upper_95", 0.975)):
        out[name] = (np.quantile(flat_ranks, q, axis=0), np.nan_to_num(_mcse(ranks, "quantile", q)))
    table = rankings.school_rankings(idata)
    for name in ("p_below_average", "p_bottom_10", "p_top_10"):
        out[name] = (table[name].to_numpy(), table[f"{name}_mcse"].to_numpy())
    return out


def hyper(idata, spec) -> dict[str, tuple[float, float]]:
    post = idata.posterior
    names = ["b_Intercept", *spec.sd_names]
    return {n: (float(post[n].mean()), float(_mcse(np.asarray(post[n].values, dtype=float)[..., None], "mean")[0]))
            for n in names if n in post}


def compare(a: dict, b: dict) -> list[tuple[str, int, float, float, float, float]]:
    rows = []
    for name in a:
        (va, ma), (vb, mb) = a[name], b[name]
        va, vb, ma, mb = map(np.atleast_1d, (va, vb, ma, mb))
        se = np.sqrt(ma ** 2 + mb ** 2)
        same = (va == vb) & (se == 0)   # a probability of 0 or 1 in both fits
        z = np.where(same, 0.0, (va - vb) / np.where(se > 0, se, np.nan))
        finite = np.isfinite(z)
        rows.append((name, int(finite.sum()), float(np.mean(np.abs(z[finite]) > 1.96)),
                     float(np.mean(np.abs(z[finite]) > 3)), float(np.max(np.abs(z[finite]))),
                     float(np.max(np.abs(va - vb)))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="m2,m3")
    parser.add_argument("--warmups", type=int, nargs=2, default=[300, 1000])
    parser.add_argument("--partition", default="full")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    sample = province_sample(args.partition)
    print(f"built-in province, {args.partition}: {sample['school_id'].n_unique():,} schools, {sample.height:,} observations")
    for key in args.models.split(","):
        spec = specs.MODELS[key]
        fits = {}
        for i, warmup in enumerate(args.warmups):
            settings = SamplerSettings(warmup=warmup, seed=args.seed + i)
            start = time.monotonic()
            idata = specs.fit(spec, sample, settings, progress=lambda m: None, limits=diagnostics.Thresholds())
            draws = idata.posterior.sizes["draw"]
            print(f"{key.upper()} warmup {warmup}, seed {settings.seed}: {time.monotonic() - start:.0f} s, "
                  f"{draws} draws/chain; {idata.attrs.get('stop_status', '')[:140]}", flush=True)
            fits[warmup] = (columns(idata) if key == "m2" else {k: v for k, v in columns(idata).items()
                                                                  if k.startswith("g3_")}, hyper(idata, spec))
            del idata
        (a_cols, a_hyp), (b_cols, b_hyp) = fits[args.warmups[0]], fits[args.warmups[1]]
        print(f"\n{key.upper()}: warmup {args.warmups[0]} against {args.warmups[1]}, z = difference / combined MCSE")
        print("| column | schools | share |z| > 1.96 (expect ~0.05) | share |z| > 3 (~0.003) | max |z| | max |difference| |")
        print("|---|---|---|---|---|---|")
        for name, n, s196, s3, zmax, dmax in compare(a_cols, b_cols):
            print(f"| {name} | {n:,} | {s196:.3f} | {s3:.4f} | {zmax:.2f} | {dmax:.4g} |")
        for name in a_hyp:
            (va, ma), (vb, mb) = a_hyp[name], b_hyp[name]
            print(f"  {name}: {va:.4f} (MCSE {ma:.4f}) against {vb:.4f} (MCSE {mb:.4f}); "
                  f"z = {(va - vb) / np.hypot(ma, mb):+.2f}")
        print(flush=True)


if __name__ == "__main__":
    main()
