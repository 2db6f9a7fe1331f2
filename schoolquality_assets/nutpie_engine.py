"""Exact NUTS by nutpie on a program's hand-written log density and gradient (numba).

For a program listed in DENSITIES the sampler runs nutpie's NUTS (Rust) on the module's density,
which is tested equal to the Stan program's own log density and gradient at random points
(schoolquality_assets_tests/test_cohort_density.py): the same model, the .stan file its specification.
All chains run at once (threads; the density releases the GIL); kept draws are turned into the
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

from schoolquality_assets.stan_engine import Draws, SamplingError, StopRule, Verdict, _Heartbeat, _stack

# Each program's hand-written density, and the SHA-256 (first 16 hex digits) of the program text it
# was written and tested against: a program edited since samples with PyStan until its density is
# brought up to date (test_cohort_density.py fails on the mismatch).
DENSITIES = {
    "m0_normal.stan": ("schoolquality_assets.school_density", "4a8a305997c6297d"),
    "m1_school.stan": ("schoolquality_assets.school_density", "80c5c750c7c983da"),
    "m2_cohort.stan": ("schoolquality_assets.cohort_density", "462740a929cbc692"),
    "m3_profile.stan": ("schoolquality_assets.cohort_density", "6bd92ca0dde95490"),
}
ENGINE_FILES = ("nutpie_engine.py", "cohort_density.py", "school_density.py")   # what a density's code version covers
# nutpie's sampler statistics as Stan's sampler columns
STATS = {"lp__": "logp", "accept_stat__": "mean_tree_accept", "stepsize__": "step_size", "treedepth__": "depth",
         "n_leapfrog__": "n_steps", "divergent__": "diverging", "energy__": "energy"}
POLL_SECONDS = 0.5


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
    at nutpie's random points about 0 on the unconstrained scale (as Stan's default inits)."""
    from nutpie import _lib, zarr_store
    from nutpie.compiled_pyfunc import from_pyfunc

    density_module = importlib.import_module(DENSITIES[Path(stan_file).name][0])
    start = time.monotonic()
    density = density_module.density(data)
    n = density.layout.size
    try:
        density.logp_into(np.zeros(n), np.empty(n))   # compile (numba caches the machine code on disk)
    except Exception as exc:
        raise SamplingError(f"{Path(stan_file).name}: the hand-written density failed: {exc!r}") from exc
    compile_seconds = time.monotonic() - start
    progress(f"{Path(stan_file).name}: nutpie engine, hand-written density ready in {compile_seconds:.0f} s")

    errors: list[str] = []   # a chain whose density raised dies alone; the others would go on

    def make_logp():
        def logp(x, **_):
            grad = np.empty(n)
            try:
                return density.logp_into(x, grad), grad
            except Exception as exc:
                errors.append(f"the hand-written density raised {exc!r}")
                raise
        return logp

    recorders: list[_Recorder] = []
    lock = threading.Lock()

    def make_expand(*_):
        with lock:
            recorder = _Recorder(len(recorders), settings.warmup, errors)
            recorders.append(recorder)
        return recorder.expand

    def initial_point(seed):
        return density_module.unconstrain(init_for_seed(int(seed) % 2**32), data)

    model = from_pyfunc(n, make_logp, make_expand, [np.dtype("float64")], [(2,)], ["recorder"],
                        make_initial_point_fn=initial_point if init_for_seed else None)   # None: nutpie's jitter about 0
    capacity = stop.max_draws if stop else settings.draws
    nuts = _lib.PyNutsSettings.Diag(settings.seed)
    nuts.num_tune, nuts.num_draws, nuts.num_chains = settings.warmup, capacity, settings.chains
    nuts.target_accept, nuts.maxdepth = settings.adapt_delta, settings.max_treedepth
    nuts.store_unconstrained = True   # the kept draws are read from it (_views; stored even when False in 0.16.8)
    heartbeat = _Heartbeat(progress, settings.warmup, stop, chains=settings.chains, total=settings.warmup + capacity)
    sampling = time.monotonic()
    # nutpie's trace keeps every draw's point and gradient, warmup included: on disk (a zarr store,
    # deleted with the fit), not in memory, where a checkpoint's copy of it doubled it
    trace = Path(tempfile.mkdtemp(prefix="schoolquality_trace_"))
    names = list(STATS) + density_module.output_names(data)
    sampler = None
    try:
        # every chain at once (cores = chains), so that checkpoints see every chain's draws
        sampler = model._make_sampler(nuts, np.zeros(n), settings.chains, _lib.ProgressType.none(),
                                      _lib.PyStorage.zarr(zarr_store.LocalStore(str(trace))))
        kept, verdict, warmup_seconds, chains = _watch(sampler, settings, capacity, stop, recorders, errors, heartbeat,
                                                       sampling, lambda k: _views(sampler, trace, recorders, k, names,
                                                                                  density_module, data))
    except (KeyboardInterrupt, SystemExit, SamplingError):
        raise
    except BaseException as exc:   # nutpie's own errors (RuntimeError, pyo3's PanicException)
        raise SamplingError(f"{Path(stan_file).name}: nutpie failed: {'; '.join(errors[:1]) or repr(exc)}") from exc
    finally:
        try:
            if sampler is not None:
                sampler.abort()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # already finished or failed (the error was raised above)
            pass
        recorders.clear()
        del sampler
        shutil.rmtree(trace, ignore_errors=True)
    seconds = time.monotonic() - sampling
    progress(f"{Path(stan_file).name}: {settings.chains} chains x {kept} draws in {seconds:.0f} s"
             + (f" ({verdict.status})" if verdict else ""))
    draws = _stack(chains, settings, "nutpie", compile_seconds, seconds)
    draws.verdict, draws.warmup_seconds = verdict, warmup_seconds
    draws.adaptation = {c: {"stepsize": float(v["table"][-1, names.index("stepsize__")])} for c, v in chains.items()}
    return draws


def _finished(sampler) -> bool:
    try:
        return bool(sampler.is_finished())
    except TimeoutError:
        return False
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the density raised, or a sampler thread panicked (pyo3's PanicException)
        raise SamplingError(f"nutpie sampling failed: {exc}") from exc


def _watch(sampler, settings, capacity, stop, recorders, errors, heartbeat, start, views):
    """The PyStan engine's loop (stan_engine._watch) over nutpie's chains: judge checkpoints of
    kept draws per chain as they fill; fixed draw counts, so the draws do not depend on timing.
    Each chain's iterations and kept draws are its recorder's counts (chains numbered in the order
    their recorders were made)."""
    checkpoint = stop.min_draws if stop else capacity
    verdict, warmup_seconds, last = None, None, 0
    while True:
        finished = _finished(sampler)   # before counting: a finished sampler's counts are final
        if errors:
            raise SamplingError(f"a chain failed: {errors[0]}")
        # nutpie makes one expand function more than it has chains, and never calls it
        active = [r for r in list(recorders) if r.seen > 0]
        for c, recorder in enumerate(active):
            heartbeat.message(("iteration", c + 1, recorder.seen))
        kept = min(r.kept for r in active) if len(active) == settings.chains else 0
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
            if chains is None:   # a draw recorded but not yet in nutpie's trace: look again shortly
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
        if finished and kept < capacity:
            raise SamplingError(f"chains ended with {kept} of {capacity} draws")
        time.sleep(POLL_SECONDS)


def _final(chains):
    if chains is None:
        raise SamplingError("nutpie's trace holds fewer draws than the chains recorded")
    return chains


class _Recorder:
    """One chain's draws as the chain makes them: how many it has made and kept (the first
    ``warmup`` are warmup). The draws themselves are read from nutpie's trace, which stores every
    draw's unconstrained point whatever its settings say (nutpie 0.16.8), so that they are held
    once, not twice; each trace row carries its recorder and number (the tag)."""

    def __init__(self, index: int, warmup: int, errors: list[str]):
        self.index, self.warmup, self.seen, self.errors = index, warmup, 0, errors

    @property
    def kept(self) -> int:
        return max(0, self.seen - self.warmup)

    def expand(self, x, **_):
        try:
            self.seen += 1
            # which recorder, and the draw's number in it: _views checks each stored row against it
            return {"recorder": np.array([self.index, self.seen], dtype=np.float64)}
        except Exception as exc:
            self.errors.append(f"recording a draw failed: {exc!r}")
            raise


def _views(sampler, trace: Path, recorders: list[_Recorder], rows: int, names: list[str], density_module,
           data: dict) -> dict[int, dict] | None:
    """Each chain's first ``rows`` kept draws as the program's output table (Stan's columns), from
    nutpie's trace in the zarr store ``trace``; None while a chain's rows are not all written yet."""
    import zarr

    try:
        sampler.flush()   # the chains' buffered rows into the store
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:   # a finished sampler has written everything
        pass
    store = zarr.open_group(str(trace), mode="r")
    warmup_tags, tags_all = store["warmup_posterior"]["recorder"], store["posterior"]["recorder"]
    stats = store["sample_stats"]
    out = {}
    for c in range(tags_all.shape[0]):
        tags = tags_all[c, :rows]
        if tags.shape[0] < rows or np.isnan(tags).any():   # a row not written yet reads as NaN
            return None
        recorder = recorders[int(tags[0, 0])]
        if recorder.kept < rows:
            return None
        # every row of this chain from this recorder: warmup its draws 1..warmup, the kept ones warmup + 1, ...
        warm = warmup_tags[c]
        if (warm.shape[0] != recorder.warmup or np.any(tags[:, 0] != recorder.index)
                or np.any(tags[:, 1] != recorder.warmup + 1 + np.arange(rows))
                or np.any(warm[:, 0] != recorder.index) or np.any(warm[:, 1] != 1 + np.arange(recorder.warmup))):
            raise SamplingError(f"chain {c + 1}: nutpie's trace and the recorded draws do not line up")
        points = np.asarray(stats["unconstrained_draw"][c, :rows], dtype=float)
        stat_table = np.stack([np.asarray(stats[STATS[k]][c, :rows], dtype=float) for k in STATS], axis=1)
        if np.isnan(points).any() or np.isnan(stat_table[:, 0]).any():
            return None
        out[c] = {"names": names, "table": np.concatenate([stat_table, density_module.output_rows(points, data)], axis=1)}
        del points
    return out
