"""Does the model predict next year? Each model is fitted to every year but the latest and asked for
the latest year's counts; the held-out results are scored against the predictions. Pure functions
(no Dagster): frames and arviz InferenceData in, frames out.

The prediction of a held-out observation i (school s, subject j, new year) is its posterior
predictive distribution: per posterior draw,

    eta = new-year cell of subject j  +  r_school[s]  +  r_cohort_new[s]  (+ r_profile[s, j], M3)
    y   ~ Binomial(n_trials_i, inv_logit(eta))

* **The new year's fixed effects.** The fit has no year x subject cell for the held-out year. Per
  draw, the training cells of subject j (b_Intercept + its treatment contrast) are averaged over
  the training years (m_j), and the new cell is m_j + N(0, tau^2 (1 + 1/T_j)): tau^2 is the
  spread of the cells about their subject means pooled over subjects (sum of squares over
  S (T - 1) degrees of freedom), computed in the same draw; T_j the training years of subject j.
  That treats the year x subject cells as draws around a mean per subject (the generator's
  ``year_subject`` is exactly that) and carries both the spread between years and the
  uncertainty of the mean (1/T). One deviation is drawn per subject and draw, shared by every
  school (it is a year effect), independent between subjects. Computed from the draws, tau also
  holds the cells' posterior uncertainty: it errs wide on a small fit (posterior SD of a cell
  ~0.04 on 150 schools, ~0.01 on the province). ``new_year="latest"`` uses instead the latest
  training year's cells, with no added spread. M1 has no cells: its b_Intercept.
* **A new cohort.** The held-out year is a new cohort of every school. The programs centre a
  cohort's mean on its school's mean plus the cohort's own cells, mu_cohort ~ N(mu_school +
  (Xbar - Xss) b, sd_cohort) with mu_school = Intercept - X_mean b + Xss b + r_school (see
  stan/m2_cohort.stan): so, in brms's terms, eta = b_Intercept + x b + r_school + r_cohort with
  r_cohort ~ N(0, sd_cohort) about the new year's cells. One r_cohort per school and draw, shared
  by the school's subjects that year (a cohort is school x year). M1 has no cohorts.
* **New schools.** A held-out observation of a school absent from the training years gets a new
  school effect N(0, sd_school) per draw (column ``new_school``); for M3 a school x subject
  profile not in the fit gets a new N(0, sd_profile) (column ``new_profile``); a fitted profile
  keeps its draws.

Scores (:func:`holdout_scores`). A count is discrete, so a central interval cannot hold exactly
50% or 90%. Coverage is scored by the randomised PIT, in expectation: the observation's PIT is
uniform on [F(y - 1), F(y)] (F the predictive CDF), and it counts for the share of that interval
inside [(1 - c)/2, (1 + c)/2]. Where the predictive distribution is right this share averages
exactly c over observations, for any n; inclusive quantile bounds would cover more than c,
especially for small n (reported beside it: ``coverage_*_inclusive``, y within [q((1-c)/2),
q((1+c)/2)], q(u) = min{k: F(k) >= u}). ``mean_lpd`` is the mean over observations of
log P(Y = y): for a model, the log of the mean over draws of the binomial pmf of the observed count.
"""

from __future__ import annotations

from collections.abc import Callable

import arviz as az
import numpy as np
import polars as pl
from scipy.special import expit, gammaln, log_expit, logsumexp, ndtr

from schoolquality_assets.analyses import tables
from schoolquality_assets.models import specs

KEYS = ("school_id", "year", "subject")
LEVELS = (0.5, 0.9)
NEW_YEAR_RULES = ("mean", "latest")
RAW, FREQUENTIST = "raw", "frequentist"
LABELS = {"m0": "M0", "m1": "M1", "m2": "M2", "m3": "M3", RAW: "Raw proportion", FREQUENTIST: "Frequentist"}
RAW_DESCRIPTION = (
    "Baseline: Binomial(n, p) with p the school's earlier pooled proportion in that subject, "
    "(Σy + ½)/(Σn + 1) over its training observations of the subject (the school's over all subjects "
    "when it has none in that subject; the province's in that subject for a new school); no other uncertainty"
)
FREQUENTIST_DESCRIPTION = (
    "Baseline: the page's logit-normal mixed model (REML; year×subject + school + cohort, Var(e) = σ²/w) "
    "fitted to the training years, as a plug-in predictive of the empirical logit: Normal(new-year cell + "
    "school BLUP, new-year cell spread + the BLUP's conditional variance + cohort variance + σ²/w), "
    "w = n·p·(1−p) at the predicted p; the count is the one whose empirical logit the draw is nearest "
    "(intervals between half-integers)"
)


# ---------------------------------------------------------------- split
def split_latest_year(sample: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(earlier years, the latest year) of an analysis sample.

    Held-out observations of schools absent from the earlier years stay in the held-out frame:
    the predictions give them a new school effect drawn from sd_school (column ``new_school`` of
    the predictions; the raw-proportion baseline uses the province's earlier proportion)."""
    years = sample["year"].unique()
    if years.len() < 2:
        raise ValueError(f"holding out the latest year needs at least two years; the sample has {years.to_list()}")
    latest = years.max()
    return sample.filter(pl.col("year") < latest), sample.filter(pl.col("year") == latest)


def _heldout_rows(train: pl.DataFrame, heldout: pl.DataFrame) -> pl.DataFrame:
    if heldout.height == 0:
        raise ValueError("nothing is held out")
    clash = set(heldout["year"].unique().to_list()) & set(train["year"].unique().to_list())
    if clash:
        raise ValueError(f"held-out years {sorted(clash)} are also training years: a new year is predicted here")
    missing = set(heldout["subject"].unique().to_list()) - set(train["subject"].unique().to_list())
    if missing:
        raise ValueError(f"subjects {sorted(missing)} have no training observations")
    if heldout.select(KEYS).is_duplicated().any():
        raise ValueError("the held-out frame repeats a (school_id, year, subject)")
    return heldout.sort(KEYS)


# ---------------------------------------------------------------- new-year cells
def new_year_cells(cells: np.ndarray, cell_years: list, cell_subjects: list, subjects: list,
                   rng: np.random.Generator, rule: str = "mean") -> dict[str, np.ndarray]:
    """Per subject, draws (S,) of the new year's cell from the training cells (S, C), see the
    module docstring: ``mean``: mean over years + N(0, tau^2 (1 + 1/T)); ``latest``: the latest
    training year's cell."""
    if rule not in NEW_YEAR_RULES:
        raise ValueError(f"new_year must be one of {NEW_YEAR_RULES}, not {rule!r}")
    cell_years, cell_subjects = np.asarray(cell_years), np.asarray(cell_subjects)
    if rule == "latest":
        out = {}
        for s in subjects:
            cols = np.flatnonzero(cell_subjects == s)
            out[s] = cells[:, cols[np.argmax(cell_years[cols])]]
        return out
    means, tau2, years = cell_spread(cells, cell_subjects)
    z = rng.standard_normal((cells.shape[0], len(subjects)))
    return {s: means[s] + np.sqrt(tau2 * (1 + 1 / years[s])) * z[:, j] for j, s in enumerate(subjects)}


def cell_spread(cells: np.ndarray, cell_subjects) -> tuple[dict, np.ndarray, dict]:
    """Per draw (rows of ``cells``, (S, C)): each subject's mean cell over the years, the pooled
    variance tau^2 of the cells about their subject means (S (T - 1) degrees of freedom; 0 with
    one year), and each subject's number of years T."""
    cell_subjects = np.asarray(cell_subjects)
    groups = {s: np.flatnonzero(cell_subjects == s) for s in sorted(set(cell_subjects.tolist()))}
    means = {s: cells[:, cols].mean(axis=1) for s, cols in groups.items()}
    ss = sum(((cells[:, cols] - means[s][:, None]) ** 2).sum(axis=1) for s, cols in groups.items())
    dof = sum(len(cols) - 1 for cols in groups.values())
    tau2 = ss / dof if dof > 0 else np.zeros(cells.shape[0])
    return means, tau2, {s: len(cols) for s, cols in groups.items()}


def training_cells(idata: az.InferenceData, train: pl.DataFrame, index: np.ndarray) -> tuple[np.ndarray, list, list]:
    """Each training year_subject cell on the logit scale, b_Intercept + its contrast (the reference
    cell, the first sorted level, is b_Intercept), for the draws ``index``: (S, C), years, subjects."""
    post = idata.posterior
    cells = train.select("year_subject", "year", "subject").unique().sort("year_subject")
    intercept = specs.draws_matrix(post["b_Intercept"])[index]
    if "b" not in post:  # M1: one cell
        return intercept[:, None], [int(cells["year"].max())], [None]
    labels = cells["year_subject"].to_list()
    coefs = [str(c) for c in post["coef"].values]
    if coefs != [f"year_subject{level}" for level in labels[1:]]:
        raise ValueError("the posterior's year_subject contrasts are not those of the training frame: "
                         "pass the frame the model was fitted to")
    b = specs.draws_matrix(post["b"])[index]
    values = np.column_stack([intercept, intercept[:, None] + b])
    return values, cells["year"].to_list(), cells["subject"].to_list()


# ---------------------------------------------------------------- the models' predictions
def _effects(post, name: str, coord: str, labels: list[str], index: np.ndarray, sd: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draws (S, len(labels)) of a group effect: the fitted draws where the group was fitted, a new
    N(0, sd) draw where it was not (one per distinct new label); and which were new."""
    fitted = {str(v): i for i, v in enumerate(post[coord].values)}
    draws = specs.draws_matrix(post[name])[index]
    new = np.array([label not in fitted for label in labels], dtype=bool)
    out = np.empty((len(index), len(labels)))
    if (~new).any():
        out[:, ~new] = draws[:, [fitted[label] for label, n in zip(labels, new) if not n]]
    if new.any():
        distinct, where = np.unique(np.asarray(labels)[new], return_inverse=True)
        out[:, new] = sd[:, None] * rng.standard_normal((len(index), len(distinct)))[:, where]
    return out, new


def heldout_linear_predictor(idata: az.InferenceData, train: pl.DataFrame, heldout: pl.DataFrame, model: str,
                             seed: int, draws: int = 400, new_year: str = "mean") -> tuple[np.ndarray, pl.DataFrame]:
    """Draws (S, N) of each held-out observation's linear predictor (see the module docstring) and
    the held-out rows (sorted by school, year, subject) with ``new_school`` / ``new_profile``."""
    spec = specs.MODELS[model]
    if not spec.binomial:
        raise ValueError(f"{model.upper()} is not a binomial model: it has no binomial predictive distribution")
    if idata.attrs.get("model", model) != model:
        raise ValueError(f"the posterior is {idata.attrs['model']}'s, not {model}'s")
    rows = _heldout_rows(train, heldout)
    rng = np.random.default_rng(seed)
    post = idata.posterior
    total = post.sizes["chain"] * post.sizes["draw"]
    index = np.sort(rng.choice(total, size=min(draws, total), replace=False))
    sd = {name: specs.draws_matrix(post[name])[index] for name in spec.sd_names}

    cells, cell_years, cell_subjects = training_cells(idata, train, index)
    subjects = sorted(rows["subject"].unique().to_list())
    if "b" in post:
        cell = new_year_cells(cells, cell_years, cell_subjects, subjects, rng, new_year)
    else:
        cell = {s: cells[:, 0] for s in subjects}
    eta = np.column_stack([cell[s] for s in rows["subject"].to_list()])

    school, new_school = _effects(post, "r_school", "school", rows["school_id"].to_list(), index, sd["sd_school"], rng)
    eta += school
    info = rows.with_columns(new_school=pl.Series(new_school), new_profile=pl.lit(None, dtype=pl.Boolean))
    if spec.cohort:  # every held-out cohort is new: one N(0, sd_cohort) per school x year, shared by its subjects
        cohorts = (rows["school_id"] + "_" + rows["year"].cast(pl.Utf8)).to_numpy()
        distinct, where = np.unique(cohorts, return_inverse=True)
        eta += sd["sd_cohort"][:, None] * rng.standard_normal((len(index), len(distinct)))[:, where]
    if spec.profile:
        profiles = (rows["school_subject_id"] if "school_subject_id" in rows.columns
                    else rows["school_id"] + "_" + rows["subject"]).to_list()
        profile, new_profile = _effects(post, "r_profile", "profile", profiles, index, sd["sd_profile"], rng)
        eta += profile
        info = info.with_columns(new_profile=pl.Series(new_profile))
    return eta, info


def mixture_pmf(eta: np.ndarray, n_trials: np.ndarray) -> list[np.ndarray]:
    """Per observation (column of ``eta``, (S, N)) the predictive pmf over 0..n: the mean over draws
    of Binomial(n, inv_logit(eta)) (computed on the log scale)."""
    n_trials = np.asarray(n_trials, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(n_trials)
    for n in np.unique(n_trials):
        cols = np.flatnonzero(n_trials == n)
        k = np.arange(n + 1)
        log_choose = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)
        e = eta[:, cols][..., None]
        logpmf = log_choose + k * log_expit(e) + (n - k) * log_expit(-e)   # (S, cols, n + 1)
        pmf = np.exp(logsumexp(logpmf, axis=0) - np.log(eta.shape[0]))
        for c, p in zip(cols, pmf):
            out[c] = p / p.sum()
    return out


def predictive_frame(rows: pl.DataFrame, pmfs: list[np.ndarray]) -> pl.DataFrame:
    """The held-out rows' keys and n, their predictive pmf (list over 0..n), mean and the bounds of
    the central 50% and 90% intervals (quantiles q((1-c)/2), q((1+c)/2)), plus ``rows``' flags."""
    means, bounds = [], {f"{side}_{int(100 * c)}": [] for c in LEVELS for side in ("lower", "upper")}
    for pmf in pmfs:
        cdf = np.cumsum(pmf)
        means.append(float(np.arange(len(pmf)) @ pmf))
        for c in LEVELS:
            for side, u in (("lower", (1 - c) / 2), ("upper", (1 + c) / 2)):
                bounds[f"{side}_{int(100 * c)}"].append(int(min(np.searchsorted(cdf, u - 1e-12), len(pmf) - 1)))
    flags = [c for c in ("new_school", "new_profile", "basis") if c in rows.columns]
    return rows.select(*KEYS, "n_trials", *flags).with_columns(
        pred_mean=pl.Series(means), **{k: pl.Series(v, dtype=pl.Int64) for k, v in bounds.items()},
        pmf=pl.Series([p.tolist() for p in pmfs], dtype=pl.List(pl.Float64)))


def predict_heldout(idata: az.InferenceData, train: pl.DataFrame, heldout: pl.DataFrame, model: str, seed: int,
                    draws: int = 400, new_year: str = "mean") -> pl.DataFrame:
    """Posterior predictive distribution of each held-out L3/L4 count under ``model`` fitted to
    ``train`` (see the module docstring for the new year's cells, the new cohort, new schools and
    profiles), from ``draws`` posterior draws chosen with ``seed``. One row per held-out
    observation, sorted by school, year, subject (:func:`predictive_frame`)."""
    eta, rows = heldout_linear_predictor(idata, train, heldout, model, seed, draws, new_year)
    return predictive_frame(rows, mixture_pmf(eta, rows["n_trials"].to_numpy()))


# ---------------------------------------------------------------- baselines
def predict_raw_proportion(train: pl.DataFrame, heldout: pl.DataFrame) -> pl.DataFrame:
    """Binomial(n, p), p = (Σy + ½)/(Σn + 1) of the school's training observations of that subject
    (``basis`` school-subject); of all its subjects when it has none in that subject (school); for
    a school absent from training, the province's in that subject (province-subject). The ½ keeps
    a school at 0% or 100% from predicting certainty."""
    rows = _heldout_rows(train, heldout)
    def pooled(by: list[str], name: str) -> pl.DataFrame:
        return train.group_by(by).agg(((pl.col("y_success").sum() + 0.5) / (pl.col("n_trials").sum() + 1)).alias(name))

    rows = (rows.join(pooled(["school_id", "subject"], "_p_ss"), on=["school_id", "subject"], how="left")
            .join(pooled(["school_id"], "_p_s"), on="school_id", how="left")
            .join(pooled(["subject"], "_p_j"), on="subject", how="left")
            .with_columns(new_school=pl.col("_p_s").is_null(),
                          basis=pl.when(pl.col("_p_ss").is_not_null()).then(pl.lit("school-subject"))
                          .when(pl.col("_p_s").is_not_null()).then(pl.lit("school")).otherwise(pl.lit("province-subject")),
                          _p=pl.coalesce("_p_ss", "_p_s", "_p_j")))
    eta = np.log(rows["_p"].to_numpy() / (1 - rows["_p"].to_numpy()))[None, :]
    return predictive_frame(rows, mixture_pmf(eta, rows["n_trials"].to_numpy()))


def school_blups(residual: np.ndarray, weights: np.ndarray, schools: np.ndarray, cohorts: np.ndarray,
                 var_school: float, var_cohort: float, sigma2: float) -> pl.DataFrame:
    """Each school's BLUP and its conditional variance in the weighted school + cohort model,
    residual = u_school + v_cohort + e, Var(e) = sigma2 / w: a cohort's weighted mean residual
    (sufficient for u + v) is N(u, var_cohort + sigma2 / W_c), W_c = Σ w; u ~ N(0, var_school)."""
    f = pl.DataFrame({"school_id": schools, "cohort": cohorts, "r": residual, "w": weights})
    c = f.group_by("school_id", "cohort").agg(W=pl.col("w").sum(), rbar=(pl.col("w") * pl.col("r")).sum() / pl.col("w").sum())
    c = c.with_columns(prec=1 / (var_cohort + sigma2 / pl.col("W")))
    s = c.group_by("school_id").agg(prec=pl.col("prec").sum() + 1 / var_school, num=(pl.col("prec") * pl.col("rbar")).sum())
    return s.select("school_id", blup=pl.col("num") / pl.col("prec"), blup_var=1 / pl.col("prec"))


def empirical_logit_pmf(mean: float, var_latent: float, sigma2: float, n: int) -> np.ndarray:
    """pmf over 0..n of the count whose empirical logit log((y+½)/(n−y+½)) is nearest a draw of the
    logit-normal model's prediction N(mean, var_latent + sigma2/w), w = n·p·(1−p) at p = (n·inv_logit(mean)
    + ½)/(n + 1) (the page's weight at the predicted count): y = k when the draw falls between the
    empirical logits of k − ½ and k + ½, i.e. between log(k/(n−k+1)) and log((k+1)/(n−k))."""
    p = (n * expit(mean) + 0.5) / (n + 1)
    sd = np.sqrt(var_latent + sigma2 / (n * p * (1 - p)))
    k = np.arange(n)
    cdf = np.append(ndtr((np.log((k + 1) / (n - k)) - mean) / sd), 1.0)
    return np.diff(cdf, prepend=0.0)


def predict_frequentist(train: pl.DataFrame, heldout: pl.DataFrame, new_year: str = "mean") -> pl.DataFrame:
    """The frequentist model's prediction (FREQUENTIST_DESCRIPTION): :func:`tables.weighted_mixedlm` with
    school and cohort on the training years' empirical logits (:func:`tables.frequentist_design`), a
    plug-in predictive of the held-out empirical logit, discretised by :func:`empirical_logit_pmf`.
    The new year's cell comes from the estimated cells by the same rule as the models'
    (:func:`new_year_cells` on the point estimates, tau^2 (1 + 1/T) added to the variance for
    ``mean``); a new school's BLUP is 0 with variance the school variance. Plug-in: the
    estimates' own uncertainty (fixed effects, variances) is left out."""
    rows = _heldout_rows(train, heldout)
    d = tables.frequentist_design(train)
    fit = tables.weighted_mixedlm(d["endog"], d["exog"], d["groups"], d["weights"], nested=d["nested"])
    fe = fit["fe_params"]
    cells = train.select("year_subject", "year", "subject").unique().sort("year_subject")
    values = (fe[0] + np.concatenate([[0.0], fe[1:]]))[None, :]   # each cell: intercept + its contrast
    subjects = sorted(rows["subject"].unique().to_list())
    if new_year == "mean":   # the mean over years, and the spread between years as a variance (no draw)
        means, tau2, years = cell_spread(values, cells["subject"].to_list())
        centre = {s: float(means[s][0]) for s in subjects}
        spread = {s: float(tau2[0]) * (1 + 1 / years[s]) for s in subjects}
    else:
        latest = new_year_cells(values, cells["year"].to_list(), cells["subject"].to_list(), subjects,
                                np.random.default_rng(0), new_year)
        centre, spread = {s: float(v[0]) for s, v in latest.items()}, {s: 0.0 for s in subjects}
    residual = d["endog"] - d["exog"] @ fe
    blups = school_blups(residual, d["weights"], d["groups"], d["nested"], fit["school"], fit["cohort"], fit["sigma2"])
    rows = rows.join(blups, on="school_id", how="left").with_columns(new_school=pl.col("blup").is_null())
    rows = rows.with_columns(pl.col("blup").fill_null(0.0), pl.col("blup_var").fill_null(fit["school"]))
    pmfs = [empirical_logit_pmf(centre[s] + u, spread[s] + v + fit["cohort"], fit["sigma2"], n)
            for s, u, v, n in rows.select("subject", "blup", "blup_var", "n_trials").iter_rows()]
    return predictive_frame(rows, pmfs)


# ---------------------------------------------------------------- scores and the table
def pit_coverage(cdf_below: np.ndarray, cdf_at: np.ndarray, level: float) -> np.ndarray:
    """Share of each observation's randomised-PIT interval [F(y−1), F(y)] inside the central
    [(1−level)/2, (1+level)/2]: its expected coverage (a point PIT when P(Y = y) = 0)."""
    lo, hi = (1 - level) / 2, (1 + level) / 2
    width = cdf_at - cdf_below
    overlap = np.clip(np.minimum(cdf_at, hi) - np.maximum(cdf_below, lo), 0.0, None)
    point = ((cdf_below >= lo) & (cdf_below <= hi)).astype(float)
    return np.where(width > 0, overlap / np.where(width > 0, width, 1.0), point)


def holdout_scores(predictions: pl.DataFrame, heldout: pl.DataFrame, model: str) -> dict:
    """Coverage of the central 50% and 90% predictive intervals (randomised PIT in expectation; the
    inclusive quantile bounds beside it) and the mean log predictive density of the observed
    counts, over the held-out observations (joined on school, year, subject)."""
    joined = predictions.join(heldout.select(*KEYS, pl.col("y_success").alias("_y"), pl.col("n_trials").alias("_n")),
                              on=list(KEYS), how="inner")
    if joined.height != heldout.height or joined.height != predictions.height:
        raise ValueError(f"{model}: {predictions.height} predictions for {heldout.height} held-out observations "
                         f"({joined.height} matched)")
    if (joined["_n"] != joined["n_trials"]).any():
        raise ValueError(f"{model}: the predictions' n_trials differ from the held-out observations'")
    y = joined["_y"].to_numpy()
    pmf = [np.asarray(p) for p in joined["pmf"].to_list()]
    below = np.array([p[:k].sum() for p, k in zip(pmf, y)])
    at = np.minimum(below + np.array([p[k] for p, k in zip(pmf, y)]), 1.0)
    log_density = np.log(np.maximum([p[k] for p, k in zip(pmf, y)], np.finfo(float).tiny))
    out = {"model": model, "observations": joined.height, "schools": joined["school_id"].n_unique()}
    for c in LEVELS:
        out[f"coverage_{int(100 * c)}"] = float(pit_coverage(below, at, c).mean())
    for c in LEVELS:
        lo, hi = joined[f"lower_{int(100 * c)}"].to_numpy(), joined[f"upper_{int(100 * c)}"].to_numpy()
        out[f"coverage_{int(100 * c)}_inclusive"] = float(((y >= lo) & (y <= hi)).mean())
    out["mean_lpd"] = float(log_density.mean())
    out["mean_lpd_se"] = float(log_density.std(ddof=1) / np.sqrt(len(y))) if len(y) > 1 else float("nan")
    out["new_school_observations"] = int(joined["new_school"].sum()) if "new_school" in joined.columns else 0
    return out


def _description(key: str) -> str:
    if key in specs.MODELS:
        return specs.MODELS[key].description
    return {RAW: RAW_DESCRIPTION, FREQUENTIST: FREQUENTIST_DESCRIPTION}.get(key, key)


def holdout_table(predictions: dict[str, pl.DataFrame], heldout: pl.DataFrame,
                  train: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per model or baseline (keys ``m1``..``m3``, ``raw``, ``frequentist``):
    ``model``, ``description``, ``heldout_year``, ``observations``, ``coverage_50``, ``coverage_90``,
    ``mean_lpd``; then ``schools``, the inclusive-bound coverages, ``mean_lpd_se``,
    ``new_school_observations`` and ``training_years``."""
    years = sorted(heldout["year"].unique().to_list())
    trained = "" if train is None else f"{train['year'].min()}-{train['year'].max()}"
    rows = []
    for key, frame in predictions.items():
        s = holdout_scores(frame, heldout, LABELS.get(key, key))
        rows.append({"model": s["model"], "description": _description(key), "heldout_year": int(years[-1]),
                     "observations": s["observations"], "coverage_50": s["coverage_50"],
                     "coverage_90": s["coverage_90"], "mean_lpd": s["mean_lpd"], "schools": s["schools"],
                     "coverage_50_inclusive": s["coverage_50_inclusive"],
                     "coverage_90_inclusive": s["coverage_90_inclusive"], "mean_lpd_se": s["mean_lpd_se"],
                     "new_school_observations": s["new_school_observations"], "training_years": trained})
    return pl.DataFrame(rows)


def _verdict(coverage: float, level: float, schools: int) -> str:
    """Too narrow / too wide when the coverage is more than 2 binomial SEs from nominal, counting
    schools (a school's subjects share its cohort, so its observations are not independent)."""
    se = np.sqrt(level * (1 - level) / max(schools, 1))
    return "too narrow" if coverage < level - 2 * se else "too wide" if coverage > level + 2 * se else "about right"


def holdout_finding(table: pl.DataFrame) -> str:
    """The report's words: per model and baseline the share of next year's results inside the 90%
    (and 50%) intervals, whether that is about right, and which predicted best by log density."""
    if table.height == 0:
        return "No held-out comparison was made."
    first = table.row(0, named=True)
    trained = f" fitted to {first['training_years']}" if first.get("training_years") else ""
    parts = [(f"Each model{trained} predicted {first['heldout_year']} ({first['observations']:,} school-subject "
              f"results of {first['schools']:,} schools).")]
    for r in table.iter_rows(named=True):
        parts.append(f"{r['model']}: next year's results fell inside the 90% interval for {r['coverage_90']:.0%} of "
                     f"school-subjects ({_verdict(r['coverage_90'], 0.9, r['schools'])}) and inside the 50% interval "
                     f"for {r['coverage_50']:.0%} ({_verdict(r['coverage_50'], 0.5, r['schools'])}).")
    ranked = table.sort("mean_lpd", descending=True).rows(named=True)
    best = ranked[0]
    text = f"By log predictive density {best['model']} predicted best ({best['mean_lpd']:.3f} per result"
    if len(ranked) > 1:
        runner = ranked[1]
        text += (f", {best['mean_lpd'] - runner['mean_lpd']:.3f} ahead of {runner['model']}; lowest "
                 f"{ranked[-1]['model']} {ranked[-1]['mean_lpd']:.3f}")
    parts.append(text + ").")
    new = int(first.get("new_school_observations") or 0)
    if new:
        parts.append(f"{new} held-out results came from schools absent from the earlier years; the models predicted "
                     "them with a new school effect drawn from the school SD.")
    return " ".join(parts)


# ---------------------------------------------------------------- run
def holdout_predictions(sample: pl.DataFrame, fit: Callable[[str, pl.DataFrame], az.InferenceData],
                        models=("m1", "m2", "m3"), seed: int = 20240601, draws: int = 400,
                        new_year: str = "mean") -> tuple[pl.DataFrame, pl.DataFrame, dict[str, pl.DataFrame]]:
    """(train, heldout, predictions per model and baseline): each model fitted to the earlier years
    through ``fit(model_key, train)`` (the caller's settings; never a published posterior)."""
    train, heldout = split_latest_year(sample)
    predictions = {}
    for key in models:
        predictions[key] = predict_heldout(fit(key, train), train, heldout, key, seed, draws, new_year)
    predictions[RAW] = predict_raw_proportion(train, heldout)
    predictions[FREQUENTIST] = predict_frequentist(train, heldout, new_year)
    return train, heldout, predictions


def run_holdout(sample: pl.DataFrame, fit: Callable[[str, pl.DataFrame], az.InferenceData],
                models=("m1", "m2", "m3"), seed: int = 20240601, draws: int = 400, new_year: str = "mean") -> pl.DataFrame:
    """Fit each model to every year but the latest (through ``fit``), predict the latest year, and
    score the models and both baselines: :func:`holdout_table`."""
    train, heldout, predictions = holdout_predictions(sample, fit, models, seed, draws, new_year)
    return holdout_table(predictions, heldout, train)
