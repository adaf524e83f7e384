"""Webhook deliveries from Copy.ai, parsed into `WebhookEvent`s: both documented shapes
(`{"type", "workflowRunId", "workflowId", "result", "credits"}` and the whole run
record plus `type`), with `WebhookError` (and a reason) for anything else."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.api.records import (
    ID_PATTERN,
    Attributes,
    PayloadError,
    RunStatus,
    attribute_values,
    parse_credits,
    parse_timestamp,
)
from exporter.config import WEBHOOK_EVENT_TYPES

STARTED, COMPLETED, FAILED, CREDIT_LIMIT = WEBHOOK_EVENT_TYPES


class WebhookError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class WebhookEvent:
    event_type: str
    workflow_id: str | None
    run_id: str | None = None
    status: RunStatus | None = None
    credits: float | None = None
    created_at: float | None = None
    attributes: Attributes | None = None  # the attribution keys' values it carries

    @property
    def started(self) -> bool:
        """A workflowRun.started delivery: the run is running now (its exact start)."""
        return self.event_type == STARTED


def parse_event(body: bytes, attributes: tuple[str, ...] = ()) -> WebhookEvent:
    """A delivery body → WebhookEvent, with the values of the attribution keys
    `attributes` it carries (the documented payloads have `metadata`, not `input`);
    WebhookError (with a reason) for anything else."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookError("bad_json", "body is not valid JSON") from None
    if not isinstance(payload, Mapping):
        raise WebhookError("bad_payload", "body is not a JSON object")
    event_type = payload.get("type")
    if not isinstance(event_type, str):
        raise WebhookError("bad_payload", "no event type")
    if event_type not in WEBHOOK_EVENT_TYPES:
        raise WebhookError("unknown_event", "unknown event type")
    # "" as null: a workspace-wide registration may echo it so (the receiver looks the
    # run's workflow up instead)
    workflow_id = _token(payload.get("workflowId") or None, "workflowId")
    if event_type == CREDIT_LIMIT:
        return WebhookEvent(event_type, workflow_id)
    run_id = _token(payload.get("workflowRunId", payload.get("id")), "workflowRunId")
    if run_id is None:
        raise WebhookError("bad_payload", "a run event without workflowRunId")
    try:
        credits = parse_credits(payload.get("credits"))
        created_at = parse_timestamp(payload.get("createdAt"))
    except PayloadError as exc:
        raise WebhookError("bad_payload", str(exc)) from None
    if event_type == COMPLETED:
        status: RunStatus | None = RunStatus.COMPLETE
    elif event_type == FAILED:
        status = RunStatus.FAILED
    else:  # started: the status if the sender included the run record; else it runs
        reported = RunStatus.parse(payload.get("status"))
        if "status" not in payload:
            status = RunStatus.PROCESSING
        else:
            status = reported if not reported.terminal else None
    values = attribute_values(payload, attributes) if attributes else None
    return WebhookEvent(event_type, workflow_id, run_id, status, credits, created_at, values)


def _token(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise WebhookError("bad_payload", f"{name} is not a plain id")
    return value
