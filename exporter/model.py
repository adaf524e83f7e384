"""Runs as the exporter understands them, and the tolerant parsing of Copy.ai payloads.

The public API docs disagree with themselves about types (credits as int or string,
timestamps with or without milliseconds, metadata null or missing, runs without a
status), so everything here accepts every documented variant and turns anything
else into a `PayloadError` instead of a crash.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


class RunStatus(enum.StrEnum):
    NEW = "NEW"
    WAITING = "WAITING"
    PROCESSING = "PROCESSING"
    COMPLETE = "COMPLETE"
    RETRYING = "RETRYING"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"  # missing, or a status outside the documented six

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def active(self) -> bool:
        """Queued or running. UNKNOWN is neither active nor terminal: a run whose status
        was never reported (or is undocumented) feeds no active count or stuck-run alert."""
        return self in ACTIVE_STATUSES

    @classmethod
    def parse(cls, value: object) -> RunStatus:
        if isinstance(value, str):
            try:
                status = cls(value.strip().upper())
            except ValueError:
                return cls.UNKNOWN
            return status
        return cls.UNKNOWN


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETE, RunStatus.FAILED})
ACTIVE_STATUSES = frozenset(
    {RunStatus.NEW, RunStatus.WAITING, RunStatus.PROCESSING, RunStatus.RETRYING}
)
ALL_STATUSES: tuple[RunStatus, ...] = tuple(RunStatus)

# A run whose answers carry no usable status is fetched again after 1, 2, 4, 8, then at
# most this many refresh intervals (it cannot be told apart from a stuck run, and each
# look costs an API call).
MAX_SILENT_BACKOFF = 10


def silent_backoff(silent_fetches: int) -> float:
    """Refresh intervals to wait before fetching again a run whose last `silent_fetches`
    answers in a row carried no usable status (missing or undocumented)."""
    return float(min(MAX_SILENT_BACKOFF, 2 ** max(0, silent_fetches - 1)))


# An ID goes into a URL path and a label value, so it must be a plain token.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


class PayloadError(ValueError):
    """The API answered with JSON we cannot use (wrong shape or types)."""


@dataclass(frozen=True, slots=True)
class Run:
    """What the exporter keeps of one run: no input or output, they can be large."""

    run_id: str
    status: RunStatus
    created_at: float | None  # Unix seconds
    credits: float | None
    raw_status: str | None = None  # as the API spelled it, for logging UNKNOWN ones

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def reported(self) -> bool:
        """False for a record that carried no status at all: it says nothing about the
        run's status (an undocumented status string is reported, as UNKNOWN)."""
        return self.raw_status is not None or self.status is not RunStatus.UNKNOWN


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


def parse_credits(value: object) -> float | None:
    """Credits arrive as 2, 2.5 or "9001"; missing while a run is in progress."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PayloadError("credits is a boolean")
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise PayloadError("credits is out of range") from None
    elif isinstance(value, str):
        text = value.strip()
        if text == "":
            return None
        try:
            number = float(text)
        except ValueError:
            raise PayloadError("credits is not a number") from None
    else:
        raise PayloadError(f"credits has type {type(value).__name__}")
    if not math.isfinite(number) or number < 0:
        raise PayloadError("credits is not a finite non-negative number")
    return number


def parse_timestamp(value: object) -> float | None:
    """ISO-8601 (`2023-04-06T22:34:46.704Z`, `2023-09-27T18:24:47Z`, offsets) to Unix time."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"createdAt has type {type(value).__name__}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError("createdAt is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:  # the API documents UTC
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        raise PayloadError("createdAt is out of range") from None


def parse_run(record: object, expected_run_id: str | None = None) -> Run:
    """Turn the `data` object of a run (or a list item) into a `Run`."""
    if not isinstance(record, Mapping):
        raise PayloadError("run record is not an object")
    run_id = record.get("id", record.get("workflowRunId", expected_run_id))
    if not isinstance(run_id, str) or not ID_PATTERN.fullmatch(run_id):
        raise PayloadError("run record has no usable id")
    if expected_run_id is not None and run_id != expected_run_id:
        raise PayloadError("run record is for another run id")
    raw_status = record.get("status")
    if not isinstance(raw_status, str) or not raw_status.strip():
        raw_status = None  # missing, null, empty or not a string: no status reported
    return Run(
        run_id=run_id,
        status=RunStatus.parse(raw_status),
        created_at=parse_timestamp(record.get("createdAt")),
        credits=parse_credits(record.get("credits")),
        raw_status=raw_status,
    )


def unwrap_success(body: object) -> Any:
    """Return `data` of a `{"status": "success", "data": ...}` envelope."""
    if not isinstance(body, Mapping):
        raise PayloadError("response is not a JSON object")
    if body.get("status") != "success":
        raise PayloadError("response status is not 'success'")
    if "data" not in body:
        raise PayloadError("response has no data")
    return body["data"]


def error_code(body: object) -> str | None:
    """The `errorCode` of an error envelope, if it is a short token."""
    if isinstance(body, Mapping):
        code = body.get("errorCode")
        if isinstance(code, str) and ID_PATTERN.fullmatch(code):
            return code
    return None
