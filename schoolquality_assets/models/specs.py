"""The page's four models: Stan data, initial values, and posteriors as arviz InferenceData.

Pure functions (no Dagster). Posterior variables follow brms's names:
``b_Intercept`` and ``b[coef]`` (fixed effects of the uncentred design), ``sd_school``,
``sd_cohort``, ``sd_profile`` (and ``sigma`` for M0), and the group-level deviations
``r_school[school]``, ``r_cohort[cohort]``, ``r_profile[profile]``. The linear predictor
of observation i is ``b_Intercept + X[i] @ b + r_school + r_cohort + r_profile``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import numpy as np
import polars as pl
from scipy.special import gammaln

from schoolquality_assets.engine.base import Draws
from schoolquality_assets.models import design

# The programs live in stan/ at the top of the checkout; an installed wheel carries them as
# schoolquality_assets/stan/ (pyproject.toml). Not site-packages/stan: that is PyStan's package.
_PACKAGED_STAN = Path(__file__).resolve().parents[1] / "stan"
STAN_DIR = _PACKAGED_STAN if (_PACKAGED_STAN / "m1_school.stan").exists() else Path(__file__).resolve().parents[2] / "stan"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    key: str
    stan_file: str
    description: str
    fixed_effects: bool = False  # year_subject contrasts
    cohort: bool = False         # school x year effects
    profile: bool = False        # school x subject effects
    binomial: bool = True        # False: Normal on proportions (M0)
    # Stan's target acceptance rate is at least this for the model (the settings' adapt_delta when higher).
    min_adapt_delta: float = 0.0

    @property
    def path(self) -> Path:
        return STAN_DIR / self.stan_file

    @property
    def sd_names(self) -> list[str]:
        names = ["sd_school"] + ["sd_cohort"] * self.cohort + ["sd_profile"] * self.profile
        return names + ([] if self.binomial else ["sigma"])


MODELS = {
    "m0": ModelSpec(key="m0", stan_file="m0_normal.stan", description="Normal on proportions, school only (ignores n)",
                    binomial=False),
    "m1": ModelSpec(key="m1", stan_file="m1_school.stan", description="Binomial, school only"),
    "m2": ModelSpec(key="m2", stan_file="m2_cohort.stan", description="Binomial, year x subject + school + cohort",
                    fixed_effects=True, cohort=True),
    # M3 on the full built-in province (benchmarks/README.md, "M3 on every school"): at adapt_delta
    # 0.8 two chains in eight adapted step sizes >= 0.0985 and went on with trees 2-4 times deeper
    # (up to depth 10) than the others' constant depth 6, holding every checkpoint back; at 0.9
    # every chain stayed at depth 6 (step sizes 0.071-0.093), so no iteration cost more.
    "m3": ModelSpec(key="m3", stan_file="m3_profile.stan", description="Binomial, M2 + subject profile",
                    fixed_effects=True, cohort=True, profile=True, min_adapt_delta=0.9),
}


@dataclass
class ModelInput:
    """Stan data plus the labels that become the InferenceData coordinates."""

    data: dict
    coords: dict[str, list[str]]
    frame: pl.DataFrame


def design_matrix(labels: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Treatment contrasts of a factor (first sorted level is the reference), as brms."""
    levels = sorted(labels.unique().to_list())
    values = labels.to_numpy()
    columns = [f"{labels.name}{level}" for level in levels[1:]]
    X = np.stack([(values == level).astype(float) for level in levels[1:]], axis=1) if columns else np.zeros((len(values), 0))
    return X, columns


def fixed_design(spec: ModelSpec, frame: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The model's year_subject contrasts (none for the school-only models)."""
    return design_matrix(frame["year_subject"]) if spec.fixed_effects else (np.zeros((frame.height, 0)), [])


def level_index(values: pl.Series) -> tuple[np.ndarray, list[str]]:
    """1-based index of each value into its sorted distinct levels, and the levels (Stan's group order)."""
    levels = sorted(values.unique().to_list())
    lookup = {v: i + 1 for i, v in enumerate(levels)}
    return np.array([lookup[v] for v in values.to_list()], dtype=np.int64), levels


def model_input(spec: ModelSpec, sample: pl.DataFrame, prior_sds: dict[str, float] | None = None) -> ModelInput:
    """Stan data for ``spec`` from an analysis sample (cleaned observations).

    ``prior_sds`` (school and cohort SD, e.g. a previous posterior's means) steer the cohort
    models' parameterisation and multipliers; by default they are estimated from the data.
    """
    if sample.height == 0:
        raise ValueError("the analysis sample is empty: nothing to fit")
    frame = sample.sort("school_id", "year", "subject")
    school, schools = level_index(frame["school_id"])
    data: dict = {"N": frame.height, "J_school": len(schools), "school": school}
    coords: dict[str, list[str]] = {"school": schools}
    if not spec.binomial:
        proportion = (frame["y_success"] / frame["n_trials"]).to_numpy()
        data |= {"proportion": proportion, "prior_intercept_location": float(np.round(np.median(proportion), 1))}
        return ModelInput(data, coords, frame)
    X, coefs = fixed_design(spec, frame)
    if spec.fixed_effects and not coefs:
        raise ValueError(f"{spec.key.upper()} needs at least two year_subject cells; the sample has one")
    data |= {
        "n_trials": frame["n_trials"].to_numpy().astype(np.int64),
        "y_success": frame["y_success"].to_numpy().astype(np.int64),
        "K": X.shape[1],
        "X": X,
        "prior_b_sd": 0.0,  # flat b, as brms; > 0 gives b ~ normal(0, prior_b_sd) (calibration only)
    }
    coords["coef"] = coefs
    if spec.cohort:
        cohort, cohorts = level_index(frame["school_year_id"])
        first = frame.with_columns(cohort=pl.Series(cohort)).group_by("cohort").agg(pl.col("school_id").first())
        owner = dict(zip(first["cohort"].to_list(), first["school_id"].to_list()))
        school_of = {s: i + 1 for i, s in enumerate(schools)}
        data |= {
            "J_cohort": len(cohorts),
            "cohort": cohort,
            "cohort_school": np.array([school_of[owner[c + 1]] for c in range(len(cohorts))], dtype=np.int64),
        }
        coords["cohort"] = cohorts
    if spec.profile:
        profile, profiles = level_index(frame["school_subject_id"])
        data |= {"J_profile": len(profiles), "subject_profile": profile}
        coords["profile"] = profiles
    if spec.cohort:
        data |= design.cohort_design(X, data["cohort"], data["cohort_school"], data["J_cohort"], len(schools))
        sds = dict(prior_sds or design.moment_sds(data))
        choice, scales = design.parameterisation(data, sds)
        log_sd = [1 / np.sqrt(2 * data["J_school"]), 1 / np.sqrt(2 * data["J_cohort"])]
        if spec.profile:
            sds["profile"] = sds.get("profile") or design.moment_profile_sd(data)
            profile_choice, profile_scales, log_sd_profile_scale = design.profile_parameterisation(data, sds["profile"])
            choice, scales, log_sd = choice | profile_choice, scales | profile_scales, log_sd + [log_sd_profile_scale]
        data |= choice | scales | {"log_sd_scale": np.array(log_sd), "emit_eta": 0, "group_sds": sds}
    return ModelInput(data, coords, frame)


STAN_ONLY_IN_PYTHON = ("X", "school", "group_sds")  # kept for Python, not read by the cohort programs


def stan_data(spec: ModelSpec, mi: ModelInput, collapse: bool = True) -> dict:
    """The data block's variables (the cohort programs take the design in distinct rows, not X).

    With ``collapse`` a binomial model whose linear predictor depends on the school alone (M1:
    no fixed effects, no cohort or profile) gets one row per school, (Σ y, Σ n): the likelihood
    is the same up to a constant (the binomial coefficients), so the posterior is the same, and
    ~20 likelihood terms per school become one. M0 (Normal, school only) likewise gets each
    school's count, mean and within sum of squares; without ``collapse`` every observation is a
    row of one (count 1, sum of squares 0), the program's literal likelihood. Everything else
    (LOO, initial values, the InferenceData) keeps the observation rows.
    """
    drop = STAN_ONLY_IN_PYTHON if spec.cohort else ("group_sds",)
    data = {k: v for k, v in mi.data.items() if k not in drop}
    if collapse and school_only_binomial(spec, mi):
        data |= school_totals(mi.data)
    if not spec.binomial:
        data |= school_moments(mi.data) if collapse else {"n_obs": np.ones(mi.data["N"], dtype=np.int64),
                                                          "ss_within": np.zeros(mi.data["N"])}
    return data


def school_only_binomial(spec: ModelSpec, mi: ModelInput) -> bool:
    return spec.binomial and not (spec.cohort or spec.profile) and mi.data["K"] == 0


def school_moments(d: dict) -> dict:
    """Sufficient statistics of M0 (Normal, school only): per school the count, mean proportion and
    the sum of squares about it."""
    J, idx, y = d["J_school"], d["school"] - 1, d["proportion"]
    count = np.bincount(idx, minlength=J)
    mean = np.bincount(idx, weights=y, minlength=J) / count
    return {"N": J, "school": np.arange(1, J + 1, dtype=np.int64), "proportion": mean,
            "n_obs": count.astype(np.int64), "ss_within": np.bincount(idx, weights=(y - mean[idx]) ** 2, minlength=J)}


def school_totals(d: dict) -> dict:
    """Sufficient statistics of a school-only binomial model: one row per school, (Σ y, Σ n)."""
    J = d["J_school"]
    return {
        "N": J,
        "school": np.arange(1, J + 1, dtype=np.int64),
        "y_success": np.bincount(d["school"] - 1, weights=d["y_success"], minlength=J).astype(np.int64),
        "n_trials": np.bincount(d["school"] - 1, weights=d["n_trials"], minlength=J).astype(np.int64),
        "X": np.zeros((J, 0)),
    }


SD_DISPERSION = 1.0   # each chain's log SDs start within +-1 of the data-driven value (initial_values)


def initial_values(spec: ModelSpec, mi: ModelInput, chains: int, seed: int) -> list[dict]:
    """Data-driven starting points (empirical logits), dispersed per chain.

    Stan's default uniform(-2, 2) inits put ~28k effects far from the data, and early
    warmup on the full sample then runs at tree depth 10 for a long time. The effects start
    near the data (jitter 0.05); each chain's SDs start at exp(u), u ~ uniform(-1, 1)
    (``SD_DISPERSION``), times the spread of its effects, so that chains start apart in
    the stiffest directions and R-hat can see a transient they would otherwise share.
    """
    rng = np.random.default_rng(seed)
    d = mi.data
    if spec.binomial:
        y, n = d["y_success"], d["n_trials"]
        obs = np.log((y + 0.5) / (n - y + 0.5))
    else:
        obs = d["proportion"]
    school_mean = _group_mean(obs, d["school"], d["J_school"])
    grand = float(obs.mean())
    inits = []
    for _ in range(chains):
        disperse = lambda: float(np.exp(rng.uniform(-SD_DISPERSION, SD_DISPERSION)))  # noqa: E731
        mu_school = grand + 0.8 * (school_mean - grand) + rng.normal(0.0, 0.05, d["J_school"])
        intercept = float(mu_school.mean())
        init = {"Intercept": intercept, "sd_school": max(float(np.std(mu_school - intercept)), 0.05) * disperse(),
                "mu_school": mu_school}
        if spec.binomial:
            init["delta" if spec.cohort else "b"] = np.zeros(d["K"])
        else:
            init["sigma"] = max(float(np.std(obs - mu_school[d["school"] - 1])), 0.01) * disperse()
        if spec.cohort:
            cohort_mean = _group_mean(obs, d["cohort"], d["J_cohort"])
            parent = mu_school[d["cohort_school"] - 1]
            dev = cohort_mean - school_mean[d["cohort_school"] - 1]
            mu_cohort = parent + 0.7 * dev + rng.normal(0.0, 0.05, d["J_cohort"])
            init["sd_cohort"] = max(float(np.std(mu_cohort - parent)), 0.05) * disperse()
            # with b = 0 a school's prior mean is the intercept and a cohort's its school's mean
            init |= _split(init.pop("mu_school"), intercept, init["sd_school"], d["school_c"], d["school_nc"], "school")
            init |= _split(mu_cohort, parent, init["sd_cohort"], d["cohort_c"], d["cohort_nc"], "cohort")
        if spec.profile:
            init["sd_profile"] = 0.1 * disperse()
            z = rng.normal(0.0, 0.5, d["J_profile"])
            init |= {k: v for k, v in {"r_profile_c": init["sd_profile"] * z[d["profile_c"] - 1],
                                       "z_profile": z[d["profile_nc"] - 1]}.items() if v.size}
        if spec.cohort:  # M2 and M3 sample the SDs on the log scale
            init |= {f"log_{k}": np.log(init.pop(k)) for k in spec.sd_names}
        inits.append(init)
    return inits


def _split(mu: np.ndarray, mean, sd: float, centred: np.ndarray, noncentred: np.ndarray, level: str) -> dict:
    """Initial values of a level's centred means and non-centred z from its group means."""
    z = (mu - mean) / sd
    out = {f"mu_{level}_c": mu[centred - 1], f"z_{level}": z[noncentred - 1]}
    return {k: v for k, v in out.items() if v.size}  # httpstan misreads empty arrays in inits


def draws_matrix(da) -> np.ndarray:
    """(chain, draw, *dims) -> (chain * draw, *dims), from a DataArray or an array."""
    v = np.asarray(da.values if hasattr(da, "values") else da)
    return v.reshape(-1, *v.shape[2:])


def _group_mean(values: np.ndarray, index: np.ndarray, groups: int) -> np.ndarray:
    total = np.bincount(index - 1, weights=values, minlength=groups)
    count = np.bincount(index - 1, minlength=groups)
    return total / np.maximum(count, 1)


def to_inference_data(spec: ModelSpec, mi: ModelInput, draws: Draws) -> az.InferenceData:
    """Convert streamed draws into the brms-named posterior with data-named coordinates."""
    p = draws.params
    d = mi.data
    intercept = p["Intercept"]
    posterior = {"Intercept": intercept}
    dims: dict[str, list[str]] = {"r_school": ["school"]}
    effects = group_effects(spec, p, d)
    posterior["r_school"] = effects["r_school"]
    for name in spec.sd_names:
        posterior[name] = p[name]
    if spec.binomial:
        posterior["b_Intercept"] = p["b_Intercept"]
        if d["K"]:
            posterior["b"] = p["b"]
            dims["b"] = ["coef"]
    if spec.cohort:
        posterior["r_cohort"] = effects["r_cohort"]
        dims["r_cohort"] = ["cohort"]
    if spec.profile:
        posterior["r_profile"] = design.profile_effects(_with_empty(p, d), d)
        dims["r_profile"] = ["profile"]
    constant = {"school_idx": d["school"] - 1}
    const_dims = {"school_idx": ["obs"]}
    if spec.binomial:
        constant |= {"n_trials": d["n_trials"], "X": d["X"]}
        const_dims |= {"n_trials": ["obs"], "X": ["obs", "coef"]}
        observed = {"y_success": d["y_success"]}
    else:
        observed = {"proportion": d["proportion"]}
    if spec.cohort:
        constant["cohort_idx"] = d["cohort"] - 1
        const_dims["cohort_idx"] = ["obs"]
    if spec.profile:
        constant["profile_idx"] = d["subject_profile"] - 1
        const_dims["profile_idx"] = ["obs"]
    coords = dict(mi.coords) | {"obs": np.arange(d["N"])}
    idata = az.from_dict(
        posterior=posterior,
        sample_stats=draws.sample_stats,
        observed_data=observed,
        constant_data=constant,
        coords=coords,
        dims=dims | {k: v for k, v in const_dims.items()} | {k: ["obs"] for k in observed},
        attrs={
            "model": spec.key,
            "stan_file": spec.stan_file,
            "engine": draws.engine,
            "compile_seconds": draws.compile_seconds,
            "sample_seconds": draws.sample_seconds,
            **{f"sampler_{k}": str(v) for k, v in draws.settings.as_dict().items()},
        },
    )
    return idata


def group_effects(spec: ModelSpec, p: dict, d: dict, cohorts: bool = True) -> dict[str, np.ndarray]:
    """r_school (and, for the cohort models with ``cohorts``, r_cohort) from a model's draws."""
    if spec.cohort:  # the group means carry their level's fixed effects (see m2_cohort.stan)
        return design.group_effects(_with_empty(p, d), d, cohorts=cohorts)
    return {"r_school": p["mu_school"] - p["Intercept"][..., None]}


def _with_empty(p: dict, d: dict) -> dict:
    """Draws with the level vectors that have no columns (every group centred, say) as empty arrays."""
    shape = p["Intercept"].shape
    sizes = {"mu_school_c": len(d["school_c"]), "z_school": len(d["school_nc"]),
             "mu_cohort_c": len(d["cohort_c"]), "z_cohort": len(d["cohort_nc"])}
    if "profile_c" in d:
        sizes |= {"r_profile_c": len(d["profile_c"]), "z_profile": len(d["profile_nc"])}
    return p | {k: np.empty(shape + (0,)) for k, n in sizes.items() if n == 0 and k not in p}


def linear_predictor(idata: az.InferenceData, obs: slice | np.ndarray = slice(None)) -> np.ndarray:
    """Linear predictor, shape (chain, draw, obs), for the selected observations."""
    post, const = idata.posterior, idata.constant_data
    school = const["school_idx"].values[obs]
    eta = post["r_school"].values[..., school]
    if "b_Intercept" in post:
        eta = eta + post["b_Intercept"].values[..., None]
        if "b" in post:
            eta = eta + np.einsum("cdk,nk->cdn", post["b"].values, const["X"].values[obs])
    else:
        eta = eta + post["Intercept"].values[..., None]
    if "r_cohort" in post:
        eta = eta + post["r_cohort"].values[..., const["cohort_idx"].values[obs]]
    if "r_profile" in post:
        eta = eta + post["r_profile"].values[..., const["profile_idx"].values[obs]]
    return eta


def binomial_log_kernel(y: np.ndarray, n: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """y log p + (n - y) log(1 - p), p = inv_logit(eta), elementwise over the last axis (y, n per
    observation): -n log1p(exp(-|eta|)) - y max(-eta, 0) - (n - y) max(eta, 0), one exp and one
    log1p per value (half the cost of two log_expit; equal to them to ~1e-15 relative)."""
    out = np.abs(eta)
    np.negative(out, out=out)
    np.exp(out, out=out)
    np.log1p(out, out=out)
    out *= -n
    out -= y * np.maximum(-eta, 0.0)
    out -= (n - y) * np.maximum(eta, 0.0)
    return out


def log_likelihood(idata: az.InferenceData, obs: slice | np.ndarray = slice(None)) -> np.ndarray:
    """Pointwise log-likelihood (chain, draw, obs), computed in NumPy from the draws."""
    eta = linear_predictor(idata, obs)
    if "y_success" in idata.observed_data:
        y = idata.observed_data["y_success"].values[obs]
        n = idata.constant_data["n_trials"].values[obs]
        log_choose = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
        return log_choose + binomial_log_kernel(y, n, eta)
    y = idata.observed_data["proportion"].values[obs]
    sigma = idata.posterior["sigma"].values[..., None]
    return -0.5 * np.log(2 * np.pi) - np.log(sigma) - 0.5 * ((y - eta) / sigma) ** 2


def model_settings(spec: ModelSpec, settings, progress=print):
    """``settings`` as this model samples with them: at least the model's ``min_adapt_delta``
    (M3's 0.9). Every fit of the model goes through here, SBC's included."""
    if settings.adapt_delta >= spec.min_adapt_delta:
        return settings
    progress(f"{spec.key.upper()} samples with adapt_delta {spec.min_adapt_delta} (the model's minimum; "
             f"settings: {settings.adapt_delta})")
    return dataclasses.replace(settings, adapt_delta=spec.min_adapt_delta)


def fit(spec: ModelSpec, sample: pl.DataFrame, settings, progress=print, limits=None,
        prior_sds: dict[str, float] | None = None, also_compile: tuple[ModelSpec, ...] = ()) -> az.InferenceData:
    """Fit ``spec`` to an analysis sample and return its posterior.

    With ``settings.until_converged`` and gate ``limits``, sampling stops at the first
    checkpoint where the blocking gate holds (attrs ``converged`` / ``stop_status`` say how it
    ended); otherwise it runs ``settings.draws`` per chain. ``also_compile``: the run's other
    models (their programs are compiled with this one's, on every core, when any is missing).
    """
    mi = model_input(spec, sample, prior_sds)
    draws = sample_model(spec, mi, settings, progress, limits, also_compile=also_compile)
    idata = to_inference_data(spec, mi, draws)
    if draws.verdict is not None:
        idata.attrs |= {"converged": int(draws.verdict.passed), "stop_status": draws.verdict.status}
    if draws.warmup_seconds is not None:
        idata.attrs["warmup_seconds"] = draws.warmup_seconds
    return idata


def sample_model(spec: ModelSpec, mi: ModelInput, settings, progress=print, limits=None, data: dict | None = None,
                 path: Path | None = None, also_compile: tuple[ModelSpec, ...] = ()) -> Draws:
    """The production procedure on one model input: the model's settings, dispersed initial values,
    and (with ``settings.until_converged`` and ``limits``) the stop rule of the blocking gate.
    ``data`` / ``path`` replace the Stan data and program (SBC's proper prior on b, a variant)."""
    from schoolquality_assets.engine.base import StopRule
    from schoolquality_assets.engine.sampling import sample as run_sampler

    settings = model_settings(spec, settings, progress)
    stop = None
    if settings.until_converged and limits is not None:
        stop = StopRule.for_settings(settings, convergence_judge(spec, mi, limits))
    return run_sampler(path or spec.path, stan_data(spec, mi) if data is None else data, settings,
                       inits=initial_values(spec, mi, settings.chains, settings.seed), progress=progress, stop=stop,
                       also_compile=tuple(s.path for s in also_compile if s.key != spec.key),
                       init_for_seed=lambda seed: initial_values(spec, mi, 1, seed)[0])


GATED = ("Intercept", "b_Intercept", "b", "sd_school", "sd_cohort", "sd_profile", "sigma", "mu_school",
         "mu_school_c", "z_school")


def convergence_judge(spec: ModelSpec, mi: ModelInput, limits):
    """The stop rule's judge: the blocking gate (diagnostics.gate) on the gated quantities so far."""
    from schoolquality_assets.engine.base import SAMPLE_STATS, Verdict, columns
    from schoolquality_assets.models import diagnostics

    def judge(views: dict, n: int, elapsed: float):
        p = columns(views, list(GATED) + ["divergent__", "energy__"])
        post = {k: p[k] for k in ("Intercept", "b_Intercept", "b", "sigma", *spec.sd_names) if k in p}
        post["r_school"] = group_effects(spec, p, mi.data, cohorts=False)["r_school"]
        dims = {"r_school": ["school"]} | ({"b": ["coef"]} if "b" in post else {})
        coords = {"school": mi.coords["school"], "coef": mi.coords.get("coef", [])}
        stats = {SAMPLE_STATS[k]: p[k] for k in ("divergent__", "energy__")}
        idata = az.from_dict(posterior=post, sample_stats=stats, coords=coords, dims=dims)
        summary, failed, _ = diagnostics.screened_gate(idata, limits)
        f = lambda v, spec=".4f": "nan" if v is None else format(v, spec)  # noqa: E731
        where = (f"{n} draws/chain, {elapsed:.0f} s: max R-hat of the hyperparameters {f(summary['max_rhat_hyper'])} "
                 f"(limit {limits.max_rhat}), of r_school {f(summary['r_school_max_rhat'])} "
                 f"(limit {f(summary['r_school_rhat_limit'])}; block ratio {f(summary['r_school_ratio_bulk'], '.3f')} / "
                 f"limit {f(summary['r_school_ratio_limit'], '.3f')}), {summary['n_rhat_failing']} failing R-hat; "
                 f"min ESS bulk {f(summary['min_ess_bulk'], '.0f')} / tail {f(summary['min_ess_tail'], '.0f')} / "
                 f"2.5-97.5% quantiles {f(summary['min_ess_q025_q975'], '.0f')} "
                 f"({summary['n_ess_failing']} below {limits.min_ess:.0f})"
                 + (f"; non-finite: {summary['non_finite']}" if summary["n_non_finite"] else ""))
        if (summary["divergences"] or 0) > limits.max_divergences:
            return Verdict(False, True, f"{summary['divergences']} divergent transitions at {where}: more draws "
                           "cannot remove them (raise adapt_delta or reparameterise)")
        if not failed:
            return Verdict(True, True, f"gate holds at {where}")
        worst = "; worst: " + ", ".join(filter(None, [summary["worst_rhat"], summary["worst_ess"]]))
        return Verdict(False, False, f"not yet at {where}{worst}")

    return judge


def save_posterior(idata: az.InferenceData, path: Path) -> None:
    """Write NetCDF atomically: readers see the previous file or the complete new one. Uncompressed:
    draws barely compress (M2 on the full province: 347 MB against 318 MB with zlib), and zlib made
    the write 19 s instead of 4 s and every read 3 s instead of 0.4 s (benchmarks/README.md)."""
    from schoolquality_assets.warehouse import atomic_path

    with atomic_path(Path(path)) as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf", compress=False)


class PosteriorRefused(RuntimeError):
    """The latest fit of a model failed its convergence gate: nothing may be built from it."""


def load_passed_posterior(path: Path, failed_path: Path) -> az.InferenceData:
    """The last posterior that passed its gate, unless a later fit failed (then refuse, and say why)."""
    if failed_path.exists():
        attrs = az.from_netcdf(str(failed_path), engine="h5netcdf").attrs
        raise PosteriorRefused(
            f"the latest fit ({failed_path.name}, run {attrs.get('run_id', '?')}) failed its convergence gate: "
            f"{attrs.get('gate_failures', '?')}. Failed draws: {failed_path}. Refit the model until it passes; "
            f"the older posterior that passed ({path.name}) is kept but not used in its place."
        )
    return load_posterior(path)


def previous_sds(path: Path) -> dict[str, float] | None:
    """Posterior means of the school, cohort (and profile) SDs of a passed posterior (to seed a
    rerun's scales)."""
    post = load_posterior(path).posterior
    if "sd_cohort" not in post:
        return None
    sds = {"school": float(post["sd_school"].mean()), "cohort": float(post["sd_cohort"].mean())}
    return sds | ({"profile": float(post["sd_profile"].mean())} if "sd_profile" in post else {})


def posterior_run_id(path: Path) -> str | None:
    """The run that fitted the posterior at ``path`` (read from the file's attributes only), or
    None when there is no posterior."""
    import h5netcdf

    if not Path(path).exists():
        return None
    with h5netcdf.File(str(path), "r") as f:
        value = f.attrs.get("run_id", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def load_posterior(path: Path) -> az.InferenceData:
    if not Path(path).exists():
        raise FileNotFoundError(f"no posterior at {path}: materialize its posterior asset first")
    return az.from_netcdf(str(path), engine="h5netcdf").load()


def stan_code_version(spec: ModelSpec) -> str:
    """The program and its hand-written density (the default engine samples the latter): a change
    to either marks the posterior stale."""
    import hashlib
    import importlib.util

    from schoolquality_assets.engine import nutpie_engine

    parts = [spec.path.read_bytes()]
    if spec.stan_file in nutpie_engine.DENSITIES:   # the engine's source, without importing numba
        here = Path(importlib.util.find_spec("schoolquality_assets").origin).parent
        parts += [(here / "engine" / name).read_bytes() for name in nutpie_engine.ENGINE_FILES]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
