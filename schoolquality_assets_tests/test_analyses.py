"""Tests of the analyses, LOO, diagnostics, figures and report on synthetic posterior draws (arviz.from_dict; no Stan)."""

from __future__ import annotations

import base64
import math
import re
import warnings

import arviz as az
import numpy as np
import polars as pl
import pytest
import xarray as xr
from scipy import integrate, stats
from scipy.special import expit, logit

from schoolquality_assets.analyses import figures, loo, report
from schoolquality_assets.analyses import tables as an
from schoolquality_assets.models import diagnostics, specs

warnings.filterwarnings("ignore", category=FutureWarning)


# ---------------------------------------------------------------- synthetic data and posteriors
def simulate(n_schools=40, years=(2015, 2016, 2017, 2018), subjects=("math", "reading", "writing"),
             sd_school=0.6, sd_cohort=0.4, seed=1) -> tuple[pl.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    rows, truth = [], {"school": {}, "cohort": {}}
    for j in range(n_schools):
        sid = f"S{j:03d}"
        size = int(np.clip(rng.lognormal(np.log(45), 0.9), 5, 260))
        truth["school"][sid] = a = rng.normal(0, sd_school)
        for yr in years:
            cid = f"{sid}_{yr}"
            truth["cohort"][cid] = c = rng.normal(0, sd_cohort)
            for sub in subjects:
                n = max(3, int(size * rng.uniform(0.9, 1.1)))
                rows.append({"school_id": sid, "year": yr, "subject": sub, "n_trials": n,
                             "y_success": int(rng.binomial(n, expit(0.3 + a + c))), "participation": 0.95})
    df = pl.DataFrame(rows).with_columns(
        pl.concat_str([pl.col("year").cast(pl.Utf8), pl.col("subject")], separator="_").alias("year_subject"),
        pl.concat_str([pl.col("school_id"), pl.col("year").cast(pl.Utf8)], separator="_").alias("school_year_id"),
        pl.concat_str([pl.col("school_id"), pl.col("subject")], separator="_").alias("school_subject_id"),
    )
    return df.sort("school_id", "year", "subject"), truth


def fake_idata(sample, posterior, cohort=False, dims=None, sample_stats=None, attrs=None, binomial=True):
    """InferenceData in specs.to_inference_data's layout from given posterior arrays."""
    key = "m2" if cohort else "m1"
    mi = specs.model_input(specs.MODELS[key], sample)
    d = mi.data
    constant = {"school_idx": d["school"] - 1}
    cdims = {"school_idx": ["obs"]}
    if binomial:
        constant["n_trials"] = d["n_trials"]
        cdims["n_trials"] = ["obs"]
        observed = {"y_success": d["y_success"]}
    else:
        observed = {"proportion": (mi.frame["y_success"] / mi.frame["n_trials"]).to_numpy()}
    if cohort:
        constant["cohort_idx"] = d["cohort"] - 1
        cdims["cohort_idx"] = ["obs"]
    coords = {k: v for k, v in mi.coords.items() if k != "coef"} | {"obs": np.arange(d["N"])}
    return az.from_dict(
        posterior=posterior, sample_stats=sample_stats, observed_data=observed, constant_data=constant,
        coords=coords, dims={"r_school": ["school"], "r_cohort": ["cohort"]} | (dims or {}) | cdims
        | {k: ["obs"] for k in observed}, attrs=attrs or {},
    )


def around(rng, value, shape, noise):
    return np.asarray(value) + rng.normal(0, noise, shape + np.shape(value))


@pytest.fixture(scope="module")
def sim():
    return simulate()


@pytest.fixture(scope="module")
def posteriors(sim):
    """'True-structure' cohort model (m2) and 'school-only' model (m1) draws near the truth."""
    sample, truth = sim
    rng = np.random.default_rng(7)
    C, D = 4, 100
    schools = sorted(truth["school"])
    cohorts = sorted(truth["cohort"])
    a = np.array([truth["school"][s] for s in schools])
    c = np.array([truth["cohort"][k] for k in cohorts])
    cm = np.array([np.mean([truth["cohort"][k] for k in cohorts if k.startswith(s)]) for s in schools])
    stats_ = {"energy": rng.normal(size=(C, D)), "diverging": np.zeros((C, D), bool),
              "max_treedepth_hit": np.zeros((C, D), bool)}
    stats_["diverging"][0, :3] = True
    m2 = fake_idata(sample, {
        "b_Intercept": around(rng, 0.3, (C, D), 0.02), "Intercept": around(rng, 0.3, (C, D), 0.02),
        "r_school": around(rng, a, (C, D), 0.05), "r_cohort": around(rng, c, (C, D), 0.05),
        "sd_school": np.abs(around(rng, 0.6, (C, D), 0.03)), "sd_cohort": np.abs(around(rng, 0.4, (C, D), 0.03)),
    }, cohort=True, sample_stats=stats_, attrs={"model": "m2", "sample_seconds": 12.5})
    m1 = fake_idata(sample, {
        "b_Intercept": around(rng, 0.3, (C, D), 0.02), "Intercept": around(rng, 0.3, (C, D), 0.02),
        "r_school": around(rng, a + cm, (C, D), 0.05), "sd_school": np.abs(around(rng, 0.7, (C, D), 0.03)),
    }, sample_stats=stats_, attrs={"model": "m1", "sample_seconds": 3.0})
    return {"m1": m1, "m2": m2}


# ---------------------------------------------------------------- variance decomposition
def _var_idata(sds: dict[str, np.ndarray]):
    return az.from_dict(posterior={k: v for k, v in sds.items()})


def test_variance_components_exact_on_constant_draws():
    shape = (2, 50)
    t = an.variance_components(_var_idata({"sd_school": np.full(shape, 1.0), "sd_cohort": np.full(shape, 0.5),
                                           "sd_profile": np.full(shape, 0.1)}))
    var = np.array([math.pi**2 / 3, 1.0, 0.25, 0.01])
    assert t["component"].to_list() == [an.OBSERVATION, "School (persistent)", "Cohort (school×year)", "Subject profile"]
    np.testing.assert_allclose(t["variance"].to_numpy(), var)
    np.testing.assert_allclose(t["pct_total"].to_numpy(), 100 * var / var.sum())
    np.testing.assert_allclose(t["pct_total_lower"].to_numpy(), 100 * var / var.sum())
    np.testing.assert_allclose(t["pct_latent"].to_numpy()[1:], 100 * var[1:] / var[1:].sum())
    assert t["pct_latent"][0] is None
    md = an.variance_markdown(t)
    assert "| School (persistent) | 1.000 [1.000, 1.000] |" in md and "% of latent variance" in md


def test_variance_intervals_equal_numpy_quantiles():
    rng = np.random.default_rng(3)
    s, c = rng.uniform(0.5, 0.7, (4, 200)), rng.uniform(0.3, 0.5, (4, 200))
    t = an.variance_components(_var_idata({"sd_school": s, "sd_cohort": c}))
    assert t.height == 3
    vs, vc = s.ravel() ** 2, c.ravel() ** 2
    tot = vs + vc + math.pi**2 / 3
    row = t.filter(pl.col("component") == "School (persistent)").row(0, named=True)
    assert row["variance_lower"] == pytest.approx(np.quantile(vs, 0.025))
    assert row["variance_upper"] == pytest.approx(np.quantile(vs, 0.975))
    assert row["pct_total"] == pytest.approx(np.mean(100 * vs / tot))
    assert row["pct_total_upper"] == pytest.approx(np.quantile(100 * vs / tot, 0.975))
    assert row["pct_latent_lower"] == pytest.approx(np.quantile(100 * vs / (vs + vc), 0.025))


# ---------------------------------------------------------------- shrinkage
def test_shrinkage_exact_and_band_ordering():
    rng = np.random.default_rng(5)
    sizes = np.r_[np.full(30, 12), np.full(30, 50), np.full(30, 200)]
    rows = []
    for j, n in enumerate(sizes):
        for t in range(3):
            rows.append({"school_id": f"S{j:03d}", "year": 2015 + t, "subject": "math", "n_trials": int(n),
                         "y_success": int(rng.binomial(n, expit(rng.normal(0, 0.8))))})
    sample = pl.DataFrame(rows).with_columns(
        pl.concat_str([pl.col("year").cast(pl.Utf8), pl.col("subject")], separator="_").alias("year_subject"))
    agg = sample.group_by("school_id").agg(pl.col("y_success").sum(), pl.col("n_trials").sum()).sort("school_id")
    y, n = agg["y_success"].to_numpy(), agg["n_trials"].to_numpy()
    z = logit((y + 0.5) / (n + 1))
    # exact normal-normal shrinkage on the logit scale, sampling variance driven by n
    mu, tau2 = 0.0, 0.64
    v = 1 / (n * expit(z) * (1 - expit(z)))
    B = tau2 / (tau2 + v)
    post_mean, post_sd = mu + B * (z - mu), np.sqrt(B * v)
    D = 400
    r1 = post_mean + post_sd * rng.standard_normal((1, D, len(n)))
    m1 = fake_idata(sample, {"b_Intercept": np.zeros((1, D)), "r_school": r1, "sd_school": np.full((1, D), 0.8)})
    raw = y / n
    r0 = 0.5 + 0.5 * (raw - 0.5) + 0.01 * rng.standard_normal((1, D, len(n)))  # equal shrinkage (M0)
    m0 = fake_idata(sample, {"Intercept": np.full((1, D), 0.5), "r_school": r0 - 0.5,
                             "sd_school": np.full((1, D), 0.2), "sigma": np.full((1, D), 0.1)}, binomial=False)
    t = an.shrinkage(sample, m0, m1)
    np.testing.assert_allclose(t["raw_proportion"].to_numpy(), raw)
    np.testing.assert_allclose(t["m1_estimate"].to_numpy(), expit(r1[0]).mean(0))
    np.testing.assert_allclose(t["m0_estimate"].to_numpy(), (0.5 + (r0 - 0.5))[0].mean(0))
    np.testing.assert_allclose(t["m1_shrinkage_pp"].to_numpy(), 100 * np.abs(raw - expit(r1[0]).mean(0)))
    by = an.shrinkage_by_band(t)
    assert by["band"].to_list() == list(an.BANDS) and by["schools"].to_list() == [30, 30, 30]
    s1 = by["mean_shrinkage_m1_pp"].to_numpy()
    assert s1[0] > s1[1] > s1[2]
    for png in (figures.shrinkage_arrows_png(t), figures.shrinkage_vs_n_png(t)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- LOO
def test_relative_efficiency_is_arviz_ess_of_the_likelihood():
    rng = np.random.default_rng(12)
    ll = np.cumsum(rng.normal(size=(4, 151, 60)), axis=1) * 0.02 + rng.normal(size=(4, 151, 60)) * 0.3 - 2
    ll[:, :, 5] = -1.0                      # constant: ESS = draws
    ll[2, 7, 9] = np.nan                    # non-finite: not counted
    lik = np.exp(ll - ll.max(axis=(0, 1), keepdims=True))
    ess = az.ess(az.convert_to_dataset(lik), method="mean")["x"].values / (4 * 151)
    total, count = loo.relative_efficiency(ll)
    assert count == 59 == np.isfinite(ess).sum()
    assert total == pytest.approx(np.nansum(np.clip(ess, 0.01, 1.0)), rel=1e-12)


@pytest.mark.parametrize("kept", [True, False])
def test_pointwise_loo_matches_az_loo_and_chunks(posteriors, monkeypatch, kept):
    """Whether the log-likelihood is kept between the two passes or computed again (a province
    too large to keep it), the result is arviz's."""
    if not kept:
        monkeypatch.setattr(loo, "LL_KEPT_BYTES", 0)
    idata = posteriors["m2"]
    r = loo._reff(idata)
    full = idata.copy()
    full.add_groups(log_likelihood={"y_success": xr.DataArray(specs.log_likelihood(idata), dims=("chain", "draw", "obs"))})
    ref = az.loo(full, pointwise=True, reff=r)
    for chunk in (37, 10_000):
        pw = loo.pointwise_loo(idata, max_draws=None, chunk=chunk)
        np.testing.assert_allclose(pw["elpd_i"], ref.loo_i.values, rtol=1e-10)
        np.testing.assert_allclose(pw["pareto_k"], ref.pareto_k.values, rtol=1e-10)
        assert pw["elpd_i"].sum() == pytest.approx(ref.elpd_loo)
        assert pw["p_loo_i"].sum() == pytest.approx(ref.p_loo)


def test_loo_in_worker_processes_gives_the_same_numbers(posteriors, sim):
    """PSIS smoothing and the cohort integrals on worker processes, chunk by chunk, give the
    serial result exactly, for both comparisons (the chunks are smaller than the data, so several
    are in flight at once)."""
    sample, _ = sim
    groups = loo.cohort_groups(sample)
    with loo.loo_workers(2) as pool:
        assert pool is not None
        parallel = (loo.loo_table(posteriors, chunk=37, pool=pool),
                    loo.cohort_loo_table(posteriors, groups=groups, chunk=29, pool=pool))
    serial = (loo.loo_table(posteriors, chunk=37), loo.cohort_loo_table(posteriors, groups=groups, chunk=29))
    for a, b in zip(parallel, serial):
        assert a.equals(b)
    with loo.loo_workers(1) as pool:
        assert pool is None


def _one_school_exact_posterior(n_draws=4000, seed=3):
    """One school, 12 observations, the M1 layout with r_school = 0 and b_Intercept = logit(p):
    under a flat prior on p the posterior is Beta(1 + Σy, 1 + Σ(n − y)), drawn exactly, and the
    exact leave-one-out predictive of y_i is beta-binomial with the other rows' counts."""
    rng = np.random.default_rng(seed)
    n = rng.integers(5, 60, 12)
    y = rng.binomial(n, 0.35)
    sample = pl.DataFrame({"school_id": ["S000"] * 12, "year": list(range(2013, 2025)), "subject": ["math"] * 12,
                           "n_trials": n.tolist(), "y_success": y.tolist(), "participation": [0.95] * 12})
    sample = sample.with_columns(
        pl.concat_str([pl.col("year").cast(pl.Utf8), pl.col("subject")], separator="_").alias("year_subject"),
        pl.concat_str([pl.col("school_id"), pl.col("year").cast(pl.Utf8)], separator="_").alias("school_year_id"),
        pl.concat_str([pl.col("school_id"), pl.col("subject")], separator="_").alias("school_subject_id"))
    a, b = 1 + y.sum(), 1 + (n - y).sum()
    p = rng.beta(a, b, (4, n_draws))
    idata = fake_idata(sample, {"b_Intercept": logit(p), "r_school": np.zeros((4, n_draws, 1)),
                                "sd_school": np.ones((4, n_draws))})
    exact = stats.betabinom.logpmf(y, n, a - y, b - (n - y))
    return idata, exact


def test_psis_loo_recovers_the_exact_leave_one_out_predictive():
    """PSIS-LOO from exact posterior draws against the closed-form leave-one-out predictive: the
    Monte Carlo error of 16,000 draws is below 0.01 per observation here."""
    idata, exact = _one_school_exact_posterior()
    pw = loo.pointwise_loo(idata, max_draws=None, chunk=5)
    np.testing.assert_allclose(pw["elpd_i"], exact, atol=0.01)
    assert pw["elpd_i"].sum() == pytest.approx(exact.sum(), abs=0.05)
    assert (pw["pareto_k"] < 0.5).all()


def test_loo_table_differences_match_az_compare(posteriors):
    """ELPD differences and their SE against arviz's own comparison of the same draws."""
    t = loo.loo_table(posteriors | {"m0": None}, max_draws=None, chunk=100)
    ranked = t.filter(pl.col("rank").is_not_null())
    assert ranked["elpd_diff"][0] == 0 and ranked["se_diff"][0] is None
    m0 = t.filter(pl.col("model") == "M0")
    assert m0.height == 1 and "M0 excluded" in m0["note"][0]
    ref = {}
    for key, idata in posteriors.items():   # arviz's PSIS with the project's relative efficiency
        full = idata.copy()
        full.add_groups(log_likelihood={"y_success": xr.DataArray(specs.log_likelihood(idata),
                                                                  dims=("chain", "draw", "obs"))})
        ref[key.upper()] = az.loo(full, pointwise=True, reff=loo._reff(idata))
    best, other = ranked["model"].to_list()
    assert ref[best].elpd_loo > ref[other].elpd_loo
    d = ref[other].loo_i.values - ref[best].loo_i.values     # arviz.compare's difference and its SE
    second = ranked.row(1, named=True)
    assert second["elpd_diff"] == pytest.approx(d.sum(), rel=1e-8)
    assert second["se_diff"] == pytest.approx(np.sqrt(d.size * np.var(d)), rel=1e-8)


def test_loo_thinning_keeps_every_kth_draw(posteriors):
    t = loo.loo_table(posteriors | {"m0": None}, max_draws=200, chunk=100)
    assert t.filter(pl.col("rank").is_not_null())["draws_used"].to_list() == [200, 200]  # 400 draws thinned by 2


def _tiny_cohort_idata():
    """2 cohorts, 3 observations, 4 draws (single school)."""
    rng = np.random.default_rng(11)
    S = 4
    post = {
        "b_Intercept": rng.normal(0.2, 0.3, (1, S)), "r_school": rng.normal(0, 0.3, (1, S, 1)),
        "sd_school": np.full((1, S), 0.5), "sd_cohort": rng.uniform(0.2, 0.9, (1, S)),
        "r_cohort": rng.normal(0, 0.4, (1, S, 2)),
    }
    idata = az.from_dict(
        posterior=post, observed_data={"y_success": np.array([3, 17, 40])},
        constant_data={"school_idx": np.zeros(3, int), "cohort_idx": np.array([0, 0, 1]),
                       "n_trials": np.array([10, 25, 60])},
        coords={"school": ["S1"], "cohort": ["S1_2015", "S1_2016"], "obs": np.arange(3)},
        dims={"r_school": ["school"], "r_cohort": ["cohort"], "school_idx": ["obs"], "cohort_idx": ["obs"],
              "n_trials": ["obs"], "y_success": ["obs"]},
    )
    return idata, post


def test_adaptive_gauss_hermite_matches_quad():
    idata, post = _tiny_cohort_idata()
    labels, counts, logp = loo.cohort_log_marginal(idata, n_nodes=15)
    assert labels == ["S1_2015", "S1_2016"] and counts.tolist() == [2, 1]
    y, n, cid = np.array([3, 17, 40]), np.array([10, 25, 60]), np.array([0, 0, 1])
    for s in range(4):
        base = post["b_Intercept"][0, s] + post["r_school"][0, s, 0]
        sd = post["sd_cohort"][0, s]
        for c in range(2):
            m = cid == c
            f = lambda u: np.prod(stats.binom.pmf(y[m], n[m], expit(base + u))) * stats.norm.pdf(u, 0, sd)  # noqa: E731
            val, _ = integrate.quad(f, -12 * sd - 5, 12 * sd + 5, epsabs=0, epsrel=1e-12, limit=200)
            assert np.exp(logp[s, c]) == pytest.approx(val, rel=1e-6)


def test_cohort_loo_table(posteriors, sim):
    sample, _ = sim
    groups = loo.cohort_groups(sample)
    t = loo.cohort_loo_table(posteriors, groups=groups, max_draws=200, chunk=150)
    assert t["unit"].unique().to_list() == ["cohort"]
    assert t["model"].to_list() == ["M2", "M1"] and t["n_units"][0] == 160
    one = loo.cohort_integrated_loo(posteriors["m1"], groups=groups, max_draws=200)
    # M1 has no cohort effect: leave-one-cohort-out is PSIS-LOO on the cohorts' summed log-likelihood,
    # which arviz smooths independently (given the same relative efficiency)
    thin = loo._thin(posteriors["m1"], 200)
    ll = specs.log_likelihood(thin)
    lp = np.stack([ll[..., groups == g].sum(-1) for g in sorted(set(groups))], axis=-1)
    total, count = loo.relative_efficiency(lp)
    ref = az.loo(az.from_dict(log_likelihood={"cohort": lp}), pointwise=True, reff=total / max(count, 1))
    np.testing.assert_allclose(one["elpd"].to_numpy(), ref.loo_i.values, rtol=1e-8)
    with pytest.raises(ValueError, match="pass groups"):
        loo.cohort_integrated_loo(posteriors["m1"])


# ---------------------------------------------------------------- SD by model, random effects, diagnostics
def test_school_sd_and_random_effects(posteriors):
    t = an.school_sd_by_model(posteriors)
    assert t["model"].to_list() == ["M1", "M2"]
    assert t["sd_school"][1] == pytest.approx(posteriors["m2"].posterior["sd_school"].values.mean())
    assert figures.school_sd_png(t)[:4] == b"\x89PNG"
    elig = pl.DataFrame({"school_id": [f"S{j:03d}" for j in range(40)], "mean_n_trials": np.linspace(5, 200, 40)})
    re_ = an.school_random_effects(posteriors["m2"], elig)
    r = posteriors["m2"].posterior["r_school"].values.reshape(400, -1)
    assert re_.height == 40 and re_["rank"].to_list() == list(range(1, 41))
    assert (np.diff(re_["mean"].to_numpy()) >= 0).all()
    row = re_.filter(pl.col("school_id") == "S005").row(0, named=True)
    assert row["mean"] == pytest.approx(r[:, 5].mean()) and row["upper"] == pytest.approx(np.quantile(r[:, 5], 0.975))
    assert figures.caterpillar_png(re_)[:4] == b"\x89PNG"


def test_mcmc_diagnostics(posteriors):
    t = diagnostics.mcmc_diagnostics(posteriors)
    assert t["model"].to_list() == ["M1", "M2"]
    s = diagnostics.convergence_summary(posteriors["m2"])
    post = posteriors["m2"].posterior
    ref = max(float(az.rhat(post[[v]])[v].max()) for v in ("b_Intercept", "Intercept", "sd_school", "sd_cohort", "r_school"))
    assert s["max_rhat"] == pytest.approx(ref)
    assert s["divergences"] == 3 and s["max_treedepth_hits"] == 0 and s["sample_seconds"] == 12.5
    assert s["min_bfmi"] == pytest.approx(float(np.min(az.bfmi(posteriors["m2"]))))
    assert s["r_profile_max_rhat"] is None and 0 <= s["r_cohort_share_rhat_gt_1_01"] <= 1
    assert s["min_ess_bulk_sd"] == pytest.approx(min(float(az.ess(post[[v]])[v]) for v in ("sd_school", "sd_cohort")))
    assert figures.trace_png(posteriors["m2"], ["sd_school", "sd_cohort"], "M2")[:4] == b"\x89PNG"


def test_mcmc_diagnostics_reuses_the_summary_stored_with_the_fit(posteriors, tmp_path):
    limits = diagnostics.Thresholds(min_ess=100.0)
    fitted = posteriors["m2"].copy()
    summary = diagnostics.convergence_summary(fitted, limits)
    fitted.attrs.update(diagnostics.summary_attrs(summary, limits))
    specs.save_posterior(fitted, tmp_path / "m2.nc")
    idata = specs.load_posterior(tmp_path / "m2.nc")
    stored = diagnostics.stored_summary(idata, limits)
    assert stored == summary and {type(v) for v in stored.values()} <= {int, float, str, type(None)}
    assert stored["r_profile_max_rhat"] is None  # None values survive NetCDF (which has no None)
    idata.attrs["diag_max_rhat"] = 9.0   # a marker: the table shows the stored figure, not a recomputed one
    assert diagnostics.mcmc_diagnostics({"m2": idata}, limits)["max_rhat"].to_list() == [9.0]
    other = diagnostics.Thresholds(min_ess=200.0)  # other thresholds: judged again
    assert diagnostics.stored_summary(idata, other) is None
    assert diagnostics.mcmc_diagnostics({"m2": idata}, other)["max_rhat"].item() == pytest.approx(summary["max_rhat"])
    del idata.attrs["diag_none"]  # stored by an older version: judged again
    assert diagnostics.stored_summary(idata, limits) is None


# ---------------------------------------------------------------- frequentist
def test_frequentist_comparison(sim):
    sample, _ = sim
    bayes = an.variance_components(_var_idata({"sd_school": np.full((1, 10), 0.6), "sd_cohort": np.full((1, 10), 0.4)}))
    t = an.frequentist_comparison(sample, bayes, bayes_seconds=1200, bayes_sample="40 schools", max_schools=30)
    assert t.columns == ["aspect", "frequentist", "bayesian"]
    assert t["aspect"].to_list() == ["Likelihood", "Weights", "Uncertainty", "Variance decomposition",
                                     "Shrinkage", "Speed", "Sample"]
    d = dict(zip(t["aspect"], t["frequentist"]))
    assert an.NO_WEIGHTS in d["Weights"] and d["Sample"].startswith("30 of 40 schools, 360 observations")
    assert "School (persistent) 69.2%" in dict(zip(t["aspect"], t["bayesian"]))["Variance decomposition"]


def test_frequentist_fit_recovers_the_simulated_variances():
    """School and cohort variances against the variances of the simulated effects (200 schools,
    800 cohorts). The logit-normal approximation attenuates both (empirical logits are pulled
    toward 0): measured on seeds 1-4 at 0.79-0.88 of the truth for the school and 0.86-0.95 for
    the cohort variance. A model that loses a component (or puts cohort variance into the school
    term) falls outside 0.75-1.05."""
    sample, truth = simulate(n_schools=200, seed=1)
    f = an.frequentist_fit(sample, None)
    for part in ("school", "cohort"):
        realized = np.var(list(truth[part].values()))
        assert 0.75 < f["variance"][part] / realized < 1.05, (part, f["variance"][part], realized)


# ---------------------------------------------------------------- report
def test_report_html():
    png = figures.figure_png(__import__("matplotlib.pyplot").pyplot.figure())
    tab = pl.DataFrame({"model": ["M1", "M2"], "elpd": [-1234.56789123, 0.000123456789], "k": [3, None]})
    sections = {name: {"text": f"About {name}.", "tables": [(f"{name} table", tab)], "figures": [(name, png)]}
                for name in report.SECTIONS if name != "Stage 1 production model"}
    out = report.report_html("subsample", sections)
    heads = re.findall(r"<h2>(.*?)</h2>", out)
    assert heads == [__import__("html").escape(n) for n in report.SECTIONS if n != "Stage 1 production model"]
    m = re.search(r'<table id="table-shrinkage-table"[^>]*>(.*?)</table>', out)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", m.group(1))
    assert cells == ["M1", "-1,235", "3", "M2", "0.000123", ""]  # 3 significant digits, thousands separators
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", m.group(1))[0] == "Model"  # human column names
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', out)
    assert len(imgs) == len(report.SECTIONS) - 1 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)


# ---------------------------------------------------------------- findings follow the numbers
def test_school_sd_finding_says_when_the_sd_does_not_fall():
    flat = pl.DataFrame({"model": ["M1", "M2", "M3"], "sd_school": [0.615, 0.616, 0.615],
                         "lower": [0.59, 0.59, 0.59], "upper": [0.64, 0.64, 0.64]})
    text = report.school_sd_finding(flat)
    assert "does not fall" in text and "do not show the decrease" in text
    falling = flat.with_columns(sd_school=pl.Series([0.75, 0.62, 0.61]), lower=pl.Series([0.72, 0.60, 0.59]),
                                upper=pl.Series([0.78, 0.64, 0.63]))
    assert report.school_sd_finding(falling).startswith("The school SD falls from M1 to M3")


def test_shrinkage_finding_follows_the_band_means():
    by_band = pl.DataFrame({"band": list(an.BANDS), "mean_shrinkage_m0_pp": [0.98, 0.62, 0.48],
                            "mean_shrinkage_m1_pp": [0.38, 0.13, 0.04]})
    text = report.shrinkage_finding(by_band)
    assert "M1 shrinks small schools most" in text
    assert "M0's also falls with size" in text and "ignores n" not in text   # 0.98 -> 0.48 is not flat
    flat_m0 = by_band.with_columns(mean_shrinkage_m0_pp=pl.Series([0.50, 0.46, 0.43]))
    assert "it ignores n" in report.shrinkage_finding(flat_m0)


def test_shrinkage_finding_holds_the_number_of_observations_equal():
    """Small schools with few observations: M0 shrinks them more overall, but not like for like."""
    by_band = pl.DataFrame({"band": list(an.BANDS), "mean_shrinkage_m0_pp": [1.15, 0.37, 0.41],
                            "mean_shrinkage_m1_pp": [1.61, 0.12, 0.04], "modal_n_obs": [24, 24, 24],
                            "schools_modal_obs": [60, 200, 50],
                            "mean_shrinkage_m0_pp_modal_obs": [0.40, 0.37, 0.41],
                            "mean_shrinkage_m1_pp_modal_obs": [0.45, 0.12, 0.04]})
    text = report.shrinkage_finding(by_band)
    assert "Among the schools with 24 observations each" in text
    assert "comes from their fewer observations, not their fewer students" in text
    falling = by_band.with_columns(mean_shrinkage_m0_pp_modal_obs=pl.Series([0.90, 0.37, 0.41]))
    assert "Even with the number of observations held equal, M0's shrinkage falls" in report.shrinkage_finding(falling)


def test_shrinkage_by_band_like_for_like_columns():
    t = pl.DataFrame({"school_id": [f"s{i}" for i in range(6)], "n_obs": [24, 24, 3, 24, 24, 6],
                      "mean_n": [10.0, 20.0, 8.0, 50.0, 60.0, 150.0], "band": ["<=25", "<=25", "<=25", "26-100", "26-100", ">100"],
                      "m0_shrinkage_pp": [0.4, 0.6, 3.0, 0.5, 0.5, 1.0], "m1_shrinkage_pp": [1.0, 1.0, 5.0, 0.2, 0.2, 0.1]})
    by = an.shrinkage_by_band(t)
    assert by["modal_n_obs"].to_list() == [24, 24, 24] and by["schools_modal_obs"].to_list() == [2, 2, 0]
    assert by["mean_shrinkage_m0_pp"][0] == pytest.approx(4.0 / 3)
    assert by["mean_shrinkage_m0_pp_modal_obs"][0] == pytest.approx(0.5)
    assert by["mean_shrinkage_m0_pp_modal_obs"][2] is None


def _pointwise(elpd, k, draws=4000):
    return {"elpd_i": np.asarray(elpd, float), "p_loo_i": np.full(len(elpd), 0.5), "pareto_k": np.asarray(k, float),
            "draws_used": draws}


def test_loo_comparison_says_what_high_k_units_carry():
    """Units with Pareto k above the threshold are flagged as loo does (any one makes a model's
    PSIS unreliable), and the table and finding give the part of the difference they carry."""
    rng = np.random.default_rng(4)
    base = rng.normal(-2, 0.5, 200)
    k_m1 = np.zeros(200)
    k_m1[:5] = 0.9                                       # 5 observations with unreliable PSIS in M1
    m1_obs = base - 0.1
    m1_obs[:5] = base[:5] - 1.0                          # ... which carry 5.0 of M2's lead
    obs = loo._compare({"m2": _pointwise(base, np.zeros(200)), "m1": _pointwise(m1_obs, k_m1)}, "observation")
    cohort = loo._compare({"m2": _pointwise(base[:50], np.zeros(50)), "m1": _pointwise(base[:50] - 0.4, np.zeros(50))},
                          "cohort")
    table = loo.comparison(obs, cohort, {"m1": None, "m2": None, "m0": None})
    ranked = table.filter(pl.col("rank").is_not_null())
    assert ranked["unit"].to_list() == ["cohort", "cohort", "observation", "observation"]   # the reliable one first
    assert ranked["reliable"].to_list() == [True, True, True, False]
    m1 = ranked.filter((pl.col("unit") == "observation") & (pl.col("model") == "M1")).row(0, named=True)
    assert m1["n_k_above_threshold"] == 5 and m1["n_units_high_k_diff"] == 5
    assert m1["elpd_diff"] == pytest.approx(-0.1 * 195 - 5.0)
    assert m1["elpd_diff_high_k"] == pytest.approx(-5.0)
    assert table.filter(pl.col("model") == "M0").height == 1
    text = loo.loo_finding(table)
    assert text.index("Leave-one-cohort-out") < text.index("Leave-one-observation-out")
    assert "every cohort has Pareto k below 0.70: reliable" in text
    assert ("5 observations have Pareto k above 0.70 in one of the two models (PSIS unreliable for them, not "
            "corrected) and carry 5.0 of that lead, so without them M2 leads by 19.5") in text
    assert loo.k_threshold(4000) == pytest.approx(min(1 - 1 / np.log10(4000), 0.7))
    assert loo.k_threshold(100) == pytest.approx(0.5)


def test_report_has_run_metadata_and_a_table_of_contents():
    sections = {"Key findings": {"text": "School 72.8% [69.9%, 75.6%]."}, "Shrinkage": {"text": "About shrinkage."}}
    out = report.report_html("subsample", sections, {"run": "abc123", "code version": "deadbeef"})
    assert "run: abc123" in out and "code version: deadbeef" in out
    assert re.findall(r'<li><a href="#(section-[a-z-]+)">', out) == ["section-key-findings", "section-shrinkage"]
    assert out.index("Key findings") < out.index("About shrinkage")


def test_variance_finding_quotes_the_m3_latent_shares():
    t = pl.DataFrame({"model": ["M3", "M3", "M2"], "component": ["School (persistent)", "Cohort (school×year)", "School (persistent)"],
                      "pct_latent": [72.8, 27.2, 70.0], "pct_latent_lower": [69.9, 24.0, 1.0], "pct_latent_upper": [75.6, 30.0, 99.0]})
    text = report.variance_finding(t)
    assert text.startswith("Latent variance (M3") and "School (persistent) 72.8% [69.9%, 75.6%]" in text and "70.0" not in text


# ---------------------------------------------------------------- display: rounding, headers, captions
def test_display_cell_rounds_for_display_only():
    assert report.display_cell("sd_school", 0.643695) == "0.644"
    assert report.display_cell("elpd_diff", 0.0) == "0.00" and report.display_cell("se", 12.671304) == "12.7"
    assert report.display_cell("elpd_loo", -30707.014657) == "-30,707"   # no scientific notation
    assert report.display_cell("mean_shrinkage_m1_pp", 0.039049) == "0.0390"
    assert report.display_cell("pct_latent", 72.778711) == "72.8%" and report.display_cell("pct_latent_lower", 0.309431) == "0.309%"
    assert report.display_cell("share_k_above_threshold", 0.026409) == "2.64%"   # a 0-1 share shown in percent
    assert report.display_cell("max_rhat", 1.0078) == "1.008"
    assert report.display_cell("n_units", 11246) == "11,246" and report.display_cell("reliable", False) == "no"
    assert report.display_cell("pct_total", None) == "" and report.display_cell("se_diff", math.nan) == ""
    assert report.display_cell("mean_n", 99.96) == "100" and report.display_cell("aspect", "Speed") == "Speed"


def test_loo_note_is_said_once_below_the_table():
    note = "M0 excluded: a Normal density on proportions is not comparable with binomial probabilities"
    table = pl.DataFrame({"model": ["M2", "M1", "M0"], "elpd_loo": [-100.5, -120.25, None], "note": [note, note, note]})
    out = report.report_html("subsample", {"Model comparison (LOO-CV)": {"tables": [("loo_comparison", table)]}})
    body = re.search(r'<table id="table-loo-comparison"[^>]*>(.*?)</table>', out).group(1)
    assert note not in body and out.count(note) == 1 and "Note: " + note in out
    assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", body) == ["Model", "ELPD (LOO)"]
    assert report.TABLE_CAPTIONS["loo_comparison"] in out


def test_wide_diagnostics_table_is_shown_one_row_per_column():
    table = pl.DataFrame({"model": ["M1", "M2"], "max_rhat": [1.004, 1.0123], "divergences": [0, 3]})
    shown = report.display_table("mcmc_diagnostics", table)
    assert [h for h, _ in shown["head"]] == ["", "M1", "M2"]
    assert [(r["header"][0], [c for c, _ in r["cells"]]) for r in shown["rows"]] == [
        ("Max R-hat", ["1.004", "1.012"]), ("Divergences", ["0", "3"])]


def test_figures_have_captions_and_labels_by_model():
    png = figures.figure_png(__import__("matplotlib.pyplot").pyplot.figure())
    sections = {"Shrinkage": {"figures": [("shrinkage_arrows", png)]},
                "MCMC diagnostics": {"figures": [("trace_m2", png)]}}
    out = report.report_html("subsample", sections)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", out, re.S)
    assert len(captions) == 2 and not any("shrinkage_arrows" in c or "trace_m2" in c for c in captions)
    assert "Trace plot, M2 SDs" in captions[1] and "one colour per" in captions[1]
    assert "no-pooling estimate" in captions[0] and "M0" in captions[0] and "M1" in captions[0]
    assert figures.label("trace_m0") == "Trace plot, M0 SDs"
    assert all(figures.caption(name) and figures.label(name) != name for name in figures.FIGURES)


def test_variance_shares_figure():
    t = pl.DataFrame({"model": ["M3", "M3", "M3", "M2", "M2"],
                      "component": [an.OBSERVATION, "School (persistent)", "Cohort (school×year)"] * 1 + ["School (persistent)", "Cohort (school×year)"],
                      "pct_latent": [None, 72.8, 27.2, 73.1, 26.9], "pct_latent_lower": [None, 69.9, 24.0, 70.2, 24.1],
                      "pct_latent_upper": [None, 75.6, 30.0, 75.9, 29.8]})
    assert figures.variance_shares_png(t)[:8] == b"\x89PNG\r\n\x1a\n"


def test_posterior_summary_is_brms_style():
    rng = np.random.default_rng(2)
    draws = {"b_Intercept": rng.normal(0.3, 0.1, (4, 250)), "Intercept": rng.normal(0.1, 0.1, (4, 250)),
             "b": rng.normal([0.5, -0.2], 0.05, (4, 250, 2)), "sd_school": np.abs(rng.normal(0.6, 0.03, (4, 250))),
             "sd_cohort": np.abs(rng.normal(0.4, 0.02, (4, 250))), "r_school": rng.normal(size=(4, 250, 3))}
    idata = az.from_dict(posterior=draws, coords={"coef": ["year_subject2016_math", "year_subject2016_reading"]},
                         dims={"b": ["coef"], "r_school": ["school"]})
    t = diagnostics.posterior_summary(idata)
    assert t.columns == ["parameter", "estimate", "est_error", "lower_95", "upper_95", "rhat", "ess_bulk", "ess_tail"]
    assert t["parameter"].to_list() == ["Intercept", "year_subject2016_math", "year_subject2016_reading",
                                        "sd(school)", "sd(cohort)"]   # b_Intercept, not the centred Intercept; no r_school
    sd = draws["sd_school"].ravel()
    row = t.row(3, named=True)
    assert row["estimate"] == pytest.approx(sd.mean()) and row["est_error"] == pytest.approx(sd.std(ddof=1))
    assert row["lower_95"] == pytest.approx(np.quantile(sd, 0.025)) and row["upper_95"] == pytest.approx(np.quantile(sd, 0.975))
    assert row["rhat"] == pytest.approx(float(az.rhat(idata.posterior[["sd_school"]])["sd_school"]))
    assert row["ess_tail"] == pytest.approx(float(az.ess(idata.posterior[["sd_school"]], method="tail")["sd_school"]))
    m0 = diagnostics.posterior_summary(az.from_dict(posterior={"Intercept": draws["Intercept"], "sigma": draws["sd_cohort"]}))
    assert m0["parameter"].to_list() == ["Intercept", "sigma"]
    headers = [h for h, _ in report.display_table("posterior_summary_m2", t)["head"]]
    assert headers == ["Parameter", "Estimate", "Est. error", "l-95% CI", "u-95% CI", "R-hat", "Bulk ESS", "Tail ESS"]
    assert report.table_caption("posterior_summary_m2").startswith("Posterior summary, M2")


def test_markdown_table_for_the_ui_uses_headers_and_display_rounding():
    md = report.markdown_table(pl.DataFrame({"model": ["M3"], "pct_latent": [72.778711], "max_rhat": [1.00987]}))
    assert md.splitlines() == ["| Model | % of latent variance | Max R-hat |", "|---|---|---|", "| M3 | 72.8% | 1.010 |"]


def test_loo_reports_each_model_as_it_finishes(posteriors):
    done: list[str] = []
    loo.loo_table({"m1": posteriors["m1"]}, on_done=done.append)
    assert done == ["M1 per observation"]


def test_loo_marks_models_whose_group_effects_did_not_converge():
    class Fit:
        def __init__(self, attrs):
            self.attrs = attrs

    table = loo._compare({"m2": _pointwise(np.zeros(20), np.zeros(20)), "m3": _pointwise(np.full(20, 0.1), np.zeros(20))},
                         "observation")
    fits = {"m2": Fit({"diag_r_cohort_gate_passed": 1}),
            "m3": Fit({"diag_r_cohort_gate_passed": 1, "diag_r_profile_gate_passed": 0})}
    marked = loo.mark_unconverged_inputs(table, fits)
    assert dict(zip(marked["model"], marked["group_effects_converged"])) == {"M3": False, "M2": True}
    assert "The cohort or profile effects of M3 did not pass" in loo.loo_finding(marked.with_columns(reliable=True))
