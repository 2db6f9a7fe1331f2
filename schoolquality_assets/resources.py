"""Dagster resources: where the warehouse is, how Stan samples, what counts as converged."""

from __future__ import annotations

import os

import dagster as dg

from schoolquality_assets.diagnostics import Thresholds
from schoolquality_assets.filters import DEFAULT_SEED, DEFAULT_SUBSAMPLE_SIZE
from schoolquality_assets.partitions import FULL
from schoolquality_assets.stan_engine import SamplerSettings
from schoolquality_assets.warehouse import Warehouse


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


class WarehouseResource(dg.ConfigurableResource):
    """Root of everything read or written; default ``$SCHOOLQUALITY_WAREHOUSE`` or ./warehouse."""

    root: str | None = None
    subsample_size: int = DEFAULT_SUBSAMPLE_SIZE
    subsample_seed: int = DEFAULT_SEED
    synthetic_seed: int = 2024

    def get(self) -> Warehouse:
        return Warehouse.from_env(self.root)


class SamplerResource(dg.ConfigurableResource):
    """Stan sampler settings; defaults can be set with SCHOOLQUALITY_CHAINS/WARMUP/DRAWS/SEED.

    The ``full`` partition (the production fit, ~28k parameters) has its own warmup and draws
    (SCHOOLQUALITY_FULL_WARMUP/FULL_DRAWS, default 300 / 300); None follows ``warmup``/``draws``.
    """

    chains: int = _env_int("SCHOOLQUALITY_CHAINS", 4)
    warmup: int = _env_int("SCHOOLQUALITY_WARMUP", 1000)
    draws: int = _env_int("SCHOOLQUALITY_DRAWS", 1000)
    # 4 x (300 + 300): the production M2 measured at 520 s in the asset on 2 cores (README).
    full_warmup: int | None = _env_int("SCHOOLQUALITY_FULL_WARMUP", 300)
    full_draws: int | None = _env_int("SCHOOLQUALITY_FULL_DRAWS", 300)
    seed: int = _env_int("SCHOOLQUALITY_SEED", 20240601)
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    engine: str = os.environ.get("SCHOOLQUALITY_ENGINE", "auto")

    def settings(self, partition: str | None = None) -> SamplerSettings:
        full = partition == FULL
        warmup = self.full_warmup if full and self.full_warmup is not None else self.warmup
        draws = self.full_draws if full and self.full_draws is not None else self.draws
        return SamplerSettings(
            chains=self.chains, warmup=warmup, draws=draws, seed=self.seed,
            adapt_delta=self.adapt_delta, max_treedepth=self.max_treedepth, engine=self.engine,
        )


class ConvergenceResource(dg.ConfigurableResource):
    """Thresholds of the posterior checks (printed in each check's metadata)."""

    max_rhat: float = 1.01
    max_divergences: int = 0
    min_ess: float = 400.0
    min_bfmi: float = 0.3

    def thresholds(self) -> Thresholds:
        return Thresholds(**self.model_dump())
