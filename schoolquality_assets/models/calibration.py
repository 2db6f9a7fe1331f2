"""Simulation-based calibration (SBC; Talts et al. 2018) of the binomial programs M1-M3.

One replicate: draw every parameter from the program's prior, simulate binomial outcomes on a
small design, fit the program through the project's own path (``specs.model_input``,
``specs.initial_values``, the streaming engine), thin the posterior to ``L`` draws spaced at
least one effective sample apart, and record the rank of each true value among them. If the
program, the data path and the sampler are right, every rank is uniform on 0..L.

Priors simulated (the programs' own): Intercept ~ student_t(3, 0, 2.5) (the centred intercept,
at the mean design row), each SD ~ half-student_t(3, 0, 2.5), group effects ~ normal(0, SD). The
fixed effects ``b`` are flat (improper) in the programs, so nothing can be drawn from their prior:
SBC fits with ``prior_b_sd`` = :data:`PRIOR_B_SD` (the programs then add b ~ normal(0, prior_b_sd))
and draws b from the same normal. The default ``prior_b_sd`` = 0 keeps b flat.

Each :class:`Replicate` records the seeds it actually ran with (numpy ``[seed, index]``, Stan and
the initial values ``seed + index``) and the sampler settings of its kept fit. A fit with a
divergence, a draw at the maximum tree depth or an ESS still below L is a problem fit
(:func:`problems`); :func:`summarise` tests all, the clean or the problem fits. :func:`calibrated`
and :func:`verdict` say whether uniformity is rejected (Bonferroni), which at a few hundred
replicates is a weak test (``benchmarks/sbc_power.py``); :func:`outer_share` and :func:`ecdf_band`
are the tail-mass and the simultaneous ECDF-band views of the same ranks.

Pure functions, no Dagster: used by ``benchmarks/sbc.py`` and ``schoolquality_assets_tests/test_sbc.py``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats
from scipy.special import expit

from schoolquality_assets.engine.base import SamplerSettings, SamplingError
from schoolquality_assets.models import specs
from schoolquality_assets.models.diagnostics import Thresholds

PRIOR_T_DF, PRIOR_T_SCALE = 3, 2.5   # student_t(3, 0, 2.5): the intercept and every SD
PRIOR_B_SD = 1.0                      # proper prior substituted for the flat b (M2, M3)
SUBJECTS = ("math", "reading", "writing")
TRACKED_SCHOOLS = 3                   # r_school of the first schools (exchangeable)


@dataclass(frozen=True)
class Design:
    """A complete schools x years x subjects grid; participants per observation uniform on [n_min, n_max]."""

    schools: int = 24
    years: int = 4
    n_min: int = 10
    n_max: int = 60
    subjects: tuple[str, ...] = SUBJECTS


@dataclass(frozen=True)
class Settings:
    """Sampler and thinning settings of every replicate."""

    sampler: SamplerSettings = SamplerSettings(chains=2, warmup=300, draws=300, until_converged=False)
    thinned: int = 99          # L: draws kept after thinning, so ranks run 0..L
    max_draw_factor: int = 4   # a fit whose ESS < L is rerun once with up to this many times the draws
    # With ``sampler.until_converged``: the production procedure, sampling until this gate holds
    # (no ESS rerun; a fit that never passes keeps its ranks and counts as a problem fit).
    limits: Thresholds | None = None

    @property
    def stop_rule(self) -> bool:
        return self.sampler.until_converged and self.limits is not None


@dataclass
class Replicate:
    """One SBC replicate: ranks of the true values (None when the fit failed) and what the fit cost."""

    index: int
    truth: dict[str, float]
    ranks: dict[str, int] | None
    divergences: int = 0
    treedepth_hits: int = 0
    min_ess: float = math.nan
    draws_per_chain: int = 0
    reruns: int = 0
    seconds: float = 0.0
    converged: bool | None = None   # under the stop rule: whether the gate held when sampling stopped
    error: str | None = None
    # What this replicate actually used: numpy's seed for the prior draw and the data, the seed
    # passed to Stan (and to the initial values), and the sampler settings of the kept fit (after
    # an ESS rerun, its draws). The ``seed`` of ``Settings.sampler`` is never used.
    rng_seed: list[int] | None = None
    sampler_seed: int | None = None
    sampler: dict | None = None


# --------------------------------------------------------------------------- simulate


def design_frame(design: Design, rng: np.random.Generator) -> pl.DataFrame:
    """Observation rows with the model keys of ``filters.clean`` (no outcomes yet)."""
    width = len(str(design.schools))
    rows = [(f"S{s:0{width}d}", 2015 + t, subject)
            for s in range(1, design.schools + 1) for t in range(design.years) for subject in design.subjects]
    frame = pl.DataFrame(rows, schema=["school_id", "year", "subject"], orient="row")
    n = rng.integers(design.n_min, design.n_max + 1, frame.height)
    return frame.with_columns(
        year_subject=pl.format("{}_{}", "year", "subject"),
        school_year_id=pl.format("{}_{}", "school_id", "year"),
        school_subject_id=pl.format("{}_{}", "school_id", "subject"),
        n_trials=pl.Series(n, dtype=pl.Int64),
    ).sort("school_id", "year", "subject")


def half_t(rng: np.random.Generator) -> float:
    return abs(PRIOR_T_SCALE * float(rng.standard_t(PRIOR_T_DF)))


def draw_prior(spec: specs.ModelSpec, frame: pl.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every parameter from the program's prior (``b`` from normal(0, PRIOR_B_SD))."""
    X, _ = specs.fixed_design(spec, frame)
    truth = {"Intercept": np.array(PRIOR_T_SCALE * rng.standard_t(PRIOR_T_DF)), "b": rng.normal(0.0, PRIOR_B_SD, X.shape[1])}
    for level, column in _levels(spec).items():
        sd = half_t(rng)
        truth[f"sd_{level}"] = np.array(sd)
        truth[f"r_{level}"] = rng.normal(0.0, sd, frame[column].n_unique())
    return truth


def simulate_outcomes(spec: specs.ModelSpec, frame: pl.DataFrame, truth: dict, rng: np.random.Generator) -> pl.DataFrame:
    """``frame`` with y_success ~ binomial(n_trials, inv_logit(eta)), the exact likelihood."""
    X, _ = specs.fixed_design(spec, frame)
    eta = truth["Intercept"] + (X - X.mean(axis=0)) @ truth["b"]   # centred design: the intercept prior's row
    for level, column in _levels(spec).items():
        eta = eta + truth[f"r_{level}"][specs.level_index(frame[column])[0] - 1]
    y = rng.binomial(frame["n_trials"].to_numpy(), expit(eta))
    return frame.with_columns(y_success=pl.Series(y, dtype=pl.Int64))


def _levels(spec: specs.ModelSpec) -> dict[str, str]:
    """Group levels of a model and the frame column that indexes each."""
    return ({"school": "school_id"} | ({"cohort": "school_year_id"} if spec.cohort else {})
            | ({"profile": "school_subject_id"} if spec.profile else {}))


# --------------------------------------------------------------------------- fit and rank


def tracked(spec: specs.ModelSpec, truth: dict) -> dict[str, float]:
    """The scalars whose ranks are recorded: intercept, every SD, a few school effects (and b, a cohort)."""
    out = {"Intercept": float(truth["Intercept"])}
    out |= {name: float(truth[name]) for name in spec.sd_names}
    out |= {f"r_school[{j + 1}]": float(truth["r_school"][j]) for j in range(TRACKED_SCHOOLS)}
    if spec.fixed_effects:
        out["b[1]"] = float(truth["b"][0])
    if spec.cohort:
        out["r_cohort[1]"] = float(truth["r_cohort"][0])
    return out


def posterior_draws(spec: specs.ModelSpec, mi: specs.ModelInput, params: dict) -> dict[str, np.ndarray]:
    """(chain, draw) arrays of the tracked quantities, derived as the project derives them."""
    effects = specs.group_effects(spec, params, mi.data)
    out = {"Intercept": params["Intercept"]} | {name: params[name] for name in spec.sd_names}
    out |= {f"r_school[{j + 1}]": effects["r_school"][..., j] for j in range(TRACKED_SCHOOLS)}
    if spec.fixed_effects:
        out["b[1]"] = params["b"][..., 0]
    if spec.cohort:
        out["r_cohort[1]"] = effects["r_cohort"][..., 0]
    return out


def thin(draws: np.ndarray, count: int) -> np.ndarray:
    """``count`` draws evenly spaced over the chains' draws, laid end to end."""
    flat = draws.reshape(-1)
    return flat[np.linspace(0, flat.size - 1, count).round().astype(int)]


def rank(draws: np.ndarray, value: float) -> int:
    """Number of draws below the true value: uniform on 0..len(draws) under a calibrated fit."""
    return int(np.sum(draws < value))


def min_bulk_ess(draws: dict[str, np.ndarray]) -> float:
    """Smallest bulk ESS (arviz) over the tracked quantities."""
    import arviz as az

    ess = az.ess(az.convert_to_dataset({f"q{i}": np.asarray(v) for i, v in enumerate(draws.values())}))
    return float(min(ess[k].item() for k in ess.data_vars))


def fit_draws(spec: specs.ModelSpec, path: Path, frame: pl.DataFrame, sampler: SamplerSettings,
              limits: Thresholds | None = None):
    """Fit ``path`` (the program of ``spec`` or a variant of it) with b ~ normal(0, PRIOR_B_SD), by
    the production procedure (specs.sample_model): with ``sampler.until_converged`` and ``limits``,
    until the blocking gate holds."""
    mi = specs.model_input(spec, frame)
    data = specs.stan_data(spec, mi) | {"prior_b_sd": PRIOR_B_SD}
    return mi, specs.sample_model(spec, mi, sampler, progress=lambda message: None, limits=limits, data=data, path=path)


def run_replicate(spec: specs.ModelSpec, index: int, design: Design, settings: Settings, seed: int,
                  path: Path | None = None) -> Replicate:
    """One replicate: prior draw, simulated data, fit (rerun once with more draws if ESS < L), ranks."""
    rng = np.random.default_rng([seed, index])
    frame = design_frame(design, rng)
    truth_all = draw_prior(spec, frame, rng)
    frame = simulate_outcomes(spec, frame, truth_all, rng)
    truth = tracked(spec, truth_all)
    start = time.monotonic()
    sampler = replace(settings.sampler, seed=seed + index)
    result = Replicate(index=index, truth=truth, ranks=None, rng_seed=[seed, index], sampler_seed=sampler.seed,
                       sampler=asdict(sampler))
    try:
        for attempt in range(2):
            mi, draws = fit_draws(spec, path or spec.path, frame, sampler, settings.limits if settings.stop_rule else None)
            post = posterior_draws(spec, mi, draws.params)
            ess = min_bulk_ess(post)
            if ess >= settings.thinned or attempt == 1 or settings.stop_rule:
                break
            factor = min(settings.max_draw_factor, math.ceil(1.2 * settings.thinned / max(ess, 1.0)))
            sampler = replace(sampler, draws=sampler.draws * max(factor, 2))
            result.reruns += 1
            result.sampler = asdict(sampler)
    except SamplingError as exc:
        result.error = str(exc)[:300]
        result.seconds = time.monotonic() - start
        return result
    result.ranks = {name: rank(thin(post[name], settings.thinned), value) for name, value in truth.items()}
    result.divergences = int(draws.sample_stats["diverging"].sum())
    result.treedepth_hits = int(draws.sample_stats["max_treedepth_hit"].sum())
    result.min_ess, result.draws_per_chain = ess, int(draws.sample_stats["diverging"].shape[1])
    if draws.verdict is not None:
        result.converged = bool(draws.verdict.passed)
    result.seconds = time.monotonic() - start
    return result


# --------------------------------------------------------------------------- uniformity


def bins_for(replicates: int, thinned: int) -> int:
    """Most bins (dividing the L + 1 ranks evenly) that leave at least 5 expected counts per bin."""
    for bins in (20, 10, 5, 4, 2):
        if (thinned + 1) % bins == 0 and replicates / bins >= 5:
            return bins
    return 1


def uniformity(ranks: np.ndarray, thinned: int) -> dict[str, float]:
    """Chi-square on binned ranks and KS on normalised ranks, each against uniform on 0..L."""
    ranks = np.asarray(ranks)
    bins = bins_for(ranks.size, thinned)
    counts = np.bincount(ranks * bins // (thinned + 1), minlength=bins)
    chi2 = stats.chisquare(counts)
    ks = stats.kstest((ranks + 0.5) / (thinned + 1), "uniform")
    return {"n": int(ranks.size), "bins": bins, "chi2": float(chi2.statistic), "chi2_p": float(chi2.pvalue),
            "ks": float(ks.statistic), "ks_p": float(ks.pvalue)}


PROBLEMS = ("divergences", "max_treedepth", "low_ess", "gate_failed")
SUBSETS = ("all", "clean", "problem")


def problems(replicate: Replicate, thinned: int) -> tuple[str, ...]:
    """Why a fit that produced ranks is a problem fit: any divergent transition, any draw at the
    maximum tree depth, smallest bulk ESS still below L after the rerun, under the stop rule a
    gate that never held (production would not publish it) (empty: a clean fit)."""
    if replicate.ranks is None:
        return ()
    return tuple(name for name, hit in zip(PROBLEMS, (replicate.divergences > 0, replicate.treedepth_hits > 0,
                                                      replicate.min_ess < thinned, replicate.converged is False))
                 if hit)


def select(replicates: list[Replicate], thinned: int, subset: str = "all") -> list[Replicate]:
    """The replicates with ranks: all of them, the clean fits only or the problem fits only."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, not {subset!r}")
    done = [r for r in replicates if r.ranks is not None]
    if subset == "all":
        return done
    return [r for r in done if bool(problems(r, thinned)) == (subset == "problem")]


def summarise(replicates: list[Replicate], thinned: int, without_divergences: bool = False,
              subset: str = "all") -> dict[str, dict[str, float]]:
    """Uniformity tests of every tracked quantity over the replicates that produced ranks
    (only those without a divergent transition, with ``without_divergences``; only the clean or
    only the problem fits, with ``subset``, see :func:`problems`)."""
    done = [r for r in select(replicates, thinned, subset) if not (without_divergences and r.divergences)]
    if not done:
        return {}
    return {name: uniformity(np.array([r.ranks[name] for r in done]), thinned) for name in done[0].ranks}


def calibrated(summary: dict[str, dict[str, float]], alpha: float = 0.01) -> bool:
    """No test of any quantity rejects uniformity: every p >= alpha / number of tests (Bonferroni).

    "Not rejected" is all this says: at 200 replicates the test misses moderate miscalibration
    (``benchmarks/sbc_power.py``), so this is no proof of calibration."""
    tests = [s[k] for s in summary.values() for k in ("chi2_p", "ks_p")]
    return bool(tests) and min(tests) >= alpha / len(tests)


def verdict(summary: dict[str, dict[str, float]], alpha: float = 0.01) -> str:
    """The verdict line of :func:`calibrated`, with the smallest p and the Bonferroni threshold."""
    tests = {(name, k): s[k] for name, s in summary.items() for k in ("chi2_p", "ks_p")}
    if not tests:
        return "no fits"
    (name, kind), low = min(tests.items(), key=lambda item: item[1])
    detail = (f"min p {low:.3g} ({name}, {'χ²' if kind == 'chi2_p' else 'KS'}) vs {alpha:g}/{len(tests)} "
              f"= {alpha / len(tests):.2g}")
    if calibrated(summary, alpha):
        return f"uniformity not rejected at Bonferroni {alpha:.0%} (power: see sbc_power.py); {detail}"
    return f"uniformity rejected at Bonferroni {alpha:.0%}; {detail}"


def tail_ranks(thinned: int, tail: float = 0.05) -> int:
    """How many rank values (of the L + 1) make up each tail of ``tail`` share: 5 of 100 for L = 99."""
    return max(1, round(tail * (thinned + 1)))


def outer_share(ranks: np.ndarray, thinned: int, tail: float = 0.05, level: float = 0.95) -> dict[str, float]:
    """Share of ranks in the lowest or highest ``tail`` of 0..L (mass an over-confident posterior
    piles up there; an under-confident one takes it away), with the central ``level`` interval of that
    share under uniform ranks (binomial; for ranks pooled over the quantities of a replicate, which
    are dependent, the interval is too narrow)."""
    ranks = np.asarray(ranks).reshape(-1)
    k = tail_ranks(thinned, tail)
    expected = 2 * k / (thinned + 1)
    outer = int(np.sum((ranks < k) | (ranks > thinned - k)))
    lo, hi = stats.binom.ppf([(1 - level) / 2, (1 + level) / 2], ranks.size, expected) / max(ranks.size, 1)
    return {"n": int(ranks.size), "outer": outer, "share": outer / max(ranks.size, 1), "expected": expected,
            "lo": float(lo), "hi": float(hi), "tail_ranks": k}


def ecdf_grid(thinned: int) -> np.ndarray:
    """Where the ECDF of normalised ranks (r + 1) / (L + 1) is compared with the uniform CDF: k / (L + 1),
    k = 1..L, where the uniform CDF is exactly P(rank <= k - 1)."""
    return np.arange(1, thinned + 1) / (thinned + 1)


@functools.lru_cache(maxsize=64)
def _band(n: int, thinned: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    grid = ecdf_grid(thinned)
    return ecdf_confidence_band(n, grid, grid, prob=level, method="optimized")


def ecdf_band(ranks: np.ndarray, thinned: int, level: float = 0.95) -> dict:
    """ECDF of the normalised ranks against the simultaneous ``level`` band for uniform ranks (arviz,
    "optimized": the pointwise binomial level whose joint coverage under discrete uniform ranks is
    ``level``; Saeilynoja et al. 2022): how many of the L grid points fall outside, the largest
    |ECDF - CDF|, and the band itself."""
    ranks = np.asarray(ranks)
    grid = ecdf_grid(thinned)
    lo, hi = _band(ranks.size, thinned, level)
    ecdf = np.searchsorted(np.sort((ranks + 1) / (thinned + 1)), grid, side="right") / ranks.size
    outside = int(np.sum((ecdf < lo - 1e-12) | (ecdf > hi + 1e-12)))
    return {"n": int(ranks.size), "level": level, "outside_points": outside, "outside": outside > 0,
            "max_abs_diff": float(np.max(np.abs(ecdf - grid))), "lo": lo.tolist(), "hi": hi.tolist()}
