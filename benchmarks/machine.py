"""How many cores the machine delivers right now (not a test: it prints figures). Run it beside a
timing, with nothing else running, to say what a figure was measured on: a 2-core virtual
machine whose host is busy delivers less than 2 cores, and every Stan timing moves with it.

    .venv/bin/python benchmarks/machine.py [--seconds 5] [--mb 1 32]

A fixed workload, a dot product over an array of each size (1 MB: in a core's own cache, so it
measures the cores; 32 MB: beyond it, so it also measures the shared cache and memory, like a
gradient of M2 on the full province), repeated, runs in 1, 2 and 4 processes at once. Printed per
case: the rounds per second of all processes together, and that rate against one process alone
("effective cores"). A 2-core machine with idle neighbours prints ~2.0 for 2 and 4 processes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"   # one thread per process (spawned children inherit it): processes are what is counted

import numpy as np  # noqa: E402


def _rounds(seconds: float, mb: float, out) -> None:
    x = np.random.default_rng(0).random(int(mb * 2**20 / 8))
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        float(x @ x)
        x[n % x.size] += 1e-9   # touch it, so nothing is cached across rounds
        n += 1
    out.put(n)


def rate(processes: int, seconds: float, mb: float) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rounds, args=(seconds, mb, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main(argv: list[str]) -> None:
    seconds = float(argv[argv.index("--seconds") + 1]) if "--seconds" in argv else 5.0
    sizes = [float(a) for a in argv[argv.index("--mb") + 1:]] if "--mb" in argv else [1.0, 32.0]
    print(f"{'array':>7s} {'processes':>9s} {'rounds/s':>9s} {'effective cores':>16s}")
    for mb in sizes:
        one = rate(1, seconds, mb)
        for n in (1, 2, 4):
            r = one if n == 1 else rate(n, seconds, mb)
            print(f"{mb:5.0f}MB {n:9d} {r:9.1f} {r / one:16.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
