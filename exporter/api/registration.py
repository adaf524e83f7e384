"""The exporter's own webhook registrations with the API (webhooks.register): made at
start, kept in place, removed at shutdown."""

from __future__ import annotations

import logging
import threading
from typing import Any

from exporter.api.errors import ApiError
from exporter.config import WebhookRegistration

log = logging.getLogger(__name__)


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
