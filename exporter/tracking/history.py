"""Workflow history: every run the exporter has seen for a workflow, and the counters,
histograms (duration, queue wait, processing, credits), timestamps, credits by day (for
budgets) and by attribute derived from what it saw happen.

The rule that keeps counters honest across restarts: a workflow is watched from a
moment (`watch_start`, persisted). A run created before it is *baseline*: it is
tracked, but its creation and (unless we saw it active first) its end are not events.
A run created after it is *watched*: its creation, retries and end are counted once
each, even when it started and finished between two looks. Each run remembers what has
been counted for it, so a run seen again (by polling, a listing or a webhook) is never
counted twice. Decisions that need `createdAt` wait until it is known.

Longer than 500 lines because the counting rules are one state machine per run
(baseline or watched, seen active, ended, pending createdAt or credits): kept in one
class, a rule and the state it depends on are read together.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from exporter.api.records import ALL_STATUSES, Attributes, RunStatus
from exporter.config import AttributionConfig, CollectorConfig, DiscoveryConfig
from exporter.tracking.attribution import AttributeRow, Attribution
from exporter.tracking.budgets import DailyCredits
from exporter.tracking.runs import MAX_SILENT_BACKOFF, silent_backoff
from exporter.tracking.values import (
    COUNTS,
    DISTRIBUTIONS,
    TIMES,
    Histogram,
    HistogramSnapshot,
)

log = logging.getLogger(__name__)


BASELINE, WATCHED = "baseline", "watched"
RUNNING = frozenset({RunStatus.PROCESSING, RunStatus.RETRYING})
QUEUED = frozenset({RunStatus.NEW, RunStatus.WAITING})

# why a run is no longer tracked (DroppedRun.reason)
OUTSIDE_WINDOW = "window"  # finished and created before discovery.window_seconds
OVER_CAP = "cap"  # the oldest past discovery.max_tracked_runs
GONE = "not_found"  # the API answered 404 for it
UNCONFIGURED = "unconfigured"  # removed from runs[] of a workflow without discover
MAX_REMEMBERED_DROPS = 1000  # per workflow, newest kept: for the status page's lookup


@dataclass(slots=True)
class TrackedRun:
    run_id: str
    first_seen: float
    created_at: float | None = None
    status: RunStatus | None = None  # None until a status has been reported
    credits: float | None = None
    last_seen: float = 0.0  # wall time of the last observation with a status
    origin: str | None = None  # BASELINE or WATCHED once createdAt is known
    first_status: RunStatus | None = None
    seen_active: bool = False
    retry_pending: bool = False  # first seen RETRYING before createdAt was known
    terminal_done: bool = False  # its end has been counted, or judged baseline
    terminal_at: float | None = None  # when the end was observed (or delivered)
    terminal_pending: bool = False  # ended before createdAt was known
    credits_pending: bool = False  # counted as finished before credits were reported
    duration_pending: bool = False
    pinned: bool = False  # listed in the config: never forgotten
    fetch_ok: bool | None = None  # last fetch of a listed run (shared between replicas)
    fetch_error: str | None = None
    last_fetch: float = 0.0  # wall time of the last fetch of this run alone (0: never)
    silent_fetches: int = 0  # fetches in a row that brought no usable status or createdAt
    silent_warned: bool = False  # "answers without a usable status" was logged
    started_at: float | None = None  # first known running (started delivery or a look)
    # the attribution keys' values (None: none known), kept only until its end and
    # credits are counted
    attributes: dict[str, str] | None = None
    # its end was counted, but no look carried the metadata or input some attribution
    # key reads (a list item or a delivery without them): attributed after a fetch
    attribution_pending: bool = False

    @property
    def active(self) -> bool:
        """NEW, WAITING, PROCESSING or RETRYING; UNKNOWN is not active."""
        return self.status is not None and self.status.active

    def to_record(self) -> dict[str, Any]:
        # every field is a str, number, bool, None or a status: a flat copy is the whole
        # record (dataclasses.asdict deep-copies field by field: 37 µs a run against 3 µs)
        record = {name: getattr(self, name) for name in _RUN_FIELDS}
        record["status"] = self.status.value if self.status else None
        record["first_status"] = self.first_status.value if self.first_status else None
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrackedRun:
        data = dict(record)
        for key in ("status", "first_status"):
            data[key] = RunStatus.parse(data[key]) if data.get(key) else None
        known = {f for f in cls.__slots__}  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in data.items() if k in known})


_RUN_FIELDS = tuple(f.name for f in fields(TrackedRun))


@dataclass(frozen=True, slots=True)
class DroppedRun:
    """A run the history let go of (or never took, being too old), and why: remembered
    in memory, the newest MAX_REMEMBERED_DROPS per workflow, to answer "why is this run
    not tracked?"."""

    run_id: str
    reason: str  # OUTSIDE_WINDOW, OVER_CAP, GONE or UNCONFIGURED
    at: float | None  # wall time it was dropped (None: at a reload)
    created_at: float | None


@dataclass
class DiscoveryState:
    """Where paging through the list endpoint stands, kept across refreshes."""

    known_total: int | None = None
    order: str = ""  # newest_first, oldest_first, unknown (no usable order), "" (not seen)
    cursor: int = 0  # next page of an unfinished fill or sweep (0 = none)
    cursor_total: int | None = None  # `total` when the cursor was saved
    filled: bool = False  # the window has been paged through once
    last_cycle: float | None = None  # wall time of the last complete cycle


@dataclass
class WorkflowSnapshot:
    """What the collector needs, copied out under the lock."""

    workflow_id: str
    values: dict[str, float | None]  # every Count, Time and Derived of values.py, by name
    histograms: dict[str, HistogramSnapshot]  # every Distribution, by name
    status_counts: dict[RunStatus, int]
    active_runs: list[TrackedRun] = field(default_factory=list)  # oldest first, capped
    tracked: int = 0
    attributes: list[AttributeRow] = field(default_factory=list)  # in the order admitted


class WorkflowHistory:
    def __init__(
        self,
        workflow_id: str,
        watch_start: float,
        buckets: Mapping[str, Iterable[float]],
        discovery: DiscoveryConfig | None = None,
        attribution: AttributionConfig | None = None,
    ):
        """`buckets`: the bucket bounds of each Distribution of values.py, by name (the
        config's defaults for any not given)."""
        self.workflow_id = workflow_id
        self.lock = threading.RLock()
        self.watch_start = watch_start
        self.discovery_config = discovery or DiscoveryConfig()
        # counters (0) and times of the latest event (None until one), by name
        self.values: dict[str, float | None] = {c.name: 0 for c in COUNTS}
        self.values.update({t.name: None for t in TIMES})
        defaults = CollectorConfig()
        self.histograms = {
            d.name: Histogram(tuple(buckets.get(d.name, getattr(defaults, d.buckets_option))))
            for d in DISTRIBUTIONS
        }
        self.daily_credits = DailyCredits()  # for budgets: by the day runs ended
        attribution = attribution or AttributionConfig()
        self.attribution = Attribution(attribution.keys, attribution.max_values_per_key)
        self.forget_horizon = -math.inf  # runs this old or older were dropped by the cap
        self.discovery = DiscoveryState()
        self.discovering = False  # discover: true (set by the book)
        self.runs: dict[str, TrackedRun] = {}
        self.dropped: OrderedDict[str, DroppedRun] = OrderedDict()
        self._status_counts: Counter[RunStatus] = Counter()
        self._active: set[str] = set()
        self._undecided: set[str] = set()  # runs not yet judged baseline or watched
        self.dirty_runs: set[str] = set()
        self.removed_runs: set[str] = set()
        self.meta_dirty = True
        self._cap_warned = False

    # --- observations ----------------------------------------------------------------

    def observe(
        self,
        run_id: str,
        *,
        when: float,
        status: RunStatus | None = None,
        created_at: float | None = None,
        credits: float | None = None,
        pinned: bool = False,
        reported: bool = True,
        fetched: bool = False,
        started: bool = False,
        attributes: Attributes | None = None,
    ) -> bool:
        """Apply what one look at a run showed. Returns False if the run is ignored
        (older than the window, or dropped by the cap before).

        `status` is what the look said (None: nothing, as a webhook without a record);
        `reported=False` means a record that carried no status at all: it shows the run
        as UNKNOWN only while no status is known, and never replaces one. A run's end
        is final: once COMPLETE or FAILED is known, no later status or partial credits
        change it. `fetched` marks an answer to a fetch of this run (for the slower
        pace of runs whose answers bring no usable status). `started` marks a
        workflowRun.started delivery: the run is running from `when` on (see also
        _started_while_watched). `attributes` are the attribution keys' values the look
        carried; they are merged into what is known of the run until its end is counted.
        """
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:
                if not pinned and created_at is not None and self._too_old(created_at, when):
                    self._remember_drop(
                        run_id, self._why_too_old(created_at, when), when, created_at
                    )
                    return False
                run = TrackedRun(run_id=run_id, first_seen=when, pinned=pinned)
                self.runs[run_id] = run
                self._undecided.add(run_id)
                if started and created_at is None:
                    self._started_while_watched(run)
                if self.dropped:
                    self.dropped.pop(run_id, None)
            elif pinned:
                run.pinned = True
            self.dirty_runs.add(run_id)
            self.removed_runs.discard(run_id)
            if created_at is not None and run.created_at is None:
                if not run.pinned and self._too_old(created_at, when):
                    # first seen without createdAt (a webhook): it turns out to be a run
                    # the window or the cap already let go of, so nothing is counted
                    self._drop(run, self._why_too_old(created_at, when), when, created_at)
                    return False
                run.created_at = created_at
                self._latest("last_created", created_at)
                if run.origin == WATCHED and run.started_at is not None:
                    self._observe_queue(run)  # counted by its start, its wait known now
            if (
                attributes is not None
                and self.attribution.keys
                and (not run.terminal_done or run.attribution_pending)
            ):
                known = run.attributes
                run.attributes = {**known, **dict(attributes)} if known else dict(attributes)
            if credits is not None and self._takes_credits(run, status, reported):
                run.credits = credits
                if run.credits_pending:
                    run.credits_pending = False
                    self._spend(run)
            if status is not None:
                if reported:
                    self._apply_status(run, status, when)
                elif run.status is None:
                    last_seen = run.last_seen
                    self._apply_status(run, RunStatus.UNKNOWN, when)
                    run.last_seen = last_seen  # no look at its status: still due for one
            if started and run.started_at is None and not self._ended(run):
                self._started(run, when)
            if fetched:
                self._note_fetched(run, when, status if reported else None)
            if run.origin is None and run.created_at is not None:
                self._decide_origin(run)
            if run.duration_pending and run.created_at is not None:
                run.duration_pending = False
                self._observe_duration(run)
            if run.attribution_pending and (fetched or self._attributes_known(run)):
                self._attribute(run)  # a fetch tells all: what it lacks, the run lacks
            return True

    @staticmethod
    def _takes_credits(run: TrackedRun, status: RunStatus | None, reported: bool) -> bool:
        """A finished run's credits are final once known; before that, only a record that
        does not say the run is still going (a lagging answer's credits are partial)."""
        if run.status is None or not run.status.terminal:
            return True
        if run.credits is not None:
            return False
        return not reported or status is None or status.terminal

    def _note_fetched(self, run: TrackedRun, when: float, status: RunStatus | None) -> None:
        run.last_seen = run.last_fetch = when
        usable = status is not None and status is not RunStatus.UNKNOWN
        if usable and run.created_at is not None:
            run.silent_fetches = 0
            return
        run.silent_fetches += 1
        if not usable and not run.silent_warned:
            run.silent_warned = True
            log.warning(
                "run answers without a usable status workflow_id=%s run_id=%s (missing or "
                "undocumented; shown as UNKNOWN unless a status is known, not counted as "
                "active, fetched again after up to %d refresh intervals; logged once per run)",
                self.workflow_id,
                run.run_id,
                MAX_SILENT_BACKOFF,
            )

    def _too_old(self, created_at: float, now: float) -> bool:
        window_start = now - self.discovery_config.window_seconds
        return created_at < window_start or created_at <= self.forget_horizon

    def _why_too_old(self, created_at: float, now: float) -> str:
        if created_at < now - self.discovery_config.window_seconds:
            return OUTSIDE_WINDOW
        return OVER_CAP

    def _apply_status(self, run: TrackedRun, status: RunStatus, when: float) -> None:
        previous = run.status
        if previous is not None and previous.terminal:
            return  # an end is final: late, repeated or stale looks change nothing
        if previous is not None:
            self._status_counts[previous] -= 1
        self._status_counts[status] += 1
        run.status = status
        run.last_seen = when
        if run.first_status is None:
            run.first_status = status
        if status.active:
            self._active.add(run.run_id)
            run.seen_active = True
        else:
            self._active.discard(run.run_id)
        if status in RUNNING and previous not in RUNNING and run.started_at is None:
            self._started(run, when)  # the first look that sees it running
        if status is RunStatus.RETRYING and previous is not status:
            if previous is not None or run.origin == WATCHED:
                self._count("retried")  # seen entering RETRYING, or created so while watched
            elif run.origin is None:
                run.retry_pending = True
        if status.terminal and not run.terminal_done and not run.terminal_pending:
            run.terminal_at = when
            if run.seen_active or run.origin == WATCHED:
                self._count_end(run)
            elif run.origin == BASELINE:
                self._baseline_end(run)
            else:
                run.terminal_pending = True  # decided once createdAt is known

    @staticmethod
    def _ended(run: TrackedRun) -> bool:
        """Its end is known (counted, judged baseline, or waiting for createdAt)."""
        return run.terminal_done or run.terminal_pending or bool(run.status and run.status.terminal)

    def _started(self, run: TrackedRun, when: float) -> None:
        run.started_at = when
        if run.origin == WATCHED and run.created_at is not None:
            self._observe_queue(run)  # else when createdAt (and so its origin) is known

    def _started_while_watched(self, run: TrackedRun) -> None:
        """A run first heard of by its `workflowRun.started` delivery, without createdAt.
        Once the first listing has covered the window, every run that existed then is
        known, so an unknown run that starts now was created while watched: counted as
        created at once. Its createdAt (for the duration) comes with a later look."""
        if not (self.discovering and self.discovery.filled):
            return  # nothing proves it new: wait for createdAt
        run.origin = WATCHED
        self._undecided.discard(run.run_id)
        self._count("created")

    def _decide_origin(self, run: TrackedRun) -> None:
        assert run.created_at is not None
        self._undecided.discard(run.run_id)
        run.origin = WATCHED if run.created_at >= self.watch_start else BASELINE
        if run.origin == WATCHED:
            self._count("created")
            if run.retry_pending:
                self._count("retried")  # created while watched, first seen retrying
            if run.started_at is not None:
                self._observe_queue(run)
                if run.terminal_done:  # its end was counted before createdAt was known
                    self._observe_processing(run)
        run.retry_pending = False
        if run.terminal_pending:
            run.terminal_pending = False
            if run.origin == WATCHED or run.seen_active:
                self._count_end(run)
            else:
                self._baseline_end(run)

    def _count_end(self, run: TrackedRun) -> None:
        run.terminal_done = True
        self._count("finished")
        at = run.terminal_at if run.terminal_at is not None else run.last_seen
        if run.status is RunStatus.FAILED:
            self._count("failed")
            self._latest("last_failure", at)
        else:
            self._latest("last_success", at)
        run.attribution_pending = bool(self.attribution.keys)
        if run.credits is not None:
            self._spend(run)
        else:
            run.credits_pending = True
        if run.attribution_pending and self._attributes_known(run):
            self._attribute(run)
        if run.created_at is not None:
            self._observe_duration(run)
        else:
            run.duration_pending = True
        if run.origin == WATCHED and run.started_at is not None:
            self._observe_processing(run)

    def _baseline_end(self, run: TrackedRun) -> None:
        """It ended before we watched (or we cannot tell): not an event, but the workflow
        did succeed or fail at least as late as the run's creation, and its credits
        count for budgets as spent on the day it was created (its end is not known)."""
        run.terminal_done = True
        run.attributes = None  # not an event: attributed to nothing
        if run.created_at is None:
            return
        if run.status is RunStatus.FAILED:
            self._latest("last_failure", run.created_at)
        else:
            self._latest("last_success", run.created_at)
        if run.credits is not None:
            self._spend(run)
        else:
            run.credits_pending = True
        self.meta_dirty = True

    @staticmethod
    def _end_counted(run: TrackedRun) -> bool:
        """Whether its end was counted as an event (rather than judged baseline): the
        rule _apply_status and _decide_origin both apply."""
        return run.seen_active or run.origin == WATCHED

    def _spend(self, run: TrackedRun) -> None:
        """A run whose end is decided and whose credits are now known: once per run.
        A counted end adds them to the credit counters, the credits histogram and the
        attribution, by the day it ended; a baseline run only to the budgets' days, by
        the day it was created."""
        credits = run.credits
        assert credits is not None
        if self._end_counted(run):
            self._count("credits", credits)
            if run.status is RunStatus.FAILED:
                self._count("failed_credits", credits)
            self.histograms["credits_used"].observe(credits)
            if self.attribution.keys and not run.attribution_pending:
                self.attribution.add_credits(run.attributes, credits)
            ended = run.terminal_at if run.terminal_at is not None else run.last_seen
        else:
            assert run.created_at is not None
            ended = run.created_at
        self.daily_credits.add(ended, credits)
        if not run.attribution_pending:
            run.attributes = None  # counted for good: nothing needs them any more
        self.meta_dirty = True

    def _attributes_known(self, run: TrackedRun) -> bool:
        """Whether looks at the run carried every object (metadata, input) the
        attribution keys read."""
        known = run.attributes
        return known is not None and all(key in known for key in self.attribution.keys)

    def _attribute(self, run: TrackedRun) -> None:
        """A counted end, attributed once: what is still unknown is NONE_VALUE, and its
        credits if _spend counted them already (else _spend adds them when they come)."""
        run.attribution_pending = False
        if self.attribution.keys:
            self.attribution.finished(run.attributes, run.status)
            if not run.credits_pending and run.credits is not None:
                self.attribution.add_credits(run.attributes, run.credits)
        if not run.credits_pending:
            run.attributes = None
        self.meta_dirty = True

    def _observe_queue(self, run: TrackedRun) -> None:
        assert run.created_at is not None and run.started_at is not None
        self.histograms["queue"].observe(max(0.0, run.started_at - run.created_at))
        self.meta_dirty = True

    def _observe_processing(self, run: TrackedRun) -> None:
        assert run.started_at is not None
        end = run.terminal_at if run.terminal_at is not None else run.last_seen
        self.histograms["processing"].observe(max(0.0, end - run.started_at))
        self.meta_dirty = True

    def _observe_duration(self, run: TrackedRun) -> None:
        assert run.created_at is not None
        end = run.terminal_at if run.terminal_at is not None else run.last_seen
        seconds = max(0.0, end - run.created_at)
        self.histograms["duration"].observe(seconds)
        self.meta_dirty = True

    def _count(self, name: str, amount: float = 1) -> None:
        """Add to one of the Counts of values.py."""
        self.values[name] += amount  # type: ignore[operator]
        self.meta_dirty = True

    def _latest(self, name: str, when: float) -> None:
        """One of the Times of values.py: it only moves forward."""
        current = self.values[name]
        if current is None or when > current:
            self.values[name] = when
            self.meta_dirty = True

    def delivered(self, when: float) -> None:
        """A webhook delivery about the workflow was applied."""
        with self.lock:
            self._latest("last_webhook", when)

    def credit_limit_reached(self, when: float) -> None:
        with self.lock:
            self._count("credit_limit_count")
            self._latest("credit_limit_at", when)

    # --- keeping it bounded ----------------------------------------------------------

    def set_pinned(self, run_ids: Iterable[str], drop_unpinned: bool) -> None:
        """Mark the configured runs; runs no longer configured are dropped when nothing
        else (discovery) would keep them up to date."""
        pinned = set(run_ids)
        with self.lock:
            for run in list(self.runs.values()):
                if run.pinned and run.run_id not in pinned and drop_unpinned:
                    self._drop(run, UNCONFIGURED)
                elif run.pinned != (run.run_id in pinned):
                    run.pinned = run.run_id in pinned
                    self.dirty_runs.add(run.run_id)

    def forget(self, now: float) -> int:
        """Drop finished runs that left the window, then enforce the cap. Returns how
        many runs were dropped."""
        config = self.discovery_config
        window_start = now - config.window_seconds
        with self.lock:
            dropped = [
                run
                for run in self.runs.values()
                if not run.pinned
                and (
                    (run.terminal_done and (run.created_at or now) < window_start)
                    or (run.created_at is None and run.first_seen < window_start)
                )
            ]
            for run in dropped:
                self._drop(run, OUTSIDE_WINDOW, now)
            excess = len(self.runs) - config.max_tracked_runs
            if excess > 0:
                candidates = sorted(
                    (r for r in self.runs.values() if not r.pinned),
                    key=lambda r: (r.active, r.created_at or -math.inf),
                )[:excess]
                for run in candidates:
                    self._drop(run, OVER_CAP, now)
                    if run.created_at is not None:
                        self.forget_horizon = max(self.forget_horizon, run.created_at)
                self.meta_dirty = True
                if not self._cap_warned:
                    self._cap_warned = True
                    log.warning(
                        "workflow_id=%s tracks more than max_tracked_runs=%d runs; the oldest "
                        "are dropped (finished first) and not counted if they change later",
                        self.workflow_id,
                        config.max_tracked_runs,
                    )
                dropped.extend(candidates)
            return len(dropped)

    def _drop(
        self,
        run: TrackedRun,
        reason: str,
        when: float | None = None,
        created_at: float | None = None,
    ) -> None:
        if self.runs.pop(run.run_id, None) is None:
            return
        self._remember_drop(run.run_id, reason, when, run.created_at or created_at)
        if run.status is not None:
            self._status_counts[run.status] -= 1
        self._active.discard(run.run_id)
        self._undecided.discard(run.run_id)
        self.dirty_runs.discard(run.run_id)
        self.removed_runs.add(run.run_id)

    # --- reading ---------------------------------------------------------------------

    def due_for_fetch(self, now: float, interval: float, exclude: set[str]) -> list[str]:
        """Runs whose state only a per-run fetch can bring: active ones not seen for an
        interval, and runs whose createdAt or status is still unknown."""
        return [run_id for run_id, _look in self.due_runs(now, interval, exclude)]

    def due_runs(self, now: float, interval: float, exclude: set[str]) -> list[tuple[str, float]]:
        """due_for_fetch, each with the time of its last look (0: never looked at)."""
        with self.lock:
            runs = self.runs
            due = [
                (run_id, runs[run_id].last_seen)
                for run_id in self._active
                if run_id not in exclude
                and now - runs[run_id].last_seen
                >= interval * silent_backoff(runs[run_id].silent_fetches)
            ]
            due.extend(
                (run.run_id, run.last_fetch)
                for run in runs.values()
                if (
                    run.created_at is None
                    or run.status is None
                    or run.status is RunStatus.UNKNOWN
                    or run.attribution_pending
                )
                and run.run_id not in exclude
                and not run.active
                # never fetched (known from a delivery or a listing without it): at once
                and now - run.last_fetch >= interval * silent_backoff(run.silent_fetches)
            )
            return due

    def awaiting_fetch(self, run_id: str) -> bool:
        """Whether only a fetch of the run can bring what its attribution needs (a
        listing that shows it, without its metadata or input, does not)."""
        with self.lock:
            run = self.runs.get(run_id)
            return run is not None and run.attribution_pending

    def awaiting_origin(self) -> bool:
        """Whether some run is not yet judged baseline or watched: known from a delivery
        without createdAt (the documented payloads carry none) that was not a start the
        baseline listing proves new. Until a look brings createdAt it is not counted as
        created (nor, unless seen running, its end)."""
        with self.lock:
            return bool(self._undecided)

    def oldest_look(self) -> float | None:
        """The time of the stalest data behind the workflow's metrics: its last listing
        or webhook delivery (when discovering; the watch's start before either: a
        delivery announces new runs as a listing would) or the last look at an active
        run, whichever is older. None when nothing can go stale."""
        with self.lock:
            looks = [self.runs[r].last_seen for r in self._active]
            if self.discovering:
                heard = [self.discovery.last_cycle, self.values.get("last_webhook")]
                known = [t for t in heard if t is not None]
                looks.append(max(known) if known else self.watch_start)
            return min(looks) if looks else None

    def touch(self, run_id: str, when: float) -> None:
        """A fetch of the run was attempted: do not try again before the interval."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is not None:
                run.last_seen = run.last_fetch = when

    def _remember_drop(
        self, run_id: str, reason: str, when: float | None, created_at: float | None
    ) -> None:
        dropped = self.dropped
        dropped[run_id] = DroppedRun(run_id, reason, when, created_at)
        dropped.move_to_end(run_id)
        if len(dropped) > MAX_REMEMBERED_DROPS:
            dropped.popitem(last=False)

    def drop(self, run_id: str, when: float | None = None) -> None:
        """The API does not know the run (404): forgotten."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is not None and not run.pinned:
                self._drop(run, GONE, when)

    def lookup(self, run_id: str) -> TrackedRun | DroppedRun | None:
        """A copy of the tracked run, or why it was let go of recently, or None."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is not None:
                return TrackedRun(**{s: getattr(run, s) for s in TrackedRun.__slots__})  # type: ignore[attr-defined]
            return self.dropped.get(run_id)

    def silent_fetches(self, run_id: str) -> int:
        """Fetches of the run in a row whose answers had no usable status (0 if unknown)."""
        with self.lock:
            run = self.runs.get(run_id)
            return run.silent_fetches if run is not None else 0

    def known(self, run_id: str) -> bool:
        with self.lock:
            return run_id in self.runs

    def oldest_active_created(self) -> float | None:
        with self.lock:
            times = [
                self.runs[r].created_at for r in self._active if self.runs[r].created_at is not None
            ]
            return min(times) if times else None  # type: ignore[type-var]

    def _oldest_queued_and_running(self) -> tuple[float | None, float | None]:
        """createdAt of the oldest queued run (NEW or WAITING, not known to have
        started) and the start of the longest-running one (known running)."""
        queued: float | None = None
        running: float | None = None
        runs = self.runs
        for run_id in self._active:
            run = runs[run_id]
            started = run.started_at
            if started is not None:
                if running is None or started < running:
                    running = started
            elif (
                run.status in QUEUED
                and run.created_at is not None
                and (queued is None or run.created_at < queued)
            ):
                queued = run.created_at
        return queued, running

    def credits_between(self, start: float, end: float) -> float:
        """Credits of the runs that ended in [start, end) (day boundaries), for budgets:
        counted ends by the day they were seen, baseline runs by the day created."""
        with self.lock:
            return self.daily_credits.between(start, end)

    def reconfigure_attribution(self, config: AttributionConfig) -> None:
        with self.lock:
            if self.attribution.reconfigure(config.keys, config.max_values_per_key):
                self.meta_dirty = True

    def snapshot(self, run_series_limit: int = 0) -> WorkflowSnapshot:
        with self.lock:
            active_runs: list[TrackedRun] = []
            if run_series_limit > 0:
                candidates = [self.runs[r] for r in self._active if not self.runs[r].pinned]
                candidates.sort(key=lambda r: (r.created_at or math.inf, r.run_id))
                active_runs = [
                    TrackedRun(**{s: getattr(r, s) for s in TrackedRun.__slots__})  # type: ignore[attr-defined]
                    for r in candidates[:run_series_limit]
                ]
            values = dict(self.values)
            values["oldest_active_created"] = self.oldest_active_created()  # the Derived ones
            queued, running = self._oldest_queued_and_running()
            values["oldest_queued_created"] = queued
            values["oldest_running_started"] = running
            values["oldest_look"] = self.oldest_look()
            return WorkflowSnapshot(
                workflow_id=self.workflow_id,
                values=values,
                histograms={
                    name: HistogramSnapshot(h.buckets, h.cumulative(), h.sum)
                    for name, h in self.histograms.items()
                },
                status_counts={s: self._status_counts.get(s, 0) for s in ALL_STATUSES},
                active_runs=active_runs,
                tracked=len(self.runs),
                attributes=self.attribution.rows() if self.attribution.keys else [],
            )

    # --- persistence -----------------------------------------------------------------

    def meta_record(self) -> dict[str, Any]:
        """Everything about the workflow but its runs, as persisted (values.py's names)."""
        with self.lock:
            record: dict[str, Any] = {"watch_start": self.watch_start}
            record.update((v.name, self.values[v.name]) for v in (*COUNTS, *TIMES))
            for dist in DISTRIBUTIONS:
                record.update(self.histograms[dist.name].record(dist.keys))
            record["forget_horizon"] = (
                None if self.forget_horizon == -math.inf else self.forget_horizon
            )
            record["discovery"] = asdict(self.discovery)
            record["daily_credits"] = self.daily_credits.record()
            if self.attribution.keys:
                record["attribution"] = self.attribution.record()
            return record

    def take_changes(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[str]]:
        """What changed since the last call: (meta or None, changed runs, removed ids)."""
        with self.lock:
            meta = self.meta_record() if self.meta_dirty or self.dirty_runs else None
            runs = [self.runs[r].to_record() for r in self.dirty_runs if r in self.runs]
            removed = list(self.removed_runs)
            self.meta_dirty = False
            self.dirty_runs.clear()
            self.removed_runs.clear()
            return meta, runs, removed

    def discard_changes(self) -> None:
        with self.lock:
            self.meta_dirty = False
            self.dirty_runs.clear()
            self.removed_runs.clear()

    def rebucket(self, buckets: Mapping[str, Iterable[float]]) -> None:
        """New bucket bounds from a reload: a histogram whose bounds changed restarts."""
        with self.lock:
            for name, bounds in buckets.items():
                if self.histograms[name].buckets != tuple(bounds):
                    self.histograms[name] = Histogram(tuple(bounds))
                    self.meta_dirty = True

    def mark_dirty(self) -> None:
        """Everything is written again at the next flush."""
        with self.lock:
            self.meta_dirty = True
            self.dirty_runs.update(self.runs)

    def requeue(self, removed: Iterable[str]) -> None:
        """A flush failed: write everything, and these removals, next time."""
        with self.lock:
            self.meta_dirty = True
            self.dirty_runs.update(self.runs)
            self.removed_runs.update(r for r in removed if r not in self.runs)

    @classmethod
    def restore(
        cls,
        workflow_id: str,
        meta: dict[str, Any],
        runs: Iterable[dict[str, Any]],
        buckets: Mapping[str, Iterable[float]],
        discovery: DiscoveryConfig | None,
        *,
        attribution: AttributionConfig | None = None,
    ) -> WorkflowHistory:
        history = cls(workflow_id, float(meta["watch_start"]), buckets, discovery, attribution)
        history.apply_remote(meta, runs, ())
        if "daily_credits" not in meta:  # kept by an earlier version: rebuilt from the runs
            with history.lock:
                history._rebuild_daily_credits()
        return history

    def _rebuild_daily_credits(self) -> None:
        """Credits by day from the tracked runs whose credits were counted (state of a
        version that kept no days): what budgets would have had for them."""
        for run in self.runs.values():
            if not run.terminal_done or run.credits is None or run.credits_pending:
                continue
            if self._end_counted(run):
                ended = run.terminal_at if run.terminal_at is not None else run.last_seen
                self.daily_credits.add(ended, run.credits)
            elif run.created_at is not None:
                self.daily_credits.add(run.created_at, run.credits)

    def apply_remote(
        self,
        meta: dict[str, Any] | None,
        runs: Iterable[dict[str, Any]],
        removed: Iterable[str],
    ) -> None:
        """Take state written by another process (the store at start, the Redis leader
        for a replica's mirror) as it is: nothing here counts or becomes dirty."""
        with self.lock:
            if meta is not None:
                self._load_meta(meta)
            for record in runs:
                run = TrackedRun.from_record(record)
                old = self.runs.get(run.run_id)
                if old is not None:
                    self._unindex(old)
                self.runs[run.run_id] = run
                if run.status is not None:
                    self._status_counts[run.status] += 1
                if run.active:
                    self._active.add(run.run_id)
                if run.origin is None:
                    self._undecided.add(run.run_id)
            for run_id in removed:
                old = self.runs.pop(run_id, None)
                if old is not None:
                    self._unindex(old)
            self.meta_dirty = False
            self.dirty_runs.clear()
            self.removed_runs.clear()

    def _unindex(self, run: TrackedRun) -> None:
        if run.status is not None:
            self._status_counts[run.status] -= 1
        self._active.discard(run.run_id)
        self._undecided.discard(run.run_id)

    def _load_meta(self, meta: dict[str, Any]) -> None:
        self.watch_start = float(meta["watch_start"])
        for count in COUNTS:
            kind = int if count.integer else float
            self.values[count.name] = kind(meta.get(count.name, 0))
        for time in TIMES:
            self.values[time.name] = meta.get(time.name)
        horizon = meta.get("forget_horizon")
        self.forget_horizon = -math.inf if horizon is None else float(horizon)
        for dist in DISTRIBUTIONS:
            if not self.histograms[dist.name].load(meta, dist.keys):
                log.warning(
                    "workflow_id=%s %s buckets changed; the %s histogram restarts",
                    self.workflow_id,
                    dist.name,
                    dist.metric,
                )
        known = set(DiscoveryState.__dataclass_fields__)
        self.discovery = DiscoveryState(
            **{k: v for k, v in meta.get("discovery", {}).items() if k in known}
        )
        self.daily_credits.load(meta.get("daily_credits", {}))
        self.attribution.load(meta.get("attribution", {}))

    def note_fetch(self, run_id: str, ok: bool, error: str | None, when: float) -> None:
        """How the last fetch of a listed run went (shown as its fetch_success)."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is None:  # a listed run whose first fetch failed
                run = self.runs[run_id] = TrackedRun(run_id=run_id, first_seen=when, pinned=True)
            if (run.fetch_ok, run.fetch_error) != (ok, error):
                run.fetch_ok, run.fetch_error = ok, error
                self.dirty_runs.add(run_id)
