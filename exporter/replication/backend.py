"""Every Redis operation of replicas sharing state (state.backend: redis): leader lease,
work leases, the observations and changes streams, committed state, shared health and
the shared API budget (a GCRA token bucket in Lua)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from exporter.config import RedisConfig
from exporter.tracking.persistence import Change, Loaded, StateError

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

    def take_leases(self, names: list[str], ttls_ms: list[int]) -> list[bool]:
        """Which of these leases this replica took (each for its own time to live)."""
        if not names:
            return []

        def attempt() -> list[bool]:
            pipe = self.client.pipeline(transaction=False)
            for name, ttl_ms in zip(names, ttls_ms, strict=True):
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
