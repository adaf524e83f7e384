"""Several replicas sharing state and the API budget through Redis (state.backend: redis).

How the work is shared:
- **One writer.** The replica holding the leader lease (`<prefix>leader`, renewed every
  third of state.redis.lease_seconds) is the only one that changes workflow history.
  Every other replica, and the leader itself, sends what it learns (a fetched run, a
  failed fetch, a webhook) as an *observation* to a Redis stream; the leader applies
  observations in order and commits the result, together with the id of the last
  observation applied, in one MULTI/EXEC guarded by WATCH on the leader key. A leader
  that lost its lease cannot commit (fencing); its successor resumes from the last
  applied id, so nothing is applied twice or lost.
- **Work spread by leases.** A per-run fetch is done by whichever replica first takes
  its lease (SET NX PX until the run is due again); the others skip it. Discovery cycles
  (page-sequential by nature) and the API check run on the leader.
- **Everyone exports the same values.** Each commit is appended to a changes stream;
  every replica applies it to its own copy of the history (its mirror) at each scrape,
  or reloads everything if it fell behind the stream's trimmed start.
- **One API budget.** The client-side rate limit and a 429's Retry-After pause are a
  token bucket in Redis (GCRA in Lua), shared by all replicas.

When Redis is unreachable every replica keeps serving its last known data, reports
copyai_state_backend_up 0, makes no API calls (leases cannot be taken) and changes no
counter; when Redis returns, mirrors catch up from the streams.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from exporter.client import ApiError, ErrorKind
from exporter.config import RedisConfig
from exporter.model import Run
from exporter.persistence import Change, Loaded, StateError
from exporter.refresh import _TRACKED, Refresher, Task, _is_run_key
from exporter.state import Batch, RunKey

log = logging.getLogger(__name__)

CHANGES_MAXLEN = 50_000
OBS_MAXLEN = 200_000
OBS_BATCH = 500

# Renew the lease only if we still hold it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# GCRA over a shared "theoretical arrival time" (ms); also honours a shared pause.
# Returns the wait in ms before the caller may send, or -1 if that exceeds the max.
_RATE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local base = math.max(tat, now - (burst - 1) * interval)
local ready = math.max(base, paused)
local slot = math.max(ready, now)
if slot - now > max_wait then return -1 end
if interval > 0 then
  redis.call('SET', KEYS[1], ready + interval, 'PX', math.floor(burst * interval + 60000))
end
return slot - now
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


class RedisBackend:
    """Every Redis operation the exporter makes, each raising StateError on failure."""

    def __init__(self, config: RedisConfig, replica: str | None = None):
        try:
            import redis  # noqa: PLC0415 - optional: pip install 'copyai-exporter[redis]'
        except ImportError:
            raise StateError(
                "state.backend redis needs the redis package: pip install 'copyai-exporter[redis]'"
            ) from None
        self._redis_module = redis
        self.prefix = config.key_prefix
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.client = redis.Redis.from_url(
            config.url,
            password=config.password.reveal() or None,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            health_check_interval=10,
            decode_responses=False,
        )
        self._renew = self.client.register_script(_RENEW)
        self._rate = self.client.register_script(_RATE)
        self.up = 0
        self._lock = threading.Lock()

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def call(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except self._redis_module.RedisError as exc:
            if self.up:
                log.error(
                    "Redis unavailable during %s: %s (serving last known data)",
                    what,
                    type(exc).__name__,
                )
            self.up = 0
            raise StateError(f"Redis: {type(exc).__name__} during {what}") from None
        if not self.up:
            log.info("Redis available replica=%s", self.replica)
        self.up = 1
        return result

    # --- leadership ------------------------------------------------------------------

    def hold_leadership(self, lease_ms: int) -> bool:
        key = self.key("leader")

        def attempt() -> bool:
            if self.client.set(key, self.replica, nx=True, px=lease_ms):
                return True
            return bool(self._renew(keys=[key], args=[self.replica, lease_ms]))

        return bool(self.call("leader lease", attempt))

    def leader(self) -> str | None:
        value = self.call("leader lookup", lambda: self.client.get(self.key("leader")))
        return value.decode() if value else None

    # --- leases on pieces of work ----------------------------------------------------

    def take_leases(self, names: list[str], ttl_ms: int) -> list[bool]:
        if not names:
            return []

        def attempt() -> list[bool]:
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.set(self.key("lease", name), self.replica, nx=True, px=max(1, ttl_ms))
            return [bool(r) for r in pipe.execute()]

        return self.call("work leases", attempt)

    # --- observations ----------------------------------------------------------------

    def push_observations(self, items: list[dict[str, Any]]) -> None:
        if not items:
            return

        def attempt() -> None:
            pipe = self.client.pipeline(transaction=False)
            for item in items:
                pipe.xadd(
                    self.key("obs"), {"o": json.dumps(item)}, maxlen=OBS_MAXLEN, approximate=True
                )
            pipe.execute()

        self.call("observation", attempt)

    def read_observations(self, after: str, block_ms: int) -> list[tuple[str, dict[str, Any]]]:
        def attempt():
            return self.client.xread({self.key("obs"): after}, count=OBS_BATCH, block=block_ms)

        answer = self.call("observations", attempt) or []
        items = []
        for _stream, entries in answer:
            for entry_id, fields in entries:
                try:
                    items.append((entry_id.decode(), json.loads(fields[b"o"])))
                except (KeyError, ValueError):
                    items.append((entry_id.decode(), {}))
        return items

    def applied(self) -> str:
        value = self.call("applied id", lambda: self.client.get(self.key("applied")))
        return value.decode() if value else "0-0"

    # --- committed state -------------------------------------------------------------

    def commit(
        self,
        changes: list[Change],
        applied: str | None,
        deleted: list[str],
        epoch: str | None = None,
    ) -> None:
        """Write the leader's changes atomically, only while it still holds the lease."""
        redis = self._redis_module

        def attempt() -> None:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.watch(self.key("leader"))
                holder = pipe.get(self.key("leader"))
                if holder is None or holder.decode() != self.replica:
                    pipe.unwatch()
                    raise LeadershipLostError
                pipe.multi()
                for workflow_id, meta, runs, removed in changes:
                    runs_key = self.key("wf", workflow_id, "runs")
                    if meta is not None:
                        pipe.set(self.key("wf", workflow_id, "meta"), json.dumps(meta))
                        pipe.sadd(self.key("workflows"), workflow_id)
                    if runs:
                        pipe.hset(runs_key, mapping={r["run_id"]: json.dumps(r) for r in runs})
                    if removed:
                        pipe.hdel(runs_key, *removed)
                    pipe.xadd(
                        self.key("changes"),
                        {
                            "wf": workflow_id,
                            "meta": json.dumps(meta) if meta is not None else "",
                            "runs": json.dumps(runs),
                            "removed": json.dumps(removed),
                        },
                        maxlen=CHANGES_MAXLEN,
                        approximate=True,
                    )
                for workflow_id in deleted:
                    pipe.delete(self.key("wf", workflow_id, "meta"))
                    pipe.delete(self.key("wf", workflow_id, "runs"))
                    pipe.srem(self.key("workflows"), workflow_id)
                    pipe.xadd(
                        self.key("changes"),
                        {"wf": workflow_id, "deleted": "1"},
                        maxlen=CHANGES_MAXLEN,
                        approximate=True,
                    )
                if applied is not None:
                    pipe.set(self.key("applied"), applied)
                if epoch is not None:
                    pipe.set(self.key("epoch"), epoch)
                try:
                    pipe.execute()
                except redis.WatchError:
                    raise LeadershipLostError from None

        self.call("commit", attempt)

    def load_all(self) -> tuple[Loaded, str, str | None]:
        """Everything committed, the changes-stream id it is current as of, and the epoch
        (None when Redis holds no state: new, or restarted without persistence)."""

        def attempt() -> tuple[Loaded, str, str | None]:
            epoch = self.client.get(self.key("epoch"))
            last = self.client.xrevrange(self.key("changes"), count=1)
            last_id = last[0][0].decode() if last else "0-0"
            loaded: Loaded = {}
            for raw in self.client.smembers(self.key("workflows")):
                workflow_id = raw.decode()
                meta = self.client.get(self.key("wf", workflow_id, "meta"))
                if meta is None:
                    continue
                runs = self.client.hgetall(self.key("wf", workflow_id, "runs"))
                loaded[workflow_id] = (json.loads(meta), [json.loads(v) for v in runs.values()])
            return loaded, last_id, epoch.decode() if epoch else None

        return self.call("full load", attempt)

    def read_changes(self, after: str) -> list[tuple[str, dict[bytes, bytes]]] | None:
        """Changes after `after`; None if the stream no longer reaches back that far."""

        def attempt():
            if self.client.exists(self.key("changes")):
                info = self.client.xinfo_stream(self.key("changes"))
                deleted = info.get("max-deleted-entry-id", b"0-0")
                deleted = deleted.decode() if isinstance(deleted, bytes) else str(deleted)
                if _id_lt(after, deleted):
                    return None  # trimmed past what we have seen
            return self.client.xrange(self.key("changes"), min=f"({after}", count=10_000)

        entries = self.call("changes", attempt)
        if entries is None:
            return None
        return [(entry_id.decode(), fields) for entry_id, fields in entries]

    # --- health shared by replicas ---------------------------------------------------

    def publish_health(self, up: int, at: float, last_refresh: float | None) -> None:
        """This replica's verdict, kept only if it is newer than the shared one."""

        def attempt() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.eval(
                "local v = tonumber(redis.call('HGET', KEYS[1], 'at') or '0') "
                "if tonumber(ARGV[2]) > v then "
                "redis.call('HSET', KEYS[1], 'up', ARGV[1], 'at', ARGV[2]) end",
                1,
                self.key("health"),
                up,
                at,
            )
            if last_refresh is not None:
                pipe.eval(
                    "local v = tonumber(redis.call('HGET', KEYS[1], 'refresh') or '0') "
                    "if tonumber(ARGV[1]) > v then "
                    "redis.call('HSET', KEYS[1], 'refresh', ARGV[1]) end",
                    1,
                    self.key("health"),
                    last_refresh,
                )
            pipe.execute()

        self.call("health", attempt)

    def read_health(self) -> tuple[int | None, float | None]:
        values = self.call("health", lambda: self.client.hgetall(self.key("health")))
        up = int(values[b"up"]) if b"up" in values else None
        refresh = float(values[b"refresh"]) if b"refresh" in values else None
        return up, refresh

    # --- the shared API budget -------------------------------------------------------

    def rate_wait(self, rate: float, max_wait: float) -> float | None:
        interval = 1000.0 / rate if rate > 0 else 0.0
        burst = max(1, math.floor(rate)) if rate > 0 else 1
        result = self.call(
            "rate limit",
            lambda: self._rate(
                keys=[self.key("rate"), self.key("rate", "pause")],
                args=[_now_ms(), interval, burst, int(max_wait * 1000)],
            ),
        )
        return None if result is None or float(result) < 0 else float(result) / 1000.0

    def pause_until(self, until: float) -> None:
        ms = int(until * 1000)
        self.call(
            "rate pause",
            lambda: self.client.eval(
                "local v = tonumber(redis.call('GET', KEYS[1]) or '0') "
                "if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1], 'PX', "
                "math.max(1, tonumber(ARGV[1]) - tonumber(ARGV[2]))) end",
                1,
                self.key("rate", "pause"),
                ms,
                _now_ms(),
            ),
        )

    def paused_for(self) -> float:
        value = self.call("rate pause", lambda: self.client.get(self.key("rate", "pause")))
        return max(0.0, int(value) / 1000.0 - time.time()) if value else 0.0

    def close(self) -> None:
        self.client.close()


class LeadershipLostError(Exception):
    """The lease expired or another replica holds it: this replica must not write."""


def _id_lt(a: str, b: str) -> bool:
    ams, aseq = (int(x) for x in a.split("-"))
    bms, bseq = (int(x) for x in b.split("-"))
    return (ams, aseq) < (bms, bseq)


class SharedRateLimiter:
    """The client's rate limiter, with the bucket and the 429 pause in Redis."""

    def __init__(self, backend: RedisBackend, rate: float, sleep: Callable[[float], None]):
        self._backend = backend
        self._rate = rate
        self._sleep = sleep

    def acquire(self, max_wait: float) -> bool:
        try:
            wait = self._backend.rate_wait(self._rate, max_wait)
        except StateError:
            return False  # no shared budget, no request: Redis is down
        if wait is None:
            return False
        if wait > 0:
            self._sleep(wait)
        return True

    def pause_for(self, seconds: float) -> None:
        with contextlib.suppress(StateError):  # no Redis: no requests either
            self._backend.pause_until(time.time() + seconds)

    def paused_for(self) -> float:
        try:
            return self._backend.paused_for()
        except StateError:
            return 0.0


class RedisStore:
    """The StateStore of a replica: only the leader writes, in fenced transactions."""

    name = "redis"
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
        apply: Callable[[dict[str, Any]], None],
        mirror: Callable[[str, dict[str, Any] | None, list[dict[str, Any]], list[str]], None],
        reload: Callable[[Loaded], None],
        flush: Callable[[], None],
        mark_all_dirty: Callable[[], None],
        writer_lock: threading.RLock,
        health: Callable[[], tuple[int, float, float | None]],
    ):
        self.backend = backend
        self._lease_ms = int(lease_seconds * 1000)
        self._apply = apply
        self._mirror = mirror
        self._reload = reload
        self._flush = flush
        self._mark_all_dirty = mark_all_dirty
        self._writer_lock = writer_lock
        self._health = health
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

    def start(self) -> None:
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
            for _entry_id, observation in items:
                try:
                    self._apply(observation)
                except Exception:
                    log.exception("observation not applied: %.200r", observation)
            self.pending_applied = items[-1][0]
            self._flush()

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
        with self._writer_lock:
            self._mark_all_dirty()
            self.pending_applied = self._applied
            self._flush()
        self._reseed = False

    def sync(self) -> None:
        """Catch up with what the leader committed (a full load if too far behind)."""
        with self._sync_lock:
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

    # --- observations from this replica ----------------------------------------------

    def submit(self, observations: list[dict[str, Any]]) -> None:
        """The leader applies what it learns itself; the others send it to the leader."""
        if not observations:
            return
        with self._writer_lock:
            if self.is_leader:
                for observation in observations:
                    self._apply(observation)
                return
        self.backend.push_observations(observations)

    # --- copyai_up, the same on every replica ----------------------------------------

    def _share_health(self) -> None:
        up, at, refresh = self._health()
        if at > self._published_at:
            self.backend.publish_health(up, at, refresh)
            self._published_at = at
        self.shared_up, self.shared_refresh = self.backend.read_health()


class SharedRefresher(Refresher):
    """The refresher of a replica: per-run fetches go to whoever takes the lease first,
    discovery and the API check to the leader, and what is learnt to the leader."""

    def __init__(self, *args: Any, coordinator: Coordinator, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._shared = coordinator

    def _before_refresh(self) -> None:
        with contextlib.suppress(StateError):  # no Redis: serve the mirror as it is
            self._shared.sync()

    def _plan(self, now: float, wall: float):
        interval = self._due_age
        candidates: list[tuple[Any, str, Task]] = []
        waiting: list[Any] = []
        for state in self._store.snapshot():
            if state.key in self._in_flight:
                waiting.append(self._in_flight[state.key])
            elif state.run is None or not state.run.terminal:
                candidates.append(
                    (
                        state.key,
                        f"run:{state.workflow_id}:{state.run_id}",
                        self._fetch_configured_task(state.key),
                    )
                )
        for history in self._book.all():
            workflow = self._config.workflow(history.workflow_id)
            listed = set(workflow.runs) if workflow is not None else set()
            for run_id in history.due_for_fetch(wall, interval, listed):
                key = (_TRACKED, history.workflow_id, run_id)
                if key not in self._in_flight:
                    candidates.append(
                        (
                            key,
                            f"run:{history.workflow_id}:{run_id}",
                            self._fetch_tracked_task(history.workflow_id, run_id),
                        )
                    )
        try:
            taken = self._shared.backend.take_leases(
                [name for _, name, _ in candidates], int(max(0.1, interval) * 1000)
            )
        except StateError:
            taken = [False] * len(candidates)  # no Redis, no coordination: no API calls
        work = [(key, task) for (key, _, task), got in zip(candidates, taken, strict=True) if got]
        if self._shared.is_leader:
            work.extend(self._discovery_work(wall, waiting))
        return work, waiting

    def _probe_due(self, now: float) -> bool:
        return self._shared.is_leader and super()._probe_due(now)

    def _submit(self, observation: dict[str, Any]) -> None:
        try:
            self._shared.submit([observation])
        except StateError:
            log.debug("observation dropped: Redis unavailable")

    def _fetch_configured_task(self, key: RunKey) -> Task:
        def task(batch: Batch) -> ApiError | None:
            when = self._wall_clock()
            try:
                run = self._client.get_run(*key)
            except ApiError as exc:
                error = exc.with_traceback(None)
                self._report_failure(key, error)
                return error
            self._store.record_success(key, run, self._clock())
            self._submit(run_observation(key[0], run, when, pinned=True))
            return None

        return task

    def _report_failure(self, key: Any, error: ApiError) -> None:
        super()._report_failure(key, error)  # logs once per change for a configured run
        if _is_run_key(key):
            observation = {
                "t": "fetch_failed",
                "wf": key[0],
                "run_id": key[1],
                "error": error.signature,
                "when": self._wall_clock(),
            }
        elif isinstance(key, tuple) and key[:1] == (_TRACKED,):
            observation = {"t": "touch", "wf": key[1], "run_id": key[2]}
            observation["when"] = self._wall_clock()
        else:
            return
        self._submit(observation)

    def _fetch_tracked(self, workflow_id: str, run_id: str) -> ApiError | None:
        when = self._wall_clock()
        try:
            run = self._client.get_run(workflow_id, run_id)
        except ApiError as exc:
            error = exc.with_traceback(None)
            kind = "drop" if error.kind == ErrorKind.NOT_FOUND else "touch"
            self._submit({"t": kind, "wf": workflow_id, "run_id": run_id, "when": when})
            return error
        self._submit(run_observation(workflow_id, run, when, pinned=False))
        return None


def run_observation(workflow_id: str, run: Run, when: float, *, pinned: bool) -> dict[str, Any]:
    """A run as one get_run showed it (`reported` false: the record had no status); for
    a listed run it also says that its fetch succeeded."""
    return {
        "t": "run",
        "wf": workflow_id,
        "run_id": run.run_id,
        "status": run.status.value,
        "reported": run.reported,
        "fetched": True,
        "raw_status": run.raw_status,
        "created_at": run.created_at,
        "credits": run.credits,
        "when": when,
        "pinned": pinned,
    }
