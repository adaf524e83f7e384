"""Whether the API has been answering (`copyai_up`) and when data was last refreshed
without error, judged over batches of requests."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

from exporter.api.errors import ApiError, ErrorKind


class ApiHealth:
    """Answers "can we talk to the API with this key?" (`copyai_up`) and "when was data
    last refreshed without error?".

    Outcomes are grouped in batches (the fetches one scrape started). Any answer from
    the API sets up=1 at once; a refused key sets up=0 at once; a batch that ends with
    no answer at all (only network errors and 5xx) sets up=0.
    """

    def __init__(self, wall_clock: Callable[[], float], clock: Callable[[], float]):
        self._wall_clock = wall_clock
        self._clock = clock
        self._lock = threading.Lock()
        self.up = 0
        self.changed_at = 0.0  # wall time of the latest verdict, to share the newest one
        self.last_successful_refresh: float | None = None
        self.last_answer_at = -math.inf  # monotonic

    def batch(self, size: int) -> Batch:
        return Batch(self, size)

    def _record(self, batch: Batch, error: ApiError | None) -> None:
        with self._lock:
            if error is None or error.api_answered:
                batch.answered = True
                self.last_answer_at = self._clock()
                if not batch.refused:
                    self.up = 1
            if error is not None:
                if error.kind == ErrorKind.UNAUTHORIZED:
                    batch.refused = True
                    self.up = 0
                if error.kind in _REFRESH_ERRORS:
                    batch.errors += 1
            self._finish(batch)

    def _release(self, batch: Batch) -> None:
        with self._lock:
            self._finish(batch)

    def _finish(self, batch: Batch) -> None:
        batch.pending -= 1
        if batch.pending == 0:
            if not batch.answered:
                self.up = 0
            if batch.errors == 0:
                self.last_successful_refresh = self._wall_clock()
            self.changed_at = self._wall_clock()


# Errors that mean the refresh did not work, as opposed to an answer about one run.
_REFRESH_ERRORS = frozenset(
    {
        ErrorKind.UNREACHABLE,
        ErrorKind.UNAUTHORIZED,
        ErrorKind.RATE_LIMITED,
        ErrorKind.SERVER_ERROR,
    }
)


class Batch:
    __slots__ = ("answered", "errors", "health", "pending", "refused")

    def __init__(self, health: ApiHealth, size: int):
        self.health = health
        self.pending = size
        self.answered = False
        self.refused = False
        self.errors = 0

    def add(self, count: int) -> None:
        """More requests joined this batch (call before the joining task records)."""
        with self.health._lock:
            self.pending += count

    def record(self, error: ApiError | None) -> None:
        """One request of the batch finished: None if the API answered it."""
        self.health._record(self, error)

    def release(self) -> None:
        """A slot that made no request of its own (a coordinator) is done."""
        self.health._release(self)
