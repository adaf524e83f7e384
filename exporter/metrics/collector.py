"""Turns what the exporter knows into fresh metric families on every scrape: the
per-workflow and exporter-health families. (The per-run families, most of the output,
are written by exposition.RunRenderer, which can reuse the lines of unchanged runs.)

Nothing here talks to the API, and no labelled metric object outlives a scrape, so a
workflow removed from the config disappears from the output at once.

Output for one workflow::

    copyai_workflow_runs{workflow_id="WCFG-1",status="PROCESSING"} 1.0
    copyai_workflow_info{workflow_id="WCFG-1",workflow_name="blog-writer"} 1.0
    copyai_workflow_runs_finished_total{workflow_id="WCFG-1"} 12.0
    copyai_workflow_run_duration_seconds_bucket{workflow_id="WCFG-1",le="60.0"} 9.0
    copyai_workflow_last_success_timestamp_seconds{workflow_id="WCFG-1"} 1.7e+09
    copyai_workflow_run_credits_by_attribute_total{workflow_id="WCFG-1",...,value="acme"} 42.0
    copyai_credit_budget_used_credits{budget="marketing"} 1234.0
    copyai_up 1.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from exporter.config import Config
from exporter.metrics.exposition import CACHE_NOTE
from exporter.tracking.book import HistoryBook
from exporter.tracking.budgets import period_bounds
from exporter.tracking.history import WorkflowSnapshot
from exporter.tracking.runs import RunStore
from exporter.tracking.values import (
    COUNTED,
    WORKFLOW_VALUES,
    Count,
    Derived,
    Distribution,
    Time,
)


@dataclass(frozen=True)
class HealthView:
    up: int
    last_successful_refresh: float | None


@dataclass(frozen=True)
class View:
    """A consistent picture for one scrape (the runtime swaps its parts on reload)."""

    config: Config
    store: RunStore
    health: HealthView
    scrape_duration: float
    book: HistoryBook
    now: float = 0.0  # wall time of the scrape (the budgets' current periods)
    state_up: int = 1
    leader: int = 1
    backlog: int = 0  # refresh work due but not started
    budget_used: float | None = None  # requests in the last minute / what the limit allows


class CopyaiCollector(Collector):
    def __init__(self, view: Callable[[], View]):
        self._view = view

    def describe(self) -> Iterator[Metric]:
        # Registering must not trigger collect() (which would read state before the
        # first scrape); the names are enough for the registry's duplicate checks.
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self._view())

    def _families(self, view: View | None) -> Iterator[Metric]:
        """The families in their order of output, each filled only when its turn comes:
        with 1,000 workflows the per-workflow families hold tens of thousands of
        samples, and rendering them one at a time (exposition.registry_chunks) keeps
        only one in memory."""
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
        backlog = GaugeMetricFamily(
            "copyai_refresh_backlog",
            "Pieces of refresh work due but not started (queued, or left for a later refresh "
            "because the API budget of an interval is spent): runs to fetch and run lists to "
            "page. Staying above 0 means the budget is too small for the work.",
        )
        budget = GaugeMetricFamily(
            "copyai_api_budget_utilization_ratio",
            "API requests this exporter made in the last minute divided by what "
            "api.max_requests_per_second allows in a minute; absent when it is unlimited. "
            "With replicas, each reports its own share: sum them.",
        )
        workflow_families = _WorkflowFamilies()
        budgets = _BudgetFamilies()
        if view is None:
            yield from (per_workflow, info, up, duration, last_refresh, backlog, budget)
            yield from workflow_families.names()
            yield from budgets.all()
            return

        snaps: list[WorkflowSnapshot] = []  # in output order
        for workflow in view.config.workflows:
            info.add_metric([workflow.id, workflow.display_name], 1.0)
            history = view.book.get(workflow.id)
            if history is None:  # only in the instant a reload swaps configs
                continue
            snaps.append(history.snapshot())
        for workflow_id in sorted(view.book.adopted()):  # unconfigured, from webhooks
            history = view.book.get(workflow_id)
            if history is None:
                continue
            info.add_metric([workflow_id, workflow_id], 1.0)
            snaps.append(history.snapshot())
        for snap in snaps:
            for s, n in snap.status_counts.items():
                per_workflow.add_metric([snap.workflow_id, s.value], float(n))
        yield per_workflow
        yield info
        del per_workflow, info
        up.add_metric([], float(view.health.up))
        duration.add_metric([], view.scrape_duration)
        last_refresh.add_metric([], view.health.last_successful_refresh or 0.0)
        backlog.add_metric([], float(view.backlog))
        if view.budget_used is not None:
            budget.add_metric([], view.budget_used)
        yield from (up, duration, last_refresh, backlog, budget)
        yield from workflow_families.filled(
            snaps,
            view.book.workspace_credit_limit(),
            state_up=view.state_up,
            leader=view.leader,
        )
        budgets.add(view)
        yield from budgets.all()


class _WorkflowFamilies:
    """One family per entry of tracking/values.py (counters, histograms, timestamps),
    filled from each workflow's snapshot, then the by-attribute families and the state
    store's own two gauges: made and filled one at a time (see _families)."""

    def _new(self, value: Count | Time | Derived | Distribution) -> Metric:
        label = ["workflow_id"]
        if isinstance(value, Count):
            return CounterMetricFamily(value.metric, value.help, labels=label)
        if isinstance(value, Distribution):
            return HistogramMetricFamily(value.metric, value.help, labels=label)
        return GaugeMetricFamily(value.metric, value.help, labels=label)

    def _by_attribute(self) -> tuple[Metric, Metric]:
        by_attribute = ["workflow_id", "attribute", "value"]
        credits = CounterMetricFamily(
            "copyai_workflow_run_credits_by_attribute",
            "Credits of the workflow's finished runs by the value of each attribution key "
            "(attribution.keys: a field of the run's metadata or input). The first "
            "attribution.max_values_per_key values of a key are kept, first come first kept; "
            "later ones count as __other__, a missing or non-scalar value as __none__; "
            f"values are cut to 64 characters. {COUNTED}",
            labels=by_attribute,
        )
        finished = CounterMetricFamily(
            "copyai_workflow_runs_finished_by_attribute",
            "Runs of the workflow seen reaching COMPLETE or FAILED, by the value of each "
            "attribution key (values kept as in copyai_workflow_run_credits_by_attribute_total). "
            f"{COUNTED}",
            labels=[*by_attribute, "status"],
        )
        return credits, finished

    def _state(self) -> tuple[Metric, Metric]:
        state_up = GaugeMetricFamily(
            "copyai_state_backend_up",
            "1 if the last read or write of the state store (SQLite file or Redis) "
            "succeeded; the memory store is always up.",
        )
        leader = GaugeMetricFamily(
            "copyai_state_leader",
            "1 if this replica writes the workflow history (with state.backend redis, the "
            "one holding the leader lease; a single exporter always does).",
        )
        return state_up, leader

    def names(self) -> list[Metric]:
        """Every family, empty (for the registry's duplicate checks)."""
        return [
            *(self._new(value) for value in WORKFLOW_VALUES),
            *self._by_attribute(),
            *self._state(),
        ]

    def filled(
        self,
        snaps: list[WorkflowSnapshot],
        workspace_limit: tuple[int, float | None],
        *,
        state_up: int,
        leader: int,
    ) -> Iterator[Metric]:
        for value in WORKFLOW_VALUES:
            family = self._new(value)
            if isinstance(value, Distribution):
                self._histograms(family, value.name, snaps)
            else:
                for snap in snaps:
                    number = snap.values[value.name]
                    if number is not None:  # a Time or Derived value is absent until one
                        family.add_metric([snap.workflow_id], number)  # type: ignore[attr-defined]
                self._workspace(value.name, family, workspace_limit)
            yield family
        credits, finished = self._by_attribute()
        for snap in snaps:
            for row in snap.attributes:
                these = [snap.workflow_id, row.attribute, row.value]
                credits.add_metric(these, row.credits)
                finished.add_metric([*these, "COMPLETE"], row.complete)
                finished.add_metric([*these, "FAILED"], row.failed)
        yield credits
        yield finished
        up, lead = self._state()
        up.add_metric([], float(state_up))
        lead.add_metric([], float(leader))
        yield up
        yield lead

    @staticmethod
    def _histograms(family: Metric, name: str, snaps: list[WorkflowSnapshot]) -> None:
        """What HistogramMetricFamily.add_metric adds for each workflow (its buckets,
        count and sum), built directly: 1,000 workflows are some 50,000 samples."""
        bucket, count, total = (f"{family.name}_{s}" for s in ("bucket", "count", "sum"))
        samples = family.samples
        bounds: dict[tuple[float, ...], list[str]] = {}
        for snap in snaps:
            histogram = snap.histograms[name]
            les = bounds.get(histogram.buckets)
            if les is None:
                les = bounds[histogram.buckets] = [
                    *(floatToGoString(b) for b in histogram.buckets),
                    "+Inf",
                ]
            workflow_id = snap.workflow_id
            samples.extend(
                Sample(bucket, {"workflow_id": workflow_id, "le": le}, n)
                for le, n in zip(les, histogram.counts, strict=True)
            )
            samples.append(Sample(count, {"workflow_id": workflow_id}, histogram.counts[-1]))
            samples.append(Sample(total, {"workflow_id": workflow_id}, histogram.sum))

    @staticmethod
    def _workspace(name: str, family: Metric, limit: tuple[int, float | None]) -> None:
        """workflowCreditLimit.reached events that name no workflow: workflow_id=""."""
        count, at = limit
        if name == "credit_limit_count" and count:
            family.add_metric([""], count)  # type: ignore[attr-defined]
        elif name == "credit_limit_at" and at is not None:
            family.add_metric([""], at)  # type: ignore[attr-defined]


class _BudgetFamilies:
    """Each configured credit budget in its current period (UTC calendar), from the
    credits by day of its workflows' histories, worked out at this scrape's time."""

    def __init__(self) -> None:
        label = ["budget"]
        self.limit = GaugeMetricFamily(
            "copyai_credit_budget_credits",
            "The credit budget's limit for each period (budgets[].credits).",
            labels=label,
        )
        self.used = GaugeMetricFamily(
            "copyai_credit_budget_used_credits",
            "Credits of the runs of the budget's workflows that finished within the current "
            "period, each run once: runs the exporter saw finish, by when it saw the end (a "
            "webhook's time, or the look that first saw it: late by up to "
            "refresh_interval_seconds), and runs that existed before the workflow was "
            "watched and that discovery lists, by their createdAt (the API gives no end "
            "time). It starts again from 0 at the start of each period.",
            labels=label,
        )
        self.start = GaugeMetricFamily(
            "copyai_credit_budget_period_start_timestamp_seconds",
            "Start of the budget's current period (midnight UTC of the day, of Monday for "
            "week, of the 1st for month).",
            labels=label,
        )
        self.end = GaugeMetricFamily(
            "copyai_credit_budget_period_end_timestamp_seconds",
            "End of the budget's current period (the next one's start); end minus time() is "
            "the time left.",
            labels=label,
        )

    def all(self) -> list[Metric]:
        return [self.limit, self.used, self.start, self.end]

    def add(self, view: View) -> None:
        for budget in view.config.budgets:
            start, end = period_bounds(budget.period, view.now)
            used = view.book.credits_between(budget.workflows, start, end)
            labels = [budget.name]
            self.limit.add_metric(labels, budget.credits)
            self.used.add_metric(labels, used)
            self.start.add_metric(labels, start)
            self.end.add_metric(labels, end)
