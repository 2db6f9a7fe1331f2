"""One PyStan chain, as a child process of the fit (stan_engine._ChainProcess)::

    python -m schoolquality_assets.stan_chain ARGS_FILE PARENT_PID

ARGS_FILE holds the pickled keyword arguments of ``stan_engine._run_chain``. The chain's messages
(iteration reports, warnings) go to stdout, one JSON value a line; anything else written to
stdout goes to stderr. The chain dies with the process PARENT_PID.
"""

import ctypes
import json
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Messages:
    """``put`` for the chain's reader: one JSON line on the message pipe (line-buffered)."""

    def __init__(self, stream):
        self.stream = stream

    def put(self, message) -> None:
        self.stream.write(json.dumps(message) + "\n")


def die_with_parent(parent: int) -> None:
    """A chain never outlives the fit: on Linux the kernel kills it when its parent dies
    (PR_SET_PDEATHSIG); everywhere, a thread exits when the parent pid is no longer ours
    (also covers a parent that died before the prctl call)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def child_env() -> dict:
    """The environment of a child interpreter (a chain, a diagnostics worker): in a checkout that
    is not installed in site-packages, it imports this copy of the package."""
    import site

    root = str(Path(__file__).resolve().parents[1])
    return dict(os.environ) if root in site.getsitepackages() else os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def main(args_file: str, parent: str) -> None:
    die_with_parent(int(parent))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    args = pickle.loads(Path(args_file).read_bytes())
    from schoolquality_assets.stan_engine import _run_chain

    _run_chain(messages=Messages(out), **args)


if __name__ == "__main__":
    main(*sys.argv[1:])
