"""The webhook receiver: Copy.ai POSTs run events here, on a listener of its own.

Deliveries are not signed, so the URL carries a secret token (`/webhook/<token>`, or
the token in an `Authorization: Bearer` header), compared in constant time. Bodies
are size-capped before they are read. Every rejection is counted by reason, every
accepted event by type."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from exporter.api.deliveries import CREDIT_LIMIT, WebhookError, WebhookEvent, parse_event
from exporter.config import WebhookConfig

log = logging.getLogger(__name__)


StartResponse = Callable[..., Any]


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

    def __init__(
        self,
        config: Callable[[], WebhookConfig | None],
        sink: WebhookSink,
        attribution: Callable[[], tuple[str, ...]] = lambda: (),
    ):
        """`attribution`: the attribution keys whose values a delivery's run carries."""
        self._config = config
        self._sink = sink
        self._attribution = attribution

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
            event = parse_event(body, self._attribution())
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
