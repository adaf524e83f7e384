"""Leader election, the leader's loop applying observations, and every replica's mirror
of the history the leader commits; `RedisStore` is the StateStore of a replica."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from exporter.api.records import Run, RunStatus
from exporter.replication.backend import LeadershipLostError, RedisBackend
from exporter.tracking.book import HistoryBook
from exporter.tracking.health import ApiHealth
from exporter.tracking.observations import (
    Applier,
    MessageError,
    Observation,
    from_json,
    to_json,
)
from exporter.tracking.persistence import Change, Loaded, StateError
from exporter.tracking.runs import RunStore

log = logging.getLogger(__name__)


class RedisStore:
    """The StateStore of a replica: only the leader writes, in fenced transactions."""

    persistent = True

    def __init__(self, backend: RedisBackend, coordinator: Coordinator):
        self._backend = backend
        self._coordinator = coordinator

    def load(self) -> Loaded:
        try:
            loaded, last_id, epoch = self._backend.load_all()
        except StateError:
            return {}  # Redis not there yet: the coordinator loads when it is
        self._coordinator.mark_synced(last_id, epoch)
        return loaded

    def save(self, changes: list[Change]) -> None:
        coordinator = self._coordinator
        if not coordinator.is_leader:
            return  # followers never write; their changes come from the leader
        applied = coordinator.pending_applied
        try:
            self._backend.commit(changes, applied, [], coordinator.epoch_to_write())
        except LeadershipLostError:
            coordinator.lost_leadership()
            return
        coordinator.committed(applied)

    def delete_workflows(self, workflow_ids: list[str]) -> None:
        if self._coordinator.is_leader:
            try:
                self._backend.commit([], None, workflow_ids)
            except LeadershipLostError:
                self._coordinator.lost_leadership()

    def close(self) -> None:
        self._coordinator.stop()
        self._backend.close()


class Coordinator:
    """Leader election, the leader's observation loop, and every replica's mirror."""

    def __init__(
        self,
        backend: RedisBackend,
        lease_seconds: float,
        *,
        health: ApiHealth,
        writer_lock: threading.RLock,
    ):
        self.backend = backend
        self._lease_ms = int(lease_seconds * 1000)
        self._health = health
        self._writer_lock = writer_lock  # held while applying and committing (CODING.md)
        self._book: HistoryBook | None = None  # what start() is given
        self._runs: RunStore | None = None
        self._applier: Applier | None = None
        self.is_leader = False
        self.pending_applied: str | None = None
        self._applied = "0-0"
        self._synced: str | None = None  # None: the next sync is a full load
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.epoch: str | None = None  # of the shared state this replica mirrors
        self._reseed = False  # Redis lost its state: the leader writes it back
        self.shared_up: int | None = None
        self.shared_refresh: float | None = None
        self._published_at = 0.0

    # --- lifecycle -------------------------------------------------------------------

    def start(self, book: HistoryBook, runs: RunStore, applier: Applier) -> None:
        """Follow the shared state into `book` and `runs` (the configured runs' series),
        and, while leading, apply observations with `applier`. The book reads its store,
        which is this coordinator's, so it can only be given here, after both exist."""
        self._book, self._runs, self._applier = book, runs, applier
        self._thread = threading.Thread(target=self._run, name="copyai-coordinator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.is_leader:  # let a successor take over at once instead of after the lease
            with contextlib.suppress(StateError):
                self.backend.call(
                    "leader release",
                    lambda: self.backend.client.eval(
                        "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                        "return redis.call('DEL', KEYS[1]) end return 0",
                        1,
                        self.backend.key("leader"),
                        self.backend.replica,
                    ),
                )
            self.is_leader = False

    def _run(self) -> None:
        renew_every = self._lease_ms / 3000.0
        next_renewal = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_renewal:
                    self._elect()
                    next_renewal = now + renew_every
                self.sync()
                self._share_health()
                if self.is_leader:
                    self._consume(block_ms=int(min(200, renew_every * 1000)))
                else:
                    self._stop.wait(min(0.5, renew_every))
            except StateError:
                if self.is_leader:
                    log.warning("leadership given up while Redis is unavailable")
                    self.lost_leadership()
                self._stop.wait(1.0)
            except Exception:
                log.exception("unexpected error in the replica coordinator")
                self._stop.wait(1.0)

    # --- leadership ------------------------------------------------------------------

    def _elect(self) -> None:
        held = self.backend.hold_leadership(self._lease_ms)
        if held and not self.is_leader:
            self._full_sync()
            applied = self.backend.applied()
            if self._reseed and applied == "0-0":
                applied = self._applied  # the stream restarted: keep our place
            self._applied = applied
            self.pending_applied = None
            self.is_leader = True
            log.info("this replica now leads replica=%s", self.backend.replica)
            if self._reseed:
                self._write_back()
        elif not held and self.is_leader:
            self.lost_leadership()

    def lost_leadership(self) -> None:
        if self.is_leader:
            log.warning("this replica lost the lead; reloading shared state")
        self.is_leader = False
        self.pending_applied = None
        self._synced = None  # local changes may not have been committed: start over

    def _consume(self, block_ms: int) -> None:
        cursor = self.pending_applied or self._applied
        items = self.backend.read_observations(cursor, block_ms)
        if not items:
            return
        with self._writer_lock:
            if not self.is_leader:
                return
            for _entry_id, data in items:
                try:
                    message = from_json(data)
                except MessageError as exc:
                    log.warning("observation skipped: %s: %.200r", exc, data)
                    continue
                try:
                    self._applier.apply(message)  # type: ignore[union-attr]
                except Exception:
                    log.exception("observation not applied: %.200r", data)
            self.pending_applied = items[-1][0]
            self._book.flush()  # type: ignore[union-attr]

    def committed(self, applied: str | None) -> None:
        if applied is not None and applied == self.pending_applied:
            self._applied = applied
            self.pending_applied = None

    # --- mirror ----------------------------------------------------------------------

    def mark_synced(self, last_id: str, epoch: str | None) -> None:
        self._synced = last_id
        self.epoch = epoch

    def epoch_to_write(self) -> str | None:
        """Every commit names the epoch, so a Redis that lost its data gets one again."""
        if self.epoch is None:
            self.epoch = uuid.uuid4().hex
        return self.epoch

    def _write_back(self) -> None:
        """Redis came back empty (restarted without persistence): the new leader writes
        its complete copy of the history back, under the same epoch, so every counter
        carries on instead of restarting from zero."""
        log.warning("Redis lost the shared state; writing this replica's copy back")
        book = self._book
        assert book is not None
        with self._writer_lock:
            for history in book.all():
                history.mark_dirty()
            self.pending_applied = self._applied
            book.flush()
        self._reseed = False

    def sync(self) -> None:
        """Catch up with what the leader committed (a full load if too far behind)."""
        with self._sync_lock:
            if self._book is None:
                return  # not started yet
            if self._synced is None:
                self._full_sync_locked()
                return
            if self.epoch is None:  # learn it once the leader has written one
                value = self.backend.call(
                    "epoch", lambda: self.backend.client.get(self.backend.key("epoch"))
                )
                self.epoch = value.decode() if value else None
            entries = self.backend.read_changes(self._synced)
            if entries is None:
                self._full_sync_locked()
                return
            for entry_id, fields in entries:
                workflow_id = fields.get(b"wf", b"").decode()
                if fields.get(b"deleted"):
                    self._synced = entry_id
                    continue
                meta_text = fields.get(b"meta", b"")
                meta = json.loads(meta_text) if meta_text else None
                runs = json.loads(fields.get(b"runs", b"[]"))
                removed = json.loads(fields.get(b"removed", b"[]"))
                self._mirror(workflow_id, meta, runs, removed)
                self._synced = entry_id

    def _full_sync(self) -> None:
        with self._sync_lock:
            self._full_sync_locked()

    def _full_sync_locked(self) -> None:
        loaded, last_id, epoch = self.backend.load_all()
        if epoch is None and self.epoch is not None:
            # Redis has nothing (it restarted without persistence): keep what we show
            # and let the leader write it back, instead of dropping every counter to 0
            self._reseed = True
            self._synced = last_id
            return
        self._reload(loaded)
        self._synced = last_id
        self.epoch = epoch

    def _mirror(
        self,
        workflow_id: str,
        meta: dict[str, Any] | None,
        runs: list[dict[str, Any]],
        removed: list[str],
    ) -> None:
        """A change the leader committed: into this replica's history (the leader's own
        is already current) and into the configured runs' per-run series."""
        if not self.is_leader:
            self._book.apply_remote(workflow_id, meta, runs, removed)  # type: ignore[union-attr]
        for record in runs:
            if record.get("pinned"):
                self._mirror_configured(workflow_id, record)

    def _reload(self, loaded: Loaded) -> None:
        self._book.reset_from(loaded)  # type: ignore[union-attr]
        for workflow_id, (_meta, runs) in loaded.items():
            for record in runs:
                if record.get("pinned"):
                    self._mirror_configured(workflow_id, record)

    def _mirror_configured(self, workflow_id: str, record: dict[str, Any]) -> None:
        """A configured run as the shared history has it (another replica may have
        fetched it): its status and fetch outcome for its per-run series."""
        status = record.get("status")
        run = None
        if status is not None:
            run = Run(
                run_id=record["run_id"],
                status=RunStatus.parse(status),
                created_at=record.get("created_at"),
                credits=record.get("credits"),
                raw_status=status,
            )
        self._runs.mirror(  # type: ignore[union-attr]
            (workflow_id, record["run_id"]), run, record.get("fetch_ok"), record.get("fetch_error")
        )

    # --- observations from this replica ----------------------------------------------

    def submit(self, messages: list[Observation]) -> None:
        """The leader applies what it learns itself; the others send it to the leader."""
        if not messages:
            return
        with self._writer_lock:
            if self.is_leader:
                for message in messages:
                    self._applier.apply(message)  # type: ignore[union-attr]
                return
        self.backend.push_observations([to_json(m) for m in messages])

    # --- copyai_up, the same on every replica ----------------------------------------

    def _share_health(self) -> None:
        health = self._health
        up, at, refresh = health.up, health.changed_at, health.last_successful_refresh
        if at > self._published_at:
            self.backend.publish_health(up, at, refresh)
            self._published_at = at
        self.shared_up, self.shared_refresh = self.backend.read_health()
