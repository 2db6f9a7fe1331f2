"""The progress of a fit's chains as one line every so often, with warnings for stalled or slow chains."""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable

from schoolquality_assets.engine.base import Progress

HEARTBEAT_SECONDS = 30.0          # sampling progress line
COMPILE_HEARTBEAT_SECONDS = 15.0  # "still compiling" line
STALL_BEHIND = 0.25               # a chain below this share of the median chain's iteration is stalled ...
STALL_HEARTBEATS = 4              # ... and so is one without a new iteration for this many heartbeats
SLOW_MIN_ITERATIONS = 20          # a chain is slow below STALL_BEHIND of the median chain's iterations over the
                                  # last STALL_HEARTBEATS heartbeats, once the median chain made this many


class Heartbeat:
    """Turns the chains' iteration reports into one progress line every ``interval`` seconds:
    elapsed time, each chain's phase and iteration, draws per second, and what remains. A chain
    that stalls gets a warning line, once per stall: after two heartbeats, one below STALL_BEHIND
    of the median chain's iteration, or one that has not reported a new iteration for
    STALL_HEARTBEATS heartbeats while another chain has (every chain slow is slow, not stalled).
    A chain that moves on, but at less than STALL_BEHIND of the median chain's pace over the last
    STALL_HEARTBEATS heartbeats, gets a "slow" warning, once per episode. ``chains`` counts a chain that never reported; ``total`` (warmup + draws) marks a chain done."""

    def __init__(self, progress: Progress, warmup: int, stop, interval: float = HEARTBEAT_SECONDS,
                 chains: int = 0, total: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.progress, self.warmup, self.stop, self.interval = progress, warmup, stop, interval
        self.total, self.clock = total, clock
        self.start = self.last = clock()
        self.chains: dict[int, int] = {}
        self.moved = dict.fromkeys(range(1, chains + 1), self.start)  # when each chain last reported a new iteration
        self.stalled: set[int] = set()
        self.slow: set[int] = set()
        self.history: collections.deque = collections.deque(maxlen=STALL_HEARTBEATS + 1)  # (time, iterations)

    def __call__(self, text: str) -> None:
        self.progress(text)

    def resumed(self) -> None:
        """The chains were paused (a checkpoint was judged): a pause is not a stall."""
        now = self.clock()
        self.moved = dict.fromkeys(self.moved, now)
        self.history.clear()

    def message(self, message) -> None:
        if isinstance(message, tuple):  # ("iteration", chain, iteration)
            _, chain, iteration = message
            if self.chains.get(chain) != iteration:
                self.moved[chain] = self.clock()
            self.chains[chain] = iteration
        else:
            self.progress(message)

    def tick(self, kept: int, checkpoint: int | None) -> None:
        now = self.clock()
        if now - self.last < self.interval or not self.chains:
            return
        self.last = now
        elapsed = now - self.start
        slowest = min(self.chains.values())
        rate = slowest / elapsed if elapsed > 0 else 0.0
        phases = ", ".join(f"chain {c} {'warmup' if i <= self.warmup else 'sampling'} {i}" for c, i in sorted(self.chains.items()))
        if slowest <= self.warmup:
            todo = f"warmup ends in ~{(self.warmup - slowest) / max(rate, 1e-9):.0f} s"
        elif checkpoint is not None:
            todo = f"{kept} draws kept per chain; next convergence check at {checkpoint} in ~{max(checkpoint - kept, 0) / max(rate, 1e-9):.0f} s"
        else:
            todo = f"{kept} draws kept per chain"
        budget = f", budget {self.stop.budget_seconds:.0f} s" if self.stop else ""
        self.progress(f"sampling {elapsed:.0f} s{budget}: {phases}; {rate:.2f} iterations/s per chain; {todo}")
        self._stalls(now, elapsed)
        self._slow(now)

    def _slow(self, now: float) -> None:
        iterations = {c: self.chains.get(c, 0) for c in self.moved}
        self.history.append((now, iterations))
        if len(self.history) <= STALL_HEARTBEATS:
            return
        then, before = self.history[0]
        span = now - then
        moved = {c: i - before.get(c, 0) for c, i in iterations.items() if self.total is None or i < self.total}
        if len(moved) < 2:
            return
        median = statistics.median(moved.values())
        for chain, d in sorted(moved.items()):
            if chain in self.stalled:
                continue
            if median >= SLOW_MIN_ITERATIONS and d < STALL_BEHIND * median:
                if chain not in self.slow:
                    self.slow.add(chain)
                    self.progress(f"warning: chain {chain} slow at iteration {iterations[chain]}: {d} iterations in the "
                                  f"last {span:.0f} s ({d / span:.2f} iterations/s), the median chain {median:.0f} "
                                  f"({median / span:.2f} iterations/s)")
            elif d >= 2 * STALL_BEHIND * median:   # back to half the median pace: the episode is over
                self.slow.discard(chain)

    def _stalls(self, now: float, elapsed: float) -> None:
        iterations = {c: self.chains.get(c, 0) for c in self.moved}
        median = statistics.median(iterations.values())
        patience = STALL_HEARTBEATS * self.interval
        for chain, i in sorted(iterations.items()):
            idle = now - self.moved[chain]
            others_moved = any(now - t < patience for c, t in self.moved.items() if c != chain)
            behind = elapsed >= 2 * self.interval and i < STALL_BEHIND * median
            stuck = idle >= patience and others_moved
            if (behind or stuck) and (self.total is None or i < self.total):
                if chain not in self.stalled:
                    self.stalled.add(chain)
                    self.progress(f"warning: chain {chain} stalled at iteration {i} ({i / elapsed:.2f} iterations/s, "
                                  f"the median chain {median:.0f} at {median / elapsed:.2f} iterations/s); "
                                  f"no new iteration for {idle:.0f} s")
            else:
                self.stalled.discard(chain)
