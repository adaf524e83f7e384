"""The history of every followed workflow (configured, or adopted from webhooks) and
its persistence: restored at start, swapped on reload, flushed after each refresh."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from exporter.config import AttributionConfig, Config, DiscoveryConfig
from exporter.tracking.history import WorkflowHistory
from exporter.tracking.persistence import Loaded, StateError, StateStore
from exporter.tracking.values import DISTRIBUTIONS

log = logging.getLogger(__name__)


MAX_ADOPTED_WORKFLOWS = 50


class HistoryBook:
    """The history of every configured workflow, and its persistence."""

    def __init__(
        self,
        store: StateStore,
        wall_clock: Callable[[], float],
        *,
        writer_lock: threading.RLock | None = None,
    ):
        """`writer_lock` is held while a batch of changes is written; replicas share it
        with their coordinator, which applies observations under it (CODING.md)."""
        self.store = store
        self._wall_clock = wall_clock
        self._lock = threading.Lock()  # the histories map and the workspace counters
        self._flush_lock = threading.Lock()
        self._deletes_lock = threading.Lock()  # the list of workflows to delete
        self._histories: dict[str, WorkflowHistory] = {}
        self._writer_lock = writer_lock or threading.RLock()
        self._buckets: dict[str, tuple[float, ...]] = {}  # per Distribution of values.py
        self._discovery: dict[str, DiscoveryConfig] = {}
        self._attribution = AttributionConfig()  # the same for every workflow
        self.backend_up = 1
        self._adopted: set[str] = set()  # unconfigured workflows tracked from webhooks
        self._pending_deletes: list[str] = []  # workflows no longer configured
        self._workspace_limit_count = 0  # credit-limit events that name no workflow
        self._workspace_limit_at: float | None = None
        self._loaded = store.load()  # StateError here stops the start, nothing is lost

    def configure(self, config: Config) -> None:
        """Follow the configured workflows: keep, restore or start each one's history."""
        buckets = {
            d.name: tuple(getattr(config.collector, d.buckets_option)) for d in DISTRIBUTIONS
        }
        now = self._wall_clock()
        self._buckets = buckets
        self._discovery = {w.id: w.discovery for w in config.workflows}
        attribution = self._attribution = config.attribution
        with self._lock:
            current = self._histories
            updated: dict[str, WorkflowHistory] = {}
            for workflow in config.workflows:
                history = current.get(workflow.id)
                if history is None and workflow.id in self._loaded:
                    meta, runs = self._loaded.pop(workflow.id)
                    history = WorkflowHistory.restore(
                        workflow.id,
                        meta,
                        runs,
                        buckets,
                        workflow.discovery,
                        attribution=attribution,
                    )
                    log.info(
                        "restored history workflow_id=%s runs=%d watched_since=%s",
                        workflow.id,
                        len(history.runs),
                        int(history.watch_start),
                    )
                elif history is None:
                    history = WorkflowHistory(
                        workflow.id, now, buckets, workflow.discovery, attribution
                    )
                else:
                    history.discovery_config = workflow.discovery
                    history.rebucket(buckets)
                    history.reconfigure_attribution(attribution)
                history.discovering = workflow.discover
                history.set_pinned(workflow.runs, drop_unpinned=not workflow.discover)
                updated[workflow.id] = history
            for workflow_id in self._adopted - set(updated):
                if workflow_id in current:
                    current[workflow_id].reconfigure_attribution(attribution)
                    updated[workflow_id] = current[workflow_id]
            self._adopted &= set(updated)
            removed = [wid for wid in current if wid not in updated]
            self._histories = updated
        if removed:
            with self._deletes_lock:  # written by the next flush
                self._pending_deletes.extend(removed)

    def get(self, workflow_id: str) -> WorkflowHistory | None:
        with self._lock:
            return self._histories.get(workflow_id)

    def adopt(self, workflow_id: str) -> bool:
        """Track a workflow that is not configured (webhooks.accept_unknown_workflows),
        up to MAX_ADOPTED_WORKFLOWS so label cardinality stays bounded."""
        with self._lock:
            if workflow_id in self._histories:
                return True
            if len(self._adopted) >= MAX_ADOPTED_WORKFLOWS:
                return False
            self._adopted.add(workflow_id)
            self._histories[workflow_id] = WorkflowHistory(
                workflow_id, self._wall_clock(), self._buckets, None, self._attribution
            )
        log.info("tracking unconfigured workflow from webhooks workflow_id=%s", workflow_id)
        return True

    def adopted(self) -> set[str]:
        with self._lock:
            return set(self._adopted)

    def workflow_of_run(self, run_id: str) -> str | None:
        for history in self.all():
            if history.known(run_id):
                return history.workflow_id
        return None

    def all(self) -> list[WorkflowHistory]:
        with self._lock:
            return list(self._histories.values())

    def apply_remote(
        self,
        workflow_id: str,
        meta: dict[str, Any] | None,
        runs: list[dict[str, Any]],
        removed: list[str],
    ) -> None:
        """Mirror a change another replica committed (shared state)."""
        with self._lock:
            history = self._histories.get(workflow_id)
            if history is None:
                if meta is None or workflow_id not in self._discovery:
                    return  # not ours to follow, or the meta arrives with a full load
                history = WorkflowHistory.restore(
                    workflow_id,
                    meta,
                    runs,
                    self._buckets,
                    self._discovery[workflow_id],
                    attribution=self._attribution,
                )
                self._histories[workflow_id] = history
                return
        history.apply_remote(meta, runs, removed)

    def reset_from(self, loaded: Loaded) -> None:
        """Replace every followed workflow's history with the shared copy (a full sync)."""
        with self._lock:
            for workflow_id in list(self._histories):
                if workflow_id in loaded:
                    meta, runs = loaded[workflow_id]
                    self._histories[workflow_id] = WorkflowHistory.restore(
                        workflow_id,
                        meta,
                        runs,
                        self._buckets,
                        self._discovery.get(workflow_id),
                        attribution=self._attribution,
                    )

    def credits_between(self, workflow_ids: tuple[str, ...], start: float, end: float) -> float:
        """Credits of the runs of these workflows that ended in [start, end), as a
        credit budget counts them (tracking/budgets.py)."""
        used = 0.0
        for workflow_id in workflow_ids:
            history = self.get(workflow_id)
            if history is not None:
                used += history.credits_between(start, end)
        return used

    def workspace_credit_limit_reached(self, when: float) -> None:
        with self._lock:
            self._workspace_limit_count += 1
            self._workspace_limit_at = max(self._workspace_limit_at or when, when)

    def workspace_credit_limit(self) -> tuple[int, float | None]:
        with self._lock:
            return self._workspace_limit_count, self._workspace_limit_at

    def flush(self) -> None:
        """Write what changed since the last flush, all workflows in one transaction."""
        with self._writer_lock, self._flush_lock:
            histories = self.all()
            if not self.store.persistent:
                for history in histories:  # nothing keeps it: do not build the records
                    history.discard_changes()
                return
            changes = []
            for history in histories:
                meta, runs, removed = history.take_changes()
                if meta is not None or runs or removed:
                    changes.append((history.workflow_id, meta, runs, removed))
            with self._deletes_lock:  # taken whole, so a reload meanwhile adds to a new list
                deletes, self._pending_deletes = self._pending_deletes, []
            if deletes and not self._write(lambda: self.store.delete_workflows(deletes)):
                with self._deletes_lock:  # tried again at the next flush
                    self._pending_deletes[:0] = deletes
            if changes and not self._write(lambda: self.store.save(changes)):
                removed_by = {workflow_id: removed for workflow_id, _, _, removed in changes}
                for history in histories:  # written next time instead
                    history.requeue(removed_by.get(history.workflow_id, []))

    def _write(self, action: Callable[[], None]) -> bool:
        try:
            action()
        except StateError as exc:
            if self.backend_up:
                log.error("state not saved (kept in memory, retried on the next flush): %s", exc)
            self.backend_up = 0
            return False
        if not self.backend_up:
            log.info("state saved again")
        self.backend_up = 1
        return True

    def close(self) -> None:
        self.flush()
        self.store.close()
