"""The nutpie engine (nutpie_engine.py): the engine chosen for every model where CmdStan is absent.
It must give the posterior the PyStan engine gives from the Stan program (within Monte Carlo
error), the same draws for the same seed, and stop at the first checkpoint where the gate holds."""

import dataclasses
from pathlib import Path

import arviz as az
import numpy as np
import pytest

from schoolquality_assets.defs.resources import SAMPLER_ENV
from schoolquality_assets.engine import base, nutpie_engine, sampling
from schoolquality_assets.engine.base import SamplerSettings
from schoolquality_assets.models import diagnostics, specs

from .conftest import checkpoints_up_to

pytestmark = [pytest.mark.stan, pytest.mark.skipif(not nutpie_engine.available(), reason="nutpie and numba are dependencies")]
M2 = specs.MODELS["m2"]


def test_auto_picks_nutpie_for_a_program_with_a_density_only(monkeypatch):
    monkeypatch.setattr(sampling, "cmdstan_available", lambda: False)
    other = Path(__file__).parent / "fixtures" / "m1_wrong_intercept_prior_scale.stan"   # no hand-written density
    for spec in specs.MODELS.values():
        assert sampling.choose_engine("auto", spec.path) == "nutpie"
        assert sampling.choose_engine("nutpie", spec.path) == "nutpie"
        assert sampling.choose_engine("pystan", spec.path) == "pystan"
    assert sampling.choose_engine("auto", other) == sampling.choose_engine("nutpie", other) == "pystan"
    monkeypatch.setattr(sampling, "cmdstan_available", lambda: True)
    assert sampling.choose_engine("auto", M2.path) == "cmdstanpy"   # cmdstanpy wherever CmdStan exists
    with pytest.raises(ValueError, match="unknown Stan engine"):
        sampling.choose_engine("stan", M2.path)


def test_same_seed_same_draws(small_province):
    settings = SamplerSettings(chains=3, warmup=150, draws=60, seed=5, until_converged=False, engine="nutpie")
    fits = [specs.fit(M2, small_province[1], settings, progress=lambda m: None) for _ in range(2)]
    assert all(f.attrs["engine"] == "nutpie" for f in fits)
    for name in ("sd_school", "sd_cohort", "r_school", "r_cohort", "b"):
        np.testing.assert_array_equal(fits[0].posterior[name].values, fits[1].posterior[name].values)
    other = specs.fit(M2, small_province[1], dataclasses.replace(settings, seed=6), progress=lambda m: None)
    assert not np.array_equal(other.posterior["sd_school"].values, fits[0].posterior["sd_school"].values)


@pytest.mark.parametrize("key", ["m0", "m1", "m2", "m3"])
def test_nutpie_and_stan_give_the_same_posterior(small_province, key):
    """Both engines under the production rule (sample until the gate holds), nutpie after the
    default 300 warmup iterations and Stan after its own default 1,000 (how the sampler adapts
    must not move the posterior): the posterior means agree within their combined Monte Carlo
    error (for the ~1,000 cohorts and ~450 profiles: the z-scores spread as a standard normal's,
    few beyond 3.5), and the posterior SDs within 15%. The many effects of a level share their SD's
    Monte Carlo error (a level's effects all shrink with its SD), which moves every z of the level
    together: their means are compared after one common scale factor, itself within 10% of 1,
    and the SD's own means are compared like every hyperparameter's."""
    spec = specs.MODELS[key]
    limits = diagnostics.Thresholds()
    warmup = {"nutpie": SAMPLER_ENV["warmup"].default, "pystan": 1000}
    fits = {engine: specs.fit(spec, small_province[1], SamplerSettings(warmup=warmup[engine], seed=8, engine=engine),
                               progress=lambda m: None, limits=limits)
            for engine in ("nutpie", "pystan")}
    assert {e: f.attrs["engine"] for e, f in fits.items()} == {"nutpie": "nutpie", "pystan": "pystan"}
    assert all(f.attrs["converged"] == 1 for f in fits.values())
    a, b = fits["nutpie"].posterior, fits["pystan"].posterior
    many = {"r_cohort", "r_profile"}
    names = [n for n in ("sd_school", "sd_cohort", "sd_profile", "sigma", "b_Intercept", "b", "r_school", *many) if n in a]
    for name in names:
        se = np.sqrt(az.mcse(a[[name]])[name].values ** 2 + az.mcse(b[[name]])[name].values ** 2)
        mean_a, mean_b = a[name].mean(("chain", "draw")).values, b[name].mean(("chain", "draw")).values
        if name in many:
            scale = np.sum(mean_a * mean_b / se ** 2) / np.sum(mean_b ** 2 / se ** 2)   # the shared shrinkage
            z = np.abs(mean_a - scale * mean_b) / se
            assert abs(scale - 1) < 0.1, (name, float(scale))
            assert z.size > 300 and np.sqrt(np.mean(z ** 2)) < 1.2 and np.mean(z > 3.5) < 0.005, \
                (name, float(np.sqrt(np.mean(z ** 2))), float(np.mean(z > 3.5)))
        else:
            z = np.abs(mean_a - mean_b) / se
            assert np.all(z < 4.5), (name, float(np.max(z)))
            ratio = a[name].std(("chain", "draw")).values / b[name].std(("chain", "draw")).values
            assert np.all(np.abs(ratio - 1) < 0.15), (name, float(np.max(np.abs(ratio - 1))))


def test_stops_at_the_first_checkpoint_where_the_gate_holds(small_province):
    limits = diagnostics.Thresholds()
    settings = SamplerSettings(chains=4, warmup=300, seed=6, min_draws=50, check_every=50, max_draws=3000, engine="nutpie")
    lines = []
    idata = specs.fit(M2, small_province[1], settings, progress=lines.append, limits=limits)
    n = idata.posterior.sizes["draw"]
    assert idata.attrs["converged"] == 1 and "gate holds" in idata.attrs["stop_status"]
    checkpoints = checkpoints_up_to(n)
    assert checkpoints[-1] == n
    assert [line.split(" draws per chain")[0] for line in lines if line.startswith("checkpoint ")] == \
        [f"checkpoint {c}" for c in checkpoints]
    summary = diagnostics.convergence_summary(idata, limits)
    assert not diagnostics.failed_blocking(diagnostics.gate(summary, limits))
    if n > 50:
        earlier = diagnostics.convergence_summary(idata.isel(draw=slice(0, checkpoints[-2])), limits)
        assert diagnostics.failed_blocking(diagnostics.gate(earlier, limits))


def test_a_density_that_fails_fails_the_fit(small_province, monkeypatch, tmp_path):
    """The density's C function reports an error (a negative code, nutpie's unrecoverable error)
    part way through warmup: the fit fails at once, naming nutpie's error, instead of sampling on
    until its budget runs out; its trace is deleted."""
    import tempfile

    import numba

    from schoolquality_assets.engine import c_density, cohort_density

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    working = cohort_density._c_logp().ctypes
    slots = 3 * 21   # the kernel's table; one more slot at its end counts the calls

    @numba.cfunc(c_density.LOGP)
    def failing(dim, x_, grad_, logp_, table_):
        calls = numba.carray(table_, (slots + 1,), np.int64)
        calls[slots] += 1
        return -7 if calls[slots] >= 300 else working(dim, x_, grad_, logp_, table_)

    tables = []

    def c_logp(self):
        tables.append(np.append(c_density.table(self.arrays), 0))
        return failing, tables[-1]

    monkeypatch.setattr(cohort_density.Density, "c_logp", c_logp)
    settings = SamplerSettings(chains=2, warmup=50, draws=200_000, until_converged=False, engine="nutpie")
    with pytest.raises(base.SamplingError, match=r"(?s)nutpie sampling failed.*ErrorCode\(-7\)"):
        specs.fit(M2, small_province[1], settings, progress=lambda m: None)
    assert tables and tables[-1][-1] >= 300
    assert not list(tmp_path.iterdir())


def test_the_trace_is_kept_on_disk_and_deleted_with_the_fit(small_province, monkeypatch, tmp_path):
    """nutpie's trace (every draw's point and gradient) is a zarr store in the temporary directory
    while the chains run, read at each checkpoint, and deleted when the fit returns."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    read, views = [], nutpie_engine._views

    def reading(sampler, trace, *args, **kwargs):
        read.append((trace.parent, (trace / "sample_stats" / "unconstrained_draw").is_dir()))
        return views(sampler, trace, *args, **kwargs)

    monkeypatch.setattr(nutpie_engine, "_views", reading)
    settings = SamplerSettings(chains=2, warmup=50, draws=40, seed=5, until_converged=False, engine="nutpie")
    idata = specs.fit(M2, small_province[1], settings, progress=lambda m: None)
    assert idata.posterior.sizes["draw"] == 40
    assert read and all(where == tmp_path and stored for where, stored in read)
    assert not list(tmp_path.iterdir())


def test_kept_draws_are_the_points_the_chains_were_at(small_province):
    """The engine reads each kept draw's point and its sampler statistics from nutpie's trace: they
    must be the same draw's, so each row's lp__ is the density at that row's point, for every row of
    every chain (a row shifted against its statistics would not match)."""
    from schoolquality_assets.engine import cohort_density

    mi = specs.model_input(M2, small_province[1])
    data = specs.stan_data(M2, mi)
    settings = SamplerSettings(chains=2, warmup=100, draws=40, seed=3, until_converged=False, engine="nutpie")
    draws = nutpie_engine.sample_nutpie(M2.path, data, settings, lambda s: specs.initial_values(M2, mi, 1, s)[0],
                                        lambda m: None, None)
    density = cohort_density.density(data)
    multipliers = cohort_density.multipliers(data)
    for c in range(2):
        blocks = [np.asarray(draws.params[name][c]).reshape(40, -1) for name, size in density.layout.sizes().items() if size]
        points = np.concatenate(blocks, axis=1) / multipliers
        assert points.shape == (40, density.layout.size)
        lp = np.array([density(u)[0] for u in points])
        np.testing.assert_allclose(lp, draws.sample_stats["lp"][c], rtol=1e-10)
        assert len(np.unique(lp)) > 20   # the chain moved: the check compares different points
