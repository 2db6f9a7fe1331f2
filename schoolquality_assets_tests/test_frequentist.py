"""The page's weighted logit-normal mixed model (statsmodels MixedLM on √w-rescaled rows) against
known answers: the unweighted fit, and a direct dense-matrix maximisation of the weighted likelihood."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
import statsmodels.formula.api as smf
from scipy import linalg, optimize
from scipy.special import expit

from schoolquality_assets.analyses import tables as an

warnings.filterwarnings("ignore", module="statsmodels")


def simulate(n_schools=40, years=4, subjects=3, sd_school=0.6, sd_cohort=0.4, seed=3) -> pl.DataFrame:
    """Binomial school×year×subject data with very unequal n (3 to ~250), so the weights matter."""
    rng = np.random.default_rng(seed)
    rows = []
    for j in range(n_schools):
        size, a = int(np.clip(rng.lognormal(np.log(35), 1.0), 3, 250)), rng.normal(0, sd_school)
        for yr in range(2015, 2015 + years):
            c = rng.normal(0, sd_cohort)
            for k in range(subjects):
                n = max(3, int(size * rng.uniform(0.8, 1.2)))
                rows.append({"school_id": f"S{j:03d}", "school_year_id": f"S{j:03d}_{yr}",
                             "year_subject": f"{yr}_{k}", "n_trials": n,
                             "y_success": int(rng.binomial(n, expit(0.4 + 0.1 * k + a + c)))})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def design():
    return an.frequentist_design(simulate())


def _indicators(labels: np.ndarray) -> np.ndarray:
    return (labels[:, None] == np.unique(labels)[None, :]).astype(float)


def dense_weighted_fit(d: dict, reml: bool = True) -> tuple[np.ndarray, float]:
    """(s2_school, s2_cohort, sigma2) maximising the weighted (RE)ML written with dense matrices:
    V = s2_s Zs Zs' + s2_c Zc Zc' + sigma2 diag(1/w); returns the estimates and the maximum."""
    y, x, w = d["endog"], d["exog"], d["weights"]
    zs, zc = _indicators(d["groups"]), _indicators(d["nested"])
    ks, kc = zs @ zs.T, zc @ zc.T

    def negll(theta):
        s2s, s2c, s2 = np.exp(theta)
        chol = linalg.cho_factor(s2s * ks + s2c * kc + np.diag(s2 / w))
        vinv_x, vinv_y = linalg.cho_solve(chol, x), linalg.cho_solve(chol, y)
        xvx = x.T @ vinv_x
        beta = np.linalg.solve(xvx, x.T @ vinv_y)
        quad = y @ vinv_y - beta @ xvx @ beta  # r'V^-1 r at the GLS beta
        out = 2 * np.log(np.diag(chol[0])).sum() + quad + len(y) * np.log(2 * np.pi)
        if reml:
            out += np.linalg.slogdet(xvx)[1] - x.shape[1] * np.log(2 * np.pi)
        return 0.5 * out

    best = optimize.minimize(negll, np.log([0.3, 0.1, 1.0]), method="BFGS", options={"gtol": 1e-8})
    return np.exp(best.x), -best.fun


@pytest.mark.parametrize("reml", [True, False])
def test_rescaled_fit_equals_dense_weighted_likelihood(design, reml):
    """Known answer (b): the √w trick gives the weighted model's estimates and, up to the Jacobian
    ½ log|W|, its maximised (RE)ML criterion."""
    d = design
    assert d["weights"].max() / d["weights"].min() > 20  # the weights really differ
    fit = an.weighted_mixedlm(d["endog"], d["exog"], d["groups"], d["weights"], nested=d["nested"], reml=reml)
    (s2s, s2c, s2), llf = dense_weighted_fit(d, reml)
    assert fit["converged"]
    assert fit["school"] == pytest.approx(s2s, rel=1e-4)
    assert fit["cohort"] == pytest.approx(s2c, rel=1e-4)
    assert fit["sigma2"] == pytest.approx(s2, rel=1e-4)
    assert fit["llf"] + 0.5 * np.log(d["weights"]).sum() == pytest.approx(llf, abs=1e-6)  # + the Jacobian


def test_equal_weights_equal_the_unweighted_mixedlm(design):
    """Known answer (a): all w = 1 is the plain MixedLM fit; all w = c leaves the random-effect
    variances unchanged and multiplies sigma2 by c (Var(e) = sigma2 / c)."""
    d = design
    df = pd.DataFrame({"y": d["endog"], "school": d["groups"], "cohort": d["nested"],
                       "cell": simulate()["year_subject"].to_numpy()})  # the rows of ``design``
    ref = smf.mixedlm("y ~ C(cell)", df, groups="school", re_formula="1",
                      vc_formula={"cohort": "0 + C(cohort)"}).fit(reml=True, gtol=1e-7)
    for c in (1.0, 7.5):
        fit = an.weighted_mixedlm(d["endog"], d["exog"], d["groups"], np.full(len(d["endog"]), c), nested=d["nested"])
        assert fit["school"] == pytest.approx(float(np.asarray(ref.cov_re)[0, 0]), rel=1e-5)
        assert fit["cohort"] == pytest.approx(float(ref.vcomp[0]), rel=1e-5)
        assert fit["sigma2"] == pytest.approx(c * ref.scale, rel=1e-5)
        assert fit["fe_params"] == pytest.approx(np.asarray(ref.fe_params), rel=1e-5, abs=1e-7)


def test_row_order_does_not_matter(design):
    """The nested (cohort) design follows MixedLM's group order whatever the row order."""
    d = design
    perm = np.random.default_rng(0).permutation(len(d["endog"]))
    args = [d[k] for k in ("endog", "exog", "groups", "weights")]
    a = an.weighted_mixedlm(*args, nested=d["nested"])
    b = an.weighted_mixedlm(*[v[perm] for v in args], nested=d["nested"][perm])
    assert [b[k] for k in ("school", "cohort", "sigma2")] == pytest.approx([a[k] for k in ("school", "cohort", "sigma2")], rel=1e-6)


def test_fixed_only_sigma2_is_weighted_rss():
    rng = np.random.default_rng(1)
    x = np.column_stack([np.ones(50), rng.normal(size=50)])
    w = rng.uniform(1, 20, 50)
    y = x @ [1.0, 2.0] + rng.normal(size=50) / np.sqrt(w)
    import statsmodels.api as sm
    wls = sm.WLS(y, x, weights=w).fit()
    assert an.weighted_ls_sigma2(y, x, w) == pytest.approx(wls.scale, rel=1e-10)  # RSS_w / (N - p)
    assert an.weighted_ls_sigma2(y, x, w, reml=False) == pytest.approx(wls.ssr / 50, rel=1e-10)


def test_frequentist_fit_decompositions():
    sample = simulate(n_schools=60)
    f = an.frequentist_fit(sample)
    assert f["n_schools"] == f["n_schools_total"] == 60 and f["n_obs"] == sample.height
    s2 = f["sigma2"]
    assert s2["fixed"] > s2["school"] > s2["full"] > 0  # each random effect takes from the residual
    # the fixed-only residual variance is statsmodels' weighted least squares scale on the same rows
    import statsmodels.api as sm
    d = an.frequentist_design(sample)
    assert s2["fixed"] == pytest.approx(sm.WLS(d["endog"], d["exog"], weights=d["weights"]).fit().scale, rel=1e-8)
    # binomial data: the residual of the full model is sampling noise, sigma2 close to 1, and
    # the noise share is then the mean sampling variance of the empirical logits
    assert 0.8 < s2["full"] < 1.2
    _, w = an.empirical_logits(sample["y_success"].to_numpy(), sample["n_trials"].to_numpy())
    assert 0.8 * np.mean(1 / w) < f["variance"]["noise"] < 1.2 * np.mean(1 / w)


def test_frequentist_table_same_denominators():
    sample = simulate(n_schools=30)
    bayes = pl.DataFrame({"component": ["Observation (binomial)", "School (persistent)", "Cohort (school×year)"],
                          "variance": [an.LOGISTIC_VAR, 0.36, 0.16], "pct_latent": [None, 69.2, 30.8],
                          "pct_latent_lower": [None, 60.0, 25.0], "pct_latent_upper": [None, 75.0, 40.0]})
    t = an.frequentist_comparison(sample, bayes, bayes_seconds=1200, bayes_sample="30 schools")
    assert t.columns == ["aspect", "frequentist", "bayesian"]
    freq, bay = (dict(zip(t["aspect"], t[c])) for c in ("frequentist", "bayesian"))
    assert freq["Sample"].startswith(f"30 of 30 schools, {sample.height} observations")
    for cell in (freq["Variance decomposition"], bay["Variance decomposition"]):
        assert "of latent variance" in cell.lower() and "of latent + noise" in cell.lower()
    _, w = an.empirical_logits(sample["y_success"].to_numpy(), sample["n_trials"].to_numpy())
    noise = np.mean(1 / w)
    school = 100 * 0.36 / (0.36 + 0.16 + noise)
    assert f"School (persistent) {school:.1f}%" in bay["Variance decomposition"]
    assert "School (persistent) 69.2% [60.0%, 75.0%]" in bay["Variance decomposition"]
    assert " s (school + cohort MixedLM fit" in freq["Speed"] and bay["Speed"] == "1200 s sampling"
    assert "√w" in freq["Weights"]
