"""Where workflow history survives restarts: nowhere (memory), or an SQLite file.

SQLite in WAL mode commits each flush as one transaction, so a kill -9 in the middle
of a write leaves the previous complete state, never a torn one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from typing import Any, Protocol

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
Change = tuple[str, dict[str, Any] | None, list[dict[str, Any]], list[str]]
Loaded = dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]


class StateError(Exception):
    """The state store cannot be used (unreadable file, wrong schema, I/O error)."""


class StateStore(Protocol):
    persistent: bool  # False: save() keeps nothing, so no record need be built for it

    def load(self) -> Loaded: ...

    def save(self, changes: list[Change]) -> None: ...

    def delete_workflows(self, workflow_ids: list[str]) -> None: ...

    def close(self) -> None: ...


class MemoryStore:
    """No persistence: a restart starts every workflow's history afresh."""

    persistent = False

    def load(self) -> Loaded:
        return {}

    def save(self, changes: list[Change]) -> None:
        pass

    def delete_workflows(self, workflow_ids: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


class SqliteStore:
    persistent = True

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.executescript(
                    """
                    BEGIN;
                    CREATE TABLE workflows (workflow_id TEXT PRIMARY KEY, data TEXT NOT NULL);
                    CREATE TABLE runs (
                        workflow_id TEXT NOT NULL,
                        run_id TEXT NOT NULL,
                        data TEXT NOT NULL,
                        PRIMARY KEY (workflow_id, run_id)
                    ) WITHOUT ROWID;
                    INSERT INTO meta VALUES ('schema_version', '1');
                    COMMIT;
                    """
                )
            elif row[0] != str(SCHEMA_VERSION):
                raise StateError(f"state file {path} has schema version {row[0]}, expected 1")
        except (sqlite3.Error, ValueError, OSError) as exc:
            raise StateError(f"cannot use state file {path}: {exc}") from None

    def load(self) -> Loaded:
        loaded: Loaded = {}
        with self._lock:
            try:
                for workflow_id, data in self._db.execute(
                    "SELECT workflow_id, data FROM workflows"
                ):
                    loaded[workflow_id] = (json.loads(data), [])
                for workflow_id, data in self._db.execute("SELECT workflow_id, data FROM runs"):
                    if workflow_id in loaded:
                        loaded[workflow_id][1].append(json.loads(data))
            except (sqlite3.Error, ValueError) as exc:
                raise StateError(f"cannot read state file {self.path}: {exc}") from None
        return loaded

    def save(self, changes: list[Change]) -> None:
        if not changes:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for workflow_id, meta, runs, removed in changes:
                    if meta is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO workflows VALUES (?, ?)",
                            (workflow_id, json.dumps(meta)),
                        )
                    self._db.executemany(
                        "INSERT OR REPLACE INTO runs VALUES (?, ?, ?)",
                        [(workflow_id, r["run_id"], json.dumps(r)) for r in runs],
                    )
                    self._db.executemany(
                        "DELETE FROM runs WHERE workflow_id = ? AND run_id = ?",
                        [(workflow_id, run_id) for run_id in removed],
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StateError(f"cannot write state file {self.path}: {exc}") from None

    def delete_workflows(self, workflow_ids: list[str]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for workflow_id in workflow_ids:
                    self._db.execute("DELETE FROM workflows WHERE workflow_id = ?", (workflow_id,))
                    self._db.execute("DELETE FROM runs WHERE workflow_id = ?", (workflow_id,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StateError(f"cannot write state file {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
