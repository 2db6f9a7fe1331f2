"""The resources read SCHOOLQUALITY_* when a run uses them, not when the code location is imported
(issue 20): what the UI shows (an unset field and its rule) is what a run uses. No Stan here."""

import dagster as dg
import pytest

from schoolquality_assets.definitions import defs
from schoolquality_assets.defs.resources import (
    SAMPLER_ENV,
    SamplerResource,
    WarehouseResource,
)

# the README's table: variable -> default
DEFAULTS = {
    "SCHOOLQUALITY_CHAINS": 4, "SCHOOLQUALITY_WARMUP": 300, "SCHOOLQUALITY_FULL_WARMUP": 300,
    "SCHOOLQUALITY_DRAWS": 1000, "SCHOOLQUALITY_UNTIL_CONVERGED": True, "SCHOOLQUALITY_MIN_DRAWS": 100,
    "SCHOOLQUALITY_CHECK_EVERY": 100, "SCHOOLQUALITY_MAX_DRAWS": 5000, "SCHOOLQUALITY_BUDGET_SECONDS": 1200.0,
    "SCHOOLQUALITY_SEED_FROM_PREVIOUS": False, "SCHOOLQUALITY_SEED": 20240601, "SCHOOLQUALITY_ENGINE": "auto",
}


@pytest.fixture
def clean_env(monkeypatch):
    for setting in SAMPLER_ENV.values():
        monkeypatch.delenv(setting.variable, raising=False)
    return monkeypatch


def test_every_documented_variable_keeps_its_name_and_default():
    assert {s.variable: s.default for s in SAMPLER_ENV.values()} == DEFAULTS


def test_defaults_apply_when_unset_or_empty(clean_env):
    clean_env.setenv("SCHOOLQUALITY_DRAWS", "")
    s = SamplerResource().settings("subsample")
    assert (s.chains, s.warmup, s.draws, s.seed, s.engine) == (4, 300, 1000, 20240601, "auto")
    assert (s.until_converged, s.min_draws, s.check_every, s.max_draws, s.budget_seconds) == (True, 100, 100, 5000, 1200.0)
    assert (s.adapt_delta, s.max_treedepth) == (0.8, 10)
    assert SamplerResource().settings("full").warmup == 300
    assert SamplerResource().resolved().seed_from_previous is False


def test_settings_read_the_environment_set_after_import(clean_env):
    sampler = SamplerResource()   # the object definitions.py builds at import
    clean_env.setenv("SCHOOLQUALITY_WARMUP", "200")
    clean_env.setenv("SCHOOLQUALITY_FULL_WARMUP", " 50 ")
    clean_env.setenv("SCHOOLQUALITY_BUDGET_SECONDS", "60.5")
    clean_env.setenv("SCHOOLQUALITY_UNTIL_CONVERGED", "0")
    clean_env.setenv("SCHOOLQUALITY_ENGINE", "pystan")
    clean_env.setenv("SCHOOLQUALITY_SEED_FROM_PREVIOUS", "1")
    s = sampler.settings("subsample")
    assert (s.warmup, s.budget_seconds, s.until_converged, s.engine) == (200, 60.5, False, "pystan")
    assert sampler.settings("full").warmup == 50
    assert sampler.resolved().seed_from_previous is True
    assert sampler.resolve()["warmup"] == (200, "$SCHOOLQUALITY_WARMUP")
    assert sampler.resolve()["chains"] == (4, "default")
    clean_env.setenv("SCHOOLQUALITY_WARMUP", "400")   # read again at the next call, not cached
    assert sampler.settings("subsample").warmup == 400


def test_a_configured_value_wins_over_the_variable(clean_env):
    clean_env.setenv("SCHOOLQUALITY_WARMUP", "200")
    clean_env.setenv("SCHOOLQUALITY_SEED", "7")
    sampler = SamplerResource(warmup=300, until_converged=False)
    s = sampler.settings("subsample")
    assert (s.warmup, s.seed, s.until_converged) == (300, 7, False)
    assert sampler.resolve()["warmup"] == (300, "config")


@pytest.mark.parametrize("variable, value, expected", [
    ("SCHOOLQUALITY_CHAINS", "four", "an integer"),
    ("SCHOOLQUALITY_WARMUP", "1e3", "an integer"),
    ("SCHOOLQUALITY_BUDGET_SECONDS", "20min", "a number"),
    ("SCHOOLQUALITY_UNTIL_CONVERGED", "yes", "0 or 1"),
    ("SCHOOLQUALITY_SEED_FROM_PREVIOUS", "2", "0 or 1"),
    ("SCHOOLQUALITY_ENGINE", "stan", "auto / pystan / cmdstanpy / nutpie"),
])
def test_a_bad_value_names_the_variable(clean_env, variable, value, expected):
    clean_env.setenv(variable, value)
    with pytest.raises(ValueError, match=f"environment variable {variable} must be {expected}, got '{value}'"):
        SamplerResource().settings("full")


def test_the_code_location_shows_the_rule_not_the_code_servers_values(clean_env):
    """The sampler in the code location has no value baked in: each env-backed field is unset, with
    a description (shown in the UI) naming its variable and default; the import-time environment
    does not enter the config schema."""
    resource = defs.resources["sampler"]
    fields = resource.get_resource_definition().config_schema.config_type.fields
    for name, setting in SAMPLER_ENV.items():
        assert getattr(resource, name) is None, name
        assert not fields[name].is_required, name
        assert fields[name].default_value is None, name
        shown = int(setting.default) if isinstance(setting.default, bool) else setting.default
        assert f"${setting.variable} when the run starts, else {shown}." in fields[name].description, name
    assert fields["adapt_delta"].default_value == 0.8


def test_a_run_resolves_the_environment_once_and_logs_the_sources(clean_env):
    seen = {}

    @dg.asset
    def probe(sampler: SamplerResource):
        seen["resource"] = sampler
        seen["settings"] = sampler.settings("full")

    clean_env.setenv("SCHOOLQUALITY_FULL_WARMUP", "77")
    clean_env.setenv("SCHOOLQUALITY_SEED_FROM_PREVIOUS", "1")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([probe], resources={"sampler": SamplerResource(seed=5)}, instance=instance)
    assert result.success
    # the step receives every field set, so posteriors.py's sampler.seed_from_previous sees the variable
    assert seen["resource"].seed_from_previous is True and seen["resource"].full_warmup == 77
    assert (seen["settings"].warmup, seen["settings"].seed) == (77, 5)
    logs = " ".join(entry.user_message for entry in instance.all_logs(result.run_id))
    assert "full_warmup=77 ($SCHOOLQUALITY_FULL_WARMUP)" in logs
    assert "seed=5 (config)" in logs and "chains=4 (default)" in logs


def test_a_run_with_a_bad_value_fails_naming_the_variable(clean_env):
    @dg.asset
    def probe(sampler: SamplerResource):
        return None

    clean_env.setenv("SCHOOLQUALITY_MAX_DRAWS", "lots")
    result = dg.materialize([probe], resources={"sampler": SamplerResource()}, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.is_failure]
    text = " ".join(str(e.event_specific_data) for e in failures)
    assert "SCHOOLQUALITY_MAX_DRAWS must be an integer, got 'lots'" in text


def test_the_warehouse_root_is_read_when_used(monkeypatch, tmp_path):
    resource = WarehouseResource()
    monkeypatch.setenv("SCHOOLQUALITY_WAREHOUSE", str(tmp_path))
    assert resource.get().root == tmp_path
    assert WarehouseResource(root=str(tmp_path / "other")).get().root == tmp_path / "other"
