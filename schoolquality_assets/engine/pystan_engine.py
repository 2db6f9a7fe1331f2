"""The PyStan engine: programs compiled by httpstan (PyStan 3's back end) and cached by it, so a
rerun does not recompile. Sampling does *not* go through PyStan's ``Fit``, which keeps every draw of
every parameter in memory as text (M2 on the full province would need ~30 GB). Instead each chain
runs the compiled ``stan::services`` function in its own process (stan_chain.py) and this module
reads the writer socket as a stream, keeping each kept draw as one float64 row and discarding the
per-draw diagnostic stream (unconstrained values and gradients) unread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from schoolquality_assets.engine import processes
from schoolquality_assets.engine.base import (
    Draws,
    Progress,
    SamplerSettings,
    SamplingError,
    Verdict,
    stack_draws,
)
from schoolquality_assets.engine.heartbeat import COMPILE_HEARTBEAT_SECONDS, Heartbeat

# --------------------------------------------------------------------------- PyStan / httpstan


def _in_cache(model_name: str) -> bool:
    """Whether httpstan's cache holds the compiled program ``model_name``."""
    import httpstan.models

    try:
        httpstan.models.import_services_extension_module(model_name)
        return True
    except KeyError:
        return False


def compile_pystan(stan_file: Path, progress: Progress = print) -> tuple[str, float]:
    """Return httpstan's model name for ``stan_file``, compiling it on first use."""
    import httpstan.models

    code = stan_file.read_text()
    name = httpstan.models.calculate_model_name(code)
    if _in_cache(name):
        progress(f"{stan_file.name}: compiled program found in httpstan's cache")
        return name, 0.0
    progress(f"{stan_file.name}: compiling with g++ (about a minute)")
    start = time.monotonic()
    done = threading.Event()

    def heartbeat():
        while not done.wait(COMPILE_HEARTBEAT_SECONDS):
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


def compile_pystan_programs(stan_files: list[Path], progress: Progress = print, parallel: int | None = None) -> float:
    """Compile those of ``stan_files`` that httpstan's cache lacks, ``parallel`` at once (default:
    one per core), each by its own interpreter (``sys.executable``: httpstan's cache key includes
    it). Returns the seconds spent. A program that fails here is compiled again when a fit needs
    it, and that compile reports the error."""
    import httpstan.models

    todo = [p for p in dict.fromkeys(stan_files) if not _in_cache(httpstan.models.calculate_model_name(p.read_text()))]
    if not todo:
        return 0.0
    parallel = max(1, parallel or processes.usable_cores())
    progress(f"compiling {', '.join(p.name for p in todo)} with g++, {min(parallel, len(todo))} at a time "
             "(about a minute each)")
    build = ("import asyncio, pathlib, sys, httpstan.models; "
             "from schoolquality_assets.engine.processes import die_with_parent; die_with_parent(int(sys.argv[2])); "
             "asyncio.run(httpstan.models.build_services_extension_module(pathlib.Path(sys.argv[1]).read_text()))")
    start, waiting, running = time.monotonic(), list(todo), {}
    last_beat = start
    while waiting or running:
        while waiting and len(running) < parallel:
            path = waiting.pop(0)
            log = tempfile.TemporaryFile()  # the compiler's messages (a pipe could fill and block it)
            running[path] = (subprocess.Popen([sys.executable, "-c", build, str(path), str(os.getpid())], stdin=subprocess.DEVNULL,
                                              stdout=log, stderr=subprocess.STDOUT, env=processes.child_env()),
                             time.monotonic(), log)
        time.sleep(0.5)
        for path, (proc, began, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[path]
            log.seek(0)
            err = log.read().decode(errors="replace").strip().splitlines()
            log.close()
            progress(f"{path.name}: compiled in {time.monotonic() - began:.0f} s" if proc.returncode == 0 else
                     f"{path.name}: compiling failed (exit {proc.returncode}; the fit that needs it compiles it again): "
                     + (" | ".join(line.strip() for line in err[-4:] if line.strip()) or "no message"))
        if running and time.monotonic() - last_beat >= COMPILE_HEARTBEAT_SECONDS:
            last_beat = time.monotonic()
            progress(f"still compiling {', '.join(p.name for p in running)} ({last_beat - start:.0f} s)")
    return time.monotonic() - start


def sample_pystan(stan_file, data, settings, inits, progress, stop, compile_waited: float = 0.0) -> Draws:
    """Every chain in its own child process, all at once; draws land in memory-mapped tables that
    this process reads at checkpoints (``stop``) or when the chains end."""
    model_name, compile_seconds = compile_pystan(stan_file, progress)
    compile_seconds += compile_waited
    messages: queue.Queue = queue.Queue()
    workdir = Path(tempfile.mkdtemp(prefix="schoolquality_draws_"))
    capacity = stop.max_draws if stop else settings.draws
    procs = []
    start = time.monotonic()
    try:
        for c in range(settings.chains):
            procs.append(_ChainProcess(workdir, messages, model_name=model_name, data=data,
                                       init=(inits[c] if inits else {}), chain=c + 1, settings=settings,
                                       capacity=capacity))
        tables = [_ChainTable(workdir, c + 1) for c in range(settings.chains)]
        heartbeat = Heartbeat(progress, settings.warmup, stop, chains=settings.chains, total=settings.warmup + capacity)
        kept, verdict, warmup_seconds = _watch(procs, tables, capacity, stop, messages, heartbeat, start)
    finally:
        for proc in procs:
            proc.stop()
    try:
        if kept == 0:
            raise SamplingError(f"{stan_file.name}: no draws kept: {verdict.status if verdict else 'sampling ended early'}")
        chains = {c: t.read(kept) for c, t in enumerate(tables)}
        adaptation = {c: a for c, t in enumerate(tables) if (a := t.adaptation()) is not None}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - start
    progress(f"{stan_file.name}: {settings.chains} chains x {kept} draws in {seconds:.0f} s"
             + (f" ({verdict.status})" if verdict else ""))
    draws = stack_draws(chains, settings, "pystan", compile_seconds, seconds)
    draws.verdict, draws.warmup_seconds, draws.adaptation = verdict, warmup_seconds, adaptation
    return draws


class _ChainProcess:
    """One chain as a child process, ``python -m schoolquality_assets.engine.stan_chain ARGS PARENT``: a
    new interpreter, not a fork, so a fit runs wherever a Dagster step runs (a Celery or Dask worker
    is a daemonic process, and multiprocessing refuses to fork children from one). The arguments of
    :func:`run_chain` go pickled into the work directory; the chain's messages come back on its
    stdout, one JSON value a line, which a thread puts on ``messages``. The chain dies with this
    process (processes.die_with_parent); :meth:`stop` kills it."""

    def __init__(self, workdir: Path, messages: queue.Queue, **args):
        path = workdir / f"chain_{args['chain']}.args.pkl"
        path.write_bytes(pickle.dumps(args | {"workdir": str(workdir)}))
        self.proc = subprocess.Popen([sys.executable, "-m", "schoolquality_assets.engine.stan_chain", str(path), str(os.getpid())],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=processes.child_env())
        self.reader = threading.Thread(target=self._read, args=(messages,), daemon=True)
        self.reader.start()

    def _read(self, messages: queue.Queue) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            messages.put(tuple(message) if isinstance(message, list) else message)

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def pause(self, paused: bool) -> None:
        """Stop (SIGSTOP) or continue (SIGCONT) the chain; a no-op once it has ended. A stopped chain
        still dies with this process (the kernel's SIGKILL, processes.die_with_parent) and with
        :meth:`stop`."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=5)
        self.proc.stdout.close()


def _watch(procs, tables, capacity, stop, messages, progress, start):
    """Wait for the chains; with a stop rule, judge checkpoints of kept draws as they fill.

    Checkpoints are fixed draw counts, so the draws kept do not depend on timing: the same
    seed gives the same result on a fast or a slow machine (unless the budget runs out).
    """
    checkpoint = stop.min_draws if stop else capacity
    verdict, warmup, last = None, None, 0
    parent = os.getppid()
    while True:
        _drain(messages, progress)
        if os.getppid() != parent:  # orphaned: the run worker that started this step was killed
            raise SamplingError(f"the process that started this fit (pid {parent}) is gone; chains stopped")
        for proc in procs:
            if proc.exitcode not in (None, 0):
                _raise_chain_error(procs, tables[0].dir, messages, progress)
        rows = min(t.rows() for t in tables)
        progress.tick(rows, checkpoint if stop else None)
        if warmup is None and rows > 0:
            warmup = time.monotonic() - start
        if stop is None:
            if rows >= capacity and all(p.exitcode == 0 for p in procs):
                return capacity, None, warmup
        elif rows >= min(checkpoint, capacity):
            checkpoint = min(checkpoint, capacity)
            with _paused(procs):
                verdict = stop.judge({i: t.view(checkpoint) for i, t in enumerate(tables)}, checkpoint,
                                     time.monotonic() - start)
            if hasattr(progress, "resumed"):
                progress.resumed()
            progress(f"checkpoint {checkpoint} draws per chain: {verdict.status}")
            last = checkpoint
            if verdict.final or checkpoint >= capacity:
                return checkpoint, verdict, warmup
            checkpoint = stop.next_checkpoint(checkpoint)
            continue
        if stop is not None and time.monotonic() - start > stop.budget_seconds:
            done = last
            status = (f"time budget of {stop.budget_seconds:.0f} s ran out at {rows} draws per chain"
                      + (f"; last checkpoint ({done} draws): {verdict.status}" if verdict else ""))
            return done, Verdict(passed=False, final=True, status=status), warmup
        if all(p.exitcode == 0 for p in procs) and rows < capacity:
            raise SamplingError(f"chains ended with {rows} of {capacity} draws")
        time.sleep(0.2)


# Linux only: there a stopped chain still dies with the fit (PR_SET_PDEATHSIG); elsewhere only a
# thread of the chain watches its parent, and a stopped chain's thread cannot run.
PAUSE_WHILE_JUDGING = sys.platform.startswith("linux")


@contextlib.contextmanager
def _paused(procs):
    """The chains wait while a checkpoint is judged. The judge then has every core: the draws it
    judges are fixed, and draws taken meanwhile are discarded when the gate holds (the final arviz
    judgement of M2 on the full province took ~50 s beside four running chains, ~17 s alone). The
    draws do not depend on it: a chain's draws do not depend on when it runs."""
    if not PAUSE_WHILE_JUDGING:
        yield
        return
    for proc in procs:
        proc.pause(True)
    try:
        yield
    finally:
        for proc in procs:
            proc.pause(False)


def _raise_chain_error(procs, workdir, messages, progress):
    _drain(messages, progress)
    failed = [i + 1 for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
    errors = []
    for c in failed:
        path = _ChainTable.error_file(workdir, c)
        errors.append(path.read_text() if path.exists() else f"chain {c} exited with code {procs[c - 1].exitcode}")
    raise SamplingError("; ".join(errors))


def _drain(messages, progress) -> None:
    while True:
        try:
            message = messages.get_nowait()
        except queue.Empty:
            return
        if isinstance(progress, Heartbeat):
            progress.message(message)
        elif isinstance(message, str):
            progress(message)



def run_chain(model_name, data, init, chain, settings: SamplerSettings, capacity, workdir, messages) -> None:
    """One chain in its own process (stan_chain.py): run the sampler, write each kept draw to this
    chain's table; ``messages.put`` reports iterations and warnings."""
    import httpstan.models

    try:
        module = httpstan.models.import_services_extension_module(model_name)
        path = os.path.join(workdir, f"writer_{chain}.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(4)
        result: dict = {}
        reader = _ChainReader(_ChainTable(Path(workdir), chain), capacity, chain, messages)
        done = threading.Event()
        listener = threading.Thread(target=reader.serve, args=(server, done))
        listener.start()
        # The sampler runs in this process's main thread (it releases the GIL while it
        # samples; in a worker thread httpstan's module crashes); the reader is a thread.
        try:
            result["code"] = module.hmc_nuts_diag_e_adapt_wrapper(
                socket_filename=path, data=data, init=init, random_seed=settings.seed, chain=chain,
                init_radius=2.0, num_warmup=settings.warmup, num_samples=capacity, num_thin=1,
                save_warmup=False, refresh=max(1, min(25, settings.warmup // 20)),
                stepsize=settings.stepsize, stepsize_jitter=0.0, max_depth=settings.max_treedepth,
                delta=settings.adapt_delta, gamma=0.05, kappa=0.75, t0=10.0,
                init_buffer=settings.init_buffer, term_buffer=settings.term_buffer, window=settings.window,
            )
        except Exception as exc:  # C++ exceptions arrive as RuntimeError
            result["error"] = str(exc)
        finally:
            done.set()
            listener.join()
            server.close()
        if "error" in result or result.get("code", 1) != 0:
            detail = result.get("error") or "; ".join(reader.errors[-4:]) or f"return code {result.get('code')}"
            raise SamplingError(f"chain {chain} failed: {detail}")
        reader.finish()
    except BaseException as exc:
        _ChainTable.error_file(workdir, chain).write_text(str(exc))
        os._exit(1)
    os._exit(0)


class _ChainTable:
    """One chain's kept draws: a memory-mapped (capacity, column) float64 table, the column
    names, and a row counter the chain bumps after writing each row."""

    def __init__(self, workdir: Path, chain: int):
        self.dir, self.chain = Path(workdir), chain
        self.table: np.ndarray | None = None
        self.counter: np.ndarray | None = None

    @staticmethod
    def error_file(workdir, chain) -> Path:
        return Path(workdir) / f"error_{chain}.txt"

    def _path(self, what: str) -> Path:
        return self.dir / f"chain_{self.chain}.{what}"

    def create(self, names: list[str], capacity: int) -> None:
        # each file is written under a temporary name and renamed into place: the reader polls
        # rows() and must never open a file whose header is half written
        def placed(what: str, make):
            tmp = self._path(f"tmp.{what}")
            value = make(tmp)
            os.replace(tmp, self._path(what))
            return value

        placed("names.json", lambda tmp: tmp.write_text(json.dumps(names)))
        self.table = placed("npy", lambda tmp: np.lib.format.open_memmap(tmp, mode="w+", shape=(capacity, len(names))))
        self.counter = placed("rows.npy", lambda tmp: np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64,
                                                                               shape=(1,)))

    def append(self, row: np.ndarray, index: int) -> None:
        self.table[index] = row
        self.counter[0] = index + 1

    def rows(self) -> int:
        if self.counter is None:
            if not self._path("rows.npy").exists() or not self._path("names.json").exists():
                return 0
            try:
                self.counter = np.load(self._path("rows.npy"), mmap_mode="r")
            except (ValueError, OSError, EOFError):  # not readable yet (cannot happen with create's renames)
                self.counter = None
                return 0
        return int(self.counter[0])

    def view(self, rows: int) -> dict:
        """Names and the first ``rows`` draws, without copying."""
        if self.table is None:
            self.table = np.load(self._path("npy"), mmap_mode="r")
            self.names = json.loads(self._path("names.json").read_text())
        return {"names": self.names, "table": self.table[:rows]}

    def read(self, rows: int) -> dict:
        view = self.view(rows)
        return {"names": view["names"], "table": np.array(view["table"])}

    def write_adaptation(self, lines: list[str]) -> None:
        """Stan's adaptation messages ("Step size = h", then the inverse metric's diagonal as one
        comma-separated line), kept as {"stepsize", "inv_metric"} (written once, renamed into place)."""
        stepsize = next(float(x.split("=")[1]) for x in lines if x.startswith("Step size"))
        metric = [float(v) for v in lines[-1].split(",")]
        tmp = self._path("tmp.adaptation.json")
        tmp.write_text(json.dumps({"stepsize": stepsize, "inv_metric": metric}))
        os.replace(tmp, self._path("adaptation.json"))

    def adaptation(self) -> dict | None:
        path = self._path("adaptation.json")
        if not path.exists():
            return None
        found = json.loads(path.read_text())
        return {"stepsize": found["stepsize"], "inv_metric": np.array(found["inv_metric"])}


class _ChainReader:
    """Parse the writer messages of one chain as they arrive."""

    def __init__(self, table: _ChainTable, draws: int, chain: int, messages):
        import simdjson

        self.parser = simdjson.Parser()
        self.store, self.draws, self.chain, self.messages = table, draws, chain, messages
        self.names: list[str] | None = None
        self.row = 0
        self.errors: list[str] = []
        self.adaptation: list[str] | None = None  # Stan's adaptation messages, once warmup ends

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
            elif b'"topic":"sample"' in line[:40] and b'"values":["' in line[:60]:
                self._sampler_message(str(json.loads(line)["values"][0]))
            elif b'"topic":"logger"' in line[:40]:
                self._logger(line)

    def _sampler_message(self, text: str) -> None:
        """At the end of warmup Stan writes "Adaptation terminated", "Step size = h", "Diagonal
        elements of inverse mass matrix:" and the diagonal on one line."""
        if text.startswith("Adaptation terminated"):
            self.adaptation = []
        elif self.adaptation is not None:
            self.adaptation.append(text)
            if len(self.adaptation) >= 3 and self.adaptation[-2].startswith("Diagonal elements"):
                lines, self.adaptation = self.adaptation, None
                try:  # a diagnostic: it must never stop the chain's reader
                    self.store.write_adaptation(lines)
                    self.messages.put(f"chain {self.chain}: warmup ended; adapted step size {lines[0].split('=')[1].strip()}")
                except (OSError, ValueError, IndexError, StopIteration) as exc:
                    self.messages.put(f"chain {self.chain}: warmup ended; its adaptation was not recorded ({exc!r})")

    def _logger(self, line: bytes) -> None:
        text = str(json.loads(line)["values"][0])
        level, _, body = text.partition(":")
        body = body.strip()
        if not body:
            return
        if level == "error":
            self.errors.append(body)
        if body.startswith("Iteration:"):
            self.messages.put(("iteration", self.chain, int(body.split()[1])))
        elif level in ("warn", "error") or "Gradient evaluation" in body or "Adjust your" in body:
            self.messages.put(f"chain {self.chain}: {body}")

    def _draw(self, line: bytes) -> None:
        try:
            values = self.parser.parse(line)["values"]
            if self.names is None:
                self._start(list(values.keys()))
            row = np.fromiter(values.values(), float, len(self.names))
            del values
        except ValueError:  # NaN / Infinity: not JSON, Python's parser accepts them
            obj = json.loads(line)["values"]
            if self.names is None:
                self._start(list(obj))
            row = np.fromiter(obj.values(), float, len(self.names))
        if self.row >= self.draws:
            raise SamplingError(f"chain {self.chain}: more draws than requested")
        self.store.append(row, self.row)
        self.row += 1

    def _start(self, names: list[str]) -> None:
        self.names = names
        self.store.create(names, self.draws)

    def finish(self) -> None:
        if self.row != self.draws:
            raise SamplingError(f"chain {self.chain}: received {self.row} of {self.draws} draws")
