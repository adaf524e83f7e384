"""What a look at the API or a webhook delivery taught the exporter, as typed, immutable
messages, and the one place they are applied to the workflow history (`Applier`).

A single exporter applies each message as it comes. Replicas send them to the leader,
which writes the history, as versioned JSON (`to_json` / `from_json`). The wire format
(version 1) is a flat JSON object with "v" and "t" (the message type) and the keys that
replicas of earlier versions already send, so a rolling upgrade can mix the two:

    {"v": 1, "t": "run", "wf": "WCFG-1", "run_id": "WRUN-1", "when": 1700000000.0,
     "status": "COMPLETE", "reported": true, "created_at": 1699999000.0, "credits": 2.0,
     "pinned": true, "fetched": true}
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from exporter.api.deliveries import CREDIT_LIMIT, STARTED, WebhookEvent
from exporter.api.records import ID_PATTERN, Run, RunStatus
from exporter.tracking.book import HistoryBook
from exporter.tracking.runs import RunStore

log = logging.getLogger(__name__)

VERSION = 1


class MessageError(ValueError):
    """A message that cannot be read: unknown type or version, or fields of wrong types."""


@dataclass(frozen=True)
class RunSeen:
    """A run as a fetch of it (`fetched`) or a listing showed it. `status` is UNKNOWN and
    `reported` false when the record carried no status at all."""

    TYPE: ClassVar[str] = "run"
    workflow_id: str
    run_id: str
    when: float
    status: RunStatus
    reported: bool
    created_at: float | None
    credits: float | None
    pinned: bool  # a configured run
    fetched: bool

    @classmethod
    def of(cls, workflow_id: str, run: Run, when: float, *, pinned: bool, fetched: bool) -> RunSeen:
        return cls(
            workflow_id,
            run.run_id,
            when,
            run.status,
            run.reported,
            run.created_at,
            run.credits,
            pinned,
            fetched,
        )


@dataclass(frozen=True)
class FetchFailed:
    """A fetch of a configured run failed (shown in its fetch_success)."""

    TYPE: ClassVar[str] = "fetch_failed"
    workflow_id: str
    run_id: str
    when: float
    error: str  # ApiError.signature


@dataclass(frozen=True)
class FetchTried:
    """A fetch of a tracked run failed: it is tried again after an interval."""

    TYPE: ClassVar[str] = "touch"
    workflow_id: str
    run_id: str
    when: float


@dataclass(frozen=True)
class RunGone:
    """The API answered 404 for a tracked run: it is forgotten."""

    TYPE: ClassVar[str] = "drop"
    workflow_id: str
    run_id: str
    when: float


@dataclass(frozen=True)
class Delivered:
    """A webhook delivery, accepted by the receiver of some replica."""

    TYPE: ClassVar[str] = "webhook"
    event: WebhookEvent
    when: float


Observation = RunSeen | FetchFailed | FetchTried | RunGone | Delivered
_TYPES: dict[str, type] = {
    c.TYPE: c for c in (RunSeen, FetchFailed, FetchTried, RunGone, Delivered)
}


# --- the wire format ---------------------------------------------------------------------


def to_json(message: Observation) -> dict[str, Any]:
    data: dict[str, Any] = {"v": VERSION, "t": message.TYPE, "when": message.when}
    if isinstance(message, Delivered):
        event = dataclasses.asdict(message.event)
        event["status"] = message.event.status.value if message.event.status else None
        data["event"] = event
        return data
    data["wf"] = message.workflow_id
    data["run_id"] = message.run_id
    if isinstance(message, RunSeen):
        data.update(
            status=message.status.value,
            reported=message.reported,
            created_at=message.created_at,
            credits=message.credits,
            pinned=message.pinned,
            fetched=message.fetched,
        )
    elif isinstance(message, FetchFailed):
        data["error"] = message.error
    return data


def from_json(data: object) -> Observation:
    """The message `data` encodes; MessageError if it cannot be one. Messages without
    "v" come from replicas of earlier versions and read as version 1."""
    if not isinstance(data, Mapping):
        raise MessageError("not a JSON object")
    version = data.get("v", 1)
    if version != VERSION:
        raise MessageError(f"unknown version {version!r}")
    kind = _TYPES.get(data.get("t"))  # type: ignore[arg-type]
    if kind is None:
        raise MessageError(f"unknown type {str(data.get('t'))[:40]!r}")
    when = _number(data.get("when"), "when")
    if when is None:
        raise MessageError("no time")
    if kind is Delivered:
        return Delivered(_event(data.get("event")), when)
    workflow_id, run_id = _id(data.get("wf"), "wf"), _id(data.get("run_id"), "run_id")
    if kind is RunSeen:
        status = data.get("status")
        return RunSeen(
            workflow_id,
            run_id,
            when,
            RunStatus.parse(status) if status is not None else RunStatus.UNKNOWN,
            bool(data.get("reported", status is not None)),
            _number(data.get("created_at"), "created_at"),
            _number(data.get("credits"), "credits"),
            bool(data.get("pinned")),
            bool(data.get("fetched", True)),
        )
    if kind is FetchFailed:
        error = data.get("error")
        return FetchFailed(workflow_id, run_id, when, error if isinstance(error, str) else "")
    return kind(workflow_id, run_id, when)


def _id(value: object, name: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise MessageError(f"{name} is not an id")
    return value


def _number(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MessageError(f"{name} is not a number")
    return float(value)


def _event(value: object) -> WebhookEvent:
    if not isinstance(value, Mapping) or not isinstance(value.get("event_type"), str):
        raise MessageError("event is not an object with an event_type")
    status = value.get("status")
    workflow_id, run_id = value.get("workflow_id"), value.get("run_id")
    return WebhookEvent(
        event_type=value["event_type"],
        workflow_id=_id(workflow_id, "workflow_id") if workflow_id is not None else None,
        run_id=_id(run_id, "run_id") if run_id is not None else None,
        status=RunStatus.parse(status) if status is not None else None,
        credits=_number(value.get("credits"), "credits"),
        created_at=_number(value.get("created_at"), "created_at"),
    )


# --- applying them -----------------------------------------------------------------------


class Applier:
    """Applies observations to the workflow history, and to the configured runs' own
    state where a listing or a delivery told something about them. Runs where the
    history is written: in the single exporter, or on the leader of replicas."""

    def __init__(
        self,
        book: HistoryBook,
        store: RunStore,
        *,
        clock: Callable[[], float],
        accept_unknown_workflows: Callable[[], bool],
    ):
        self._book = book
        self._store = store
        self._clock = clock
        self._accept_unknown = accept_unknown_workflows

    def apply(self, message: Observation) -> bool:
        """Apply one observation. For a listed run, False if the history ignores it
        (older than the window, or dropped by the cap before)."""
        if isinstance(message, Delivered):
            self._delivered(message.event, message.when)
            return True
        history = self._book.get(message.workflow_id)
        if history is None:
            return False
        run_id = message.run_id
        if isinstance(message, RunSeen):
            tracked = history.observe(
                run_id,
                when=message.when,
                status=message.status,
                reported=message.reported,  # a record without status says nothing of it
                created_at=message.created_at,
                credits=message.credits,
                pinned=message.pinned,
                fetched=message.fetched,
            )
            if message.pinned and message.fetched:
                history.note_fetch(run_id, True, None, message.when)
            elif message.pinned:  # a listing: fresh enough that no fetch is due
                raw_status = message.status.value if message.reported else None
                run = Run(run_id, message.status, message.created_at, message.credits, raw_status)
                self._store.record_observation(
                    (message.workflow_id, run_id), run, self._clock(), listed=True
                )
            return tracked
        if isinstance(message, FetchFailed):
            history.note_fetch(run_id, False, message.error, message.when)
        elif isinstance(message, FetchTried):
            history.touch(run_id, message.when)
        elif isinstance(message, RunGone):
            history.drop(run_id, message.when)
        return True

    def _delivered(self, event: WebhookEvent, when: float) -> None:
        workflow_id = event.workflow_id
        if workflow_id and self._book.get(workflow_id) is None and self._accept_unknown():
            self._book.adopt(workflow_id)
        history = self._book.get(event.workflow_id) if event.workflow_id else None
        if history is not None:
            history.delivered(when)
        if event.event_type == CREDIT_LIMIT:
            if history is not None:
                history.credit_limit_reached(when)
            else:
                self._book.workspace_credit_limit_reached(when)
            return
        if history is None or event.run_id is None:
            return
        key = (history.workflow_id, event.run_id)
        configured = self._store.get(key) is not None
        history.observe(
            event.run_id,
            when=when,
            status=event.status,
            created_at=event.created_at,
            credits=event.credits,
            pinned=configured,
            started=event.event_type == STARTED,
        )
        if configured and event.status is not None:
            run = Run(
                event.run_id, event.status, event.created_at, event.credits, event.status.value
            )
            self._store.record_observation(key, run, self._clock())
