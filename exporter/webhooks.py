"""The webhook receiver: Copy.ai POSTs run events here, on a listener of its own.

Deliveries are not signed, so the URL carries a secret token (`/webhook/<token>`, or
the token in an `Authorization: Bearer` header), compared in constant time. Bodies
are size-capped before they are read. Both documented payload shapes are accepted:
`{"type", "workflowRunId", "workflowId", "result", "credits"}` and the whole run record
plus `type`. Every rejection is counted by reason, every accepted event by type.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.client import ApiError
from exporter.config import WEBHOOK_EVENT_TYPES, WebhookConfig, WebhookRegistration
from exporter.model import ID_PATTERN, PayloadError, RunStatus, parse_credits, parse_timestamp

log = logging.getLogger(__name__)

STARTED, COMPLETED, FAILED, CREDIT_LIMIT = WEBHOOK_EVENT_TYPES
REJECT_REASONS = (
    "unauthorized",
    "too_large",
    "length_required",
    "bad_json",
    "bad_payload",
    "unknown_event",
    "unknown_workflow",
    "method_not_allowed",
    "not_found",
)
StartResponse = Callable[..., Any]


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


def parse_event(body: bytes) -> WebhookEvent:
    """A delivery body → WebhookEvent; WebhookError (with a reason) for anything else."""
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
    else:  # started: the status if the sender included the run record, else unknown yet
        reported = RunStatus.parse(payload.get("status"))
        status = reported if "status" in payload and not reported.terminal else None
    return WebhookEvent(event_type, workflow_id, run_id, status, credits, created_at)


def _token(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise WebhookError("bad_payload", f"{name} is not a plain id")
    return value


class WebhookSink:
    """What the receiver hands events to (the runtime), and where it reports counts."""

    def known_workflow(self, workflow_id: str) -> bool: ...

    def workflow_of_run(self, run_id: str) -> str | None: ...

    def adopt_workflow(self, workflow_id: str) -> bool: ...

    def apply_webhook(self, event: WebhookEvent) -> None: ...

    def webhook_rejected(self, reason: str) -> None: ...

    def webhook_accepted(self, event_type: str) -> None: ...


class WebhookApp:
    """WSGI app of the webhook listener."""

    def __init__(self, config: Callable[[], WebhookConfig | None], sink: WebhookSink):
        self._config = config
        self._sink = sink

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        if path in ("/-/healthy", "/-/ready") and method in ("GET", "HEAD"):
            return _answer(start_response, "200 OK", {"status": "ok"})
        config = self._config()
        if config is None or not (path == "/webhook" or path.startswith("/webhook/")):
            return self._reject(start_response, "not_found", "404 Not Found")
        if method != "POST":
            return self._reject(
                start_response, "method_not_allowed", "405 Method Not Allowed", [("Allow", "POST")]
            )
        if not _authorized(environ, path, config.token.reveal()):
            return self._reject(start_response, "unauthorized", "401 Unauthorized")
        length_text = environ.get("CONTENT_LENGTH") or ""
        if not length_text.isascii() or not length_text.isdigit():
            return self._reject(start_response, "length_required", "411 Length Required")
        length = int(length_text)
        if length > config.max_body_bytes:
            return self._reject(start_response, "too_large", "413 Content Too Large")
        body = environ["wsgi.input"].read(length)
        try:
            event = parse_event(body)
        except WebhookError as exc:
            status = "400 Bad Request" if exc.reason == "bad_json" else "422 Unprocessable Content"
            return self._reject(start_response, exc.reason, status)
        workflow_id = event.workflow_id
        if workflow_id is None and event.run_id is not None:
            workflow_id = self._sink.workflow_of_run(event.run_id)
            event = WebhookEvent(**{**event.__dict__, "workflow_id": workflow_id})
        if workflow_id is not None and not self._sink.known_workflow(workflow_id):
            adopted = config.accept_unknown_workflows and self._sink.adopt_workflow(workflow_id)
            if not adopted:
                return self._reject(start_response, "unknown_workflow", "422 Unprocessable Content")
        if workflow_id is None and event.event_type != CREDIT_LIMIT:
            return self._reject(start_response, "unknown_workflow", "422 Unprocessable Content")
        self._sink.apply_webhook(event)
        self._sink.webhook_accepted(event.event_type)
        return _answer(start_response, "202 Accepted", {"status": "accepted"})

    def _reject(
        self,
        start_response: StartResponse,
        reason: str,
        status: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        self._sink.webhook_rejected(reason)
        log.debug("webhook rejected reason=%s", reason)
        return _answer(start_response, status, {"status": "rejected", "reason": reason}, headers)


def _authorized(environ: dict[str, Any], path: str, token: str) -> bool:
    given = path[len("/webhook/") :] if path.startswith("/webhook/") else ""
    if not given:
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer ") :].strip()
    # compare_digest on bytes: constant time whatever the input, and no error on non-ASCII
    return bool(token) and hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def _answer(
    start_response: StartResponse,
    status: str,
    body: dict[str, str],
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *(headers or []),
        ],
    )
    return [payload]


class WebhookRegistrar:
    """Registers the exporter's own webhooks with the API at start and removes them at
    shutdown (webhooks.register). Registrations left by an earlier run that died are
    found by URL and adopted instead of duplicated."""

    MAX_LIST_PAGES = 100

    def __init__(
        self,
        client: Any,
        registration: WebhookRegistration,
        token: str,
        workflow_ids: list[str],
    ):
        self._client = client
        self._registration = registration
        self.url = registration.public_url.rstrip("/") + "/" + token
        self._workflow_ids = workflow_ids
        self.ids: list[str] = []

    def run(self, stop: threading.Event, every: float = 300.0, retry: float = 30.0) -> None:
        """Keep the registrations in place until `stop`: register at start, retry soon
        after a failure, and check now and then that they still exist (an API-side
        cleanup or a restarted simulator loses them)."""
        while not stop.is_set():
            complete = self.register()
            if stop.wait(every if complete else retry):
                return

    def register(self) -> bool:
        """Make sure every wanted registration exists. True if all of them do."""
        try:
            existing = self._existing()
        except ApiError as exc:
            log.error("cannot list webhook registrations: %s; retrying later", exc)
            return False
        self.ids = []
        complete = True
        scopes: list[str | None] = (
            list(self._workflow_ids) if self._registration.per_workflow else [None]
        )
        for event_type in self._registration.event_types:
            for workflow_id in scopes:
                found = existing.get((event_type, workflow_id))
                if found is not None:
                    self.ids.append(found)
                    continue
                try:
                    hook = self._client.register_webhook(self.url, event_type, workflow_id)
                except ApiError as exc:
                    log.error(
                        "webhook registration failed event_type=%s workflow_id=%s: %s",
                        event_type,
                        workflow_id or "*",
                        exc,
                    )
                    complete = False
                    continue
                self.ids.append(hook.id)
                log.info(
                    "webhook registered event_type=%s workflow_id=%s",
                    event_type,
                    workflow_id or "*",
                )
        return complete

    def _existing(self) -> dict[tuple[str, str | None], str]:
        """Our registrations by (event type, workflow or None for workspace-wide). Extra
        copies of one (left by an older version that did not recognise a workspace-wide
        registration echoed with workflowId "") are removed."""
        found: dict[tuple[str, str | None], str] = {}
        extra: list[str] = []
        seen = 0
        for page in range(self.MAX_LIST_PAGES):
            total, hooks = self._client.list_webhooks(page=page, size=100)
            for hook in hooks:
                if hook.url != self.url:
                    continue
                scope = (hook.event_type, hook.workflow_id)
                if scope in found:
                    extra.append(hook.id)
                else:
                    found[scope] = hook.id
            seen += len(hooks)
            if not hooks or seen >= total:
                break
        for webhook_id in extra:
            try:
                self._client.delete_webhook(webhook_id)
                log.info("duplicate webhook registration removed id=%s", webhook_id)
            except ApiError as exc:
                log.warning("duplicate webhook registration not removed id=%s: %s", webhook_id, exc)
        return found

    def deregister(self) -> None:
        removed = 0
        for webhook_id in self.ids:
            try:
                self._client.delete_webhook(webhook_id)
                removed += 1
            except ApiError as exc:
                log.warning("webhook not removed id=%s: %s", webhook_id, exc)
        log.info("webhooks removed count=%d", removed)
        self.ids = []
