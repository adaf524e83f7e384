"""The simulated workspace: workflows and their runs, which move through their statuses
by the clock (a script of `(status, seconds)` steps from `createdAt`), so answers are
deterministic and nothing runs in the background; webhook registrations and the
deliveries due; request counts and the ground truth tests compare against."""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import yaml

from exporter.sim.faults import Faults

DEFAULT_API_KEY = "demo-key"


TERMINAL = ("COMPLETE", "FAILED")
RUNNING = ("PROCESSING", "RETRYING")
CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli")  # of started runs, in turn


MAX_ARRIVALS = 10_000


WEBHOOK_EVENTS = (
    "workflowRun.started",
    "workflowRun.completed",
    "workflowRun.failed",
    "workflowCreditLimit.reached",
)


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
    input: Any = field(default_factory=lambda: {"Input 1": "simulated"})  # "absent": none

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
        record: dict[str, Any] = {"id": self.run_id, "createdAt": stamp}
        if self.input != "absent":
            record["input"] = self.input
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
        self._unstarted: dict[str, SimRun] = {}  # runs whose start is announced once running
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
        announce_start: bool = False,
        **details: Any,
    ) -> SimRun:
        """A run that moves through `steps` from its createdAt (now - `age_seconds`).
        Its end is announced by webhook; with `announce_start`, so is its start
        (`workflowRun.started`, when it first runs)."""
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
                if announce_start:
                    self._unstarted[run.run_id] = run
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
            # who the run was for, as callers put it in metadata (for cost attribution)
            metadata={"api": True, "customer": CUSTOMERS[len(self.runs[workflow_id]) % 5]},
        )
        with self.lock:
            if self.faults.webhook_started_when_running:
                if run.run_id in self._pending:
                    self._unstarted[run.run_id] = run
            else:
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
            for run in list(self._unstarted.values()):
                status = run.status_at(now)
                if status in RUNNING or status in TERMINAL:
                    del self._unstarted[run.run_id]
                    if status in RUNNING or any(step in RUNNING for step, _ in run.steps):
                        # (one that ran and ended between two ticks: started, then ended)
                        self._outbox.append(("workflowRun.started", run, run.workflow_id))
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
            payloads = [_webhook_payload(event_type, run, workflow_id, now, faults.webhook_shape)]
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


def _webhook_payload(
    event_type: str, run: SimRun | None, workflow_id: str | None, now: float, shape: str
) -> dict[str, Any]:
    """Both shapes senders use: the documented one (`result`, no createdAt or status)
    and the whole run record plus `type` (`output`); alternating by run when mixed."""
    if run is None:
        payload: dict[str, Any] = {"type": event_type}
        if workflow_id is not None:
            payload["workflowId"] = workflow_id
        return payload
    record = run.record(now)
    documented = int(run.run_id[-1], 16) % 2 == 0 if shape == "mixed" else shape == "documented"
    if documented:
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
