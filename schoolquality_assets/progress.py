"""Progress of the long steps that are not Stan sampling (LOO, diagnostics, the production table).

``StepProgress`` logs a line as each part of a step finishes. From a background thread it also
logs a heartbeat at least every ``interval`` seconds, with the elapsed time, the parts done and
what remains. The remaining time is estimated from the average time per part so far.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

HEARTBEAT_SECONDS = 30.0


class StepProgress:
    def __init__(self, log: Callable[[str], None], what: str, parts: int | None = None,
                 interval: float = HEARTBEAT_SECONDS):
        self.log, self.what, self.parts, self.interval = log, what, parts, interval
        self.done = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> StepProgress:
        self.start = time.monotonic()
        self.log(f"{self.what}: started" + (f" ({self.parts} parts)" if self.parts else ""))
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self.log(f"{self.what}: finished in {self.elapsed():.0f} s")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def part_done(self, label: str) -> None:
        with self._lock:
            self.done += 1
        self.log(f"{self.what}: {label} done; {self.status()}")

    def status(self) -> str:
        elapsed = self.elapsed()
        text = f"{elapsed:.0f} s elapsed"
        if not self.parts:
            return text + ", still running"
        text += f", {self.done} of {self.parts} parts done"
        if self.done == 0:
            return text + ", no estimate until the first part ends"
        left = elapsed / self.done * (self.parts - self.done)
        return text + f", ~{left:.0f} s left"

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self.log(f"{self.what}: {self.status()}")
