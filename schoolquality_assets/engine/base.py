"""What every engine shares: the sampler settings, the kept draws, the run-length rule (StopRule
and its Verdict) and the error a failed fit raises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

SAMPLE_STATS = {
    "lp__": "lp",
    "accept_stat__": "acceptance_rate",
    "stepsize__": "step_size",
    "treedepth__": "tree_depth",
    "n_leapfrog__": "n_steps",
    "divergent__": "diverging",
    "energy__": "energy",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SamplerSettings:
    chains: int = 4
    warmup: int = 300   # resources.SAMPLER_ENV["warmup"] (ENGINE.md, Warmup)
    draws: int = 1000
    seed: int = 20240601
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    stepsize: float = 1.0   # initial step size (the step size itself when warmup = 0)
    engine: str = "auto"  # auto | pystan | cmdstanpy | nutpie (choose_engine)
    # Adaptation windows (Stan's defaults 75 / 25 / 50). The first metric update comes after
    # init_buffer + window iterations; before it the unit metric makes trees deep.
    init_buffer: int = 75
    window: int = 25
    term_buffer: int = 50
    parallel_chains: int | None = None  # cmdstanpy only (default one per core); PyStan runs every chain at once
    # Run length: until the convergence gate holds (checked every check_every draws per chain from
    # min_draws on, at most max_draws, within budget_seconds of sampling), or a fixed ``draws``.
    until_converged: bool = True
    min_draws: int = 100
    check_every: int = 100
    max_draws: int = 5000
    budget_seconds: float = 1200.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Draws:
    """Kept draws of one fit: ``params[name]`` has shape (chain, draw, *dims)."""

    params: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    engine: str
    compile_seconds: float
    sample_seconds: float
    settings: SamplerSettings
    messages: list[str] = field(default_factory=list)
    verdict: "Verdict | None" = None  # set when sampling ran under a StopRule
    warmup_seconds: float | None = None  # until every chain had its first kept draw (PyStan engine)
    # Each chain's adapted step size and diagonal inverse metric (unconstrained parameters in the
    # order of the parameters block), as Stan wrote them when warmup ended (PyStan engine).
    adaptation: dict[int, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """A stop rule's judgement of the draws so far."""

    passed: bool   # the gate holds
    final: bool    # stop sampling now (passed, or can no longer pass)
    status: str    # where it stands, in words


@dataclass
class StopRule:
    """Sample until ``judge`` says stop, at checkpoints of kept draws per chain.

    ``judge(views, draws, elapsed)`` receives, per chain, the column names and the first
    ``draws`` rows; it returns a :class:`Verdict`. The first checkpoint is ``min_draws``, the
    next ones at least ``check_every`` and about 25% more draws apart, up to ``max_draws``; the
    time budget counts from the start of sampling (warmup included).
    """

    judge: Callable[[dict, int, float], Verdict]
    min_draws: int = SamplerSettings.min_draws
    check_every: int = SamplerSettings.check_every
    max_draws: int = SamplerSettings.max_draws
    budget_seconds: float = SamplerSettings.budget_seconds
    growth: float = 1.25

    @classmethod
    def for_settings(cls, settings: SamplerSettings, judge) -> "StopRule":
        return cls(judge=judge, min_draws=settings.min_draws, check_every=settings.check_every,
                   max_draws=settings.max_draws, budget_seconds=settings.budget_seconds)

    def next_checkpoint(self, current: int) -> int:
        """Checkpoints grow by ``growth`` (in multiples of ``check_every``): a cheap model that
        needs many draws is judged a few times, not every ``check_every`` draws."""
        grown = -(-int(current * self.growth) // self.check_every) * self.check_every
        return max(current + self.check_every, grown)


class SamplingError(RuntimeError):
    pass


def stack_draws(chains: dict[int, dict], settings, engine, compile_seconds, sample_seconds) -> Draws:
    blocks = columns(chains, list(group_columns(chains[0]["names"])))
    stats = {SAMPLE_STATS[k]: v for k, v in blocks.items() if k in SAMPLE_STATS}
    params = {k: v for k, v in blocks.items() if k not in SAMPLE_STATS}
    stats["diverging"] = stats["diverging"].astype(bool)
    stats["tree_depth"] = stats["tree_depth"].astype(np.int64)
    stats["n_steps"] = stats["n_steps"].astype(np.int64)
    stats["max_treedepth_hit"] = stats["tree_depth"] >= settings.max_treedepth
    return Draws(params, stats, engine, compile_seconds, sample_seconds, settings)


def columns(views: dict[int, dict], bases: list[str]) -> dict[str, np.ndarray]:
    """(chain, draw, ...) arrays of the named variables (and sampler columns) from chain views."""
    names = views[0]["names"]
    groups = group_columns(names)
    out = {}
    for base in bases:
        if base in groups:
            cols = groups[base]
            block = np.stack([np.asarray(v["table"][:, cols]) for _, v in sorted(views.items())])
            out[base] = block[:, :, 0] if len(cols) == 1 and "." not in names[cols[0]] else block
    return out


def group_columns(names: list[str]) -> dict[str, list[int]]:
    """'mu_school.3' -> base 'mu_school'; only vectors and scalars are used here."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.split(".")[0], []).append(i)
    return groups
