"""What the exporter knows of each configured run: its last good record and fetch
outcome, and the rules for merging what arrives later (a run's end is final, a record
without status reports none).

State is written by fetch workers and read by scrapes at the same time, so every
record is an immutable `RunState` replaced in one assignment under a lock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

from exporter.api.errors import ApiError
from exporter.api.records import Run, RunStatus

# A run whose answers carry no usable status is fetched again after 1, 2, 4, 8, then at
# most this many refresh intervals (it cannot be told apart from a stuck run, and each
# look costs an API call).
MAX_SILENT_BACKOFF = 10


def silent_backoff(silent_fetches: int) -> float:
    """Refresh intervals to wait before fetching again a run whose last `silent_fetches`
    answers in a row carried no usable status (missing or undocumented)."""
    return float(min(MAX_SILENT_BACKOFF, 2 ** max(0, silent_fetches - 1)))


def merge_runs(old: Run | None, new: Run) -> Run:
    """What is known of a run after `new` arrived, given `old`.

    - A run's end is final: once `old` is COMPLETE or FAILED, no later record moves it
      (a late or repeated delivery, an API answer lagging behind its own webhook, a
      record without status); the first end known wins.
    - A record without status never replaces a known status.
    - Fields `new` lacks keep their old values (a webhook without createdAt). A finished
      run's credits are final too: a lagging record's partial credits never replace or
      fill them.
    """
    if old is None:
        return new
    created_at = new.created_at if new.created_at is not None else old.created_at
    if old.terminal:
        credits = old.credits
        if credits is None and (new.terminal or not new.reported):
            credits = new.credits
        if created_at == old.created_at and credits == old.credits:
            return old  # unchanged: the same object (the renderer's cache keys on it)
        return Run(old.run_id, old.status, created_at, credits, old.raw_status)
    reported = new.reported
    return Run(
        run_id=new.run_id,
        status=new.status if reported else old.status,
        created_at=created_at,
        credits=new.credits if new.credits is not None else old.credits,
        raw_status=new.raw_status if reported else old.raw_status,
    )


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
