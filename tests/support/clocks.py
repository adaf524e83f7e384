"""Clocks tests can move: a fake one, and real time with an offset."""

from __future__ import annotations

import threading
import time


class FakeClock:
    """Monotonic and wall clocks that move only when told to."""

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_700_000_000.0):
        self.now = start
        self.wall_offset = wall_start - start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def wall(self) -> float:
        with self._lock:
            return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class ShiftedClock:
    """Wall time plus an offset the test moves: simulated runs end when told to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0

    def __call__(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds
