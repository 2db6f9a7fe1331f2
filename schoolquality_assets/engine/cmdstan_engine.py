"""The cmdstanpy engine: used wherever a CmdStan installation is found."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from schoolquality_assets.engine.base import Draws, Verdict, stack_draws

# --------------------------------------------------------------------------- cmdstanpy


def sample_cmdstanpy(stan_file, data, settings, inits, progress, stop) -> Draws:
    import cmdstanpy

    start = time.monotonic()
    build_dir = Path(tempfile.gettempdir()) / "schoolquality_cmdstan"
    progress(f"{stan_file.name}: compiling with CmdStan (executable cached in {build_dir})")
    build_dir.mkdir(exist_ok=True)
    local = build_dir / stan_file.name
    if not local.exists() or local.read_text() != stan_file.read_text():
        local.write_text(stan_file.read_text())
    model = cmdstanpy.CmdStanModel(stan_file=str(local))
    compile_seconds = time.monotonic() - start
    start = time.monotonic()
    fit = model.sample(
        data={k: np.asarray(v).tolist() for k, v in data.items()},
        chains=settings.chains, parallel_chains=settings.parallel_chains or os.cpu_count(),
        iter_warmup=settings.warmup, iter_sampling=stop.max_draws if stop else settings.draws, seed=settings.seed,
        adapt_delta=settings.adapt_delta, max_treedepth=settings.max_treedepth,
        adapt_init_phase=settings.init_buffer, adapt_metric_window=settings.window,
        adapt_step_size=settings.term_buffer, step_size=settings.stepsize, inits=inits, show_progress=False,
    )
    seconds = time.monotonic() - start
    progress(f"{stan_file.name}: {settings.chains} chains sampled in {seconds:.0f} s (CmdStan)")
    names = list(fit.column_names)
    table = fit.draws(concat_chains=False).transpose(1, 0, 2)  # (chain, draw, column)
    chains = {}
    for c in range(settings.chains):
        chains[c] = {
            "names": [n.replace("[", ".").rstrip("]") for n in names],
            "table": np.ascontiguousarray(table[c]),
        }
    draws = stack_draws(chains, settings, "cmdstanpy", compile_seconds, seconds)
    if stop is not None:
        n = chains[0]["table"].shape[0]
        verdict = stop.judge(chains, n, seconds)
        draws.verdict = verdict if verdict.passed else Verdict(False, True, verdict.status)
    return draws
