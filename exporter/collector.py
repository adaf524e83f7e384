"""Turns what the exporter knows into fresh metric families on every scrape.

Nothing here talks to the API, and no labelled metric object outlives a scrape, so a
run removed from the config (or a workflow renamed) disappears from the output at once.

Output for one run, refreshed at most every `refresh_interval_seconds`::

    copyai_workflow_run_status{workflow_id="WCFG-1",run_id="WRUN-1",status="PROCESSING"} 1.0
    copyai_workflow_run_status{workflow_id="WCFG-1",run_id="WRUN-1",status="COMPLETE"} 0.0
    ...
    copyai_workflow_run_credits{workflow_id="WCFG-1",run_id="WRUN-1"} 9001.0
    copyai_workflow_run_created_timestamp_seconds{workflow_id="WCFG-1",run_id="WRUN-1"} 1.6958e+09
    copyai_workflow_run_age_seconds{workflow_id="WCFG-1",run_id="WRUN-1"} 42.0
    copyai_workflow_run_fetch_success{workflow_id="WCFG-1",run_id="WRUN-1"} 1.0
    copyai_workflow_runs{workflow_id="WCFG-1",status="PROCESSING"} 1.0
    copyai_workflow_info{workflow_id="WCFG-1",workflow_name="blog-writer"} 1.0
    copyai_up 1.0
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.config import Config
from exporter.history import HistoryBook, WorkflowSnapshot
from exporter.model import ALL_STATUSES
from exporter.state import ApiHealth, RunStore

CACHE_NOTE = "Active runs are cached for up to collector.refresh_interval_seconds."
RUN_LABELS = ["workflow_id", "run_id"]


@dataclass(frozen=True)
class View:
    """A consistent picture for one scrape (the runtime swaps its parts on reload)."""

    config: Config
    store: RunStore
    health: ApiHealth
    scrape_duration: float
    book: HistoryBook


class CopyaiCollector(Collector):
    def __init__(self, view: Callable[[], View], wall_clock: Callable[[], float] = time.time):
        self._view = view
        self._wall_clock = wall_clock

    def describe(self) -> Iterator[Metric]:
        # Registering must not trigger collect() (which would read state before the
        # first scrape); the names are enough for the registry's duplicate checks. The
        # credits counter is left out: its family name equals the credits gauge's, which
        # the registry would call a clash, though the text format keeps them apart
        # (copyai_workflow_run_credits vs copyai_workflow_run_credits_total).
        return iter(
            f
            for f in self._families(None)
            if not (f.name == "copyai_workflow_run_credits" and f.type == "counter")
        )

    def collect(self) -> Iterator[Metric]:
        return iter(self._families(self._view()))

    def _families(self, view: View | None) -> list[Metric]:
        status = GaugeMetricFamily(
            "copyai_workflow_run_status",
            "Current status of a configured run: 1 for the status the API last reported, "
            "0 for the others (UNKNOWN = missing or undocumented). Absent until the run "
            f"has been fetched once. {CACHE_NOTE}",
            labels=[*RUN_LABELS, "status"],
        )
        credits_used = GaugeMetricFamily(
            "copyai_workflow_run_credits",
            "Credits used by the run, as the API's `credits` field reports them; absent "
            f"while the API reports none. {CACHE_NOTE}",
            labels=RUN_LABELS,
        )
        created = GaugeMetricFamily(
            "copyai_workflow_run_created_timestamp_seconds",
            "When the run was created (the API's `createdAt`), as Unix time.",
            labels=RUN_LABELS,
        )
        age = GaugeMetricFamily(
            "copyai_workflow_run_age_seconds",
            "Seconds from the run's `createdAt` to this scrape.",
            labels=RUN_LABELS,
        )
        fetch_ok = GaugeMetricFamily(
            "copyai_workflow_run_fetch_success",
            "1 if the last fetch of the run from the API succeeded, 0 if it failed "
            "(the run's other series then keep their last known values).",
            labels=RUN_LABELS,
        )
        per_workflow = GaugeMetricFamily(
            "copyai_workflow_runs",
            "Tracked runs of the workflow in each status (every status present, zero "
            f"when none). Runs not yet fetched are not counted. {CACHE_NOTE}",
            labels=["workflow_id", "status"],
        )
        info = GaugeMetricFamily(
            "copyai_workflow_info",
            "Always 1; joins a workflow id to its configured name (the id if none).",
            labels=["workflow_id", "workflow_name"],
        )
        up = GaugeMetricFamily(
            "copyai_up",
            "1 if the Copy.ai API answered the exporter's last requests with this key, 0 "
            "if it could not be reached, refused the key (401/403) or answered only 5xx.",
        )
        duration = GaugeMetricFamily(
            "copyai_scrape_duration_seconds",
            "Time this scrape spent refreshing data from the API (bounded by the scrape "
            "timeout; work still running continues in the background).",
        )
        last_refresh = GaugeMetricFamily(
            "copyai_last_successful_refresh_timestamp_seconds",
            "Unix time of the last refresh in which every API request got an answer "
            "(per-run 404s count as answers); 0 if none yet.",
        )
        families: list[Metric] = [
            status,
            credits_used,
            created,
            age,
            fetch_ok,
            per_workflow,
            info,
            up,
            duration,
            last_refresh,
        ]
        workflow_families = _WorkflowFamilies()
        families.extend(workflow_families.all())
        if view is None:
            return families

        now = self._wall_clock()
        sparse = view.config.collector.sparse_status

        def add_run(labels: list[str], run_status, run_credits, created_at) -> None:
            if sparse:
                status.add_metric([*labels, run_status.value], 1.0)
            else:
                for s in ALL_STATUSES:
                    status.add_metric([*labels, s.value], 1.0 if s is run_status else 0.0)
            if run_credits is not None:
                credits_used.add_metric(labels, run_credits)
            if created_at is not None:
                created.add_metric(labels, created_at)
                age.add_metric(labels, max(0.0, now - created_at))

        for state in view.store.snapshot():
            labels = [state.workflow_id, state.run_id]
            if state.fetch_ok is not None:
                fetch_ok.add_metric(labels, 1.0 if state.fetch_ok else 0.0)
            if state.run is not None:
                add_run(labels, state.run.status, state.run.credits, state.run.created_at)
        for workflow in view.config.workflows:
            info.add_metric([workflow.id, workflow.display_name], 1.0)
            history = view.book.get(workflow.id)
            if history is None:  # only in the instant a reload swaps configs
                continue
            limit = workflow.discovery.max_run_series if workflow.discovery.run_series else 0
            snap = history.snapshot(run_series_limit=limit if workflow.discover else 0)
            for s, n in snap.status_counts.items():
                per_workflow.add_metric([workflow.id, s.value], float(n))
            for run in snap.active_runs:  # opted-in discovered runs: active only, capped
                assert run.status is not None
                add_run([workflow.id, run.run_id], run.status, run.credits, run.created_at)
            workflow_families.add(snap)
        for workflow_id in sorted(view.book.adopted()):  # unconfigured, from webhooks
            history = view.book.get(workflow_id)
            if history is None:
                continue
            info.add_metric([workflow_id, workflow_id], 1.0)
            snap = history.snapshot()
            for s, n in snap.status_counts.items():
                per_workflow.add_metric([workflow_id, s.value], float(n))
            workflow_families.add(snap)
        workflow_families.add_workspace(view.book.workspace_credit_limit())
        up.add_metric([], float(view.health.up))
        duration.add_metric([], view.scrape_duration)
        last_refresh.add_metric([], view.health.last_successful_refresh or 0.0)
        workflow_families.state_up.add_metric([], float(view.book.backend_up))
        return families


class _WorkflowFamilies:
    """Counters, the duration histogram and timestamps per workflow, from its history."""

    def __init__(self) -> None:
        label = ["workflow_id"]
        counted = (
            "Counted once per run as the exporter sees it happen (polling, listing or "
            "webhook); runs that existed before the workflow was first watched are not counted."
        )
        self.created = CounterMetricFamily(
            "copyai_workflow_runs_created",
            f"Runs of the workflow seen being created. {counted}",
            labels=label,
        )
        self.finished = CounterMetricFamily(
            "copyai_workflow_runs_finished",
            f"Runs of the workflow seen reaching COMPLETE or FAILED. {counted}",
            labels=label,
        )
        self.failed = CounterMetricFamily(
            "copyai_workflow_runs_failed",
            f"Runs of the workflow seen reaching FAILED. {counted}",
            labels=label,
        )
        self.retried = CounterMetricFamily(
            "copyai_workflow_runs_retried",
            f"Runs of the workflow seen entering RETRYING (a retry between two looks at "
            f"the run can be missed). {counted}",
            labels=label,
        )
        self.credits = CounterMetricFamily(
            "copyai_workflow_run_credits",
            f"Credits of the workflow's runs that finished, each run counted once. {counted}",
            labels=label,
        )
        self.duration = HistogramMetricFamily(
            "copyai_workflow_run_duration_seconds",
            "Run duration from createdAt to its end. The API reports no end time: the end "
            "is when a webhook delivered it, or else when polling first saw it, so without "
            "webhooks durations are late by up to refresh_interval_seconds.",
            labels=label,
        )
        self.last_success = GaugeMetricFamily(
            "copyai_workflow_last_success_timestamp_seconds",
            "When a run of the workflow last reached COMPLETE (as observed; for runs that "
            "ended before watching began, their createdAt). Absent if never.",
            labels=label,
        )
        self.last_failure = GaugeMetricFamily(
            "copyai_workflow_last_failure_timestamp_seconds",
            "When a run of the workflow last reached FAILED (as observed; for runs that "
            "ended before watching began, their createdAt). Absent if never.",
            labels=label,
        )
        self.last_created = GaugeMetricFamily(
            "copyai_workflow_last_run_created_timestamp_seconds",
            "createdAt of the newest run of the workflow seen. Absent if none.",
            labels=label,
        )
        self.oldest_active = GaugeMetricFamily(
            "copyai_workflow_oldest_active_run_created_timestamp_seconds",
            "createdAt of the oldest tracked run that is not finished; absent when none "
            "is active. time() minus this is how long the most stuck run has been going.",
            labels=label,
        )
        self.credit_limit = CounterMetricFamily(
            "copyai_credit_limit_reached",
            "workflowCreditLimit.reached webhook events received (workflow_id is empty "
            "for events that name no workflow).",
            labels=label,
        )
        self.credit_limit_at = GaugeMetricFamily(
            "copyai_credit_limit_reached_timestamp_seconds",
            "When the last workflowCreditLimit.reached event arrived.",
            labels=label,
        )
        self.state_up = GaugeMetricFamily(
            "copyai_state_backend_up",
            "1 if the last read or write of the state store (state.path) succeeded; the "
            "memory store is always up.",
        )

    def all(self) -> list[Metric]:
        return [
            self.created,
            self.finished,
            self.failed,
            self.retried,
            self.credits,
            self.duration,
            self.last_success,
            self.last_failure,
            self.last_created,
            self.oldest_active,
            self.credit_limit,
            self.credit_limit_at,
            self.state_up,
        ]

    def add(self, snap: WorkflowSnapshot) -> None:
        labels = [snap.workflow_id]
        self.created.add_metric(labels, snap.created)
        self.finished.add_metric(labels, snap.finished)
        self.failed.add_metric(labels, snap.failed)
        self.retried.add_metric(labels, snap.retried)
        self.credits.add_metric(labels, snap.credits)
        bounds = [floatToGoString(b) for b in snap.buckets] + ["+Inf"]
        self.duration.add_metric(
            labels, list(zip(bounds, snap.bucket_counts, strict=True)), snap.duration_sum
        )
        for family, value in (
            (self.last_success, snap.last_success),
            (self.last_failure, snap.last_failure),
            (self.last_created, snap.last_created),
            (self.oldest_active, snap.oldest_active_created),
            (self.credit_limit_at, snap.credit_limit_at),
        ):
            if value is not None:
                family.add_metric(labels, value)
        self.credit_limit.add_metric(labels, snap.credit_limit_count)

    def add_workspace(self, limit: tuple[int, float | None]) -> None:
        count, at = limit
        if count:
            self.credit_limit.add_metric([""], count)
        if at is not None:
            self.credit_limit_at.add_metric([""], at)
