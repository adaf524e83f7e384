"""What the Copy.ai API answers, as the exporter understands it: runs, statuses, run
list pages and webhook registrations, with the tolerant parsing of their payloads.

The public API docs disagree with themselves about types (credits as int or string,
timestamps with or without milliseconds, metadata null or missing, runs without a
status, totals as strings), so everything here accepts every documented variant and
turns anything else into a `PayloadError` instead of a crash."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporter.config import ID_PATTERN


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


class PayloadError(ValueError):
    """The API answered with JSON we cannot use (wrong shape or types)."""


Attributes = tuple[tuple[str, str], ...]  # (key, value) pairs, see attribute_values


@dataclass(frozen=True, slots=True)
class Run:
    """What the exporter keeps of one run: no input or output, they can be large (only
    the values of the configured attribution keys, already bounded)."""

    run_id: str
    status: RunStatus
    created_at: float | None  # Unix seconds
    credits: float | None
    raw_status: str | None = None  # as the API spelled it, for logging UNKNOWN ones
    attributes: Attributes | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @property
    def reported(self) -> bool:
        """False for a record that carried no status at all: it says nothing about the
        run's status (an undocumented status string is reported, as UNKNOWN)."""
        return self.raw_status is not None or self.status is not RunStatus.UNKNOWN


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


NONE_VALUE = "__none__"  # the attribute's value is missing, null, empty or not a scalar
MAX_VALUE_LENGTH = 64  # an attribute value is cut to this many characters
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def attribute_value(value: object) -> str:
    """A scalar of a run's metadata or input as a label value: strings as they are,
    numbers and booleans as JSON spells them, cut to MAX_VALUE_LENGTH characters;
    control characters and lone surrogates (unencodable) become U+FFFD. Anything else
    (missing, null, "", an object or a list) is NONE_VALUE."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        try:
            text = str(value)
        except ValueError:  # more digits than Python converts
            return NONE_VALUE
    elif isinstance(value, float):
        if not math.isfinite(value):
            return NONE_VALUE
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        return NONE_VALUE
    text = _UNPRINTABLE.sub("\ufffd", text[:MAX_VALUE_LENGTH])
    return text or NONE_VALUE


def attribute_values(record: Mapping[str, Any], keys: tuple[str, ...]) -> Attributes | None:
    """The value of each attribution key (`metadata.customer`, `input.team`: a dotted
    path into the record's metadata or input object) that this record can tell: a key
    whose object is absent from the record is left out (a webhook delivery carries no
    `input`, a list item may carry neither), so a later look can still bring it; one
    whose object is there but holds no scalar at the path is NONE_VALUE. None when no
    key can be told (or none is configured)."""
    pairs = []
    for key in keys:
        root, _, path = key.partition(".")
        if root not in record:
            continue
        node: object = record[root]
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        pairs.append((key, attribute_value(node)))
    return tuple(pairs) if pairs else None


def parse_run(
    record: object, expected_run_id: str | None = None, attributes: tuple[str, ...] = ()
) -> Run:
    """Turn the `data` object of a run (or a list item) into a `Run`, with the values
    of the attribution keys `attributes` (see attribute_values)."""
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
        attributes=attribute_values(record, attributes) if attributes else None,
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


MAX_TOTAL = 10**12  # a run list total beyond this is a broken answer, not a workflow


_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only (str.isdigit() accepts '²'), fits int64


@dataclass(frozen=True)
class RunPage:
    """One page of the list endpoint."""

    total: int
    runs: tuple[Run, ...]
    invalid_items: int


def parse_run_page(data: object, attributes: tuple[str, ...] = ()) -> RunPage:
    if not isinstance(data, Mapping):
        raise PayloadError("run list data is not an object")
    total = data.get("total")
    if isinstance(total, str) and _DIGITS.fullmatch(total.strip()):
        total = int(total.strip())
    if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= MAX_TOTAL:
        raise PayloadError("run list total is not a plausible non-negative integer")
    items = data.get("data")
    if not isinstance(items, list):
        raise PayloadError("run list has no data array")
    runs: list[Run] = []
    invalid = 0
    for item in items:
        try:
            runs.append(parse_run(item, attributes=attributes))
        except PayloadError:
            invalid += 1
    return RunPage(total=total, runs=tuple(runs), invalid_items=invalid)


@dataclass(frozen=True)
class Webhook:
    id: str
    url: str
    event_type: str
    workflow_id: str | None


def parse_webhook(data: object) -> Webhook:
    if not isinstance(data, Mapping):
        raise PayloadError("webhook is not an object")
    webhook_id, url = data.get("id"), data.get("url")
    event_type, workflow_id = data.get("eventType"), data.get("workflowId")
    if not isinstance(webhook_id, str) or not isinstance(url, str):
        raise PayloadError("webhook has no id or url")
    if not isinstance(event_type, str):
        raise PayloadError("webhook has no eventType")
    if workflow_id is not None and not isinstance(workflow_id, str):
        raise PayloadError("webhook workflowId is not a string")
    # a workspace-wide registration is echoed with workflowId null or "": one meaning
    return Webhook(webhook_id, url, event_type, workflow_id or None)


def parse_webhook_page(data: object) -> tuple[int, list[Webhook]]:
    if isinstance(data, Mapping) and data.get("status") == "success":
        data = data.get("data")  # tolerate the usual envelope too
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise PayloadError("webhook list has no data array")
    total = data.get("total")
    if isinstance(total, str) and _DIGITS.fullmatch(total.strip()):
        total = int(total.strip())
    if isinstance(total, bool) or not isinstance(total, int):
        raise PayloadError("webhook list total is not an integer")
    hooks = []
    for item in data["data"]:
        try:
            hooks.append(parse_webhook(item))
        except PayloadError:
            continue
    return total, hooks
