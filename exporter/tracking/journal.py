"""What happened recently that the metrics cannot say, for the status page: the last API
errors (when, endpoint, HTTP code, kind, which run), each workflow's last listing and
last webhook delivery, and the config loads with every problem of a failed one.

Bounded whatever happens: a ring of the newest errors and one entry per workflow (at
most MAX_WORKFLOWS). Written by the refresher and the runtime, read by
exporter/web/status.py; its lock is a leaf (CODING.md).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

from exporter.api.errors import ApiError

RECENT_ERRORS = 20
MAX_WORKFLOWS = 1000  # configured ones plus at most 50 adopted: never reached in practice


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    """One failed API operation (after retries)."""

    at: float  # Unix time
    endpoint: str  # get_run, list_runs
    kind: str  # ErrorKind
    code: int | None  # HTTP status; None when no answer came
    message: str  # ApiError's text: never a URL, a header or a body
    workflow_id: str | None
    run_id: str | None


@dataclass(frozen=True, slots=True)
class Listing:
    """How a workflow's last discovery cycle went."""

    at: float
    error: ErrorEntry | None  # None: every page was answered


@dataclass(frozen=True, slots=True)
class ConfigLoad:
    """One load of the config file: at start (ok) or a reload."""

    at: float
    ok: bool
    path: str | None
    problems: tuple[str, ...] = ()


class Journal:
    def __init__(self, started_at: float, config_file: str | None = None):
        self._lock = threading.Lock()
        self.started_at = started_at
        self._errors: deque[ErrorEntry] = deque(maxlen=RECENT_ERRORS)
        self._listings: OrderedDict[str, Listing] = OrderedDict()
        self._deliveries: OrderedDict[str, float] = OrderedDict()
        self._first_load = ConfigLoad(started_at, True, config_file)
        self._last_reload: ConfigLoad | None = None

    # --- written by the refresher ----------------------------------------------------

    def api_error(
        self,
        when: float,
        endpoint: str,
        error: ApiError,
        workflow_id: str | None = None,
        run_id: str | None = None,
    ) -> ErrorEntry:
        entry = ErrorEntry(
            when, endpoint, error.kind, error.status, str(error), workflow_id, run_id
        )
        with self._lock:
            self._errors.append(entry)
        return entry

    def listing(self, workflow_id: str, when: float, error: ApiError | None) -> None:
        """A discovery cycle ended (its error is also one of the recent errors)."""
        entry = None
        if error is not None:
            entry = self.api_error(when, "list_runs", error, workflow_id)
        with self._lock:
            _put(self._listings, workflow_id, Listing(when, entry))

    # --- written by the runtime --------------------------------------------------------

    def delivered(self, workflow_id: str | None, when: float) -> None:
        """A webhook delivery for this workflow ("" for none: a workspace event) was
        applied."""
        with self._lock:
            _put(self._deliveries, workflow_id or "", when)

    def config_file(self, path: str | None) -> None:
        """The file the running config came from (the command line sets it at start)."""
        with self._lock:
            self._first_load = ConfigLoad(self._first_load.at, True, path)

    def config_loaded(
        self, when: float, path: str | None, ok: bool, problems: tuple[str, ...] = ()
    ) -> None:
        """A reload finished: applied (ok), or refused with every problem found."""
        with self._lock:
            self._last_reload = ConfigLoad(when, ok, path, tuple(problems))

    # --- read by the status page ---------------------------------------------------------

    def recent_errors(self) -> list[ErrorEntry]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._errors))

    def last_error_of(self, workflow_id: str, run_id: str) -> ErrorEntry | None:
        with self._lock:
            for entry in reversed(self._errors):
                if entry.run_id == run_id and entry.workflow_id == workflow_id:
                    return entry
        return None

    def last_listing(self, workflow_id: str) -> Listing | None:
        with self._lock:
            return self._listings.get(workflow_id)

    def last_delivery(self, workflow_id: str) -> float | None:
        with self._lock:
            return self._deliveries.get(workflow_id)

    def loads(self) -> tuple[ConfigLoad, ConfigLoad | None]:
        """(the load at start, the last reload or None)."""
        with self._lock:
            return self._first_load, self._last_reload


def _put(entries: OrderedDict, key: str, value: object) -> None:
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > MAX_WORKFLOWS:
        entries.popitem(last=False)
