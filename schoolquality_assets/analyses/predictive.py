"""Posterior predictive checks of M0-M3: does a fitted model replicate data like the observed?

Pure functions (no Dagster): an arviz posterior (as built by :mod:`schoolquality_assets.models.specs`)
and the analysis sample in, a polars frame out. :func:`replicate` draws replicated data sets into an
arviz ``InferenceData`` (``posterior_predictive`` beside ``observed_data``, each test statistic
stored as ``T_<code>`` in both groups the way ``az.apply_test_function`` stores them, so
``az.plot_ppc(ppc, var_names=["y_success"])`` works on it); :func:`posterior_predictive_checks` summarises the
statistics with ``az.summary`` (equal-tailed 95% intervals) and adds the posterior predictive
p-value P(T_rep >= T_obs), ties counted half.

**Replication draws new cohort and profile effects.** For each kept posterior draw the school
effects and the fixed effects (``b_Intercept``, ``b``) are the draw's; every cohort (school x year)
gets a new effect ``r_cohort_new ~ Normal(0, sd_cohort)`` and, in M3, every school x subject a new
``r_profile_new ~ Normal(0, sd_profile)``. The cohort programs centre a cohort on its school
(``mu_cohort ~ Normal(mu_school + year terms, sd_cohort)``, m2_cohort.stan), so in the brms form
``eta = b_Intercept + X b + r_school + r_cohort (+ r_profile)`` the new cohort effect is a zero-mean
deviation added to the draw's school effect, as the model parameterises it. Then
``y_rep ~ Binomial(n_trials, inv_logit(eta_rep))``. Why: a cohort or profile effect is estimated
from the very observations it is then asked to replicate (about three observations per cohort), so
replications built on the fitted effects reproduce part of each observation's own noise. The
observed data then sit closer to their replications than new data would, the per-observation checks
(the share outside the 95% predictive interval) see the data as under-dispersed, and an
over-dispersion the model misses is hidden. New effects replicate what the model says a new cohort
of the same school would look like, which is what the observed cohort is if the model holds.
``effects="fitted"`` (reuse the draw's fitted effects) exists for comparison only.

**M0** (Normal on proportions, blind to n) is supported with its own likelihood: replicated
proportions ``~ Normal(Intercept + r_school, sigma)`` (not truncated to [0, 1], as the model), and
``y_rep = n_trials * proportion_rep`` (not an integer) goes through the same statistics.

The statistics (``STATISTICS``; school proportion = sum(y) / sum(n) over a school's observations,
size bands of the school's mean n_trials per observation as :func:`tables.band_of`):

- ``school_sd_le25`` / ``school_sd_26_100`` / ``school_sd_gt100``: SD across the band's schools of
  the school proportion (a band with fewer than two schools has no row);
- ``school_min`` / ``school_max``: the smallest and the largest school proportion;
- ``year_dispersion``: between-year dispersion within schools, the Pearson chi-square of each
  cohort's total around its school's level (the cohort SD);
- ``cohort_dispersion``: within-cohort dispersion across the subjects, the Pearson chi-square of each
  observation around its cohort's level, summed over cohorts with at least two observations;
- ``profile_dispersion``: the within-cohort residuals summed per school x subject over the years,
  Pearson chi-square: a persistent subject profile accumulates over the years, within-cohort noise
  does not, so this is the check with power against a missing profile (M2);
- ``outside_95``: the share of observations outside their 95% posterior predictive interval (equal
  tailed, from the replications) of the observation's deviation from its school's level (the same
  school fit as ``year_dispersion``). Its p-value compares the observed share with each replicated
  data set's share, each data set against intervals of the other replications (leave-one-out, so
  every share is out of sample), not with the nominal 0.05: a new value falls outside the
  2.5/97.5% quantiles of 400 draws with probability 0.0547 (``replicated_mean`` shows it). Why the
  deviation from the school's level and not the count itself: the draw's school effect was fitted
  to the school's own observations and has absorbed the average of its cohort and profile
  effects, so even with new cohort effects the observed counts sit closer to their replications
  than replicated counts do (M3 fitted to provinces drawn from it, ~160 schools, scored p = 0.98
  and 0.99 on the counts; at the province's size the p-value would reach 1). A deviation from the
  data set's own school level carries the same absorption in the observed and in every replicated
  data set.

A cohort's (school's) "level" in the Pearson statistics is a logit shift fitted per cohort (school)
on top of the data set's own year x subject logits (pooled over the province): the levels reproduce
the group's total, the year x subject pattern all of M2/M3 fit as fixed effects is taken out. Around
a plain cohort mean the subject offsets (math -0.3 on the logit scale), and their compression in
schools far from 50%, add a large deterministic chi-square that the replications share but that
dilutes the signal of a small profile effect. Every statistic is a function of a data set alone
(observed or replicated), computed the same way on both.
"""

from __future__ import annotations

import math

import arviz as az
import numba
import numpy as np
import polars as pl
from scipy import sparse
from scipy.special import expit, logit

from schoolquality_assets.analyses import tables
from schoolquality_assets.models import specs
from schoolquality_assets.models.specs import draws_matrix as _flat

DEFAULT_SEED = 20240601
DEFAULT_DRAWS = 400
CHUNK = 50  # replications generated per block (memory); a fixed size keeps a seed's draws identical
BAND_CODES = dict(zip(tables.BANDS, ("school_sd_le25", "school_sd_26_100", "school_sd_gt100")))
STATISTICS = {  # code -> description, in the table's order
    **{code: f"SD across schools (mean n per observation {band}) of the school proportion"
       for band, code in BAND_CODES.items()},
    "school_min": "Smallest school proportion",
    "school_max": "Largest school proportion",
    "year_dispersion": "Between-year dispersion within schools: Pearson chi-square of cohort totals around their "
                       "school",
    "cohort_dispersion": "Within-cohort dispersion across subjects: Pearson chi-square around the cohort's level",
    "profile_dispersion": "Persistent subject profile: within-cohort residuals summed per school x subject, chi-square",
    "outside_95": "Share of observations outside the 95% posterior predictive interval of their deviation from the "
                  "school's level",
}
COLUMNS = ["model", "statistic", "description", "observed", "replicated_mean", "replicated_lower",
           "replicated_upper", "p_value", "draws"]
SCHEMA = {"model": pl.Utf8, "statistic": pl.Utf8, "description": pl.Utf8, "observed": pl.Float64,
          "replicated_mean": pl.Float64, "replicated_lower": pl.Float64, "replicated_upper": pl.Float64,
          "p_value": pl.Float64, "draws": pl.Int64}
NEW_EFFECTS = {"m2": "cohort effects", "m3": "cohort and profile effects"}  # what replication draws anew
NEWTON_STEPS, MAX_STEP, LEVEL_BOUND = 12, 2.0, 12.0


# ---------------------------------------------------------------- the observations' structure
def _onehot(index: np.ndarray, groups: int) -> sparse.csr_matrix:
    """(obs, group) indicator matrix: ``y @ A`` sums each row of ``y`` by group."""
    return sparse.csr_matrix((np.ones(index.size), (np.arange(index.size), index)), shape=(index.size, groups))


def _codes(values: pl.Series) -> tuple[np.ndarray, int]:
    levels, index = np.unique(values.to_numpy().astype(str), return_inverse=True)
    return index.astype(np.int64), len(levels)


class Layout:
    """The analysis sample in the models' observation order, with its groupings as indicator
    matrices (school, cohort, school x subject, year x subject cell)."""

    def __init__(self, sample: pl.DataFrame):
        frame = sample.sort("school_id", "year", "subject")  # specs.model_input's order
        self.frame = frame
        self.n = frame["n_trials"].to_numpy().astype(np.float64)
        self.y = frame["y_success"].to_numpy().astype(np.float64)
        self.school, self.n_school = _codes(frame["school_id"])
        self.cohort, self.n_cohort = _codes(frame["school_year_id"])
        self.profile, self.n_profile = _codes(frame["school_subject_id"])
        self.cell, self.n_cell = _codes(frame["year_subject"])
        self.A_school = _onehot(self.school, self.n_school)
        self.A_cohort = _onehot(self.cohort, self.n_cohort)
        self.A_profile = _onehot(self.profile, self.n_profile)
        self.A_cell = _onehot(self.cell, self.n_cell)
        self.n_of_school = self.n @ self.A_school
        self.n_of_cell = self.n @ self.A_cell
        obs_per_cohort = np.bincount(self.cohort, minlength=self.n_cohort)
        self.multi_obs = obs_per_cohort[self.cohort] >= 2                      # observations in cohorts of 2+
        cohorts_per_school = np.bincount(self.school[np.unique(self.cohort, return_index=True)[1]],
                                         minlength=self.n_school)
        cohort_school = np.zeros(self.n_cohort, dtype=np.int64)
        cohort_school[self.cohort] = self.school
        self.multi_cohort = cohorts_per_school[cohort_school] >= 2            # cohorts of schools with 2+
        mean_n = (frame.group_by("school_id", maintain_order=True)
                  .agg(pl.col("n_trials").mean().alias("mean_n"))
                  .sort("school_id")
                  .select(tables.band_of(pl.col("mean_n")).alias("band"))["band"].to_numpy())
        self.bands = {band: mean_n == band for band in tables.BANDS}


def _levels(y: np.ndarray, n: np.ndarray, offset: np.ndarray, A: sparse.csr_matrix, group: np.ndarray):
    """Per data set and group, the logit level a with sum n * expit(a + offset) = sum y (Newton,
    vectorised, until no level moves by more than 1e-9; a group with no successes or no failures sits at
    -/+ LEVEL_BOUND); returns the residuals y - n q and binomial variances n q (1 - q)."""
    total, trials = y @ A, n @ A
    empirical = np.clip((total + 0.5) / (trials + 1.0), 1e-6, 1 - 1e-6)   # M0's totals may leave [0, n]
    a = logit(empirical) - ((n * offset) @ A) / np.maximum(trials, 1e-12)
    a = np.where(total <= 0, -LEVEL_BOUND, np.where(total >= trials, LEVEL_BOUND, a))
    a = np.clip(a, -LEVEL_BOUND, LEVEL_BOUND)
    a = _newton(a, np.ascontiguousarray(total, dtype=np.float64), n, np.ascontiguousarray(offset, dtype=np.float64),
                group, NEWTON_STEPS, MAX_STEP, LEVEL_BOUND)
    # a group's level sits at least half a success from 0 and from all: a group with none (or, in M0's
    # replications, fewer than none) then adds ~n q to the chi-square, not (y - n q)^2 / ~0
    floor = (0.5 / np.maximum(trials, 1.0))[group]
    q = np.clip(expit(a[:, group] + offset), floor, 1 - floor)
    return y - n * q, n * q * (1 - q)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _newton(a, total, n, offset, group, steps, max_step, bound):
    """The Newton steps of :func:`_levels` for every data set at once, one pass over the
    observations per step (no (sets, obs) temporaries): q = expit(a[group] + offset), each group's
    gap sum(n q) - total and slope sum(n q (1 - q)), a step clipped to ``max_step``, levels clipped
    to ``bound``; until no level inside the bounds moves by 1e-9 or more."""
    a = a.copy()
    sets, groups = a.shape
    gap, slope = np.empty(groups), np.empty(groups)
    for _ in range(steps):
        moved = 0.0
        for s in range(sets):
            gap[:] = 0.0
            slope[:] = 0.0
            for i in range(group.size):
                g = group[i]
                x = a[s, g] + offset[s, i]
                if x >= 0.0:
                    q = 1.0 / (1.0 + math.exp(-x))
                else:
                    e = math.exp(x)
                    q = e / (1.0 + e)
                gap[g] += n[i] * q
                slope[g] += n[i] * q * (1.0 - q)
            for g in range(groups):
                step = min(max((gap[g] - total[s, g]) / max(slope[g], 1e-12), -max_step), max_step)
                a[s, g] = min(max(a[s, g] - step, -bound), bound)
                if abs(a[s, g]) < bound:
                    moved = max(moved, abs(step))
        if moved < 1e-9:
            break
    return a


def _chi_square(resid: np.ndarray, var: np.ndarray) -> np.ndarray:
    return np.where(var > 1e-12, resid**2 / np.maximum(var, 1e-12), 0.0)


def statistics(y: np.ndarray, lay: Layout) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every statistic but ``outside_95`` of each data set, ``y`` (sets, obs) successes -> code ->
    (sets,), and each observation's deviation from its school's level (sets, obs), whose
    predictive intervals ``outside_95`` uses."""
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    n = lay.n
    prop = (y @ lay.A_school) / lay.n_of_school
    out = {}
    for band, code in BAND_CODES.items():
        if lay.bands[band].sum() >= 2:
            out[code] = prop[:, lay.bands[band]].std(axis=1, ddof=1)
    out["school_min"], out["school_max"] = prop.min(axis=1), prop.max(axis=1)
    cell = np.clip((y @ lay.A_cell) / lay.n_of_cell, 1e-6, 1 - 1e-6)
    offset = logit(cell)[:, lay.cell]                     # the data set's own year x subject logits
    from_school, var = _levels(y, n, offset, lay.A_school, lay.school)
    by_cohort = _chi_square(from_school @ lay.A_cohort, var @ lay.A_cohort)
    out["year_dispersion"] = (by_cohort * lay.multi_cohort).sum(axis=1)
    resid, var = _levels(y, n, offset, lay.A_cohort, lay.cohort)
    out["cohort_dispersion"] = (_chi_square(resid, var) * lay.multi_obs).sum(axis=1)
    out["profile_dispersion"] = _chi_square(resid @ lay.A_profile, var @ lay.A_profile).sum(axis=1)
    return out, from_school


# ---------------------------------------------------------------- replication
def _spec(model: str) -> specs.ModelSpec:
    key = model.lower()
    if key not in specs.MODELS:
        raise ValueError(f"unknown model {model!r}: one of {', '.join(k.upper() for k in specs.MODELS)}")
    return specs.MODELS[key]


def _kept(idata: az.InferenceData, draws: int) -> np.ndarray:
    """Flat (chain x draw) indices of ``draws`` posterior draws spread evenly (all when fewer)."""
    total = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    return np.unique(np.linspace(0, total - 1, min(draws, total)).round().astype(np.int64))


def _check_alignment(idata: az.InferenceData, lay: Layout, spec: specs.ModelSpec) -> None:
    """The sample must be the one the posterior was fitted to (same observations, same order)."""
    const, obs = idata.constant_data, idata.observed_data
    problem = None
    fitted_n = const["school_idx"].size if "school_idx" in const else "?"
    if fitted_n != lay.n.size:
        problem = f"{lay.n.size} observations in the sample, {fitted_n} in the fit"
    elif list(map(str, idata.posterior["school"].values)) != sorted(lay.frame["school_id"].unique().to_list()):
        problem = "the schools differ"
    elif spec.binomial and not (np.array_equal(const["n_trials"].values, lay.n)
                                and np.array_equal(obs["y_success"].values, lay.y)):
        problem = "n_trials or y_success differ"
    elif not spec.binomial and not np.allclose(obs["proportion"].values, lay.y / lay.n):
        problem = "the proportions differ"
    if problem:
        raise ValueError(f"the sample is not the one {spec.key.upper()} was fitted to: {problem}")


def _linear_predictor(post, draw: np.ndarray, lay: Layout, spec: specs.ModelSpec, const) -> np.ndarray:
    """(draws, obs): the draws' fixed and school effects (cohort and profile effects are added to it)."""
    eta = _flat(post["r_school"])[draw][:, lay.school]
    if not spec.binomial:
        return eta + _flat(post["Intercept"])[draw][:, None]
    eta = eta + _flat(post["b_Intercept"])[draw][:, None]
    if "b" in post:
        eta = eta + _flat(post["b"])[draw] @ const["X"].values.T
    return eta


def replicate(idata: az.InferenceData, sample: pl.DataFrame, model: str, seed: int = DEFAULT_SEED,
              draws: int = DEFAULT_DRAWS, effects: str = "new") -> az.InferenceData:
    """Replicated data sets, one per kept posterior draw, as an arviz InferenceData: groups
    ``posterior`` (the kept draws' scalar parameters), ``posterior_predictive`` (``y_success``, or
    ``proportion`` for M0; chain 1 x draw x obs), ``observed_data`` and ``constant_data``
    (``n_trials``), plus every statistic as ``T_<code>`` in ``observed_data`` and
    ``posterior_predictive``. ``effects``: "new" (cohort and profile effects drawn anew from their
    SDs; see the module docstring) or "fitted" (the draw's own, for comparison)."""
    if effects not in ("new", "fitted"):
        raise ValueError(f"effects must be 'new' or 'fitted', not {effects!r}")
    spec = _spec(model)
    lay = Layout(sample)
    _check_alignment(idata, lay, spec)
    post, const = idata.posterior, idata.constant_data
    keep = _kept(idata, draws)
    levels = [(f"sd_{level}", f"r_{level}", const[f"{level}_idx"].values)   # (SD, effects, observation's group)
              for level, used in (("cohort", spec.cohort), ("profile", spec.profile)) if used]
    sds = {sd: _flat(post[sd])[keep] for sd, _, _ in levels}
    sigma = None if spec.binomial else _flat(post["sigma"])[keep]
    rng = np.random.default_rng(seed)
    y_rep = np.empty((keep.size, lay.n.size), dtype=np.int32 if spec.binomial else np.float64)
    from_school = np.empty(y_rep.shape, dtype=np.float32)
    t_chunks = []
    for start in range(0, keep.size, CHUNK):
        rows = slice(start, min(start + CHUNK, keep.size))
        eta = _linear_predictor(post, keep[rows], lay, spec, const)
        for sd, effect, index in levels:
            if effects == "new":
                groups = post.sizes[post[effect].dims[-1]]
                draw = sds[sd][rows, None] * rng.standard_normal((eta.shape[0], groups))
            else:
                draw = _flat(post[effect])[keep[rows]]
            eta += draw[:, index]
        if sigma is None:
            y_rep[rows] = rng.binomial(lay.n.astype(np.int64), expit(eta))
        else:
            y_rep[rows] = lay.n * (eta + sigma[rows, None] * rng.standard_normal(eta.shape))
        t, from_school[rows] = statistics(y_rep[rows], lay)
        t_chunks.append(t)
    t_rep = {k: np.concatenate([t[k] for t in t_chunks]) for k in t_chunks[0]}
    t_obs, observed_from_school = statistics(lay.y, lay)
    t_obs = {k: v[0] for k, v in t_obs.items()}
    t_obs["outside_95"], t_rep["outside_95"] = outside_shares(observed_from_school[0].astype(np.float32), from_school)
    if spec.binomial:
        name, replicated, observed = "y_success", y_rep, lay.y.astype(np.int64)
    else:
        name, replicated, observed = "proportion", y_rep / lay.n, lay.y / lay.n
    scalars = [v for v in ("b_Intercept", "Intercept", *spec.sd_names) if v in post]
    return az.from_dict(
        posterior={v: _flat(post[v])[keep][None] for v in scalars},
        posterior_predictive={name: replicated[None]} | {f"T_{k}": v[None] for k, v in t_rep.items()},
        observed_data={name: observed} | {f"T_{k}": np.asarray(v) for k, v in t_obs.items()},
        constant_data={"n_trials": lay.n},
        dims={name: ["obs"], "n_trials": ["obs"]},
        coords={"obs": np.arange(lay.n.size)},
        attrs={"model": spec.key.upper(), "seed": seed, "effects": effects},
    )


def _loo_quantile(ordered: np.ndarray, rank: np.ndarray, q: float) -> np.ndarray:
    """Each data set's ``q`` quantile (linear rule) of the other S - 1 values of its column: the k-th
    smallest of the others is ordered[k] below the data set's own rank, else ordered[k + 1]."""
    S = ordered.shape[0]
    h = q * (S - 2)
    k = math.floor(h)

    def smallest(j: int) -> np.ndarray:
        return np.where(j < rank, ordered[j], ordered[min(j + 1, S - 1)])

    return smallest(k) + (h - k) * (smallest(min(k + 1, S - 2)) - smallest(k))


def outside_shares(observed: np.ndarray, replicated: np.ndarray, block: int = 4096) -> tuple[float, np.ndarray]:
    """Share of observations outside their equal-tailed 95% interval of the replications
    (``np.quantile``'s linear rule): the observed data's against the intervals of all S replications,
    and each replicated data set's against the intervals of the other S - 1 (leave-one-out). Each
    share is then out of sample, as the observed one is: against intervals that include the data
    set itself the share would be exactly 0.05 on average, while a new value falls outside the
    2.5/97.5% quantiles of S draws with probability about (2 + 0.05 (S - 1)) / (S + 1) (0.0547 for
    S = 400)."""
    S, N = replicated.shape
    if S < 3:
        return math.nan, np.full(S, math.nan)
    lower, upper = np.quantile(replicated, [0.025, 0.975], axis=0)
    observed_share = float(((observed < lower) | (observed > upper)).mean())
    count = np.zeros(S)
    for start in range(0, N, block):
        cols = replicated[:, start:start + block]
        order = np.argsort(cols, axis=0, kind="stable")
        ordered = np.take_along_axis(cols, order, axis=0)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(S)[:, None], axis=0)
        lower, upper = (_loo_quantile(ordered, rank, q) for q in (0.025, 0.975))
        count += ((cols < lower) | (cols > upper)).sum(axis=1)
    return observed_share, count / N


# ---------------------------------------------------------------- the table
def p_value(t_rep: np.ndarray, t_obs: float) -> float:
    """Posterior predictive p-value P(T_rep >= T_obs), ties counted half."""
    t_rep = np.asarray(t_rep, dtype=np.float64).ravel()
    return float((t_rep > t_obs).mean() + 0.5 * (t_rep == t_obs).mean())


def summarise(ppc: az.InferenceData) -> pl.DataFrame:
    """The table of a :func:`replicate` result: arviz's summary (mean, 2.5/97.5% quantiles) of each
    replicated statistic, the observed value and the p-value."""
    names = [f"T_{code}" for code in STATISTICS if f"T_{code}" in ppc.posterior_predictive]
    pp = ppc.posterior_predictive
    means = az.summary(ppc, group="posterior_predictive", var_names=names, kind="stats", round_to="none")
    eti = az.summary(ppc, group="posterior_predictive", var_names=names, kind="stats", stat_focus="median",
                     hdi_prob=0.95, round_to="none")
    draws = pp.sizes["chain"] * pp.sizes["draw"]
    rows = []
    for name in names:
        code, observed = name[2:], float(ppc.observed_data[name].values.ravel()[0])
        rows.append({"model": ppc.attrs["model"], "statistic": code, "description": STATISTICS[code],
                     "observed": observed, "replicated_mean": float(means.loc[name, "mean"]),
                     "replicated_lower": float(eti.loc[name, "eti_2.5%"]),
                     "replicated_upper": float(eti.loc[name, "eti_97.5%"]),
                     "p_value": p_value(pp[name].values, observed), "draws": draws})
    return pl.DataFrame(rows, schema=SCHEMA)


def posterior_predictive_checks(idata: az.InferenceData, sample: pl.DataFrame, model: str,
                                seed: int = DEFAULT_SEED, draws: int = DEFAULT_DRAWS, *,
                                effects: str = "new") -> pl.DataFrame:
    """One row per statistic (``STATISTICS``): ``observed``, the replicated statistic's mean and
    2.5/97.5% quantiles, the p-value P(T_rep >= T_obs) (ties half) and the replications used.
    ``draws`` posterior draws (spread evenly over the chains) each give one replicated data set;
    ``seed`` makes the replications reproducible."""
    return summarise(replicate(idata, sample, model, seed=seed, draws=draws, effects=effects))


def ppc_flags(table: pl.DataFrame, lower: float = 0.025, upper: float = 0.975) -> list[str]:
    """Statistics whose p-value lies outside [lower, upper] (their codes; ``MODEL:code`` when the
    table holds more than one model)."""
    flagged = table.filter((pl.col("p_value") < lower) | (pl.col("p_value") > upper))
    several = table["model"].n_unique() > 1
    return [f"{m}:{s}" if several else s for m, s in zip(flagged["model"], flagged["statistic"])]


def _number(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def ppc_finding(table: pl.DataFrame, lower: float = 0.025, upper: float = 0.975) -> str:
    """The checks in words, one sentence per model, for the report."""
    if table.height == 0:
        return "No posterior predictive checks were run."
    sentences = []
    for model in table["model"].unique(maintain_order=True).to_list():
        rows = table.filter(pl.col("model") == model)
        flagged = rows.filter((pl.col("p_value") < lower) | (pl.col("p_value") > upper))
        new = NEW_EFFECTS.get(model.lower())
        head = (f"{model}: {rows.height} posterior predictive checks on {int(rows['draws'][0])} replicated data sets"
                + (f" (with new {new})" if new else ""))
        if flagged.height == 0:
            sentences.append(f"{head}; every p-value lies within [{lower}, {upper}]: the replications reproduce "
                             "the data.")
            continue
        parts = []
        for r in flagged.iter_rows(named=True):
            direction = "more than" if r["p_value"] < lower else "less than"
            parts.append(f"{r['statistic']} ({r['description']}) is {_number(r['observed'])}, {direction} the model "
                         f"replicates ({_number(r['replicated_mean'])}, 95% {_number(r['replicated_lower'])} to "
                         f"{_number(r['replicated_upper'])}; p = {r['p_value']:.3f})")
        sentences.append(f"{head}; {flagged.height} outside [{lower}, {upper}]: " + "; ".join(parts) + ".")
    return " ".join(sentences)
