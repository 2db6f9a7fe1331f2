"""Simulation-based calibration of M1 (issue 10, section 4), small and deterministic.

50 replicates on a 12-school design with fixed seeds: the project's M1 program must give uniform
ranks, and a copy with a deliberately wrong prior scale must not, so the test can fail. A copy
with the SD's Jacobian left out was tried first: on this design the data dominate the SD's
posterior, the bug moves it by ~0.2 posterior SDs, and 50 replicates do not see it (chi-square
p >= 0.26). SBC only sees errors where the prior matters; the intercept's prior does here.
"""

from pathlib import Path

import numpy as np
import pytest

from schoolquality_assets.engine.base import SamplerSettings
from schoolquality_assets.models import calibration, specs

pytestmark = pytest.mark.stan
FIXTURES = Path(__file__).parent / "fixtures"
WRONG_PRIOR = FIXTURES / "m1_wrong_intercept_prior_scale.stan"
DESIGN = calibration.Design(schools=12, years=2)
SETTINGS = calibration.Settings(sampler=SamplerSettings(chains=2, warmup=200, draws=250, until_converged=False))
REPLICATES, SEED = 50, 2024


def _sbc(path: Path | None = None) -> dict:
    spec = specs.MODELS["m1"]
    reps = [calibration.run_replicate(spec, i, DESIGN, SETTINGS, SEED, path=path) for i in range(REPLICATES)]
    assert all(r.ranks is not None for r in reps), [r.error for r in reps if r.error]
    return calibration.summarise(reps, SETTINGS.thinned)


def test_fixture_is_m1_with_one_wrong_line():
    project = specs.MODELS["m1"].path.read_text().splitlines()
    fixture = [line for line in WRONG_PRIOR.read_text().splitlines() if not line.startswith("// SBC test fixture")
               and not line.startswith("// (0.25 for 2.5)")]
    assert len(project) == len(fixture), "regenerate the fixture from stan/m1_school.stan"
    changed = [(a, b) for a, b in zip(project, fixture) if a != b]
    assert [a.strip() for a, _ in changed] == ["Intercept ~ student_t(3, 0, 2.5);"], changed


def test_m1_ranks_are_uniform():
    summary = _sbc()
    assert calibration.calibrated(summary), summary


def test_a_wrong_prior_scale_fails_calibration():
    summary = _sbc(WRONG_PRIOR)
    assert not calibration.calibrated(summary), summary
    assert summary["Intercept"]["chi2_p"] < 0.001, summary["Intercept"]


def test_sbc_fits_sample_with_the_settings_production_uses(monkeypatch):
    """calibration.fit_draws samples as specs.fit does (specs.sample_model): M3 at its minimum
    adapt_delta (0.9), not the settings' 0.8, and with gate limits under the production stop
    rule (no sampling here: the sampler call is captured)."""
    from schoolquality_assets.engine import sampling
    from schoolquality_assets.models.diagnostics import Thresholds

    seen = {}

    def capture(path, data, settings, **kwargs):
        seen.update(adapt_delta=settings.adapt_delta, stop=kwargs.get("stop"), prior_b_sd=data.get("prior_b_sd"))
        raise RuntimeError("captured")

    monkeypatch.setattr(sampling, "sample", capture)
    spec = specs.MODELS["m3"]
    frame = calibration.design_frame(calibration.Design(schools=6, years=2), np.random.default_rng(1))
    frame = frame.with_columns(y_success=frame["n_trials"] // 2)
    with pytest.raises(RuntimeError, match="captured"):
        calibration.fit_draws(spec, spec.path, frame, SamplerSettings(adapt_delta=0.8, until_converged=False))
    assert seen["adapt_delta"] == spec.min_adapt_delta == 0.9
    assert seen["stop"] is None and seen["prior_b_sd"] == calibration.PRIOR_B_SD
    with pytest.raises(RuntimeError, match="captured"):
        calibration.fit_draws(spec, spec.path, frame, SamplerSettings(until_converged=True), limits=Thresholds())
    assert seen["stop"] is not None and seen["stop"].min_draws == SamplerSettings.min_draws
    assert specs.model_settings(specs.MODELS["m2"], SamplerSettings(adapt_delta=0.8)).adapt_delta == 0.8
