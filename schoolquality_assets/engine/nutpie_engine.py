"""Exact NUTS by nutpie on a program's hand-written log density and gradient (numba).

For a program listed in DENSITIES the sampler runs nutpie's NUTS (Rust) on the module's density,
which is tested equal to the Stan program's own log density and gradient at random points
(schoolquality_assets_tests/test_cohort_density.py): the same model, the .stan file its specification.
All chains run at once, in nutpie's threads, which call the density as a C function
(c_density: no Python and no GIL between gradient evaluations); kept draws are turned into the
Stan program's output columns, so the stop rule, the diagnostics and the InferenceData are the
engine's. The chains pause while a checkpoint is judged, as under PyStan.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from schoolquality_assets.engine import c_density
from schoolquality_assets.engine.base import (
    Draws,
    SamplingError,
    StopRule,
    Verdict,
    stack_draws,
)
from schoolquality_assets.engine.heartbeat import Heartbeat

# Each program's hand-written density, and the SHA-256 (first 16 hex digits) of the program text it
# was written and tested against: a program edited since samples with PyStan until its density is
# brought up to date (test_cohort_density.py fails on the mismatch).
DENSITIES = {
    "m0_normal.stan": ("schoolquality_assets.engine.school_density", "4a8a305997c6297d"),
    "m1_school.stan": ("schoolquality_assets.engine.school_density", "80c5c750c7c983da"),
    "m2_cohort.stan": ("schoolquality_assets.engine.cohort_density", "462740a929cbc692"),
    "m3_profile.stan": ("schoolquality_assets.engine.cohort_density", "6bd92ca0dde95490"),
}
ENGINE_FILES = ("nutpie_engine.py", "c_density.py", "cohort_density.py", "school_density.py")   # what a density's code version covers
# nutpie's sampler statistics as Stan's sampler columns
STATS = {"lp__": "logp", "accept_stat__": "mean_tree_accept", "stepsize__": "step_size", "treedepth__": "depth",
         "n_leapfrog__": "n_steps", "divergent__": "diverging", "energy__": "energy"}
# nutpie's mass matrix: "diag" (the default, adapted as Stan adapts its diagonal metric) or
# "low_rank" (nutpie's low-rank modified mass matrix); benchmarks/bench_m2.py compares them
MASS_MATRIX = "diag"
POLL_SECONDS = 0.05   # how often the chains' counts are looked at
PROGRESS_MS = 50     # how often nutpie reports them


def available() -> bool:
    try:
        import numba  # noqa: F401
        import nutpie  # noqa: F401
    except ImportError:
        return False
    return True


def program_hash(stan_file: Path) -> str:
    return hashlib.sha256(Path(stan_file).read_bytes()).hexdigest()[:16]


def has_density(stan_file: Path) -> bool:
    """Whether ``stan_file`` has a hand-written density written for exactly its text."""
    entry = DENSITIES.get(Path(stan_file).name)
    return entry is not None and Path(stan_file).exists() and program_hash(stan_file) == entry[1]


def sample_nutpie(stan_file: Path, data: dict, settings, init_for_seed, progress, stop: StopRule | None) -> Draws:
    """Sample ``stan_file``'s model by its hand-written density: ``settings.draws`` per chain, or
    until ``stop`` says so. ``init_for_seed(seed)`` gives a chain's initial values (a dict of the
    program's parameters) from the seed nutpie derives for that chain; without it the chains start
    uniformly in (-2, 2) on the unconstrained scale (Stan's default inits)."""
    from nutpie import _lib, zarr_store

    density_module = importlib.import_module(DENSITIES[Path(stan_file).name][0])
    start = time.monotonic()
    density = density_module.density(data)
    n = density.layout.size
    try:
        # the kernel as a C function, which nutpie's threads call without Python (numba caches it on disk)
        logp, table = density.c_logp()
    except Exception as exc:
        raise SamplingError(f"{Path(stan_file).name}: the hand-written density failed to compile: {exc!r}") from exc
    compile_seconds = time.monotonic() - start
    progress(f"{Path(stan_file).name}: nutpie engine, hand-written density ready in {compile_seconds:.0f} s")

    def initial_point(seed):
        if init_for_seed is None:
            return np.random.default_rng(int(seed) % 2**32).uniform(-2.0, 2.0, n)
        return density_module.unconstrain(init_for_seed(int(seed) % 2**32), data)

    keep = (density, table)   # the table points into the density's arrays: both live as long as the model
    model = _lib.PyMcModel(_lib.LogpFunc(logp.address, table.ctypes.data, keep),
                           _lib.ExpandFunc(n, 0, c_density.no_expand().address, table.ctypes.data, keep),
                           _lib.PyVariable.new_variables([], [], [], {}, {}), n, {}, {}, initial_point, None)
    capacity = stop.max_draws if stop else settings.draws
    nuts = {"diag": _lib.PyNutsSettings.Diag, "low_rank": _lib.PyNutsSettings.LowRank}[MASS_MATRIX](settings.seed)
    nuts.num_tune, nuts.num_draws, nuts.num_chains = settings.warmup, capacity, settings.chains
    nuts.target_accept, nuts.maxdepth = settings.adapt_delta, settings.max_treedepth
    nuts.store_unconstrained = True   # the kept draws are read from it (_views)
    heartbeat = Heartbeat(progress, settings.warmup, stop, chains=settings.chains, total=settings.warmup + capacity)
    counts = _Counts(settings.chains)
    sampling = time.monotonic()
    # nutpie's trace keeps every draw's point and gradient, warmup included: on disk (a zarr store,
    # deleted with the fit), not in memory, where a checkpoint's copy of it doubled it
    trace = Path(tempfile.mkdtemp(prefix="schoolquality_trace_"))
    names = list(STATS) + density_module.output_names(data)
    sampler, cache = None, {}
    try:
        # every chain at once (cores = chains), so that checkpoints see every chain's draws
        sampler = _lib.PySampler.from_pymc(nuts, settings.chains, model, counts.progress_type(),
                                           _lib.PyStorage.zarr(zarr_store.LocalStore(str(trace))))
        kept, verdict, warmup_seconds, chains = _watch(sampler, settings, capacity, stop, counts, heartbeat, sampling,
                                                       lambda k: _views(sampler, trace, settings.chains, k, names,
                                                                        density_module, data, cache))
    except (KeyboardInterrupt, SystemExit, SamplingError):
        raise
    except BaseException as exc:   # nutpie's own errors (RuntimeError, pyo3's PanicException)
        raise SamplingError(f"{Path(stan_file).name}: nutpie failed: {exc!r}") from exc
    finally:
        try:
            if sampler is not None:
                sampler.abort()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # already finished or failed (the error was raised above)
            pass
        del sampler
        shutil.rmtree(trace, ignore_errors=True)
    seconds = time.monotonic() - sampling
    progress(f"{Path(stan_file).name}: {settings.chains} chains x {kept} draws in {seconds:.0f} s"
             + (f" ({verdict.status})" if verdict else ""))
    draws = stack_draws(chains, settings, "nutpie", compile_seconds, seconds)
    draws.verdict, draws.warmup_seconds = verdict, warmup_seconds
    draws.adaptation = {c: {"stepsize": float(v["table"][-1, names.index("stepsize__")])} for c, v in chains.items()}
    return draws


class _Counts:
    """Each chain's iterations so far (warmup included), as nutpie's progress reports them (in
    chain order, every ``PROGRESS_MS``); they may lag the chains, never lead them."""

    def __init__(self, chains: int):
        self.seen = [0] * chains
        self.lock = threading.Lock()

    def progress_type(self):
        from nutpie import _lib

        template = "{% for chain in chains %}{{ chain.finished_draws }} {% endfor %}"
        return _lib.ProgressType.template_callback(PROGRESS_MS, template, len(self.seen), self._update)

    def _update(self, text: str) -> None:
        values = [int(v) for v in text.split()]
        if len(values) == len(self.seen):
            with self.lock:
                self.seen = [max(a, b) for a, b in zip(self.seen, values)]

    def now(self) -> list[int]:
        with self.lock:
            return list(self.seen)


def _finished(sampler) -> bool:
    try:
        return bool(sampler.is_finished())
    except TimeoutError:
        return False
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the density raised, or a sampler thread panicked (pyo3's PanicException)
        raise SamplingError(f"nutpie sampling failed: {exc}") from exc


def _watch(sampler, settings, capacity, stop, counts, heartbeat, start, views):
    """The PyStan engine's loop (pystan_engine._watch) over nutpie's chains: judge checkpoints of
    kept draws per chain as they fill; fixed draw counts, so the draws do not depend on timing."""
    checkpoint = stop.min_draws if stop else capacity
    verdict, warmup_seconds, last = None, None, 0
    while True:
        finished = _finished(sampler)   # before counting: a finished sampler's counts are final
        seen = counts.now()
        for c, iterations in enumerate(seen):
            heartbeat.message(("iteration", c + 1, iterations))
        kept = capacity if finished else max(0, min(seen) - settings.warmup)
        heartbeat.tick(kept, checkpoint if stop else None)
        if warmup_seconds is None and kept > 0:
            warmup_seconds = time.monotonic() - start
        if stop is None:
            if finished:
                return capacity, None, warmup_seconds, _final(views(capacity))
        elif kept >= min(checkpoint, capacity):
            checkpoint = min(checkpoint, capacity)
            sampler.pause()
            chains = None   # the previous checkpoint's tables go before the next ones are built
            chains = views(checkpoint)
            if chains is not None:
                verdict = stop.judge(chains, checkpoint, time.monotonic() - start)
            if not finished and (chains is None or not (verdict.final or checkpoint >= capacity)):
                sampler.resume()
            if chains is None:   # a draw counted but not yet in nutpie's trace: look again shortly
                _final(None) if finished else time.sleep(POLL_SECONDS)
                continue
            heartbeat.resumed()
            heartbeat(f"checkpoint {checkpoint} draws per chain: {verdict.status}")
            last = checkpoint
            if verdict.final or checkpoint >= capacity:
                return checkpoint, verdict, warmup_seconds, chains
            checkpoint = stop.next_checkpoint(checkpoint)
            continue
        if stop is not None and time.monotonic() - start > stop.budget_seconds:
            status = (f"time budget of {stop.budget_seconds:.0f} s ran out at {kept} draws per chain"
                      + (f"; last checkpoint ({last} draws): {verdict.status}" if verdict else ""))
            if last == 0:
                raise SamplingError(f"no draws kept: {status} (warmup {settings.warmup} iterations)")
            sampler.pause()
            return last, Verdict(passed=False, final=True, status=status), warmup_seconds, _final(views(last))
        time.sleep(POLL_SECONDS)


def _final(chains):
    if chains is None:
        raise SamplingError("nutpie's trace holds fewer draws than the chains recorded")
    return chains


def _views(sampler, trace: Path, chains: int, rows: int, names: list[str], density_module, data: dict,
           cache: dict) -> dict[int, dict] | None:
    """Each chain's first ``rows`` kept draws as the program's output table (Stan's columns), from
    nutpie's trace in the zarr store ``trace``; None while a chain's rows are not all written yet.
    ``cache`` (one dict per fit) keeps the opened arrays and the sampler statistics read so far, so
    a checkpoint reads only the statistics of its new draws (opening and reading zarr arrays chunk
    by chunk costs more than the points themselves)."""
    import zarr

    try:
        sampler.flush()   # the chains' buffered rows into the store
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:   # a finished sampler has written everything
        pass
    if "points" not in cache:
        stats = zarr.open_group(str(trace), mode="r")["sample_stats"]
        cache |= {"points": stats["unconstrained_draw"], "stats": [stats[STATS[k]] for k in STATS],
                  "table": np.empty((chains, 0, len(STATS)))}
        if cache["points"].shape[0] != chains:
            raise SamplingError(f"nutpie's trace holds {cache['points'].shape[0]} chains, not {chains}")
    have = cache["table"].shape[1]
    if rows > have:
        new = np.stack([np.asarray(a[:, have:rows], dtype=float) for a in cache["stats"]], axis=-1)
        # a row not written yet reads as NaN (every stored lp__ is finite: nutpie keeps only accepted states)
        if new.shape[1] < rows - have or np.isnan(new[..., 0]).any():
            return None
        cache["table"] = np.concatenate([cache["table"], new], axis=1)
    out = {}
    for c in range(chains):
        points = np.asarray(cache["points"][c, :rows], dtype=float)
        if points.shape[0] < rows or np.isnan(points).any():
            return None
        out[c] = {"names": names, "table": np.concatenate([cache["table"][c, :rows], density_module.output_rows(points, data)],
                                                          axis=1)}
        del points
    return out
