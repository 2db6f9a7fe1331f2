"""Dagster resources: where the warehouse is, how Stan samples, what counts as converged.

The SCHOOLQUALITY_* environment variables (README, *Environment variables*) are read when a step
uses a resource, in the process that runs the step, never when the code location is imported. A
field left unset (``None``, what the Dagster UI shows as its value) means "from
``$SCHOOLQUALITY_<NAME>`` when the run starts, else the documented default"; each field's
description, shown in the UI, says which variable and which default. A value given in the code or
in the launchpad's run config (``resources: sampler: config: warmup: 200``) wins over the
variable. So what the UI shows is what a run uses: a value it shows, or the rule it shows, applied
to the environment the run's step runs in (a run worker started elsewhere than the code server, a
Celery worker, a Kubernetes pod has its own). The values a step resolved are logged when it
starts, with where each came from, and each posterior records its sampler settings in its
``sampler`` metadata and attributes.

Why not ``dg.EnvVar``: Dagster resolves it when the run starts too, but an unset variable is an
error (``EnvVar`` has no default) and it comes only as a string or an int (``EnvVar.int``), while
every setting here must work with no variable set (the quick start sets none). A deployment that
wants a required variable of its own can still pass one:
``SamplerResource(warmup=dg.EnvVar.int("MY_WARMUP"))``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pydantic import Field

from schoolquality_assets.engine.base import SamplerSettings
from schoolquality_assets.ingest.filters import DEFAULT_SEED, DEFAULT_SUBSAMPLE_SIZE
from schoolquality_assets.models.diagnostics import Thresholds
from schoolquality_assets.partitions import FULL
from schoolquality_assets.warehouse import ENV_VAR as WAREHOUSE_ENV_VAR
from schoolquality_assets.warehouse import Warehouse

ENGINES = ("auto", "pystan", "cmdstanpy", "nutpie")


def _flag(text: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise ValueError(text)
    return text.strip() == "1"


def _engine(text: str) -> str:
    if text.strip() not in ENGINES:
        raise ValueError(text)
    return text.strip()


_EXPECTED = {int: "an integer", float: "a number", _flag: "0 or 1", _engine: " / ".join(ENGINES)}


@dataclass(frozen=True)
class EnvSetting:
    """One SCHOOLQUALITY_* variable: its name, the default when it is unset or empty, its parser."""

    variable: str
    default: Any
    parse: Callable[[str], Any] = int

    def read(self) -> tuple[Any, str]:
        """(value, source) from the environment now: the variable's value, else the default."""
        text = os.environ.get(self.variable)
        if text is None or text.strip() == "":
            return self.default, "default"
        try:
            value = self.parse(text.strip())
        except ValueError:
            raise ValueError(f"environment variable {self.variable} must be {_EXPECTED[self.parse]}, "
                             f"got {text!r}") from None
        return value, f"${self.variable}"

    def describe(self, what: str) -> str:
        shown = int(self.default) if isinstance(self.default, bool) else self.default
        return f"{what} Unset (null): ${self.variable} when the run starts, else {shown}."


# field -> its environment variable and default (the README's table)
SAMPLER_ENV = {
    "chains": EnvSetting("SCHOOLQUALITY_CHAINS", 4),
    "warmup": EnvSetting("SCHOOLQUALITY_WARMUP", 300),
    "full_warmup": EnvSetting("SCHOOLQUALITY_FULL_WARMUP", 300),
    "draws": EnvSetting("SCHOOLQUALITY_DRAWS", 1000),
    "until_converged": EnvSetting("SCHOOLQUALITY_UNTIL_CONVERGED", True, _flag),
    "min_draws": EnvSetting("SCHOOLQUALITY_MIN_DRAWS", 100),
    "check_every": EnvSetting("SCHOOLQUALITY_CHECK_EVERY", 100),
    "max_draws": EnvSetting("SCHOOLQUALITY_MAX_DRAWS", 5000),
    "budget_seconds": EnvSetting("SCHOOLQUALITY_BUDGET_SECONDS", 1200.0, float),
    "seed_from_previous": EnvSetting("SCHOOLQUALITY_SEED_FROM_PREVIOUS", False, _flag),
    "seed": EnvSetting("SCHOOLQUALITY_SEED", 20240601),
    "engine": EnvSetting("SCHOOLQUALITY_ENGINE", "auto", _engine),
}


def _from_env(field: str, what: str):
    return Field(default=None, description=SAMPLER_ENV[field].describe(what))


class WarehouseResource(dg.ConfigurableResource):
    """Root of everything read or written; default ``$SCHOOLQUALITY_WAREHOUSE`` or ./warehouse."""

    root: str | None = Field(
        default=None,
        description=f"Warehouse root folder. Unset (null): ${WAREHOUSE_ENV_VAR} when the run starts, else "
        "./warehouse in the working directory (in a checkout: the checkout's warehouse/).")
    subsample_size: int = Field(default=DEFAULT_SUBSAMPLE_SIZE,
                                description="Schools in the subsample partition (all when fewer are eligible).")
    subsample_seed: int = Field(default=DEFAULT_SEED, description="Seed of the subsample's school hash.")
    synthetic_seed: int = Field(default=2024, description="Seed of the synthetic province (used when raw/ is empty).")

    def get(self) -> Warehouse:
        return Warehouse.from_env(self.root)


class SamplerResource(dg.ConfigurableResource):
    """Stan sampler settings; unset fields come from SCHOOLQUALITY_* environment variables when the
    run starts (README, *Environment variables*), else their defaults.

    Sampling runs until the blocking convergence gate holds, judged every ``check_every`` draws
    per chain from ``min_draws`` on, and fails when ``budget_seconds`` (warmup included) or
    ``max_draws`` run out first. ``until_converged=False`` runs a fixed ``draws`` per chain.
    The ``full`` partition (~28k parameters) has its own warmup (SCHOOLQUALITY_FULL_WARMUP).
    """

    chains: int | None = _from_env("chains", "Chains, sampled at once.")
    warmup: int | None = _from_env("warmup", "Warmup iterations per chain (subsample partition).")
    full_warmup: int | None = _from_env("full_warmup", "Warmup iterations per chain on the full partition.")
    draws: int | None = _from_env("draws", "Draws per chain when until_converged is false.")
    until_converged: bool | None = _from_env(
        "until_converged", "Sample until the convergence gate holds (true) or a fixed number of draws (false).")
    min_draws: int | None = _from_env("min_draws", "Draws per chain at the first checkpoint of the gate.")
    check_every: int | None = _from_env("check_every", "Least number of draws per chain between checkpoints.")
    max_draws: int | None = _from_env("max_draws", "Most draws per chain before the fit fails.")
    budget_seconds: float | None = _from_env(
        "budget_seconds", "Wall-time budget of one fit in seconds, counted from the start of warmup.")
    # off by default: a seeded rerun samples differently (same posterior, other draws), so the same
    # seed and data would no longer give the same numbers
    seed_from_previous: bool | None = _from_env(
        "seed_from_previous", "Seed the parameterisation from the previous passed posterior of the same "
        "model and partition.")
    seed: int | None = _from_env("seed", "Stan seed.")
    adapt_delta: float = Field(default=0.8, description="Stan's target acceptance rate.")
    max_treedepth: int = Field(default=10, description="Stan's maximum tree depth.")
    engine: str | None = _from_env("engine", "Engine: auto (cmdstanpy if CmdStan is found, else nutpie on the "
                                   "programs' hand-written densities), pystan, cmdstanpy or nutpie.")

    def resolve(self) -> dict[str, tuple[Any, str]]:
        """Every field's value and where it came from (``config``, ``$SCHOOLQUALITY_...`` or
        ``default``), reading the environment now for the fields left unset."""
        out: dict[str, tuple[Any, str]] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                out[name] = (value, "config")
            elif name in SAMPLER_ENV:
                out[name] = SAMPLER_ENV[name].read()
            else:
                out[name] = (value, "default")
        return out

    def resolved(self) -> "SamplerResource":
        """A copy with every field set: unset fields from the environment now, else their defaults."""
        return type(self)(**{name: value for name, (value, _) in self.resolve().items()})

    def create_resource(self, context: dg.InitResourceContext) -> "SamplerResource":
        """What a step receives: the settings resolved once, in the step's own process, when the run
        uses the resource, with each value and its source in the run's log."""
        resolved = self.resolve()
        log = getattr(context, "log", None)
        if log is not None:
            log.info("sampler settings: " + ", ".join(f"{name}={value} ({source})"
                                                      for name, (value, source) in resolved.items()))
        return type(self)(**{name: value for name, (value, _) in resolved.items()})

    def settings(self, partition: str | None = None) -> SamplerSettings:
        """The sampler settings of one fit (resolving unset fields from the environment now)."""
        s = self if all(getattr(self, name) is not None for name in SAMPLER_ENV) else self.resolved()
        warmup = s.full_warmup if partition == FULL else s.warmup
        return SamplerSettings(
            chains=s.chains, warmup=warmup, draws=s.draws, seed=s.seed,
            adapt_delta=s.adapt_delta, max_treedepth=s.max_treedepth, engine=s.engine,
            until_converged=s.until_converged, min_draws=s.min_draws, check_every=s.check_every,
            max_draws=s.max_draws, budget_seconds=s.budget_seconds,
        )


class ConvergenceResource(dg.ConfigurableResource):
    """Thresholds of the posterior checks (printed in each check's metadata); the same fields and
    defaults as :class:`diagnostics.Thresholds` (``max_rhat`` for the hyperparameters; the
    ``r_school`` block rule's family-wise false-fail rate and ratio tolerance)."""

    max_rhat: float = 1.01
    max_divergences: int = 0
    min_ess: float = 400.0
    min_bfmi: float = 0.3
    max_treedepth_share: float = 0.01
    block_false_fail_rate: float = 0.01
    block_tolerance: float = 0.1

    def thresholds(self) -> Thresholds:
        return Thresholds(**self.model_dump())


def default_resources() -> dict:
    """The code location's resources, each configured from its environment variables."""
    return {"warehouse": WarehouseResource(), "sampler": SamplerResource(), "convergence": ConvergenceResource()}
