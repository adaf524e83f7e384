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

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import Config
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


class CopyaiCollector(Collector):
    def __init__(self, view: Callable[[], View], wall_clock: Callable[[], float] = time.time):
        self._view = view
        self._wall_clock = wall_clock

    def describe(self) -> Iterator[Metric]:
        # Registering must not trigger collect() (which would read state before the
        # first scrape); the names are enough for the registry's duplicate checks.
        return iter(self._families(None))

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
        if view is None:
            return families

        now = self._wall_clock()
        sparse = view.config.collector.sparse_status
        counts = {w.id: dict.fromkeys(ALL_STATUSES, 0) for w in view.config.workflows}
        for state in view.store.snapshot():
            labels = [state.workflow_id, state.run_id]
            if state.fetch_ok is not None:
                fetch_ok.add_metric(labels, 1.0 if state.fetch_ok else 0.0)
            run = state.run
            if run is None:
                continue
            bucket = counts.get(state.workflow_id)
            if bucket is not None:  # None only in the instant a reload swaps configs
                bucket[run.status] += 1
            if sparse:
                status.add_metric([*labels, run.status.value], 1.0)
            else:
                for s in ALL_STATUSES:
                    status.add_metric([*labels, s.value], 1.0 if s is run.status else 0.0)
            if run.credits is not None:
                credits_used.add_metric(labels, run.credits)
            if run.created_at is not None:
                created.add_metric(labels, run.created_at)
                age.add_metric(labels, max(0.0, now - run.created_at))
        for workflow in view.config.workflows:
            info.add_metric([workflow.id, workflow.display_name], 1.0)
            for s, n in counts[workflow.id].items():
                per_workflow.add_metric([workflow.id, s.value], float(n))
        up.add_metric([], float(view.health.up))
        duration.add_metric([], view.scrape_duration)
        last_refresh.add_metric([], view.health.last_successful_refresh or 0.0)
        return families
