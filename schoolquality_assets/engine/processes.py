"""Child interpreters of a fit (a PyStan chain, a diagnostics worker): they die with their parent, run
on the cores this process may use, and import this copy of the package."""

import ctypes
import os
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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

    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ) if root in site.getsitepackages() else os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
