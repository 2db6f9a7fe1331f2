"""Dagster resources: where the warehouse is, how Stan samples, what counts as converged."""

from __future__ import annotations

import os

import dagster as dg

from schoolquality_assets.diagnostics import Thresholds
from schoolquality_assets.filters import DEFAULT_SEED, DEFAULT_SUBSAMPLE_SIZE
from schoolquality_assets.partitions import FULL
from schoolquality_assets.stan_engine import SamplerSettings
from schoolquality_assets.warehouse import Warehouse


def _env(name: str, default, kind=int):
    """Setting from the environment variable ``name`` (``kind``: int or float), else ``default``."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}") from exc


class WarehouseResource(dg.ConfigurableResource):
    """Root of everything read or written; default ``$SCHOOLQUALITY_WAREHOUSE`` or ./warehouse."""

    root: str | None = None
    subsample_size: int = DEFAULT_SUBSAMPLE_SIZE
    subsample_seed: int = DEFAULT_SEED
    synthetic_seed: int = 2024

    def get(self) -> Warehouse:
        return Warehouse.from_env(self.root)


class SamplerResource(dg.ConfigurableResource):
    """Stan sampler settings; defaults from SCHOOLQUALITY_* environment variables (README).

    Sampling runs until the blocking convergence gate holds, judged every ``check_every`` draws
    per chain from ``min_draws`` on, and fails when ``budget_seconds`` (warmup included) or
    ``max_draws`` run out first. ``until_converged=False`` runs a fixed ``draws`` per chain.
    The ``full`` partition (~28k parameters) has its own warmup (SCHOOLQUALITY_FULL_WARMUP).
    """

    chains: int = _env("SCHOOLQUALITY_CHAINS", 4)
    warmup: int = _env("SCHOOLQUALITY_WARMUP", 1000)
    full_warmup: int | None = _env("SCHOOLQUALITY_FULL_WARMUP", 300)
    draws: int = _env("SCHOOLQUALITY_DRAWS", 1000)
    until_converged: bool = _env("SCHOOLQUALITY_UNTIL_CONVERGED", 1) == 1
    min_draws: int = _env("SCHOOLQUALITY_MIN_DRAWS", 100)
    check_every: int = _env("SCHOOLQUALITY_CHECK_EVERY", 100)
    max_draws: int = _env("SCHOOLQUALITY_MAX_DRAWS", 5000)
    budget_seconds: float = _env("SCHOOLQUALITY_BUDGET_SECONDS", 1200.0, float)
    # off by default: a seeded rerun samples differently (same posterior, other draws), so the same
    # seed and data would no longer give the same numbers
    seed_from_previous: bool = _env("SCHOOLQUALITY_SEED_FROM_PREVIOUS", 0) == 1
    seed: int = _env("SCHOOLQUALITY_SEED", 20240601)
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    engine: str = os.environ.get("SCHOOLQUALITY_ENGINE", "auto")

    def settings(self, partition: str | None = None) -> SamplerSettings:
        full = partition == FULL
        warmup = self.full_warmup if full and self.full_warmup is not None else self.warmup
        return SamplerSettings(
            chains=self.chains, warmup=warmup, draws=self.draws, seed=self.seed,
            adapt_delta=self.adapt_delta, max_treedepth=self.max_treedepth, engine=self.engine,
            until_converged=self.until_converged, min_draws=self.min_draws, check_every=self.check_every,
            max_draws=self.max_draws, budget_seconds=self.budget_seconds,
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
