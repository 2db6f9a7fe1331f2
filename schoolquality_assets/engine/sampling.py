"""Run Stan programs and stream their draws into NumPy arrays.

Three engines share the same ``.stan`` files (``choose_engine``):

* ``nutpie`` (default where CmdStan is absent): nutpie's NUTS on each program's hand-written
  log density, tested equal to the program's (nutpie_engine.py).

* ``pystan`` (always available): programs are compiled by httpstan (PyStan 3's
  back end) and cached by it, so a rerun does not recompile. Sampling does *not* go
  through PyStan's ``Fit``, which keeps every draw of every parameter in memory as
  text (M2 on the full province would need ~30 GB). Instead each chain runs the
  compiled ``stan::services`` function in its own process and this module reads the
  writer socket as a stream, keeping each kept draw as one float64 row and
  discarding the per-draw diagnostic stream (unconstrained values and gradients)
  unread.
* ``cmdstanpy``: used automatically when a CmdStan installation is found.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from schoolquality_assets.engine.base import (
    Draws,
    Progress,
    SamplerSettings,
    SamplingError,
    StopRule,
)
from schoolquality_assets.engine.cmdstan_engine import sample_cmdstanpy
from schoolquality_assets.engine.pystan_engine import (
    compile_pystan_programs,
    sample_pystan,
)


def cmdstan_available() -> bool:
    try:
        import cmdstanpy

        cmdstanpy.cmdstan_path()
        return True
    except Exception:
        return False


def choose_engine(requested: str, stan_file: Path | None = None) -> str:
    """auto: cmdstanpy where CmdStan is installed; else nutpie for a program with a hand-written
    density (nutpie_engine.DENSITIES) when nutpie is installed; else pystan. nutpie requested for
    a program without a density samples it with pystan."""
    from schoolquality_assets.engine import nutpie_engine

    if requested not in ("auto", "pystan", "cmdstanpy", "nutpie"):
        raise ValueError(f"unknown Stan engine {requested!r}: use auto, pystan, cmdstanpy or nutpie")
    if requested == "cmdstanpy" and not cmdstan_available():
        raise SamplingError("engine 'cmdstanpy' requested but no CmdStan installation was found")
    if requested == "auto" and cmdstan_available():
        return "cmdstanpy"
    if requested in ("auto", "nutpie") and stan_file is not None and nutpie_engine.has_density(stan_file):
        if nutpie_engine.available():
            return "nutpie"
        if requested == "nutpie":
            raise SamplingError("engine 'nutpie' requested but nutpie or numba is not installed")
    return "cmdstanpy" if requested == "cmdstanpy" else "pystan"


def sample(
    stan_file: Path,
    data: Mapping[str, object],
    settings: SamplerSettings,
    inits: list[dict] | None = None,
    progress: Progress = print,
    stop: StopRule | None = None,
    also_compile: tuple[Path, ...] = (),
    init_for_seed: Callable[[int], dict] | None = None,
) -> Draws:
    """Compile (or reuse) ``stan_file`` and sample it: ``settings.draws`` per chain, or, with a
    ``stop`` rule, until the rule is satisfied. CmdStan writes its draws only at the end, so under
    cmdstanpy the rule judges once, after ``stop.max_draws`` draws per chain. Under PyStan, the
    programs ``also_compile`` (the run's other fits) are compiled with ``stan_file`` when any of
    them is not compiled yet, as many at once as there are cores."""
    engine = choose_engine(settings.engine, Path(stan_file))
    if engine == "nutpie" and data.get("emit_eta"):
        engine = "pystan"   # Stan's own linear predictor (a generated quantity the densities do not write)
    if engine == "cmdstanpy":
        return sample_cmdstanpy(Path(stan_file), dict(data), settings, inits, progress, stop)
    stan_programs = [p for p in (Path(stan_file), *map(Path, also_compile)) if choose_engine(settings.engine, p) == "pystan"]
    waited = compile_pystan_programs(stan_programs, progress) if also_compile and stan_programs else 0.0
    if engine == "nutpie":
        from schoolquality_assets.engine.nutpie_engine import sample_nutpie

        draws = sample_nutpie(Path(stan_file), dict(data), settings, init_for_seed, progress, stop)
        draws.compile_seconds += waited
        return draws
    return sample_pystan(Path(stan_file), dict(data), settings, inits, progress, stop, waited)
