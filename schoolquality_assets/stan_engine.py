"""Run Stan programs and stream their draws into NumPy arrays.

Two engines share the same ``.stan`` files:

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

import asyncio
import concurrent.futures
import json
import multiprocessing as mp
import os
import queue
import select
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    warmup: int = 1000
    draws: int = 1000
    seed: int = 20240601
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    engine: str = "auto"  # auto | pystan | cmdstanpy
    # Adaptation windows (Stan's defaults 75 / 25 / 50). The first metric update comes after
    # init_buffer + window iterations; before it the unit metric makes trees deep.
    init_buffer: int = 75
    window: int = 25
    term_buffer: int = 50
    parallel_chains: int | None = None  # default: one chain per core

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


class SamplingError(RuntimeError):
    pass


def cmdstan_available() -> bool:
    try:
        import cmdstanpy

        cmdstanpy.cmdstan_path()
        return True
    except Exception:
        return False


def choose_engine(requested: str) -> str:
    if requested == "auto":
        return "cmdstanpy" if cmdstan_available() else "pystan"
    if requested not in ("pystan", "cmdstanpy"):
        raise ValueError(f"unknown Stan engine {requested!r}: use auto, pystan or cmdstanpy")
    if requested == "cmdstanpy" and not cmdstan_available():
        raise SamplingError("engine 'cmdstanpy' requested but no CmdStan installation was found")
    return requested


def sample(
    stan_file: Path,
    data: Mapping[str, object],
    settings: SamplerSettings,
    inits: list[dict] | None = None,
    progress: Progress = print,
) -> Draws:
    """Compile (or reuse) ``stan_file`` and sample it."""
    engine = choose_engine(settings.engine)
    run = _sample_cmdstanpy if engine == "cmdstanpy" else _sample_pystan
    return run(Path(stan_file), dict(data), settings, inits, progress)


# --------------------------------------------------------------------------- PyStan / httpstan


def compile_pystan(stan_file: Path, progress: Progress = print) -> tuple[str, float]:
    """Return httpstan's model name for ``stan_file``, compiling it on first use."""
    import httpstan.models

    code = stan_file.read_text()
    name = httpstan.models.calculate_model_name(code)
    try:
        httpstan.models.import_services_extension_module(name)
        progress(f"{stan_file.name}: compiled program found in httpstan's cache")
        return name, 0.0
    except KeyError:
        pass
    progress(f"{stan_file.name}: compiling with g++ (about a minute)")
    start = time.monotonic()
    done = threading.Event()

    def heartbeat():
        while not done.wait(15):
            progress(f"{stan_file.name}: still compiling ({time.monotonic() - start:.0f} s)")

    threading.Thread(target=heartbeat, daemon=True).start()
    try:
        asyncio.run(httpstan.models.build_services_extension_module(code))
    except Exception as exc:
        raise SamplingError(f"compiling {stan_file} failed: {exc}") from exc
    finally:
        done.set()
    seconds = time.monotonic() - start
    progress(f"{stan_file.name}: compiled in {seconds:.0f} s")
    return name, seconds


def _sample_pystan(stan_file, data, settings, inits, progress) -> Draws:
    model_name, compile_seconds = compile_pystan(stan_file, progress)
    workers = settings.parallel_chains or os.cpu_count() or 1
    ctx = mp.get_context("fork")  # like httpstan; spawn would need a __main__ guard in callers
    manager = ctx.Manager()
    messages = manager.Queue()
    start = time.monotonic()
    chains: dict[int, dict] = {}
    try:
        with concurrent.futures.ProcessPoolExecutor(min(workers, settings.chains), mp_context=ctx) as pool:
            futures = {
                pool.submit(
                    _run_chain,
                    model_name,
                    data,
                    (inits[c] if inits else {}),
                    c + 1,
                    settings,
                    messages,
                ): c
                for c in range(settings.chains)
            }
            pending = set(futures)
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=1.0)
                _drain(messages, progress)
                for fut in done:
                    chains[futures[fut]] = fut.result()
        _drain(messages, progress)
    finally:
        manager.shutdown()
    seconds = time.monotonic() - start
    progress(f"{stan_file.name}: {settings.chains} chains sampled in {seconds:.0f} s")
    return _stack(chains, settings, "pystan", compile_seconds, seconds)


def _drain(messages, progress: Progress) -> None:
    while True:
        try:
            progress(messages.get_nowait())
        except queue.Empty:
            return


def _stack(chains: dict[int, dict], settings, engine, compile_seconds, sample_seconds) -> Draws:
    ordered = [chains[c] for c in sorted(chains)]
    names = ordered[0]["names"]
    table = np.stack([c["table"] for c in ordered])  # (chain, draw, column)
    params, stats = {}, {}
    for base, cols in _group_columns(names).items():
        block = table[:, :, cols]
        if base in SAMPLE_STATS:
            stats[SAMPLE_STATS[base]] = block[:, :, 0]
        else:
            params[base] = block[:, :, 0] if len(cols) == 1 and "." not in names[cols[0]] else block
    stats["diverging"] = stats["diverging"].astype(bool)
    stats["tree_depth"] = stats["tree_depth"].astype(np.int64)
    stats["n_steps"] = stats["n_steps"].astype(np.int64)
    stats["max_treedepth_hit"] = stats["tree_depth"] >= settings.max_treedepth
    msgs = [m for c in ordered for m in c["messages"]]
    return Draws(params, stats, engine, compile_seconds, sample_seconds, settings, msgs)


def _group_columns(names: list[str]) -> dict[str, list[int]]:
    """'mu_school.3' -> base 'mu_school'; only vectors and scalars are used here."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.split(".")[0], []).append(i)
    return groups


def _run_chain(model_name, data, init, chain, settings: SamplerSettings, messages) -> dict:
    """One chain in its own process: run the sampler in a thread, read its socket here."""
    import httpstan.models

    module = httpstan.models.import_services_extension_module(model_name)
    workdir = tempfile.mkdtemp(prefix="schoolquality_chain_")
    path = os.path.join(workdir, "writer.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    result: dict = {}

    def run():
        try:
            result["code"] = module.hmc_nuts_diag_e_adapt_wrapper(
                socket_filename=path, data=data, init=init, random_seed=settings.seed, chain=chain,
                init_radius=2.0, num_warmup=settings.warmup, num_samples=settings.draws, num_thin=1,
                save_warmup=False, refresh=max(1, (settings.warmup + settings.draws) // 20),
                stepsize=1.0, stepsize_jitter=0.0, max_depth=settings.max_treedepth,
                delta=settings.adapt_delta, gamma=0.05, kappa=0.75, t0=10.0,
                init_buffer=settings.init_buffer, term_buffer=settings.term_buffer, window=settings.window,
            )
        except Exception as exc:  # C++ exceptions arrive as RuntimeError
            result["error"] = str(exc)

    # The sampler runs in this process's main thread (it releases the GIL while it
    # samples; in a worker thread httpstan's module crashes); the reader is a thread.
    reader = _ChainReader(settings.draws, chain, messages)
    done = threading.Event()
    listener = threading.Thread(target=reader.serve, args=(server, done))
    listener.start()
    try:
        run()
    finally:
        done.set()
        listener.join()
        server.close()
        os.unlink(path)
        os.rmdir(workdir)
    if "error" in result or result.get("code", 1) != 0:
        detail = result.get("error") or "; ".join(reader.errors[-4:]) or f"return code {result.get('code')}"
        raise SamplingError(f"chain {chain} failed: {detail}")
    return reader.finish()


class _ChainReader:
    """Parse the writer messages of one chain as they arrive."""

    def __init__(self, draws: int, chain: int, messages):
        import simdjson

        self.parser = simdjson.Parser()
        self.draws, self.chain, self.messages = draws, chain, messages
        self.table: np.ndarray | None = None
        self.names: list[str] = []
        self.row = 0
        self.log: list[str] = []
        self.errors: list[str] = []

    def serve(self, server: socket.socket, finished: threading.Event) -> None:
        buffers: dict[socket.socket, bytearray] = {}
        drain: set[socket.socket] = set()
        while True:
            readable, _, _ = select.select([server, *buffers], [], [], 0.05)
            for s in readable:
                if s is server:
                    conn, _ = server.accept()
                    buffers[conn] = bytearray()
                    continue
                chunk = s.recv(1 << 20)
                if not chunk:
                    self._lines(buffers.pop(s) + b"\n", s, drain)
                    s.close()
                    continue
                if s in drain:
                    continue
                buf = buffers[s]
                buf += chunk
                cut = buf.rfind(b"\n")
                if cut >= 0:
                    self._lines(bytes(buf[: cut + 1]), s, drain)
                    del buf[: cut + 1]
            if not readable and not buffers and finished.is_set():
                return

    def _lines(self, data: bytes, conn, drain: set) -> None:
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            if line.startswith(b'{"version":1,"topic":"diagnostic"'):
                drain.add(conn)  # unconstrained values and gradients: not used
                return
            if b'"topic":"sample"' in line[:40] and b'"values":{' in line[:60]:
                self._draw(line)
            elif b'"topic":"logger"' in line[:40]:
                self._logger(line)

    def _logger(self, line: bytes) -> None:
        text = str(json.loads(line)["values"][0])
        level, _, body = text.partition(":")
        body = body.strip()
        if not body:
            return
        if level == "error":
            self.errors.append(body)
        if body.startswith("Iteration:"):
            self.messages.put(f"chain {self.chain}: {body}")
        elif level in ("warn", "error") or "Gradient evaluation" in body or "Adjust your" in body:
            self.log.append(f"chain {self.chain}: {body}")
            self.messages.put(f"chain {self.chain}: {body}")

    def _draw(self, line: bytes) -> None:
        try:
            values = self.parser.parse(line)["values"]
            if self.table is None:
                self._start(list(values.keys()))
            row = np.fromiter(values.values(), float, len(self.all_names))
            del values
        except ValueError:  # NaN / Infinity: not JSON, Python's parser accepts them
            obj = json.loads(line)["values"]
            if self.table is None:
                self._start(list(obj))
            row = np.fromiter(obj.values(), float, len(self.all_names))
        if self.row >= self.draws:
            raise SamplingError(f"chain {self.chain}: more draws than requested")
        self.table[self.row] = row
        self.row += 1

    def _start(self, names: list[str]) -> None:
        self.all_names = self.names = names
        self.table = np.empty((self.draws, len(names)))

    def finish(self) -> dict:
        if self.row != self.draws:
            raise SamplingError(f"chain {self.chain}: received {self.row} of {self.draws} draws")
        return {"names": self.names, "table": self.table, "messages": self.log}


# --------------------------------------------------------------------------- cmdstanpy


def _sample_cmdstanpy(stan_file, data, settings, inits, progress) -> Draws:
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
        iter_warmup=settings.warmup, iter_sampling=settings.draws, seed=settings.seed,
        adapt_delta=settings.adapt_delta, max_treedepth=settings.max_treedepth,
        adapt_init_phase=settings.init_buffer, adapt_metric_window=settings.window,
        adapt_step_size=settings.term_buffer, inits=inits, show_progress=False,
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
            "messages": [],
        }
    return _stack(chains, settings, "cmdstanpy", compile_seconds, seconds)
