"""Tests of the school rankings (schoolquality_assets.analyses.rankings) on posteriors known exactly; no Stan.

The calibration and coverage tests draw from the exact posterior of a Normal-Normal model: true
effects theta_j ~ N(mu, tau^2), one measurement x_j ~ N(theta_j, s_j^2) per school with
heterogeneous s_j (30% small schools with large s_j), so theta_j | x ~ N(mu + B_j (x_j - mu),
B_j s_j^2), B_j = tau^2 / (tau^2 + s_j^2), independently across schools: 4 chains x 1,000 iid draws.
mu = 1 (not 0), so a probability computed against 0 instead of the per-draw average school fails.
"""

from __future__ import annotations

import re
import warnings

import arviz as az
import numpy as np
import polars as pl
import pytest
import xarray as xr
from scipy import stats

from schoolquality_assets import columns
from schoolquality_assets.analyses import figures
from schoolquality_assets.analyses import rankings as rk

warnings.filterwarnings("ignore", category=FutureWarning)

TAU, MU = 0.6, 1.0
N_SCHOOLS, CHAINS, DRAWS = 400, 4, 1000
REPLICATES = 5  # pooled: ~2,000 schools, ~450 in each of the p >= 0.9 and p <= 0.1 bins


def to_idata(draws: np.ndarray, ids) -> az.InferenceData:
    return az.from_dict(posterior={"r_school": draws}, dims={"r_school": ["school"]}, coords={"school": list(ids)})


def posterior_draws(seed: int, n_schools: int = N_SCHOOLS, chains: int = CHAINS, draws: int = DRAWS,
                    phi: float = 0.0):
    """(draws (chain, draw, school), theta, s) of one simulated province's exact posterior; each
    chain is a stationary AR(1) series with autocorrelation ``phi`` (0: i.i.d. draws)."""
    rng = np.random.default_rng(seed)
    s = np.where(rng.random(n_schools) < 0.3, rng.uniform(0.6, 1.2, n_schools), rng.uniform(0.1, 0.3, n_schools))
    theta = rng.normal(MU, TAU, n_schools)
    x = rng.normal(theta, s)
    b = TAU**2 / (TAU**2 + s**2)
    z = rng.standard_normal((chains, draws, n_schools))
    for t in range(1, draws if phi else 0):
        z[:, t] = phi * z[:, t - 1] + np.sqrt(1 - phi**2) * z[:, t]
    return MU + b * (x - MU) + np.sqrt(b) * s * z, theta, s


def exact_posterior(seed: int, n_schools: int = N_SCHOOLS):
    """(idata, truth frame, s) for one simulated province with an exactly known posterior."""
    draws, theta, s = posterior_draws(seed, n_schools)
    ids = [f"S{seed:02d}_{j:04d}" for j in range(n_schools)]
    truth = pl.DataFrame({
        "school_id": ids,
        "truly_below": theta < theta.mean(),  # the same definition of "average school" as the posterior's
        "true_rank": np.argsort(np.argsort(theta)) + 1,
        "s": s,
    })
    return to_idata(draws, ids), truth


@pytest.fixture(scope="module")
def replicates():
    """Rankings joined with the truth, one frame per replicate."""
    out = []
    for seed in range(REPLICATES):
        idata, truth = exact_posterior(seed)
        out.append(rk.school_rankings(idata).join(truth, on="school_id", how="left"))
    return out


@pytest.fixture(scope="module")
def pooled(replicates):
    return pl.concat(replicates)


def eligible_for(truth: pl.DataFrame) -> pl.DataFrame:
    """eligible_schools-like frame: measurement SD s -> mean students per observation (large s = small)."""
    mean_n = np.where(truth["s"].to_numpy() > 0.5, 12.0, np.where(truth["s"].to_numpy() > 0.2, 60.0, 150.0))
    return pl.DataFrame({"school_id": truth["school_id"], "n_obs": 24, "mean_n_trials": mean_n})


# ---------------------------------------------------------------- (1) calibration against the truth
def test_p_below_average_is_calibrated(pooled):
    hi = pooled.filter(pl.col("p_below_average") >= 0.9)
    lo = pooled.filter(pl.col("p_below_average") <= 0.1)
    assert hi.height >= 30 and lo.height >= 30
    assert hi["truly_below"].mean() >= 0.9
    assert (~lo["truly_below"]).mean() >= 0.9


@pytest.mark.parametrize("low, high", [(0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.0 + 1e-12)])
def test_share_truly_below_matches_mean_probability_in_each_bin(pooled, low, high):
    """Calibration in every bin: the share truly below is the bin's mean p, within 4 binomial SEs
    (schools of one replicate share the per-draw average, so a little more than binomial noise)."""
    b = pooled.filter((pl.col("p_below_average") >= low) & (pl.col("p_below_average") < high))
    assert b.height >= 30
    p = b["p_below_average"].mean()
    se = np.sqrt(max(p * (1 - p), 0.02) / b.height)
    assert abs(b["truly_below"].mean() - p) <= 4 * se, (low, high, b.height, p, b["truly_below"].mean())


# ---------------------------------------------------------------- (2) rank intervals cover the true rank
def test_rank_interval_covers_true_rank_about_95_percent(pooled):
    inside = (pooled["true_rank"] >= pooled["rank_lower_95"]) & (pooled["true_rank"] <= pooled["rank_upper_95"])
    n = pooled.height
    tolerance = 3 * np.sqrt(0.95 * 0.05 / n)  # ~0.015 for 2,000 schools
    assert abs(inside.mean() - 0.95) <= tolerance, inside.mean()


def test_small_schools_have_wider_rank_intervals(pooled):
    width = pooled.with_columns(w=pl.col("rank_upper_95") - pl.col("rank_lower_95"), small=pl.col("s") > 0.5)
    small = width.filter(pl.col("small"))["w"].median()
    large = width.filter(~pl.col("small"))["w"].median()
    assert small > 1.5 * large


# ---------------------------------------------------------------- (3) definitions on tiny cases
TINY = np.array([  # (chain, draw, school a/b/c)
    [[0.0, 1.0, 2.0], [3.0, 1.0, 2.0]],    # means 1 (b equal to it: not below) and 2
    [[0.0, 4.0, 5.0], [-1.0, -2.0, 6.0]],  # means 3 and 1
])


def test_tiny_case_by_hand():
    t = rk.school_rankings(to_idata(TINY, ["a", "b", "c"]))
    assert t.columns == list(rk.COLUMNS)
    assert t["school_id"].to_list() == ["a", "b", "c"]
    assert t["p_below_average"].to_list() == [0.75, 0.5, 0.0]
    # ranks (1 = lowest): a 1,3,1,2; b 2,1,2,1; c 3,2,3,3; J = 3 so bottom 10% = rank 1, top 10% = rank 3
    assert t["rank_median"].to_list() == [1, 1, 3]
    assert t["rank_lower_95"].to_list() == [1, 1, 2]
    assert t["rank_upper_95"].to_list() == [3, 2, 3]
    assert t["p_bottom_10"].to_list() == [0.5, 0.5, 0.0]
    assert t["p_top_10"].to_list() == [0.25, 0.0, 0.75]


def test_p_below_average_and_ranks_match_a_brute_force_loop():
    rng = np.random.default_rng(3)
    draws = rng.normal(0, 1, (2, 5, 3)) + np.array([-0.5, 0.0, 0.4])
    t = rk.school_rankings(to_idata(draws, ["x", "y", "z"]))
    below, ranks = np.zeros(3), np.zeros((10, 3), int)
    for i, (c, d) in enumerate((c, d) for c in range(2) for d in range(5)):
        values = list(draws[c, d])
        average = sum(values) / 3
        for s in range(3):
            below[s] += values[s] < average
            ranks[i, s] = 1 + sum(v < values[s] for v in values)
    np.testing.assert_allclose(t["p_below_average"].to_numpy(), below / 10)
    assert t["p_bottom_10"].to_list() == list((ranks == 1).mean(0))
    assert t["p_top_10"].to_list() == list((ranks == 3).mean(0))
    assert t["rank_lower_95"].to_list() == list(np.sort(ranks, 0)[0])    # 2.5% of 10 draws: the smallest
    assert t["rank_upper_95"].to_list() == list(np.sort(ranks, 0)[-1])   # 97.5%: the largest
    assert t["rank_median"].to_list() == list(np.sort(ranks, 0)[4])      # lower median of 10


def test_rank_one_is_the_lowest_effect():
    rng = np.random.default_rng(0)
    draws = np.array([-5.0, 0.0, 5.0]) + 0.1 * rng.standard_normal((2, 50, 3))
    t = rk.school_rankings(to_idata(draws, ["low", "mid", "high"])).sort("rank_median")
    assert t["school_id"].to_list() == ["low", "mid", "high"]
    assert t["rank_median"].to_list() == [1, 2, 3]
    assert t.filter(pl.col("school_id") == "low")["p_bottom_10"].item() == 1.0
    assert t.filter(pl.col("school_id") == "high")["p_top_10"].item() == 1.0
    assert t["distinguishable"].to_list() == ["below", "cannot tell", "above"]


def test_draw_ranks_is_argsort_of_argsort():
    x = np.random.default_rng(1).standard_normal((3, 600, 57))  # more draws than one chunk
    np.testing.assert_array_equal(rk.draw_ranks(x), np.argsort(np.argsort(x, axis=-1), axis=-1) + 1)


@pytest.mark.parametrize("j, k", [(3, 1), (10, 1), (11, 2), (30, 3), (3300, 330), (3247, 325)])
def test_tail_size(j, k):
    assert rk.tail_size(j) == k


# ---------------------------------------------------------------- (4) MCSE from arviz
def test_mcse_is_arviz_mcse_of_the_indicator(replicates):
    idata, _ = exact_posterior(0)
    t = replicates[0]
    r = idata.posterior["r_school"].values
    indicators = {
        "p_below_average": r < r.mean(axis=2, keepdims=True),
        "p_bottom_10": rk.draw_ranks(r) <= rk.tail_size(r.shape[2]),
        "p_top_10": rk.draw_ranks(r) > r.shape[2] - rk.tail_size(r.shape[2]),
    }
    for name, ind in indicators.items():
        expected = az.mcse(xr.Dataset({"x": (("chain", "draw", "school"), ind.astype(float))}), method="mean")["x"].values
        p = ind.mean((0, 1))
        constant = (p == 0) | (p == 1)
        got = t[f"{name}_mcse"].to_numpy()
        np.testing.assert_allclose(got[~constant], expected[~constant], rtol=1e-10)
        assert constant.any() and np.all(got[constant] == 0.0)
    assert not any(t.select(pl.col("^.*_mcse$").is_nan().any()).row(0))


def test_constant_indicator_has_mcse_zero_even_if_arviz_says_nan(monkeypatch):
    ind = np.zeros((4, 100, 3), bool)
    ind[:, :, 1] = True                                            # constant 1
    ind[:, :, 2] = np.random.default_rng(0).random((4, 100)) < 0.3  # varies
    nan_mcse = lambda ds, method: xr.Dataset({"x": ds["x"].isel(chain=0, draw=0) * np.nan})  # noqa: E731
    monkeypatch.setattr(rk.az, "mcse", nan_mcse)
    out = rk.indicator_mcse(ind)
    assert out[0] == 0.0 and out[1] == 0.0
    assert np.isnan(out[2])  # a varying indicator arviz cannot assess stays NaN and fails the gate


def test_mcse_gate(replicates):
    good = rk.mcse_summary(replicates[0])
    assert good["passed"] and 0 < good["max_mcse"] <= rk.MCSE_LIMIT
    assert good["max_mcse"] == max(good[f"max_{p}_mcse"] for p in rk.PROBABILITIES)
    assert not rk.mcse_summary(replicates[0], limit=good["max_mcse"] / 2)["passed"]
    with_nan = replicates[0].with_columns(pl.when(pl.int_range(pl.len()) == 0).then(float("nan"))
                                          .otherwise(pl.col("p_top_10_mcse")).alias("p_top_10_mcse"))
    assert not rk.mcse_summary(with_nan)["passed"] and rk.mcse_summary(with_nan)["non_finite_mcse"] == 1


def test_mcse_gate_fails_chains_that_disagree():
    """Chains 1-2 put school a below every other school, chains 3-4 above: p = 0.5 from 4 chains that
    never mix; its MCSE is large and the gate fails."""
    rng = np.random.default_rng(2)
    draws = rng.standard_normal((4, 200, 20))
    draws[:2, :, 0] -= 10
    draws[2:, :, 0] += 10
    t = rk.school_rankings(to_idata(draws, [f"s{j:02d}" for j in range(20)]))
    summary = rk.mcse_summary(t)
    assert t["p_below_average"][0] == 0.5
    assert summary["worst_mcse_school"] == "s00" and summary["max_mcse"] > 0.1 and not summary["passed"]


# ---------------------------------------------------------------- (4b) MCSE of the rank quantiles
RANK_MCSE = [f"{column}_mcse" for column in rk.RANK_QUANTILES]


def test_rank_mcse_columns_exist_and_are_finite(replicates):
    t = replicates[0]
    width = np.maximum((t["rank_upper_95"] - t["rank_lower_95"]).to_numpy(), 1)
    for name in RANK_MCSE:
        mcse = t[name].to_numpy()
        assert np.isfinite(mcse).all() and (mcse >= 0).all(), name
        assert (mcse > 0).mean() > 0.9, name  # 0 only where a quantile's bracketing draws are one rank
        assert 0.002 < np.median(mcse / width) < 0.03, name  # 4 x 1,000 i.i.d. draws: ~0.68/sqrt(4000) at the ends


def test_rank_mcse_is_arvizs_quantile_mcse(replicates):
    """rank_quantile_mcse does arviz's arithmetic for many schools at once: the same numbers as
    az.mcse(method="quantile") school by school, on i.i.d., autocorrelated, odd-length, short and
    disagreeing chains and on ranks that never change."""
    exact = rk.draw_ranks(posterior_draws(0)[0])
    rng = np.random.default_rng(4)
    apart = rng.standard_normal((4, 50, 30))
    apart[2:, :, :3] += 5                        # three schools whose chains disagree
    apart[:, :, 3] -= 100                        # always rank 1
    cases = {"exact posterior": exact[:, :, ::4],   # (arviz takes ~1 ms a school and quantile)
             "autocorrelated": rk.draw_ranks(posterior_draws(1, n_schools=300, chains=4, draws=300, phi=0.95)[0])[:, :, ::3],
             "odd draws, 3 chains": rk.draw_ranks(posterior_draws(2, n_schools=200, chains=3, draws=101)[0]),
             "5 draws a chain": rk.draw_ranks(posterior_draws(3, n_schools=60, chains=2, draws=5)[0]),
             "disagreeing chains": rk.draw_ranks(apart)}
    for name, ranks in cases.items():
        got = rk.rank_quantile_mcse(ranks)
        ds = xr.Dataset({"x": (("chain", "draw", "school"), ranks.astype(float))})
        for i, q in enumerate(rk.RANK_PROBS):
            expected = az.mcse(ds, method="quantile", prob=q)["x"].values
            np.testing.assert_allclose(got[i], expected, rtol=1e-10, atol=0, err_msg=f"{name}, q = {q}")
    assert rk.rank_quantile_mcse(cases["disagreeing chains"])[:, 3].tolist() == [0.0, 0.0, 0.0]
    t = replicates[0]  # the table carries them, school by school (ids sort in draw order)
    np.testing.assert_array_equal(np.stack([t[c].to_numpy() for c in RANK_MCSE]), rk.rank_quantile_mcse(exact))


@pytest.mark.parametrize("phi", [0.0, 0.5])
def test_rank_mcse_matches_the_quantiles_monte_carlo_spread(phi):
    """300 independent schools whose rank in a draw is round(2000 + 100 z), z ~ N(0, 1) (a rank's
    quantile MCSE depends on its own draws only), 4 x 1,000 draws. i.i.d.: the theoretical MCSE of
    the q quantile is 100 sqrt(q(1-q)/S) / phi(z_q), 1.98 places at the median and 4.22 at 2.5% /
    97.5%; the estimates average to it, and it is how far the 300 schools' sample quantiles actually
    scatter. AR(1) draws (autocorrelation 0.5): larger, and still the actual scatter."""
    rng = np.random.default_rng(11)
    chains, n, k, sd = 4, 1000, 300, 100.0
    z = rng.standard_normal((chains, n, k))
    for t in range(1, n if phi else 0):
        z[:, t] = phi * z[:, t - 1] + np.sqrt(1 - phi**2) * z[:, t]
    ranks = np.rint(2000 + sd * z).astype(np.int32)
    mcse = rk.rank_quantile_mcse(ranks)
    for i, q in enumerate(rk.RANK_PROBS):
        theory = sd * np.sqrt(q * (1 - q) / (chains * n)) / stats.norm.pdf(stats.norm.ppf(q))
        scatter = np.quantile(ranks.reshape(chains * n, k), q, axis=0, method="inverted_cdf").std(ddof=1)
        estimate = mcse[i].mean()
        assert estimate == pytest.approx(scatter, rel=0.15), (q, estimate, scatter)
        if phi:
            assert estimate > 1.15 * theory, (q, estimate, theory)
        else:
            assert estimate == pytest.approx(theory, rel=0.12), (q, estimate, theory)
            assert scatter == pytest.approx(theory, rel=0.15), (q, scatter, theory)


def test_rank_mcse_of_constant_ranks_is_zero_and_too_few_draws_fail():
    draws = np.random.default_rng(5).standard_normal((2, 3, 6))  # 3 draws a chain: arviz cannot judge
    draws[:, :, 0] -= 100                                        # always rank 1
    t = rk.rankings_from_draws(draws, [f"s{j}" for j in range(6)])
    assert [t[c][0] for c in RANK_MCSE] == [0.0, 0.0, 0.0]
    assert all(np.isnan(t[c][1:].to_numpy()).all() for c in RANK_MCSE)
    summary = rk.mcse_summary(t, limit=1.0)
    assert summary["non_finite_rank_mcse"] == 15 and not summary["passed"]


def test_rank_mcse_ratio_is_against_the_interval_width_at_least_one_over_the_limit():
    t = pl.DataFrame({"rank_lower_95": [1, 1, 100], "rank_upper_95": [1, 3, 300],
                      "rank_median_mcse": [0.0, 0.5, 10.0], "rank_lower_95_mcse": [0.5, 1.0, 20.0],
                      "rank_upper_95_mcse": [1.0, 1.5, 60.0]})
    # widths 0, 2 and 200 places; at limit 0.25 the first two count as 4 (an MCSE of 1 place passes)
    np.testing.assert_allclose(rk.rank_mcse_ratios(t, limit=0.25), [[0, 0.125, 0.05], [0.125, 0.25, 0.1],
                                                                    [0.25, 0.375, 0.3]])
    np.testing.assert_allclose(rk.rank_mcse_ratios(t, limit=0.1)[:, 1], [0.05, 0.1, 0.15])  # floor 10


def test_rank_mcse_gate(replicates):
    """Many independent draws pass, with room; the worst school is named; one school's rank MCSE
    above a quarter of its interval, or not finite, fails the whole table."""
    t = replicates[0]
    good = rk.mcse_summary(t)
    assert good["passed"] and 0 < good["max_rank_mcse_ratio"] <= 0.15
    assert good["rank_mcse_ratio_limit"] == rk.RANK_MCSE_LIMIT == 0.25
    worst = t.filter(pl.col("school_id") == good["worst_rank_mcse_school"]).row(0, named=True)
    column = good["worst_rank_mcse_column"]
    width = worst["rank_upper_95"] - worst["rank_lower_95"]
    assert good["worst_rank_interval_width"] == width and good["worst_rank_mcse_places"] == worst[f"{column}_mcse"]
    assert good["max_rank_mcse_ratio"] == pytest.approx(worst[f"{column}_mcse"] / max(width, 4))
    assert not rk.mcse_summary(t, rank_limit=0.02)["passed"]  # typical ends ~0.011 (0.68 / sqrt(4000)); worst above

    wide = t.sort("school_id").with_row_index().with_columns(  # school 7: lower end's MCSE 0.3 of its width
        pl.when(pl.col("index") == 7).then(0.3 * (pl.col("rank_upper_95") - pl.col("rank_lower_95")))
        .otherwise(pl.col("rank_lower_95_mcse")).alias("rank_lower_95_mcse")).drop("index")
    bad = rk.mcse_summary(wide)
    assert not bad["passed"] and bad["max_mcse"] <= rk.MCSE_LIMIT   # the probabilities alone would pass
    assert bad["worst_rank_mcse_school"] == wide["school_id"][7] and bad["worst_rank_mcse_column"] == "rank_lower_95"
    assert bad["max_rank_mcse_ratio"] == pytest.approx(0.3)
    with_nan = t.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(float("nan"))
                              .otherwise(pl.col("rank_median_mcse")).alias("rank_median_mcse"))
    nan_summary = rk.mcse_summary(with_nan)
    assert not nan_summary["passed"] and nan_summary["non_finite_rank_mcse"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind, chains, draws, phi", [("few draws", 4, 25, 0.0), ("autocorrelated", 4, 100, 0.99)])
def test_rank_mcse_gate_fails_a_too_short_fit(kind, seed, chains, draws, phi):
    """The same 400-school posterior with 4 x 25 i.i.d. draws, or 4 x 100 draws from chains with
    autocorrelation 0.99: some school's rank interval has an end whose MCSE exceeds a quarter of its
    width (with 4 x 1,000 i.i.d. draws the worst is ~0.05-0.13, test_rank_mcse_gate)."""
    d, _, _ = posterior_draws(seed, chains=chains, draws=draws, phi=phi)
    t = rk.rankings_from_draws(d, [f"S{j:04d}" for j in range(N_SCHOOLS)])
    summary = rk.mcse_summary(t, limit=1.0)  # the probabilities' gate out of the way: the ranks' alone
    assert summary["non_finite_rank_mcse"] == 0
    assert summary["max_rank_mcse_ratio"] > 1.2 * rk.RANK_MCSE_LIMIT and not summary["passed"], (kind, summary)


def test_production_rank_limit_is_the_default_at_the_gates_ess():
    from schoolquality_assets.defs import production

    assert production.ranking_rank_mcse_limit(400.0) == rk.RANK_MCSE_LIMIT
    assert production.ranking_rank_mcse_limit(1600.0) == rk.RANK_MCSE_LIMIT / 2  # like the MCSEs: 1/sqrt(ESS)


# ---------------------------------------------------------------- (5) distinguishable labels
def test_distinguishable_thresholds():
    """Targets with p_below_average 0.975, 0.97, 0.5 and mirror schools (the negated values: 0.025,
    0.03, 0.5), so every draw's average school is exactly 0; 2 chains x 100 draws."""
    below_draws = {"t975": 195, "t970": 194, "t500": 100}
    cols = []
    for n_below in below_draws.values():
        v = np.ones(200)
        v[:n_below] = -1.0
        v = np.random.default_rng(n_below).permutation(v)
        cols.append(v)
    cols += [-c for c in cols]
    draws = np.column_stack(cols).reshape(2, 100, 6)
    ids = ["t975", "t970", "t500", "m025", "m030", "m500"]
    t = rk.school_rankings(to_idata(draws, ids))
    got = dict(zip(t["school_id"], zip(t["p_below_average"], t["distinguishable"])))
    assert got == {"t975": (0.975, "below"), "t970": (0.97, "cannot tell"), "t500": (0.5, "cannot tell"),
                   "m025": (0.025, "above"), "m030": (0.03, "cannot tell"), "m500": (0.5, "cannot tell")}
    assert rk.distinguishable_counts(t) == {"below": 1, "above": 1, "cannot tell": 4}


def test_labels_agree_with_the_probabilities(pooled):
    assert pooled.filter((pl.col("distinguishable") == "below") != (pl.col("p_below_average") >= 0.975)).height == 0
    assert pooled.filter((pl.col("distinguishable") == "above") != (pl.col("p_below_average") <= 0.025)).height == 0
    assert set(pooled["distinguishable"]) == {"below", "above", "cannot tell"}


# ---------------------------------------------------------------- by band and (6) the words
def test_distinguishable_by_band_counts(replicates):
    t = replicates[1]
    eligible = eligible_for(t)
    by = rk.distinguishable_by_band(t.select(rk.COLUMNS), eligible)
    assert by["band"].to_list() == ["<=25", "26-100", ">100", "all"]
    bands = by.filter(pl.col("band") != "all")
    total = by.filter(pl.col("band") == "all").row(0, named=True)
    for c in ("schools", "below", "above", "cannot_tell"):
        assert bands[c].sum() == total[c]
    assert total["schools"] == t.height
    assert (total["below"], total["above"], total["cannot_tell"]) == tuple(rk.distinguishable_counts(t).values())
    small = t.filter(pl.col("s") > 0.5)
    row = by.filter(pl.col("band") == "<=25").row(0, named=True)
    assert row["schools"] == small.height
    assert row["below"] == small.filter(pl.col("distinguishable") == "below").height
    assert row["median_rank_interval_width"] == (small["rank_upper_95"] - small["rank_lower_95"]).median()
    widths = dict(zip(by["band"], by["median_rank_interval_width"]))
    assert widths["<=25"] > widths[">100"]


def test_distinguishable_by_band_empty_and_unknown_bands(replicates):
    t = replicates[1].select(rk.COLUMNS)
    eligible = pl.DataFrame({"school_id": t["school_id"][:-5], "mean_n_trials": 200.0})
    by = rk.distinguishable_by_band(t, eligible)
    assert by["band"].to_list() == ["<=25", "26-100", ">100", "unknown", "all"]
    rows = {r["band"]: r for r in by.iter_rows(named=True)}
    assert rows["<=25"]["schools"] == 0 and rows["<=25"]["median_rank_interval_width"] is None
    assert rows["unknown"]["schools"] == 5 and rows[">100"]["schools"] == t.height - 5
    text = rk.rankings_finding(by)
    assert "there are no schools of ≤25 students" in text
    assert "for schools of >100 students." in text


NUMBER = r"([\d,]+)"


def _int(s: str) -> int:
    return int(s.replace(",", ""))


@pytest.mark.parametrize("replicate", [1, 2])
def test_rankings_finding_numbers_match_the_table(replicates, replicate):
    t = replicates[replicate]
    by = rk.distinguishable_by_band(t.select(rk.COLUMNS), eligible_for(t))
    text = rk.rankings_finding(by)
    rows = {r["band"]: r for r in by.iter_rows(named=True)}
    m = re.search(rf"Of {NUMBER} schools, {NUMBER} (?:is|are) below the average school at 95% .*?, {NUMBER} above "
                  rf"and {NUMBER} cannot be told apart", text)
    assert m, text
    total = rows["all"]
    assert tuple(map(_int, m.groups())) == (total["schools"], total["below"], total["above"], total["cannot_tell"])
    for band, words in (("<=25", "≤25"), ("26-100", "26–100"), (">100", ">100")):
        m = re.search(rf"{NUMBER} below, {NUMBER} above and {NUMBER} cannot tell among the {NUMBER} schools of "
                      rf"{re.escape(words)} students", text)
        assert m, (band, text)
        r = rows[band]
        assert tuple(map(_int, m.groups())) == (r["below"], r["above"], r["cannot_tell"], r["schools"])
    m = re.search(rf"spans {NUMBER} of the {NUMBER} places for schools of ≤25 students and {NUMBER} for schools "
                  rf"of >100 students", text)
    assert m, text
    small, j, large = map(_int, m.groups())
    assert (small, j, large) == (round(rows["<=25"]["median_rank_interval_width"]), total["schools"],
                                 round(rows[">100"]["median_rank_interval_width"]))


def test_rankings_finding_changes_with_the_numbers(replicates):
    texts = {rk.rankings_finding(rk.distinguishable_by_band(t.select(rk.COLUMNS), eligible_for(t)))
             for t in replicates[:3]}
    assert len(texts) == 3


# ---------------------------------------------------------------- (7) figure, descriptions
def test_league_table_png(replicates):
    t = replicates[0]
    png = figures.league_table_png(t.select(rk.COLUMNS), eligible_for(t))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    name = "school_ranks_league_table"
    assert figures.label(name) != name.replace("_", " ") and "95%" in figures.caption(name)


def test_every_new_column_is_described(replicates):
    t = replicates[0].select(rk.COLUMNS)
    by = rk.distinguishable_by_band(t, eligible_for(replicates[0]))
    missing = [c for c in t.columns + by.columns if c not in columns.DESCRIPTIONS]
    assert not missing
    for c in ("rank_median", "rank_lower_95", "rank_upper_95", "p_bottom_10"):
        assert "1 = lowest" in columns.DESCRIPTIONS[c]


def test_near_cut_flags_a_label_that_more_draws_could_change():
    p = np.array([0.970, 0.5, 0.990, 0.020, 0.976])
    mcse = np.array([0.004, 0.01, 0.001, 0.003, 0.0])
    assert rk.near_cut(p, mcse).tolist() == [True, False, False, True, False]
    rng = np.random.default_rng(2)
    draws = rng.normal(np.linspace(-1, 1, 40), 0.5, size=(2, 200, 40))
    t = rk.rankings_from_draws(draws, np.array([f"S{i:02d}" for i in range(40)]))
    expected = rk.near_cut(t["p_below_average"].to_numpy(), t["p_below_average_mcse"].to_numpy())
    assert t["near_cut"].to_list() == expected.tolist()
    assert rk.mcse_summary(t)["near_cut"] == int(expected.sum())
