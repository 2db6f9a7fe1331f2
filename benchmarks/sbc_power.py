"""Power of the SBC uniformity test of ``benchmarks/sbc.py`` against known miscalibration (no Stan).

    .venv/bin/python benchmarks/sbc_power.py [--sims 2000] [--replicates 200] [--mde-sims 1000] [--seed 7]

The test procedure is exactly the one in ``schoolquality_assets/models/calibration.py``: N replicates,
L = 99 thinned draws, per quantity a chi-square test on 20 bins of ranks (``bins_for``) and a KS
test on the normalised ranks (r + 0.5) / (L + 1) (scipy's exact two-sided p-value, as ``kstest``),
and "rejected" when any p-value is below 1% / number of tests (Bonferroni, ``calibrated``). The
numbers of tests are those of ``sbc.py``: M1 tracks 5 quantities (10 tests), M2 8 (16), M3 9 (18);
18 is the column to quote for the pooled statement. ``--check`` compares the vectorised p-values
here with ``calibration.uniformity`` (imports the project).

Ranks are simulated directly: ranks are invariant to a shift and scale common to the truth and the
draws, so take the correct posterior of each replicate as N(0, 1); then theta ~ N(0, 1) (the prior
predictive draw of the truth is a draw from its posterior) and a miscalibrated "posterior" gives L
independent draws from N(b, c^2), i.e. mean bias b posterior SDs and SD c times the right one; the
rank of theta among them is binomial(L, Phi((theta - b) / c)). The draws are independent, as the
ESS rerun of ``sbc.py`` aims for. Scenarios: SD too small by 10/20/30% (c = 0.9, 0.8, 0.7), too
large by 20% (c = 1.2), bias 0.1/0.2/0.5 posterior SD, and the null (size of the test). "one": only
the first quantity is miscalibrated, the others are exact; "all": every quantity is, independently
(real quantities share a replicate and are dependent, so the true power for "all" lies between
the two columns). Power is the share of simulated SBC experiments in which the model's
Bonferroni-corrected test rejects, with its Monte Carlo standard error.

A supplementary column gives the power of the ECDF-band version of the test (arviz's simultaneous
band, "optimized", at level 1 - 1% / quantities per quantity, so Bonferroni over the quantities;
only the exactly-18-test M3 case), for comparison with the chi-square / KS procedure.

Last, the smallest SD error (too small, too large) and mean bias detected with 80% power at N = 200
and N = 1000 replicates (grid search in steps of ``--step``, linear interpolation between the last
two grid points; 18 tests), one and all quantities miscalibrated.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

TESTS = {"m1": 5, "m2": 8, "m3": 9}   # quantities per model in sbc.py (calibration.tracked); tests = 2x
SCENARIOS = [  # (label, bias b in posterior SDs, SD factor c)
    ("null (size of the test)", 0.0, 1.0),
    ("SD 10% too small", 0.0, 0.9),
    ("SD 20% too small", 0.0, 0.8),
    ("SD 30% too small", 0.0, 0.7),
    ("SD 20% too large", 0.0, 1.2),
    ("bias 0.1 posterior SD", 0.1, 1.0),
    ("bias 0.2 posterior SD", 0.2, 1.0),
    ("bias 0.5 posterior SD", 0.5, 1.0),
]


def bins_for(replicates: int, thinned: int) -> int:
    """calibration.bins_for: most bins dividing the L + 1 ranks evenly with >= 5 expected per bin."""
    for bins in (20, 10, 5, 4, 2):
        if (thinned + 1) % bins == 0 and replicates / bins >= 5:
            return bins
    return 1


def simulate_ranks(rng: np.random.Generator, shape: tuple[int, ...], thinned: int, bias: float, scale: float) -> np.ndarray:
    """Ranks (0..L) of theta ~ N(0, 1) among L draws from N(bias, scale^2), for each of ``shape``."""
    theta = rng.standard_normal(shape)
    return rng.binomial(thinned, stats.norm.cdf((theta - bias) / scale))


def p_values(ranks: np.ndarray, thinned: int) -> tuple[np.ndarray, np.ndarray]:
    """Chi-square and KS p-values of calibration.uniformity over the last axis (the replicates)."""
    n = ranks.shape[-1]
    bins = bins_for(n, thinned)
    b = ranks * bins // (thinned + 1)
    counts = np.stack([(b == k).sum(axis=-1) for k in range(bins)], axis=-1)
    expected = n / bins
    chi2_p = stats.chi2.sf(((counts - expected) ** 2 / expected).sum(axis=-1), bins - 1)
    x = np.sort((ranks + 0.5) / (thinned + 1), axis=-1)
    i = np.arange(1, n + 1)
    d = np.maximum((i / n - x).max(axis=-1), (x - (i - 1) / n).max(axis=-1))
    ks_p = stats.kstwo.sf(d, n)
    return chi2_p, ks_p


def min_p(rng, sims: int, quantities: int, n: int, thinned: int, bias: float, scale: float,
          chunk: int = 250) -> np.ndarray:
    """(sims, quantities): per simulated experiment and quantity, the smaller of its two p-values."""
    out = []
    for start in range(0, sims, chunk):
        ranks = simulate_ranks(rng, (min(chunk, sims - start), quantities, n), thinned, bias, scale)
        chi2_p, ks_p = p_values(ranks, thinned)
        out.append(np.minimum(chi2_p, ks_p))
    return np.concatenate(out)


def ecdf_outside(rng, sims: int, quantities: int, n: int, thinned: int, bias: float, scale: float,
                 lo: np.ndarray, hi: np.ndarray, chunk: int = 250) -> np.ndarray:
    """(sims, quantities): whether the ECDF of normalised ranks leaves the band [lo, hi] anywhere."""
    grid = np.arange(1, thinned + 1)
    out = []
    for start in range(0, sims, chunk):
        ranks = simulate_ranks(rng, (min(chunk, sims - start), quantities, n), thinned, bias, scale)
        # ECDF of (r + 1) / (L + 1) at k / (L + 1) = share of ranks <= k - 1
        counts = np.stack([(ranks < k).sum(axis=-1) for k in grid], axis=-1) / n
        out.append(((counts < lo - 1e-12) | (counts > hi + 1e-12)).any(axis=-1))
    return np.concatenate(out)


def rejects(pmin: np.ndarray, alpha: float) -> np.ndarray:
    """Bonferroni over the 2 x quantities tests: reject when the smallest p < alpha / tests."""
    return pmin.min(axis=-1) < alpha / (2 * pmin.shape[-1])


def fmt(share: float, sims: int) -> str:
    return f"{share:6.1%} ± {np.sqrt(share * (1 - share) / sims):4.1%}"


def power_table(args, rng) -> None:
    q_max = max(TESTS.values())
    null = min_p(rng, args.sims, q_max, args.replicates, args.thinned, 0.0, 1.0)
    band = None
    try:
        from arviz.stats.ecdf_utils import ecdf_confidence_band

        grid = np.arange(1, args.thinned + 1) / (args.thinned + 1)
        band = ecdf_confidence_band(args.replicates, grid, grid, prob=1 - args.alpha / q_max, method="optimized")
        null_band = ecdf_outside(rng, args.sims, q_max, args.replicates, args.thinned, 0.0, 1.0, *band)
    except ImportError:
        pass
    cols = [f"{m.upper()} ({2 * q} tests)" for m, q in TESTS.items()]
    bins = bins_for(args.replicates, args.thinned)
    print(f"\nPower of the SBC test: N = {args.replicates} replicates, L = {args.thinned}, χ² ({bins} bins) "
          f"+ KS per quantity, Bonferroni {args.alpha:.0%} over the model's tests; {args.sims} simulated "
          f"experiments per cell (± Monte Carlo SE). 'one': one quantity miscalibrated; 'all': every quantity.\n")
    head = "| scenario | " + " | ".join(f"{c}, one" for c in cols) + " | " + " | ".join(f"{c}, all" for c in cols)
    head += " | ECDF band, 9 quantities, one | ECDF band, all |" if band is not None else " |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for label, bias, scale in SCENARIOS:
        mis = null if (bias, scale) == (0.0, 1.0) else min_p(rng, args.sims, q_max, args.replicates, args.thinned,
                                                             bias, scale)
        one = [rejects(np.concatenate([mis[:, :1], null[:, 1:q]], axis=1), args.alpha).mean() for q in TESTS.values()]
        all_ = [rejects(mis[:, :q], args.alpha).mean() for q in TESTS.values()]
        row = f"| {label} | " + " | ".join(fmt(p, args.sims) for p in one + all_)
        if band is not None:
            mis_band = null_band if (bias, scale) == (0.0, 1.0) else ecdf_outside(
                rng, args.sims, q_max, args.replicates, args.thinned, bias, scale, *band)
            row += (f" | {fmt(np.concatenate([mis_band[:, :1], null_band[:, 1:]], axis=1).any(axis=1).mean(), args.sims)}"
                    f" | {fmt(mis_band.any(axis=1).mean(), args.sims)}")
        print(row + " |", flush=True)


def power_at(rng, args, n: int, quantities: int, bias: float, scale: float, mode: str, null: np.ndarray) -> float:
    if mode == "one":
        mis = min_p(rng, args.mde_sims, 1, n, args.thinned, bias, scale)
        return rejects(np.concatenate([mis, null[:, 1:quantities]], axis=1), args.alpha).mean()
    return rejects(min_p(rng, args.mde_sims, quantities, n, args.thinned, bias, scale), args.alpha).mean()


def detectable(args, rng) -> None:
    quantities = max(TESTS.values())
    print(f"\nSmallest miscalibration detected with {args.target:.0%} power ({2 * quantities} tests, Bonferroni "
          f"{args.alpha:.0%}; grid step {args.step}, {args.mde_sims} simulated experiments per grid point, "
          f"interpolated between the last two grid points):\n")
    print("| N replicates | miscalibrated | SD too small by | SD too large by | mean bias (posterior SDs) |")
    print("|---|---|---|---|---|")
    kinds = {"small": lambda d: (0.0, 1 - d), "large": lambda d: (0.0, 1 + d), "bias": lambda d: (d, 1.0)}
    for n in args.mde_replicates:
        null = min_p(rng, args.mde_sims, quantities, n, args.thinned, 0.0, 1.0)
        for mode in ("one", "all"):
            cells = []
            for kind, effect in kinds.items():
                previous, found = (0.0, rejects(null, args.alpha).mean()), None
                for delta in np.arange(args.step, (0.95 if kind == "small" else 2.0) + 1e-9, args.step):
                    power = power_at(rng, args, n, quantities, *effect(delta), mode, null)
                    if power >= args.target:
                        (d0, p0), d1 = previous, delta
                        found = (d0 + (args.target - p0) / (power - p0) * (d1 - d0), d1, power)
                        break
                    previous = (delta, power)
                if found is None:
                    cells.append("not within grid")
                elif kind == "bias":
                    cells.append(f"{found[0]:.2f} (grid {found[1]:.2f}: {found[2]:.0%})")
                else:
                    cells.append(f"{found[0]:.0%} (grid {found[1]:.0%}: {found[2]:.0%})")
            print(f"| {n} | {'one quantity' if mode == 'one' else 'all quantities'} | " + " | ".join(cells) + " |",
                  flush=True)


def check(rng, thinned: int) -> None:
    """The vectorised p-values agree with calibration.uniformity (the project's test)."""
    from schoolquality_assets.models import calibration

    for n in (50, 200, 1000):
        ranks = simulate_ranks(rng, (5, n), thinned, 0.1, 0.9)
        chi2_p, ks_p = p_values(ranks, thinned)
        for r, c, k in zip(ranks, chi2_p, ks_p):
            u = calibration.uniformity(r, thinned)
            assert np.isclose(u["chi2_p"], c, rtol=1e-9) and np.isclose(u["ks_p"], k, rtol=1e-9), (u, c, k)
        assert bins_for(n, thinned) == calibration.bins_for(n, thinned)
    print("check: p-values agree with calibration.uniformity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000, help="simulated SBC experiments per cell")
    parser.add_argument("--replicates", type=int, default=200, help="N, replicates per SBC experiment")
    parser.add_argument("--thinned", type=int, default=99, help="L")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--mde-sims", type=int, default=1000, help="simulated experiments per grid point")
    parser.add_argument("--mde-replicates", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--step", type=float, default=0.02, help="grid step of the detectable-effect search")
    parser.add_argument("--target", type=float, default=0.8, help="power of the detectable-effect search")
    parser.add_argument("--skip-mde", action="store_true")
    parser.add_argument("--check", action="store_true", help="compare with calibration.uniformity first")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    start = time.monotonic()
    if args.check:
        check(rng, args.thinned)
    power_table(args, rng)
    if not args.skip_mde:
        detectable(args, rng)
    print(f"\n({time.monotonic() - start:.0f} s, seed {args.seed})")


if __name__ == "__main__":
    main()
