"""A fake Copy.ai API for the demo, the tests and the benchmarks.

Runs move through their statuses by the clock (a script of `(status, seconds)` steps
from `createdAt`), so answers are deterministic and nothing runs in the background.
Faults are injected at run time through `/_sim/faults`: latency, a share of 5xx (HTML
or JSON), a rate limit answered with 429 and Retry-After, refused keys, dropped
connections, and one `mode` of misbehaving answers (see `FAULT_MODES`).
`RunningSimulator.pause()` / `resume()` refuse connections and come back on the same
port. `/_sim/stats` counts the requests so tests can assert exact call counts, and
`World.arrivals()` gives each API request's arrival time so they can check pacing.

Control endpoints (no API key needed; bind to loopback):
  GET  /_sim/stats          request counts by endpoint, and per run
  POST /_sim/stats/reset
  GET  /_sim/faults         POST /_sim/faults  {"latency_seconds": 0.05, "error_rate": 0.5, ...}
                            {"mode": "hang"}, {"mode": "flap", "flap_statuses": [500, 503]}
  POST /_sim/runs           {"workflow_id": ..., "steps": [["PROCESSING", 5], ["COMPLETE", null]]}
  POST /_sim/canned         {"method": "GET", "path": "/workflow/W/run/R", "status": 200,
                             "body": {...}} (or "text" and "content_type"): answer that
                            request with exactly this; DELETE /_sim/canned forgets them all
  GET  /_sim/config         an exporter config (YAML) watching every simulated run
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import logging
import math
import random
import re
import select
import socket
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import requests
import yaml

log = logging.getLogger(__name__)

DEFAULT_API_KEY = "demo-key"
TICK_SECONDS = 0.1
TERMINAL = ("COMPLETE", "FAILED")
MAX_CONTROL_BODY = 1024 * 1024
HTML_ERROR = (
    "<html><head><title>502 Bad Gateway</title></head><body><center>"
    "<h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)
# Faults.mode: how API requests are answered (control endpoints never change)
FAULT_MODES = (
    "",  # normally
    "hang",  # read the request, never answer (until the client hangs up or stop())
    "slow_body",  # status line and headers at once, then the body a byte every 0.5 s
    "truncated_json",  # the normal answer with its body cut in half
    "wrong_shape",  # 200, valid JSON of the wrong shape
    "wrong_types",  # 200, a run record whose every field has the wrong type
    "huge_body",  # 200, a 50 MB body streamed without Content-Length
    "gzip_bomb",  # 200, ~50 KB of gzip inflating to ~50 MB
    "redirect",  # 302 to Faults.redirect_to
    "flap",  # per request, in turn: the next of Faults.flap_statuses, the normal answer
)
SLOW_BODY_BYTE_SECONDS = 0.5
HUGE_BODY_BYTES = 50 * 1024 * 1024
HUGE_BODY_CHUNK = 64 * 1024
GZIP_BOMB_BYTES = 50 * 1024 * 1024
MAX_ARRIVALS = 10_000
WRONG_SHAPE = {"status": "success", "data": [1, 2]}


def wrong_types_record() -> dict[str, Any]:
    """A run record with every field of the wrong type."""
    return {
        "id": 12345,
        "status": ["PROCESSING"],
        "createdAt": 1700000000,
        "credits": {"used": 3},
        "metadata": "not an object",
    }


_gzip_bomb: bytes | None = None
_gzip_bomb_lock = threading.Lock()


def gzip_bomb() -> bytes:
    """A gzip body inflating to a ~50 MB JSON document (a string of '0's); built once,
    a MiB at a time, so building it costs no more memory than the result (~50 KB)."""
    global _gzip_bomb  # noqa: PLW0603 - a cache of an immutable value
    with _gzip_bomb_lock:
        if _gzip_bomb is None:
            compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 16 + 15: gzip wrapper
            parts = [compressor.compress(b'{"status": "success", "data": "')]
            block = b"0" * (1024 * 1024)
            for _ in range(GZIP_BOMB_BYTES // len(block)):
                parts.append(compressor.compress(block))
            parts.append(compressor.compress(b'"}'))
            parts.append(compressor.flush())
            _gzip_bomb = b"".join(parts)
        return _gzip_bomb


class Arrival(NamedTuple):
    """One API request as it arrived: monotonic time, endpoint, run id (get_run)."""

    at: float
    method: str
    endpoint: str
    run_id: str | None


@dataclass
class SimRun:
    workflow_id: str
    run_id: str
    created_at: float  # Unix time
    steps: list[tuple[str, float | None]]  # (status, seconds in it); None = forever
    credits: int = 0
    credits_as_string: bool = False
    millis: bool = True
    omit_status: bool = False
    metadata: Any = field(default_factory=lambda: {"api": True})

    def status_at(self, now: float) -> str:
        elapsed = now - self.created_at
        for status, seconds in self.steps:
            if seconds is None or elapsed < seconds:
                return status
            elapsed -= seconds
        return self.steps[-1][0]

    def terminal_at(self, now: float) -> bool:
        return self.status_at(now) in TERMINAL

    def credits_at(self, now: float) -> int | None:
        status = self.status_at(now)
        if status in ("NEW", "WAITING"):
            return None
        if status in TERMINAL:
            return self.credits
        # grows while the run works, reaching the total when it finishes
        total = sum(s or 0 for _, s in self.steps if _ not in TERMINAL) or 1
        elapsed = min(now - self.created_at, total)
        return max(0, math.floor(self.credits * elapsed / total))

    def record(self, now: float, extras: bool = False) -> dict[str, Any]:
        """The run as the API shows it at `now`; `extras` adds the fields some answers
        carry besides the basic ones (workflowRunId, workflowId, toolKey, error)."""
        created = datetime.fromtimestamp(self.created_at, tz=UTC)
        if self.millis:
            stamp = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
        else:
            stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        record: dict[str, Any] = {
            "id": self.run_id,
            "createdAt": stamp,
            "input": {"Input 1": "simulated"},
        }
        if not self.omit_status:
            record["status"] = self.status_at(now)
        if self.metadata != "absent":
            record["metadata"] = self.metadata
        credits_used = self.credits_at(now)
        if credits_used is not None:
            record["credits"] = str(credits_used) if self.credits_as_string else credits_used
        if self.terminal_at(now):
            record["output"] = {"Output 1": "simulated output"}
        if extras:
            record["workflowRunId"] = self.run_id
            record["workflowId"] = self.workflow_id
            record["toolKey"] = "simulated-tool"
            record["error"] = "step failed" if self.status_at(now) == "FAILED" else None
        return record


@dataclass
class Faults:
    """What goes wrong, settable while the simulator runs."""

    latency_seconds: float = 0.0
    error_rate: float = 0.0  # share of API requests answered with error_status
    error_status: int = 502
    error_html: bool = True  # proxies answer 5xx with HTML
    rate_limit_per_second: float = 0.0  # 0 = unlimited; above it: 429
    retry_after: str = "1"  # seconds, or an HTTP date
    refuse_key: bool = False  # answer 401 to every API request
    drop_connections: bool = False  # close the connection without answering
    not_found: list[str] = field(default_factory=list)  # run ids answered 404
    # behaviour, not faults, but settable the same way
    spawn_per_minute: float = 0.0  # new runs per workflow and minute (0 = none)
    spawn_fail_rate: float = 0.1  # share of spawned runs that end FAILED
    list_omit_status_every: int = 0  # every Nth item of a list page has no status
    list_order: str = "newest_first"  # or oldest_first, or shuffled (no order at all)
    mode: str = ""  # one of FAULT_MODES
    redirect_to: str = ""  # mode "redirect": the Location answered; "{path}" = the request's
    flap_statuses: list[int] = field(default_factory=lambda: [500, 502, 503])  # mode "flap"
    # documented shapes and delivery habits of the real API (scenario switches)
    api_lag_seconds: float = 0.0  # GET and list show runs as they were this long ago
    omit_status: bool = False  # GET and list records carry no status at all
    record_extras: bool = False  # records carry workflowRunId, workflowId, toolKey, error
    list_total_extra: int = 0  # list `total` above the runs it really has
    webhook_empty_workflow_id: bool = False  # workspace-wide: workflowId "" (not null)
    webhook_delete_empty: bool = False  # DELETE /webhook/{id}: 202 with no body ({} else)
    webhook_delay_seconds: float = 0.0  # deliveries leave this late
    webhook_duplicate: bool = False  # every delivery is made twice
    webhook_reorder: bool = False  # a run's `started` is delivered after its end

    def __post_init__(self) -> None:
        self._flap_turns = itertools.count()  # not a field: not settable, not listed

    def update(self, changes: Mapping[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for name in changes:
            if name not in known:
                raise ValueError(f"unknown fault {name!r}")
        mode = changes.get("mode", self.mode)
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(map(repr, FAULT_MODES))}")
        statuses = changes.get("flap_statuses", self.flap_statuses)
        if not statuses or not all(
            isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
        ):
            raise ValueError("flap_statuses must be a non-empty list of HTTP status codes")
        if mode == "gzip_bomb":
            gzip_bomb()  # built now, so the first answer is not late by the building
        for name, value in changes.items():
            setattr(self, name, value)
        if "mode" in changes or "flap_statuses" in changes:
            self._flap_turns = itertools.count()  # each flap starts with an error

    def next_flap_status(self) -> int | None:
        """Mode "flap": the status to answer this request with; None = answer normally."""
        turn = next(self._flap_turns)  # atomic under the GIL
        if turn % 2:
            return None
        statuses = self.flap_statuses
        return statuses[(turn // 2) % len(statuses)]


class World:
    """The simulated workspace: workflows, their runs, faults and request counts."""

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        seed: int = 1,
        clock: Callable[[], float] = time.time,
    ):
        self.api_key = api_key
        self.clock = clock
        self.rng = random.Random(seed)  # noqa: S311 - simulated data, not security
        self.lock = threading.Lock()
        self.workflows: dict[str, str] = {}  # id -> name
        self.runs: dict[str, dict[str, SimRun]] = {}  # workflow id -> run id -> run
        self.faults = Faults()
        self.stats: Counter[str] = Counter()
        self.run_stats: Counter[str] = Counter()
        self.webhooks: dict[str, dict[str, Any]] = {}  # id -> registration
        self._pending: dict[str, SimRun] = {}  # runs whose end is not yet announced
        self._outbox: list[tuple[str, SimRun | None, str | None]] = []  # (type, run, wf)
        self._held_started: dict[str, dict[str, Any]] = {}  # webhook_reorder: run id -> payload
        self.canned: dict[tuple[str, str], tuple[int, bytes, str]] = {}  # (method, path)
        self._spawn_due: dict[str, float] = {}
        self._bucket_time = 0.0
        self._bucket_tokens = 0.0
        self._arrivals: deque[Arrival] = deque(maxlen=MAX_ARRIVALS)

    # --- building the world ----------------------------------------------------------

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def add_workflow(self, name: str, workflow_id: str | None = None) -> str:
        workflow_id = workflow_id or self.new_id("WCFG")
        with self.lock:
            self.workflows[workflow_id] = name
            self.runs.setdefault(workflow_id, {})
        return workflow_id

    def add_run(
        self,
        workflow_id: str,
        steps: Iterable[tuple[str, float | None]],
        *,
        age_seconds: float = 0.0,
        run_id: str | None = None,
        **details: Any,
    ) -> SimRun:
        if workflow_id not in self.workflows:
            self.add_workflow(workflow_id, workflow_id)
        run = SimRun(
            workflow_id=workflow_id,
            run_id=run_id or self.new_id("WRUN"),
            created_at=self.clock() - age_seconds,
            steps=[(str(s), None if d is None else float(d)) for s, d in steps],
            **details,
        )
        with self.lock:
            self.runs[workflow_id][run.run_id] = run
            if not run.terminal_at(self.clock()):
                self._pending[run.run_id] = run
        return run

    def start_run(self, workflow_id: str, fail: bool | None = None) -> SimRun:
        """A run started through the API (or the spawner): announced by webhook."""
        rng = self.rng
        if fail is None:
            fail = rng.random() < self.faults.spawn_fail_rate
        steps: list[tuple[str, float | None]] = [
            ("NEW", rng.uniform(0.5, 2)),
            ("PROCESSING", rng.uniform(3, 15)),
        ]
        if rng.random() < 0.2:
            steps += [("RETRYING", rng.uniform(1, 4)), ("PROCESSING", rng.uniform(1, 5))]
        steps.append(("FAILED" if fail else "COMPLETE", None))
        run = self.add_run(
            workflow_id,
            steps,
            credits=rng.randint(1, 40),
            credits_as_string=rng.random() < 0.5,
            millis=rng.random() < 0.5,
        )
        with self.lock:
            self._outbox.append(("workflowRun.started", run, workflow_id))
        return run

    def credit_limit_reached(self, workflow_id: str | None) -> None:
        with self.lock:
            self._outbox.append(("workflowCreditLimit.reached", None, workflow_id))

    def tick(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Advance background behaviour: spawn runs, announce ends. Returns the webhook
        deliveries to make as (registration, payload)."""
        now = self.clock()
        rate = self.faults.spawn_per_minute
        if rate > 0:
            for workflow_id in list(self.workflows):
                due = self._spawn_due.setdefault(workflow_id, now)
                while due <= now:
                    self.start_run(workflow_id)
                    due += 60.0 / rate
                self._spawn_due[workflow_id] = due
        with self.lock:
            ended = [r for r in self._pending.values() if r.terminal_at(now)]
            for run in ended:
                del self._pending[run.run_id]
                event = (
                    "workflowRun.completed"
                    if run.status_at(now) == "COMPLETE"
                    else ("workflowRun.failed")
                )
                self._outbox.append((event, run, run.workflow_id))
            outbox, self._outbox = self._outbox, []
            hooks = list(self.webhooks.values())
        faults = self.faults
        deliveries = []
        for event_type, run, workflow_id in outbox:
            payloads = [_webhook_payload(event_type, run, workflow_id, now)]
            if faults.webhook_reorder and run is not None:
                if event_type == "workflowRun.started":
                    self._held_started[run.run_id] = payloads[0]  # sent after the end
                    continue
                held = self._held_started.pop(run.run_id, None)
                if held is not None:
                    payloads.append(held)
            for payload in payloads:
                for hook in hooks:
                    if hook["eventType"] != payload["type"]:
                        continue
                    if hook.get("workflowId") not in (None, "", workflow_id):
                        continue
                    sent = payload
                    if not hook.get("workflowId") and faults.webhook_empty_workflow_id:
                        # a workspace-wide hook that echoes "" sends it in deliveries too
                        sent = {**payload, "workflowId": ""}
                    deliveries.append((hook, sent))
        return deliveries

    def truth(self, since: float) -> dict[str, dict[str, float]]:
        """Ground truth for runs created at or after `since`, per workflow."""
        now = self.clock()
        result: dict[str, dict[str, float]] = {}
        with self.lock:
            for workflow_id, runs in self.runs.items():
                row = dict.fromkeys(("created", "finished", "failed", "credits", "active"), 0.0)
                for run in runs.values():
                    if run.created_at < since:
                        continue
                    row["created"] += 1
                    status = run.status_at(now)
                    if status in TERMINAL:
                        row["finished"] += 1
                        row["failed"] += status == "FAILED"
                        row["credits"] += run.credits
                    else:
                        row["active"] += 1
                result[workflow_id] = row
        return result

    def all_runs(self) -> list[SimRun]:
        with self.lock:
            return [r for runs in self.runs.values() for r in runs.values()]

    def exporter_config(self, base_url: str, extra: Mapping[str, Any] | None = None) -> str:
        with self.lock:
            workflows = [
                {"id": wid, "name": name, "runs": list(self.runs.get(wid, {}))}
                for wid, name in self.workflows.items()
            ]
        document: dict[str, Any] = {"api": {"base_url": base_url}, "workflows": workflows}
        for section, values in (extra or {}).items():
            document.setdefault(section, {}).update(values)
        return yaml.safe_dump(document, sort_keys=False)

    # --- answering -------------------------------------------------------------------

    def record_arrival(self, method: str, endpoint: str, run_id: str | None) -> None:
        with self.lock:
            self._arrivals.append(Arrival(time.monotonic(), method, endpoint, run_id))

    def arrivals(self, since: float = -math.inf) -> list[Arrival]:
        """API requests (the last MAX_ARRIVALS) that arrived at or after `since`
        (time.monotonic()), oldest first."""
        with self.lock:
            return [a for a in self._arrivals if a.at >= since]

    def take_rate_token(self) -> bool:
        limit = self.faults.rate_limit_per_second
        if limit <= 0:
            return True
        with self.lock:
            now = time.monotonic()
            self._bucket_tokens = min(
                limit, self._bucket_tokens + (now - self._bucket_time) * limit
            )
            self._bucket_time = now
            if self._bucket_tokens >= 1:
                self._bucket_tokens -= 1
                return True
            return False

    def get_run(self, workflow_id: str, run_id: str) -> tuple[int, Any]:
        with self.lock:
            run = self.runs.get(workflow_id, {}).get(run_id)
        if run is None or run_id in self.faults.not_found:
            return 404, {"status": "error", "errorCode": "NOT_FOUND"}
        return 200, {"status": "success", "data": self._api_record(run)}

    def _api_record(self, run: SimRun) -> dict[str, Any]:
        """A run as GET and list answers show it, with the shape switches applied."""
        faults = self.faults
        record = run.record(self.clock() - faults.api_lag_seconds, extras=faults.record_extras)
        if faults.omit_status:
            record.pop("status", None)
        return record

    def list_runs(self, workflow_id: str, size: int, page: int) -> tuple[int, Any]:
        with self.lock:
            if workflow_id not in self.runs:
                return 404, {"status": "error", "errorCode": "NOT_FOUND"}
            runs = sorted(self.runs[workflow_id].values(), key=lambda r: -r.created_at)
        if self.faults.list_order == "oldest_first":
            runs.reverse()
        elif self.faults.list_order == "shuffled":  # stable across pages, but no order
            runs.sort(key=lambda r: r.run_id)
        return self.list_page(runs, size, page)

    def list_page(self, runs: list[SimRun], size: int, page: int) -> tuple[int, Any]:
        """One page of `runs`, already in the order the list endpoint gives."""
        chunk = runs[(page - 1) * size : page * size]
        items = [self._api_record(r) for r in chunk]
        for item in items[1::2]:  # the docs' list items sometimes lack these
            item.pop("input", None)
            item.pop("output", None)
        every = self.faults.list_omit_status_every
        if every > 0:
            for item in items[every - 1 :: every]:
                item.pop("status", None)
        count = len(runs) + self.faults.list_total_extra
        total: int | str = count if page % 2 else str(count)
        return 200, {"status": "success", "data": {"total": total, "data": items}}


def _request_invalid(detail: str) -> dict[str, Any]:
    """The documented validation error (422)."""
    return {"status": "error", "errorCode": "REQUEST_INVALID", "details": [{"message": detail}]}


def _webhook_payload(
    event_type: str, run: SimRun | None, workflow_id: str | None, now: float
) -> dict[str, Any]:
    """Both shapes senders use: the documented one (`result`) and the whole run record
    plus `type` (`output`), alternating by run."""
    if run is None:
        payload: dict[str, Any] = {"type": event_type}
        if workflow_id is not None:
            payload["workflowId"] = workflow_id
        return payload
    record = run.record(now)
    if int(run.run_id[-1], 16) % 2 == 0:
        payload = {
            "type": event_type,
            "workflowRunId": run.run_id,
            "workflowId": run.workflow_id,
            "result": record.get("output", {}),
            "metadata": record.get("metadata") or {},
        }
        if "credits" in record:
            payload["credits"] = record["credits"]
        return payload
    return {
        **record,
        "type": event_type,
        "workflowRunId": run.run_id,
        "workflowId": run.workflow_id,
    }


def demo_world(api_key: str = DEFAULT_API_KEY, seed: int = 7) -> World:
    """Three workflows whose runs keep changing for the first minutes of a demo."""
    world = World(api_key=api_key, seed=seed)
    blog = world.add_workflow("blog-writer")
    seo = world.add_workflow("seo-meta-descriptions")
    leads = world.add_workflow("lead-enrichment")
    done = [("NEW", 2), ("PROCESSING", 40), ("COMPLETE", None)]
    world.add_run(blog, done, age_seconds=3600, credits=42)
    world.add_run(blog, done, age_seconds=7200, credits=38, credits_as_string=True, millis=False)
    world.add_run(
        blog, [("NEW", 5), ("WAITING", 20), ("PROCESSING", 60), ("COMPLETE", None)], credits=51
    )
    world.add_run(
        blog,
        [("PROCESSING", 150), ("RETRYING", 30), ("PROCESSING", 60), ("COMPLETE", None)],
        age_seconds=30,
        credits=77,
        credits_as_string=True,
    )
    world.add_run(
        blog, [("NEW", 10), ("PROCESSING", 240), ("COMPLETE", None)], credits=120, metadata=None
    )
    world.add_run(seo, done, age_seconds=600, credits=9, metadata="absent")
    world.add_run(
        seo,
        [
            ("PROCESSING", 45),
            ("RETRYING", 30),
            ("PROCESSING", 20),
            ("RETRYING", 20),
            ("FAILED", None),
        ],
        credits=14,
    )
    world.add_run(
        seo,
        [("WAITING", 7200), ("PROCESSING", 60), ("COMPLETE", None)],
        age_seconds=1800,
        credits=3,
    )  # stuck: trips a "stuck run" alert
    world.add_run(
        seo,
        [("NEW", 3), ("PROCESSING", 90), ("COMPLETE", None)],
        credits=12,
        credits_as_string=True,
        millis=False,
    )
    world.add_run(
        leads, [("NEW", 1), ("PROCESSING", 20), ("FAILED", None)], age_seconds=900, credits=5
    )
    world.add_run(
        leads,
        [("PROCESSING", 300), ("COMPLETE", None)],
        age_seconds=60,
        credits=2200,
        credits_as_string=True,
    )
    world.add_run(
        leads, [("NEW", 30), ("WAITING", 30), ("PROCESSING", 120), ("COMPLETE", None)], credits=64
    )
    return world


def bulk_world(
    workflows: int,
    runs_per_workflow: int,
    active_fraction: float,
    api_key: str = DEFAULT_API_KEY,
    seed: int = 1,
) -> World:
    """Many runs for benchmarks: a share stays PROCESSING forever, the rest are done."""
    world = World(api_key=api_key, seed=seed)
    active_every = round(1 / active_fraction) if active_fraction > 0 else 0
    for w in range(workflows):
        workflow_id = world.add_workflow(f"bulk-{w}")
        for i in range(runs_per_workflow):
            if active_every and i % active_every == 0:
                steps: list[tuple[str, float | None]] = [("PROCESSING", None)]
            else:
                steps = [("PROCESSING", 1), ("COMPLETE", None)]
            world.add_run(
                workflow_id,
                steps,
                age_seconds=3600 - i,
                credits=i % 50,
                credits_as_string=bool(i % 2),
                millis=bool(i % 3),
            )
    return world


# --- HTTP ----------------------------------------------------------------------------

_RUN_PATH = re.compile(r"^/workflow/([A-Za-z0-9_-]+)/run/([A-Za-z0-9_-]+)$")
_LIST_PATH = re.compile(r"^/workflow/([A-Za-z0-9_-]+)/run$")
_WEBHOOK_PATH = re.compile(r"^/webhook(?:/([A-Za-z0-9_-]+))?$")
WEBHOOK_EVENTS = (
    "workflowRun.started",
    "workflowRun.completed",
    "workflowRun.failed",
    "workflowCreditLimit.reached",
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API behind a CDN
    # headers and body go out in two writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive answer
    disable_nagle_algorithm = True
    server: SimulatorServer
    # how _send delivers this request's answer: "", "truncated_json" or "slow_body"
    _delivery = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator %s", format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        world = self.server.world
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        self._delivery = ""  # one handler serves every request of a keep-alive connection
        if path.startswith("/_sim/"):
            self._control(method, path, world)
            return
        # A prefix like /api is accepted so base_url can be http://host:port/api.
        if path.startswith("/api/"):
            path = path[4:]
        run_match = _RUN_PATH.match(path)
        list_match = _LIST_PATH.match(path)
        hook_match = _WEBHOOK_PATH.match(path)
        if run_match:
            endpoint = "get_run"
        elif list_match:
            endpoint = "list_runs" if method == "GET" else "start_run"
        elif hook_match:
            endpoint = f"{method.lower()}_webhook"
        else:
            endpoint = "other"
        with world.lock:
            world.stats[endpoint] += 1
            if run_match:
                world.run_stats[run_match.group(2)] += 1
        world.record_arrival(method, endpoint, run_match.group(2) if run_match else None)
        faults = world.faults
        if faults.latency_seconds > 0:
            time.sleep(faults.latency_seconds)
        canned = world.canned.get((method, path))
        if canned is not None:  # a body set through /_sim/canned, served as it is
            self._send(canned[0], canned[1], canned[2])
            return
        if faults.drop_connections:
            self.close_connection = True
            self.connection.close()
            return
        # before the key check, as a broken server or proxy in front of the API answers
        if faults.mode and self._fault_mode(faults, run_match):
            return
        if self.headers.get("x-copy-ai-api-key") != world.api_key or faults.refuse_key:
            self._json(401, {"status": "error", "errorCode": "UNAUTHORIZED"})
            return
        if not world.take_rate_token():
            self._json(
                429,
                {"status": "error", "errorCode": "RATE_LIMITED"},
                {"Retry-After": faults.retry_after},
            )
            return
        if faults.error_rate > 0 and world.rng.random() < faults.error_rate:
            if faults.error_html:
                self._send(faults.error_status, HTML_ERROR.encode(), "text/html")
            else:
                self._json(faults.error_status, {"status": "error", "errorCode": "INTERNAL"})
            return
        if method == "GET" and run_match:
            self._json(*world.get_run(run_match.group(1), run_match.group(2)))
        elif method == "GET" and list_match:
            query = parse_qs(parts.query)
            try:
                size = int(query.get("size", ["10"])[0])
                page = int(query.get("page", ["1"])[0])
            except ValueError:
                size = page = 0
            if not 1 <= size <= 100 or page < 1:
                self._json(422, _request_invalid("size must be 1-100 and page at least 1"))
                return
            self._json(*world.list_runs(list_match.group(1), size, page))
        elif method == "POST" and list_match:
            workflow_id = list_match.group(1)
            if workflow_id not in world.workflows:
                self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})
                return
            self._read_body()
            run = world.start_run(workflow_id)
            self._json(200, {"status": "success", "data": {"id": run.run_id}})
        elif hook_match:
            self._webhook_api(method, hook_match.group(1), parts.query, world)
        else:
            self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})

    def _fault_mode(self, faults: Faults, run_match: re.Match[str] | None) -> bool:
        """Answer in `faults.mode`; False if the request is to be answered normally
        (possibly delivered in a faulty way, see _send)."""
        mode = faults.mode
        try:
            if mode == "hang":
                self._drain_body()
                self._hang()
            elif mode in ("truncated_json", "slow_body"):
                self._delivery = mode
                return False
            elif mode == "wrong_shape":
                self._json(200, WRONG_SHAPE)
            elif mode == "wrong_types":
                record = wrong_types_record()
                if run_match is None:  # a list page with one such item
                    self._json(200, {"status": "success", "data": {"total": 1, "data": [record]}})
                else:
                    self._json(200, {"status": "success", "data": record})
            elif mode == "huge_body":
                self._huge_body(run_match.group(2) if run_match else "WRUN-huge")
            elif mode == "gzip_bomb":
                # clients stop reading a bomb early and reset the connection: end it here
                self.close_connection = True
                self._send(
                    200,
                    gzip_bomb(),
                    "application/json",
                    {"Content-Encoding": "gzip", "Connection": "close"},
                )
            elif mode == "redirect":
                location = faults.redirect_to or "http://127.0.0.1:9/nowhere"
                self._send(
                    302, b"", "text/plain", {"Location": location.replace("{path}", self.path)}
                )
            elif mode == "flap":
                status = faults.next_flap_status()
                if status is None:
                    return False
                self._json(status, {"status": "error", "errorCode": "FLAPPING"})
            else:  # validated by Faults.update; set directly to nonsense: answer normally
                return False
        except OSError:  # the client hung up, as clients of such answers tend to
            self.close_connection = True
        return True

    def _drain_body(self) -> None:
        length = self.headers.get("Content-Length") or "0"
        if length.isdigit() and 0 < int(length) <= MAX_CONTROL_BODY:
            self.rfile.read(int(length))

    def _hang(self) -> None:
        """Never answer: wait until the client hangs up or the simulator stops."""
        self.close_connection = True
        stopping = self.server.stopping
        connection = self.connection
        while not stopping.wait(0.05):
            try:
                readable, _, _ = select.select([connection], [], [], 0)
                if readable and not connection.recv(1, socket.MSG_PEEK):
                    return  # the client closed its end (or pause() cut the connection)
            except (OSError, ValueError):  # closed under us
                return

    def _huge_body(self, run_id: str) -> None:
        """A 200 of HUGE_BODY_BYTES, valid JSON, written a chunk at a time; its length is
        told by closing the connection (no Content-Length)."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        head = json.dumps({"status": "success", "data": {"id": run_id}})[:-2].encode()
        head += b', "filler": "'
        tail = b'"}}'
        filler = b"x" * HUGE_BODY_CHUNK
        self.wfile.write(head)
        remaining = HUGE_BODY_BYTES - len(head) - len(tail)
        stopping = self.server.stopping
        while remaining > 0 and not stopping.is_set():
            chunk = filler[: min(remaining, len(filler))]
            self.wfile.write(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            self.wfile.write(tail)

    def _webhook_api(self, method: str, hook_id: str | None, query: str, world: World) -> None:
        if method == "POST" and hook_id is None:
            body = self._read_body()
            if not isinstance(body, dict) or not isinstance(body.get("url"), str):
                self._json(422, _request_invalid("url is required"))
                return
            if body.get("eventType") not in WEBHOOK_EVENTS:
                self._json(422, _request_invalid("eventType is not a known event type"))
                return
            workflow_id = body.get("workflowId")
            if workflow_id is None and world.faults.webhook_empty_workflow_id:
                workflow_id = ""  # one rendering of the docs echoes a workspace-wide hook so
            hook = {
                "id": world.new_id("WHK"),
                "url": body["url"],
                "eventType": body["eventType"],
                "workflowId": workflow_id,
            }
            with world.lock:
                world.webhooks[hook["id"]] = hook
            self._json(200, {"status": "success", "data": hook})
        elif method == "GET" and hook_id is None:
            params = parse_qs(query)
            size = int(params.get("size", ["10"])[0])
            page = int(params.get("page", ["0"])[0])  # pages start at 0 here
            with world.lock:
                hooks = list(world.webhooks.values())
            self._json(200, {"total": len(hooks), "data": hooks[page * size : (page + 1) * size]})
        elif hook_id is not None and method in ("GET", "DELETE"):
            with world.lock:
                hook = world.webhooks.get(hook_id)
                if hook is not None and method == "DELETE":
                    del world.webhooks[hook_id]
            if hook is None:
                self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})
            elif method == "DELETE":  # documented: 202 with {}; some answer with no body
                empty = world.faults.webhook_delete_empty
                self._send(202, b"" if empty else b"{}", "application/json")
            else:
                self._json(200, {"status": "success", "data": hook})
        else:
            self._json(404, {"status": "error", "errorCode": "NOT_FOUND"})

    def _control(self, method: str, path: str, world: World) -> None:
        try:
            if method == "GET" and path == "/_sim/stats":
                with world.lock:
                    body = {"requests": dict(world.stats), "runs": dict(world.run_stats)}
                self._json(200, body)
            elif method == "POST" and path == "/_sim/stats/reset":
                with world.lock:
                    world.stats.clear()
                    world.run_stats.clear()
                    world._arrivals.clear()
                self._json(200, {"ok": True})
            elif path == "/_sim/faults":
                if method == "POST":
                    changes = self._read_body()
                    if not isinstance(changes, dict):
                        raise ValueError("faults must be a JSON object")
                    world.faults.update(changes)
                self._json(
                    200, {f.name: getattr(world.faults, f.name) for f in fields(world.faults)}
                )
            elif method == "POST" and path == "/_sim/runs":
                spec = self._read_body()
                if not isinstance(spec, dict):
                    raise ValueError("run spec must be a JSON object")
                workflow_id = spec.pop("workflow_id")
                steps = [tuple(step) for step in spec.pop("steps")]
                run = world.add_run(workflow_id, steps, **spec)
                self._json(200, {"workflow_id": run.workflow_id, "run_id": run.run_id})
            elif method == "GET" and path == "/_sim/truth":
                since = float(parse_qs(urlsplit(self.path).query).get("since", ["0"])[0])
                self._json(200, world.truth(since))
            elif path == "/_sim/canned" and method == "POST":
                spec = self._read_body()
                body = spec.get("body")
                payload = spec["text"].encode() if "text" in spec else json.dumps(body).encode()
                content_type = spec.get("content_type", "application/json")
                api_path = "/" + str(spec["path"]).strip("/")
                with world.lock:
                    world.canned[(spec.get("method", "GET"), api_path)] = (
                        int(spec.get("status", 200)),
                        payload,
                        content_type,
                    )
                self._json(200, {"ok": True})
            elif path == "/_sim/canned" and method == "DELETE":
                with world.lock:
                    world.canned.clear()
                self._json(200, {"ok": True})
            elif method == "POST" and path == "/_sim/credit-limit":
                body = self._read_body()
                world.credit_limit_reached(body.get("workflow_id") if body else None)
                self._json(200, {"ok": True})
            elif method == "POST" and path == "/_sim/start":
                body = self._read_body()
                run = world.start_run(body["workflow_id"], body.get("fail"))
                self._json(200, {"workflow_id": run.workflow_id, "run_id": run.run_id})
            elif method == "GET" and path == "/_sim/config":
                host, port = self.server.server_address[:2]
                text = world.exporter_config(f"http://{host}:{port}/api")
                self._send(200, text.encode(), "application/yaml")
            else:
                self._json(404, {"error": "no such control endpoint"})
        except (ValueError, KeyError, TypeError) as exc:
            self._json(400, {"error": str(exc)})

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_CONTROL_BODY:
            raise ValueError("body too large")
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        delivery = self._delivery
        if delivery == "truncated_json":
            payload = payload[: len(payload) // 2]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if delivery != "slow_body":
            self.wfile.write(payload)
            return
        stopping = self.server.stopping
        try:
            for index in range(len(payload)):
                self.wfile.write(payload[index : index + 1])
                if index + 1 < len(payload) and stopping.wait(SLOW_BODY_BYTE_SECONDS):
                    break
            else:
                return
        except OSError:
            pass  # the client gave up waiting
        self.close_connection = True  # the body was not all sent


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], world: World):
        self.world = world
        self.stopping = threading.Event()  # set by RunningSimulator.stop(): ends hangs
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # instead of socketserver's traceback on stderr (--demo runs this in the
        # exporter's process): one log record
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("simulator client gone client=%s error=%r", client_address[0], str(exc))
        else:
            log.exception("simulator error serving client=%s", client_address[0])

    def close_connections(self) -> None:
        """Keep-alive connections outlive shutdown(): cut them, as a dead API would."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/api"


class RunningSimulator:
    """A simulator serving in a background thread; `stop()` shuts it down."""

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0):
        self.world = world
        self.server = SimulatorServer((host, port), world)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="copyai-simulator", daemon=True
        )
        self.thread.start()
        self._stop = threading.Event()
        self._pause_lock = threading.Lock()
        self._paused = False
        self._session = requests.Session()
        self.ticker = threading.Thread(target=self._tick_loop, name="copyai-sim-tick", daemon=True)
        self.ticker.start()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def _tick_loop(self) -> None:
        scheduled: list[tuple[float, int, dict[str, Any], dict[str, Any]]] = []
        order = itertools.count()
        while not self._stop.wait(TICK_SECONDS):
            faults = self.world.faults
            now = time.monotonic()
            for hook, payload in self.world.tick():
                copies = 2 if faults.webhook_duplicate else 1
                for _ in range(copies):
                    due = now + faults.webhook_delay_seconds
                    heapq.heappush(scheduled, (due, next(order), hook, payload))
            while scheduled and scheduled[0][0] <= now:
                _due, _seq, hook, payload = heapq.heappop(scheduled)
                self._deliver(hook, payload)

    def _deliver(self, hook: dict[str, Any], payload: dict[str, Any]) -> None:
        try:
            answer = self._session.post(hook["url"], json=payload, timeout=5)
            outcome = "webhook_delivered" if answer.status_code < 300 else "webhook_refused"
        except requests.RequestException:
            outcome = "webhook_failed"
        with self.world.lock:
            self.world.stats[outcome] += 1

    def pause(self) -> None:
        """Refuse connections, as a dead API: close the listener and cut open connections.
        `resume()` listens again on the same host and port."""
        with self._pause_lock:
            if self._paused:
                return
            self._paused = True
            self.server.shutdown()
            self.server.server_close()
            self.server.close_connections()
            self.thread.join(timeout=10)

    def resume(self) -> None:
        """Listen again on the address pause() closed."""
        with self._pause_lock:
            if not self._paused:
                return
            server = self.server
            server.socket = socket.socket(server.address_family, server.socket_type)
            try:
                server.server_bind()  # SO_REUSEADDR: the old connections' TIME_WAIT is fine
                server.server_activate()
            except OSError:
                server.socket.close()
                raise
            self.thread = threading.Thread(
                target=server.serve_forever, name="copyai-simulator", daemon=True
            )
            self.thread.start()
            self._paused = False

    def stop(self) -> None:
        self.server.stopping.set()
        self._stop.set()
        self.ticker.join(timeout=10)
        self._session.close()
        self.server.shutdown()
        self.server.server_close()
        self.server.close_connections()
        self.thread.join(timeout=10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port to serve on")
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help="key the simulator accepts (default: %(default)s)",
    )
    parser.add_argument("--scenario", choices=("demo", "bulk"), default="demo")
    parser.add_argument("--workflows", type=int, default=10, help="bulk: workflows")
    parser.add_argument("--runs-per-workflow", type=int, default=100, help="bulk: runs each")
    parser.add_argument(
        "--active-fraction", type=float, default=0.1, help="bulk: share of runs that never finish"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of answers that are HTML 502s"
    )
    parser.add_argument(
        "--rate-limit", type=float, default=0.0, help="requests per second before 429 (0 = none)"
    )
    parser.add_argument(
        "--spawn-per-minute",
        type=float,
        default=0.0,
        help="new runs started per workflow and minute (0 = none)",
    )
    parser.add_argument(
        "--spawn-fail-rate", type=float, default=0.1, help="share of started runs that end FAILED"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--write-config",
        metavar="PATH",
        help="write an exporter config watching every run, then serve",
    )
    parser.add_argument(
        "--config-base-url",
        metavar="URL",
        help="base_url to put in --write-config (default: this server's)",
    )


def run_from_args(args: argparse.Namespace, stop: threading.Event) -> int:
    host, _, port = args.listen.rpartition(":")
    if args.scenario == "bulk":
        world = bulk_world(
            args.workflows,
            args.runs_per_workflow,
            args.active_fraction,
            api_key=args.api_key,
            seed=args.seed,
        )
    else:
        world = demo_world(api_key=args.api_key, seed=args.seed)
    world.faults.update(
        {
            "latency_seconds": args.latency,
            "error_rate": args.error_rate,
            "rate_limit_per_second": args.rate_limit,
            "spawn_per_minute": args.spawn_per_minute,
            "spawn_fail_rate": args.spawn_fail_rate,
        }
    )
    sim = RunningSimulator(world, host.strip("[]") or "0.0.0.0", int(port))
    if args.write_config:
        with open(args.write_config, "w", encoding="utf-8") as handle:
            handle.write(world.exporter_config(args.config_base_url or sim.base_url))
    log.info("simulator listening url=%s runs=%d", sim.base_url, len(world.all_runs()))
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0
