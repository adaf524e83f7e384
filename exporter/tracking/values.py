"""Every per-workflow value the history keeps, declared once: its name (the key in the
history and in the persisted state), its metric family and help text. The history,
its persistence (SQLite and Redis) and the collector all read this table, so adding a
counter is one entry here plus the rule in history.py that counts it.

    Count("retried", "copyai_workflow_runs_retried", "Runs of the workflow seen ...")

The order of the table is the order of the families in /metrics.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

COUNTED = (
    "Counted once per run as the exporter sees it happen (polling, listing or webhook); "
    "runs that existed before the workflow was first watched are not counted."
)


@dataclass(frozen=True)
class Count:
    """Events of one kind per workflow, never decreasing: a counter (`<metric>_total`)."""

    name: str
    metric: str
    help: str
    integer: bool = True  # persisted as an integer (credits are not)


@dataclass(frozen=True)
class Time:
    """The time of the latest event of one kind (Unix seconds): a gauge, absent until
    there has been one."""

    name: str
    metric: str
    help: str


@dataclass(frozen=True)
class Derived:
    """Computed from the tracked runs at each snapshot, never persisted: a gauge, absent
    when there is nothing to compute it from."""

    name: str
    metric: str
    help: str


@dataclass(frozen=True)
class Distribution:
    """Observations per workflow in buckets: a histogram. `buckets_option` names the
    collector config key giving the bucket bounds; `keys` are the persisted keys of the
    bounds, the per-bucket hits and the sum."""

    name: str
    metric: str
    help: str
    buckets_option: str
    keys: tuple[str, str, str]


WORKFLOW_VALUES: tuple[Count | Time | Derived | Distribution, ...] = (
    Count(
        "created",
        "copyai_workflow_runs_created",
        f"Runs of the workflow seen being created. {COUNTED}",
    ),
    Count(
        "finished",
        "copyai_workflow_runs_finished",
        f"Runs of the workflow seen reaching COMPLETE or FAILED. {COUNTED}",
    ),
    Count(
        "failed",
        "copyai_workflow_runs_failed",
        f"Runs of the workflow seen reaching FAILED. {COUNTED}",
    ),
    Count(
        "retried",
        "copyai_workflow_runs_retried",
        "Runs of the workflow seen entering RETRYING (a retry between two looks at the run "
        f"can be missed). {COUNTED}",
    ),
    Count(
        "credits",
        "copyai_workflow_run_credits",
        f"Credits of the workflow's runs that finished, each run counted once. {COUNTED}",
        integer=False,
    ),
    Count(
        "failed_credits",
        "copyai_workflow_failed_run_credits",
        "Credits of the workflow's runs that ended FAILED (credits spent for nothing), each "
        f"run counted once. {COUNTED}",
        integer=False,
    ),
    Distribution(
        "duration",
        "copyai_workflow_run_duration_seconds",
        "Run duration from createdAt to its end. The API reports no end time: the end is "
        "when a webhook delivered it, or else when polling first saw it, so without "
        "webhooks durations are late by up to refresh_interval_seconds.",
        buckets_option="duration_buckets_seconds",
        keys=("buckets", "bucket_hits", "duration_sum"),
    ),
    Distribution(
        "queue",
        "copyai_workflow_run_queue_seconds",
        "Time runs of the workflow waited before they started: createdAt to the first "
        "moment the run was known running (PROCESSING or RETRYING), which is its "
        "workflowRun.started delivery, or else the look that first saw it running, so "
        "without that webhook a wait is long by up to the time between two looks "
        "(refresh_interval_seconds). Observed once per run counted as created, never "
        "for runs that existed before the workflow was watched.",
        buckets_option="queue_buckets_seconds",
        keys=("queue_buckets", "queue_bucket_hits", "queue_sum"),
    ),
    Distribution(
        "processing",
        "copyai_workflow_run_processing_seconds",
        "Time runs of the workflow ran: from their start (as in "
        "copyai_workflow_run_queue_seconds) to their end (COMPLETE or FAILED: a webhook's "
        "time, or else when a look first saw it). Observed once per run counted as "
        "created whose start and end were both seen; without webhooks start and end are "
        "each late by up to refresh_interval_seconds, so a value is off by at most that.",
        buckets_option="processing_buckets_seconds",
        keys=("processing_buckets", "processing_bucket_hits", "processing_sum"),
    ),
    Distribution(
        "credits_used",
        "copyai_workflow_run_credits_used",
        "Credits of each finished run of the workflow, observed once per run when its end "
        f"is counted and its credits are known. {COUNTED}",
        buckets_option="credits_buckets",
        keys=("credits_buckets", "credits_bucket_hits", "credits_used_sum"),
    ),
    Time(
        "last_success",
        "copyai_workflow_last_success_timestamp_seconds",
        "When a run of the workflow last reached COMPLETE (as observed; for runs that ended "
        "before watching began, their createdAt). Absent if never.",
    ),
    Time(
        "last_failure",
        "copyai_workflow_last_failure_timestamp_seconds",
        "When a run of the workflow last reached FAILED (as observed; for runs that ended "
        "before watching began, their createdAt). Absent if never.",
    ),
    Time(
        "last_created",
        "copyai_workflow_last_run_created_timestamp_seconds",
        "createdAt of the newest run of the workflow seen. Absent if none.",
    ),
    Derived(
        "oldest_active_created",
        "copyai_workflow_oldest_active_run_created_timestamp_seconds",
        "createdAt of the oldest tracked run that is active (NEW, WAITING, PROCESSING or "
        "RETRYING; UNKNOWN is not active); absent when none is. time() minus this is how "
        "long the most stuck run has been going.",
    ),
    Derived(
        "oldest_queued_created",
        "copyai_workflow_oldest_queued_run_created_timestamp_seconds",
        "createdAt of the oldest tracked run that is queued (NEW or WAITING, not yet known "
        "to have started); absent when none is. time() minus this is the longest wait of "
        "a run still waiting to start: a backlog.",
    ),
    Derived(
        "oldest_running_started",
        "copyai_workflow_oldest_running_run_started_timestamp_seconds",
        "When the longest-running tracked run started (known running: PROCESSING or "
        "RETRYING, from its workflowRun.started delivery or the first look that saw it "
        "running, late by up to refresh_interval_seconds without that webhook); absent "
        "when none is running. time() minus this is how long a hung run has run.",
    ),
    Derived(
        "oldest_look",
        "copyai_workflow_oldest_look_timestamp_seconds",
        "When the stalest data behind the workflow's metrics was looked at: its last "
        "listing or webhook delivery (with discover: true) or the last look at an active "
        "run, whichever is older. time() minus this is how far behind the data is; "
        "absent when nothing can go stale (no active run, no discovery).",
    ),
    Time(
        "last_webhook",
        "copyai_workflow_last_webhook_timestamp_seconds",
        "When the last webhook delivery about the workflow was applied (any event type). "
        "Absent if none.",
    ),
    Count(
        "credit_limit_count",
        "copyai_credit_limit_reached",
        "workflowCreditLimit.reached webhook events received (workflow_id is empty for "
        "events that name no workflow).",
    ),
    Time(
        "credit_limit_at",
        "copyai_credit_limit_reached_timestamp_seconds",
        "When the last workflowCreditLimit.reached event arrived.",
    ),
)
COUNTS = tuple(v for v in WORKFLOW_VALUES if isinstance(v, Count))
TIMES = tuple(v for v in WORKFLOW_VALUES if isinstance(v, Time))
DERIVED = tuple(v for v in WORKFLOW_VALUES if isinstance(v, Derived))
DISTRIBUTIONS = tuple(v for v in WORKFLOW_VALUES if isinstance(v, Distribution))


class Histogram:
    """One distribution of one workflow: bucket bounds, hits per bucket, and the sum."""

    __slots__ = ("buckets", "hits", "sum")

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.hits = [0] * (len(buckets) + 1)  # not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.hits[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def cumulative(self) -> tuple[int, ...]:
        counts, total = [], 0
        for hits in self.hits:
            total += hits
            counts.append(total)
        return tuple(counts)

    def record(self, keys: tuple[str, str, str]) -> dict[str, Any]:
        bounds, hits, total = keys
        return {bounds: list(self.buckets), hits: list(self.hits), total: self.sum}

    def load(self, meta: dict[str, Any], keys: tuple[str, str, str]) -> bool:
        """Take the persisted hits and sum if they were kept with the same bounds;
        False if the bounds changed and there were hits (which are then dropped)."""
        bounds, hits, total = keys
        if tuple(meta.get(bounds, ())) == self.buckets and bounds in meta:
            self.hits = [int(x) for x in meta[hits]]
            self.sum = float(meta.get(total, 0.0))
            return True
        return not any(meta.get(hits, ()))


@dataclass(frozen=True)
class HistogramSnapshot:
    buckets: tuple[float, ...]
    counts: tuple[int, ...]  # cumulative, one per bucket, then +Inf
    sum: float
