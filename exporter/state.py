"""What the exporter knows: each configured run's last good record and fetch outcome,
and whether the API has been answering.

State is written by fetch workers and read by scrapes at the same time, so every
record is an immutable `RunState` replaced in one assignment under a lock.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from exporter.client import ApiError, ErrorKind
from exporter.model import Run, RunStatus, merge_runs, silent_backoff

log = logging.getLogger(__name__)

RunKey = tuple[str, str]  # (workflow_id, run_id)
DUE_EARLY = 0.1  # of the refresh interval: see due_age


def due_age(interval: float) -> float:
    """How long ago a refresh must have been for it to be due again: a tenth less than
    the interval. A fetch finishes some time after the scrape that started it, and
    Prometheus' scrapes jitter, so with the exact interval a run fetched at one scrape
    is 20 ms short of due at the scrape one interval later and waits for the scrape
    after that: with 15 s scrapes and a 30 s interval, every 45 s instead of 30."""
    return interval * (1 - DUE_EARLY)


@dataclass(frozen=True, slots=True)
class RunState:
    workflow_id: str
    run_id: str
    run: Run | None = None  # last successfully fetched record
    fetch_ok: bool | None = None  # None: no fetch has finished yet
    attempted_at: float | None = None  # monotonic time the last fetch finished
    error: str | None = None  # signature of the last error, for log-once-per-change
    silent_fetches: int = 0  # answers in a row without a usable status

    @property
    def key(self) -> RunKey:
        return (self.workflow_id, self.run_id)

    def refresh_due(self, now: float, interval: float) -> bool:
        """A terminal run never changes again; anything else is due once per interval,
        or less often while its answers carry no usable status (see silent_backoff)."""
        if self.run is not None and self.run.terminal:
            return False
        if self.attempted_at is None:
            return True
        return now - self.attempted_at >= interval * silent_backoff(self.silent_fetches)


class RunStore:
    """The configured runs and what is known about each, in config order."""

    def __init__(self, keys: Iterable[RunKey] = ()):
        self._lock = threading.Lock()
        self._states: dict[RunKey, RunState] = {}
        self.sync(keys)

    def sync(self, keys: Iterable[RunKey]) -> None:
        """Track exactly `keys`: keep what is known of runs still configured, forget the
        rest (their series disappear at the next scrape instead of going stale)."""
        with self._lock:
            old = self._states
            self._states = {k: old.get(k) or RunState(*k) for k in keys}

    def snapshot(self) -> list[RunState]:
        with self._lock:
            return list(self._states.values())

    def get(self, key: RunKey) -> RunState | None:
        with self._lock:
            return self._states.get(key)

    def __len__(self) -> int:
        return len(self._states)

    def record_success(self, key: RunKey, run: Run, now: float) -> None:
        """A fetched record, merged into what is known (model.merge_runs: an end is
        final, a record without status keeps the known status). The workflow history
        logs, once per run, a run whose answers carry no usable status."""
        silent = run.status is RunStatus.UNKNOWN
        with self._lock:
            previous = self._states.get(key)
            if previous is None:  # dropped by a reload while the fetch was running
                return
            self._states[key] = replace(
                previous,
                run=merge_runs(previous.run, run),
                fetch_ok=True,
                attempted_at=now,
                error=None,
                silent_fetches=previous.silent_fetches + 1 if silent else 0,
            )
        if previous.error is not None:
            log.info(
                "run fetch recovered workflow_id=%s run_id=%s status=%s",
                key[0],
                key[1],
                run.status.value,
            )

    def record_observation(
        self, key: RunKey, run: Run, now: float, *, listed: bool = False
    ) -> None:
        """What a listing or a webhook said about a configured run: merged into what is
        known (fields it lacks keep their values), and counted as fresh so the run is not
        fetched again before the refresh interval."""
        with self._lock:
            previous = self._states.get(key)
            if previous is None:
                return
            merged = merge_runs(previous.run, run)
            silent = previous.silent_fetches if run.status is RunStatus.UNKNOWN else 0
            if listed:
                self._states[key] = replace(
                    previous,
                    run=merged,
                    fetch_ok=True,
                    attempted_at=now,
                    error=None,
                    silent_fetches=silent,
                )
            else:
                self._states[key] = replace(
                    previous, run=merged, attempted_at=now, silent_fetches=silent
                )

    def mirror(
        self, key: RunKey, run: Run | None, fetch_ok: bool | None, error: str | None
    ) -> None:
        """A listed run as the shared state has it (another replica may have fetched it)."""
        with self._lock:
            previous = self._states.get(key)
            if previous is not None:
                self._states[key] = replace(
                    previous,
                    run=merge_runs(previous.run, run) if run is not None else previous.run,
                    fetch_ok=fetch_ok,
                    error=error,
                )

    def seed(self, key: RunKey, run: Run) -> None:
        """Known from persisted history: a finished run needs no fetch after a restart."""
        with self._lock:
            previous = self._states.get(key)
            if previous is not None and previous.run is None:
                self._states[key] = replace(previous, run=run)

    def record_failure(self, key: RunKey, error: ApiError, now: float) -> None:
        with self._lock:
            previous = self._states.get(key)
            if previous is None:
                return
            self._states[key] = replace(
                previous, fetch_ok=False, attempted_at=now, error=error.signature
            )
        if previous.error != error.signature:  # log once per run and change, not per scrape
            log.warning(
                "run fetch failed workflow_id=%s run_id=%s kind=%s error=%r "
                "(keeping last known values; logged again only if the error changes)",
                key[0],
                key[1],
                error.kind,
                str(error),
            )


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
