"""The panels of the dashboard, row by row (see dashboard.py for the conventions).

Longer than 500 lines because a panel is declarative data (title, queries, units,
thresholds, description) and there are over forty of them; split across modules, a
row would be harder to read against the dashboard it draws."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.grafana import (
    TIMESERIES,
    Board,
    instant,
    series,
    stat_options,
    table_columns,
    thresholds,
)
from exporter.mixin.rules import BUDGET_LEVEL, BUDGET_WINDOW

if TYPE_CHECKING:
    from exporter.mixin.dashboard import Queries

ACTIVE = 'status=~"NEW|WAITING|PROCESSING|RETRYING"'
NEVER = {"noValue": "never"}


def add_all(b: Board, q: Queries, config: MixinConfig) -> None:
    overview(b, q, config)
    slo(b, q, config)
    runs(b, q, config)
    waits(b, q, config)
    credits(b, q, config)
    spending(b, q, config)
    freshness(b, q, config)
    health(b, q, config)


def overview(b: Board, q: Queries, config: MixinConfig) -> None:
    t = config.thresholds
    b.row("Overview")
    b.add(
        "stat",
        "Copy.ai API",
        [instant(f"min({q.m('copyai_up')})")],
        w=4,
        h=4,
        description="copyai_up: can the exporter talk to the Copy.ai API with its key?",
        options=stat_options(),
        field={
            "mappings": [
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "Unreachable", "color": "red"},
                        "1": {"text": "Reachable", "color": "green"},
                    },
                }
            ],
            **thresholds((None, "red"), (1, "green")),
        },
    )
    b.add(
        "stat",
        "Exporters up",
        [instant(f"sum({q.m('up')}) or vector(0)")],
        w=4,
        h=4,
        description="Exporter replicas Prometheus can scrape in the selected jobs.",
        options=stat_options(),
        field=thresholds((None, "red"), (1, "green")),
    )
    b.add(
        "stat",
        "Active runs",
        [instant(f"sum({q.filtered(active(q))}) or vector(0)")],
        w=4,
        h=4,
        description="Tracked runs that are NEW, WAITING, PROCESSING or RETRYING.",
        options=stat_options(),
        field=thresholds((None, "blue")),
    )
    b.add(
        "stat",
        "Runs failed (24h)",
        [
            instant(
                f"sum({q.filtered(q.per_workflow(q.recorded('copyai_workflow_runs_failed', 'increase1d')))}) or vector(0)"
            )
        ],
        w=4,
        h=4,
        description="Runs seen reaching FAILED in the last 24 hours.",
        options=stat_options(),
        field={"decimals": 0, **thresholds((None, "green"), (1, "orange"))},
    )
    credits_total = q.m("copyai_workflow_run_credits_total")
    b.add(
        "stat",
        "Credits (24h)",
        [
            instant(
                f"sum({q.filtered(f'max by (workflow_id) (increase({credits_total}[24h]))')})"
                " or vector(0)"
            )
        ],
        w=4,
        h=4,
        description="Credits of runs that finished in the last 24 hours.",
        options=stat_options(),
        field={"decimals": 0, **thresholds((None, "purple"))},
    )
    oldest = q.recorded("copyai_workflow_oldest_active_run_created_timestamp_seconds", "min")
    b.add(
        "stat",
        "Oldest active run",
        [instant(f"max(time() - {q.filtered(q.per_workflow(oldest))})")],
        w=4,
        h=4,
        unit="s",
        description="Age of the longest-running active run: a stuck run shows here first "
        "(red where CopyaiRunStuck fires).",
        options=stat_options(),
        field={
            "noValue": "none active",
            **thresholds(
                (None, "green"), (t.run_stuck_seconds / 2, "orange"), (t.run_stuck_seconds, "red")
            ),
        },
    )


def slo(b: Board, q: Queries, config: MixinConfig) -> None:
    b.row("Objectives")
    failures = q.recorded("copyai_workflow_run_failures_per_run", "ratio_rate1h")
    target = q.recorded("copyai_workflow_slo_target", "ratio")
    b.add(
        "timeseries",
        "Success ratio against target (1h)",
        [
            series(q.named(f"1 - {q.per_workflow(failures)}"), "{{workflow_name}}"),
            series(q.named(q.per_workflow(target)), "{{workflow_name}} target"),
        ],
        w=8,
        h=8,
        unit="percentunit",
        description="Share of the runs finished in the last hour that completed, and each "
        f"workflow's objective (slo.target, {config.slo.target:g} unless set per workflow).",
        options=TIMESERIES,
        field={"min": 0, "max": 1},
        overrides=[
            {
                "matcher": {"id": "byFrameRefID", "options": "B"},
                "properties": [
                    {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}
                ],
            }
        ],
    )
    burn3d = q.recorded("copyai_workflow_error_budget_burn", "rate3d")
    b.add(
        "bargauge",
        "Error budget left (3d)",
        [instant(q.named(f"1 - {q.per_workflow(burn3d)}"), "{{workflow_name}}")],
        w=8,
        h=8,
        unit="percentunit",
        description="Share of the error budget (1 - target) not spent by the runs that "
        "finished in the last 3 days; below 0, the objective is missed over that window.",
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
        field={"min": -1, "max": 1, **thresholds((None, "red"), (0, "orange"), (0.5, "green"))},
    )
    burns = [(w, q.recorded("copyai_workflow_error_budget_burn", f"rate{w}")) for w in ("1h", "6h")]
    b.add(
        "timeseries",
        "Error budget burn rate",
        [series(q.named(q.per_workflow(expr)), f"{{{{workflow_name}}}} {w}") for w, expr in burns],
        w=8,
        h=8,
        unit="x",
        description="Failure ratio divided by the error budget: 1 spends the budget exactly "
        "over the window. CopyaiWorkflowErrorBudgetBurn pages at 14.4 (1h, with 5m) and "
        "6 (6h, with 30m), and opens a ticket at 3 (1d) and 1 (3d).",
        options=TIMESERIES,
        field=thresholds((None, "green"), (1, "orange"), (6, "red"), line=True),
    )


def runs(b: Board, q: Queries, config: MixinConfig) -> None:
    t = config.thresholds
    b.row("Runs")
    runs_now = q.m("copyai_workflow_runs")
    b.add(
        "timeseries",
        "Runs by status",
        [
            series(
                f"sum by (status) ({q.filtered(f'max by (workflow_id, status) ({runs_now})')})",
                "{{status}}",
            )
        ],
        w=8,
        h=8,
        description="Tracked runs (listed and discovered) in each status.",
        options=TIMESERIES,
        field={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}},
    )
    rate = "max by (workflow_id) (rate({}[$__rate_interval])) * 3600"
    b.add(
        "timeseries",
        "Runs finished and failed per hour",
        [
            series(
                f"sum by (workflow_name) ({q.named(rate.format(q.m('copyai_workflow_runs_finished_total')))})",
                "{{workflow_name}} finished",
            ),
            series(
                f"sum by (workflow_name) ({q.named(rate.format(q.m('copyai_workflow_runs_failed_total')))})",
                "{{workflow_name}} failed",
            ),
        ],
        w=8,
        h=8,
        description="Runs reaching COMPLETE or FAILED, and FAILED alone, as an hourly rate.",
        options=TIMESERIES,
    )
    ratio = q.recorded("copyai_workflow_run_failures_per_run", "ratio_rate30m")
    b.add(
        "timeseries",
        "Failure ratio (30m)",
        [series(q.named(q.per_workflow(ratio)), "{{workflow_name}}")],
        w=8,
        h=8,
        unit="percentunit",
        description="Share of the runs finished in the past 30 minutes that failed: the "
        "series CopyaiWorkflowRunsFailing reads (the line is its threshold; it also needs "
        f"{t.runs_failing_min_failures} failures).",
        options=TIMESERIES,
        field={
            "min": 0,
            "max": 1,
            **thresholds((None, "green"), (t.runs_failing_ratio, "red"), line=True),
        },
    )
    b.add(
        "timeseries",
        "Runs created and retried per hour",
        [
            series(
                f"sum by (workflow_name) ({q.named(rate.format(q.m('copyai_workflow_runs_created_total')))})",
                "{{workflow_name}} created",
            ),
            series(
                f"sum by (workflow_name) ({q.named(rate.format(q.m('copyai_workflow_runs_retried_total')))})",
                "{{workflow_name}} retried",
            ),
        ],
        w=8,
        h=8,
        description="Runs seen being created, and entering RETRYING, as an hourly rate.",
        options=TIMESERIES,
    )
    oldest = q.recorded("copyai_workflow_oldest_active_run_created_timestamp_seconds", "min")
    b.add(
        "timeseries",
        "Oldest active run age",
        [series(q.named(f"time() - {q.per_workflow(oldest)}"), "{{workflow_name}}")],
        w=8,
        h=8,
        unit="s",
        description="How long the longest-running active run of each workflow has been "
        "going (the line is where CopyaiRunStuck fires).",
        options=TIMESERIES,
        field=thresholds((None, "green"), (t.run_stuck_seconds, "red"), line=True),
    )
    bucket = q.m("copyai_workflow_run_duration_seconds_bucket")
    duration = f"max by (workflow_id, le) (rate({bucket}[$__rate_interval]))"
    b.add(
        "timeseries",
        "Run duration",
        [
            series(
                f"histogram_quantile({p}, sum by (workflow_name, le) ({q.named(duration)}))",
                f"{{{{workflow_name}}}} p{int(p * 100)}",
            )
            for p in (0.5, 0.95, 0.99)
        ],
        w=8,
        h=8,
        unit="s",
        description="createdAt to the end of runs finishing now; without webhooks, late by "
        "up to the refresh interval.",
        options=TIMESERIES,
    )
    since = "time() - {}"
    b.add(
        "table",
        "Workflows",
        [
            instant(
                q.named(
                    since.format(
                        q.per_workflow(
                            q.recorded("copyai_workflow_last_success_timestamp_seconds", "max")
                        )
                    )
                ),
                table=True,
            ),
            instant(
                q.named(since.format(q.workflow("copyai_workflow_last_failure_timestamp_seconds"))),
                table=True,
            ),
            instant(
                q.named(
                    since.format(q.workflow("copyai_workflow_last_run_created_timestamp_seconds"))
                ),
                table=True,
            ),
            instant(f"sum by (workflow_id, workflow_name) ({q.named(active(q))})", table=True),
        ],
        w=24,
        h=7,
        unit="s",
        description="Time since each workflow's last success (red where "
        "CopyaiNoRecentSuccess fires), last failure and newest run, and its active runs.",
        transformations=table_columns(
            {
                "workflow_name": "Workflow",
                "workflow_id": "ID",
                "Value #A": "Since last success",
                "Value #B": "Since last failure",
                "Value #C": "Since newest run",
                "Value #D": "Active runs",
            }
        ),
        field=NEVER,
        overrides=[
            {
                "matcher": {"id": "byName", "options": "Active runs"},
                "properties": [{"id": "unit", "value": "short"}, {"id": "noValue", "value": "0"}],
            },
            {
                "matcher": {"id": "byName", "options": "Since last success"},
                "properties": [
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                    {
                        "id": "thresholds",
                        "value": thresholds((None, "green"), (t.no_recent_success_seconds, "red"))[
                            "thresholds"
                        ],
                    },
                ],
            },
        ],
        options={
            "showHeader": True,
            "sortBy": [{"displayName": "Since last success", "desc": True}],
        },
    )
    per_run = "max by (workflow_id, run_id) ({})"
    status = q.m("copyai_workflow_run_status")
    b.add(
        "table",
        "Listed runs",
        [
            instant(q.named(f"max by (workflow_id, run_id, status) ({status} == 1)"), table=True),
            instant(q.named(per_run.format(q.m("copyai_workflow_run_age_seconds"))), table=True),
            instant(q.named(per_run.format(q.m("copyai_workflow_run_credits"))), table=True),
            instant(
                q.named(
                    f"min by (workflow_id, run_id) ({q.m('copyai_workflow_run_fetch_success')})"
                ),
                table=True,
            ),
            instant(
                q.named(
                    per_run.format(q.m("copyai_workflow_run_created_timestamp_seconds")) + " * 1000"
                ),
                table=True,
            ),
        ],
        w=24,
        h=9,
        unit="short",
        description="Runs listed in the config (and discovered active runs with "
        "run_series): status, age, credits, whether the last fetch worked.",
        transformations=table_columns(
            {
                "workflow_name": "Workflow",
                "workflow_id": "Workflow ID",
                "run_id": "Run",
                "status": "Status",
                "Value #B": "Age",
                "Value #C": "Credits",
                "Value #D": "Last fetch OK",
                "Value #E": "Created",
            },
            hide=("Value #A",),
        ),
        overrides=[
            {
                "matcher": {"id": "byName", "options": "Age"},
                "properties": [{"id": "unit", "value": "s"}],
            },
            {
                "matcher": {"id": "byName", "options": "Created"},
                "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
            },
            {
                "matcher": {"id": "byName", "options": "Last fetch OK"},
                "properties": [
                    {
                        "id": "mappings",
                        "value": [
                            {
                                "type": "value",
                                "options": {
                                    "0": {"text": "failed", "color": "red"},
                                    "1": {"text": "ok", "color": "green"},
                                },
                            }
                        ],
                    },
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                ],
            },
        ],
        options={"showHeader": True, "sortBy": [{"displayName": "Age", "desc": True}]},
    )


def waits(b: Board, q: Queries, config: MixinConfig) -> None:
    t = config.thresholds
    b.row("Queue wait and processing")
    for title, metric, what in (
        (
            "Queue wait",
            "copyai_workflow_run_queue_seconds",
            "How long runs waited before they started (createdAt to the first moment known "
            "PROCESSING or RETRYING), for runs that started in each interval.",
        ),
        (
            "Processing time",
            "copyai_workflow_run_processing_seconds",
            "How long runs ran once started (to COMPLETE or FAILED), for runs that ended in "
            "each interval.",
        ),
    ):
        rate = f"max by (workflow_id, le) (rate({q.m(metric + '_bucket')}[$__rate_interval]))"
        b.add(
            "timeseries",
            title,
            [
                series(
                    f"histogram_quantile({p}, sum by (workflow_name, le) ({q.named(rate)}))",
                    f"{{{{workflow_name}}}} p{int(p * 100)}",
                )
                for p in (0.5, 0.95)
            ],
            w=6,
            h=8,
            unit="s",
            description=f"{what} Without the workflowRun.started webhook, a start is late by "
            "up to the refresh interval.",
            options=TIMESERIES,
        )
    for title, metric, limit, what in (
        (
            "Oldest queued run age",
            "copyai_workflow_oldest_queued_run_created_timestamp_seconds",
            t.run_queued_seconds,
            "How long the oldest run still waiting to start (NEW or WAITING) has waited: "
            "a backlog. CopyaiRunsQueuedTooLong fires past the line.",
        ),
        (
            "Longest running run",
            "copyai_workflow_oldest_running_run_started_timestamp_seconds",
            t.run_hung_seconds,
            "How long the run that started first among those still PROCESSING or RETRYING "
            "has run: a run that never ends. CopyaiRunHung fires past the line.",
        ),
    ):
        oldest = q.recorded(metric, "min")
        b.add(
            "timeseries",
            title,
            [series(q.named(f"time() - {q.per_workflow(oldest)}"), "{{workflow_name}}")],
            w=6,
            h=8,
            unit="s",
            description=what,
            options=TIMESERIES,
            field=thresholds((None, "green"), (limit, "red"), line=True),
        )


def credits(b: Board, q: Queries, config: MixinConfig) -> None:
    t = config.thresholds
    b.row("Credits")
    total = q.m("copyai_workflow_run_credits_total")
    b.add(
        "timeseries",
        "Credits per hour by workflow",
        [
            series(
                f"sum by (workflow_name) ({q.named(f'max by (workflow_id) (rate({total}[$__rate_interval])) * 3600')})",
                "{{workflow_name}}",
            )
        ],
        w=12,
        h=8,
        description="Credits of finished runs, as an hourly rate (CopyaiCreditBurnHigh fires "
        "when one workflow's last hour passes the line).",
        options=TIMESERIES,
        field=_merge(
            {"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}},
            thresholds((None, "green"), (t.credits_per_hour, "red"), line=True),
        ),
    )
    b.add(
        "stat",
        "Credits in the time range",
        [
            instant(
                f"sum({q.filtered(f'max by (workflow_id) (increase({total}[$__range]))')}) or vector(0)"
            )
        ],
        w=4,
        h=8,
        description="Credits of all runs that finished in the dashboard's time range.",
        options=stat_options(),
        field={"decimals": 0, **thresholds((None, "purple"))},
    )
    b.add(
        "bargauge",
        "Credits used by active and listed runs",
        [
            instant(
                f"sum by (workflow_name) ({q.named('max by (workflow_id, run_id) (' + q.m('copyai_workflow_run_credits') + ')')})",
                "{{workflow_name}}",
            )
        ],
        w=4,
        h=8,
        description="Sum of copyai_workflow_run_credits: runs with per-run series, "
        "including ones still running.",
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )
    limit_at = q.m("copyai_credit_limit_reached_timestamp_seconds")
    limit_total = q.m("copyai_credit_limit_reached_total")
    b.add(
        "stat",
        "Credit limit reached",
        [
            instant(f"time() - max({limit_at})"),
            instant(f"sum(max by (workflow_id) (increase({limit_total}[$__range]))) or vector(0)"),
        ],
        w=4,
        h=8,
        unit="s",
        description="Time since the last workflowCreditLimit.reached webhook (never, if "
        "none arrived), and how many arrived in the time range.",
        options=stat_options("value_and_name"),
        overrides=[
            {
                "matcher": {"id": "byFrameRefID", "options": "B"},
                "properties": [
                    {"id": "unit", "value": "short"},
                    {"id": "displayName", "value": "events"},
                ],
            },
            {
                "matcher": {"id": "byFrameRefID", "options": "A"},
                "properties": [{"id": "displayName", "value": "since last"}],
            },
        ],
        field={**NEVER, **thresholds((None, "green"))},
    )


def spending(b: Board, q: Queries, config: MixinConfig) -> None:
    t = config.thresholds
    b.row("Credits: waste, budgets, attribution")
    over_range = "max by (workflow_id) (increase({}[$__range]))"
    wasted = over_range.format(q.m("copyai_workflow_failed_run_credits_total"))
    spent = over_range.format(q.m("copyai_workflow_run_credits_total"))
    b.add(
        "bargauge",
        "Credits wasted on failed runs",
        [instant(q.named(f"{wasted} / {spent}"), "{{workflow_name}}")],
        w=6,
        h=8,
        unit="percentunit",
        description="Share of each workflow's credits in the time range that went to runs "
        "that ended FAILED: spent for nothing.",
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
        field={
            "min": 0,
            "max": 1,
            **thresholds(
                (None, "green"),
                (t.runs_failing_ratio / 2, "orange"),
                (t.runs_failing_ratio, "red"),
            ),
        },
    )
    bucket = q.m("copyai_workflow_run_credits_used_bucket")
    per_run = f"max by (workflow_id, le) (rate({bucket}[$__rate_interval]))"
    b.add(
        "timeseries",
        "Credits per run",
        [
            series(
                f"histogram_quantile({p}, sum by (workflow_name, le) ({q.named(per_run)}))",
                f"{{{{workflow_name}}}} p{int(p * 100)}",
            )
            for p in (0.5, 0.95)
        ],
        w=6,
        h=8,
        description="Credits of one run, for the runs that finished in each interval: the "
        "typical run and the expensive ones (interpolated within the credit buckets).",
        options=TIMESERIES,
    )

    def budget(metric: str, operation: str) -> str:
        return f"max by (budget) ({q.m(f'{BUDGET_LEVEL}:{metric}:{operation}')})"

    used = budget("copyai_credit_budget_used_credits", "max")
    limit = budget("copyai_credit_budget_credits", "max")
    end = f"max by (budget) ({q.m('copyai_credit_budget_period_end_timestamp_seconds')})"
    b.add(
        "timeseries",
        "Budget used against its limit",
        [series(used, "{{budget}} used"), series(limit, "{{budget}} limit")],
        w=6,
        h=8,
        description="Credits each budget's workflows used in its current period (from 0 at "
        "each period's start), and its limit (dashed); CopyaiCreditBudgetExceeded fires "
        "where they meet. Budgets are not filtered by the workflow variable.",
        options=TIMESERIES,
        overrides=[_dashed("B")],
    )
    pace = budget("copyai_credit_budget_used_credits", f"rate{BUDGET_WINDOW}")
    b.add(
        "timeseries",
        "Budget pace per hour",
        [
            series(f"{pace} * 3600", "{{budget}} last 6h"),
            series(
                f"clamp_min({limit} - {used}, 0) / ({end} - time()) * 3600",
                "{{budget}} pace that lasts",
            ),
        ],
        w=6,
        h=8,
        description="Credits per hour each budget spent over the last 6 hours, and the pace "
        "its credits left would last the period at (dashed): above that line for "
        f"{_minutes(t.budget_exhaustion_for_seconds)}, CopyaiCreditBudgetExhaustionProjected "
        "fires. Which workflows spend: Credits per hour by workflow, in the Credits row.",
        options=TIMESERIES,
        overrides=[_dashed("B")],
    )
    runway = budget("copyai_credit_budget_runway_seconds", f"rate{BUDGET_WINDOW}")
    b.add(
        "table",
        "Budgets",
        [
            instant(used, table=True),
            instant(limit, table=True),
            instant(f"{used} / {limit}", table=True),
            instant(f"{runway} / 86400", table=True),
            instant(f"({end} - time()) / 86400", table=True),
        ],
        w=12,
        h=7,
        unit="short",
        description="Each budget in its current period: credits used, its limit, the share "
        "used (red once spent), how many days its credits left last at the pace of the last "
        "6 hours, and the days left in the period (runway shorter than that: the budget "
        "runs out before the period ends).",
        transformations=table_columns(
            {
                "budget": "Budget",
                "Value #A": "Used",
                "Value #B": "Limit",
                "Value #C": "Share used",
                "Value #D": "Runway",
                "Value #E": "Period left",
            }
        ),
        overrides=[
            {
                "matcher": {"id": "byName", "options": "Share used"},
                "properties": [
                    {"id": "unit", "value": "percentunit"},
                    {"id": "custom.cellOptions", "value": {"type": "color-text"}},
                    {
                        "id": "thresholds",
                        "value": thresholds((None, "green"), (0.8, "orange"), (1, "red"))[
                            "thresholds"
                        ],
                    },
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Runway"},
                "properties": [
                    {"id": "unit", "value": "d"},
                    {"id": "noValue", "value": "not spending"},
                ],
            },
            {
                "matcher": {"id": "byName", "options": "Period left"},
                "properties": [{"id": "unit", "value": "d"}],
            },
        ],
        options={"showHeader": True, "sortBy": [{"displayName": "Share used", "desc": True}]},
    )
    by_value = "sum by (attribute, value) ({})"
    credits_by = by_value.format(
        q.filtered(
            "max by (workflow_id, attribute, value) (increase("
            f"{q.m('copyai_workflow_run_credits_by_attribute_total')}[$__range]))"
        )
    )
    top = f"topk(10, {credits_by})"
    finished = "max by (workflow_id, attribute, value, status) (increase({}[$__range]))"
    name = "copyai_workflow_runs_finished_by_attribute_total"
    runs = by_value.format(q.filtered(finished.format(q.m(name))))
    failed = by_value.format(q.filtered(finished.format(q.m(name, 'status="FAILED"'))))
    b.add(
        "table",
        "Top 10 attribute values by credits",
        [
            instant(top, table=True),
            instant(f"{runs} and on (attribute, value) {top}", table=True),
            instant(f"({failed} / {runs}) and on (attribute, value) {top}", table=True),
        ],
        w=12,
        h=7,
        unit="short",
        description="The attribution values (attribution.keys: a field of the runs' metadata "
        "or input) whose runs used the most credits in the time range, over the selected "
        "workflows, with their finished runs and the share that failed. __other__ gathers "
        "values past attribution.max_values_per_key, __none__ runs without the field.",
        transformations=table_columns(
            {
                "attribute": "Attribute",
                "value": "Value",
                "Value #A": "Credits",
                "Value #B": "Runs finished",
                "Value #C": "Failed",
            }
        ),
        overrides=[
            {
                "matcher": {"id": "byName", "options": "Failed"},
                "properties": [{"id": "unit", "value": "percentunit"}],
            },
            {
                "matcher": {"id": "byName", "options": "Credits"},
                "properties": [{"id": "decimals", "value": 0}],
            },
        ],
        options={"showHeader": True, "sortBy": [{"displayName": "Credits", "desc": True}]},
    )


def freshness(b: Board, q: Queries, config: MixinConfig) -> None:
    t = config.thresholds
    b.row("Freshness and API budget")
    look = q.recorded("copyai_workflow_oldest_look_timestamp_seconds", "min")
    b.add(
        "timeseries",
        "Data behind",
        [series(q.named(f"time() - {q.per_workflow(look)}"), "{{workflow_name}}")],
        w=8,
        h=8,
        unit="s",
        description="How long ago the stalest data behind each workflow's metrics (its run "
        "list, or an active run) was looked at. Webhook-fed workflows are polled only to "
        "reconcile, so theirs grows to the reconciliation interval; CopyaiWorkflowDataLagging "
        "fires past the line.",
        options=TIMESERIES,
        field=thresholds((None, "green"), (t.workflow_data_lag_seconds, "red"), line=True),
    )
    b.add(
        "timeseries",
        "Refresh backlog and API budget",
        [
            series(f"max by (instance) ({q.m('copyai_refresh_backlog')})", "{{instance}} backlog"),
            series(
                f"sum({q.m('copyai_api_budget_utilization_ratio')})", "budget used (all replicas)"
            ),
        ],
        w=8,
        h=8,
        unit="short",
        description="Work due but not started on each replica (above 0 for long: the budget "
        "is too small for the work), and the share of api.max_requests_per_second used in "
        "the last minute (right axis; 1 = the whole budget).",
        options=TIMESERIES,
        overrides=[
            {
                "matcher": {"id": "byFrameRefID", "options": "B"},
                "properties": [
                    {"id": "unit", "value": "percentunit"},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            }
        ],
    )
    webhook = q.workflow("copyai_workflow_last_webhook_timestamp_seconds")
    b.add(
        "timeseries",
        "Since the last webhook delivery",
        [series(q.named(f"time() - {webhook}"), "{{workflow_name}}")],
        w=8,
        h=8,
        unit="s",
        description="Time since the last webhook delivery about each workflow. While it is "
        "shorter than webhooks.reconcile_interval_seconds, the workflow is polled only to "
        "reconcile (webhook-first freshness).",
        options=TIMESERIES,
        field=NEVER,
    )


def health(b: Board, q: Queries, config: MixinConfig) -> None:
    t = config.thresholds
    b.row("Exporter health")
    b.add(
        "timeseries",
        "API requests by code",
        [
            series(
                f"sum by (code) (rate({q.m('copyai_api_requests_total')}[$__rate_interval]))",
                "{{code}}",
            )
        ],
        w=6,
        h=8,
        unit="reqps",
        description="Requests to the Copy.ai API per second, by HTTP status (error = no "
        "answer), over every replica. Retries count.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "API errors by kind",
        [
            series(
                f"sum by (kind) (rate({q.m('copyai_api_errors_total')}[$__rate_interval]))",
                "{{kind}}",
            )
        ],
        w=6,
        h=8,
        unit="ops",
        description="API operations that failed after retries, by kind.",
        options=TIMESERIES,
    )
    latency = q.m("copyai_api_request_duration_seconds_bucket")
    b.add(
        "timeseries",
        "API latency",
        [
            series(
                f"histogram_quantile({p}, sum by (endpoint, le) (rate({latency}[$__rate_interval])))",
                f"{{{{endpoint}}}} p{int(p * 100)}",
            )
            for p in (0.5, 0.95)
        ],
        w=6,
        h=8,
        unit="s",
        description="Copy.ai API response time, body included.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "HTTP connections",
        [
            series(
                f"max by (instance, listener) ({q.m('copyai_http_connections_open')})",
                "{{instance}} {{listener}} open",
            ),
            series(
                f"max by (instance, listener) ({q.m('copyai_http_connections_max')})",
                "{{instance}} {{listener}} max",
            ),
            series(
                f"sum by (listener, reason) (rate({q.m('copyai_http_client_errors_total')}[$__rate_interval]))",
                "{{listener}} {{reason}} per second",
            ),
            series(
                f"sum by (listener) (rate({q.m('copyai_http_connection_limit_waits_total')}[$__rate_interval]))",
                "{{listener}} cap reached per second",
            ),
        ],
        w=6,
        h=8,
        unit="short",
        description="Client connections open on each listener against its cap "
        "(--web.max-connections), and per second: clients that timed out, reset or sent a "
        "malformed request, and times every slot was taken (right axis).",
        options=TIMESERIES,
        overrides=[
            {
                "matcher": {"id": "byFrameRefID", "options": ref},
                "properties": [
                    {"id": "unit", "value": "ops"},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            }
            for ref in ("C", "D")
        ],
    )
    limited = q.m("copyai_api_requests_total", 'code="429"')
    b.add(
        "timeseries",
        "Rate limited",
        [series(f"sum(rate({limited}[$__rate_interval])) or vector(0)", "429 per second")],
        w=6,
        h=7,
        unit="reqps",
        description="Answers 429 from the API (the exporter holds back every request until "
        "Retry-After; CopyaiApiRateLimited fires after 10 minutes of them).",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "Scrape time and freshness",
        [
            series(
                f"max({q.m('copyai_scrape_duration_seconds')})", "refresh time of the last scrape"
            ),
            series(
                f"time() - max({q.m('copyai_last_successful_refresh_timestamp_seconds')})",
                "since last error-free refresh",
            ),
        ],
        w=6,
        h=7,
        unit="s",
        description="How long scrapes wait for the API, and how old the data is "
        "(CopyaiDataStale fires past the line).",
        options=TIMESERIES,
        field=thresholds((None, "green"), (t.data_stale_seconds, "red"), line=True),
    )
    b.add(
        "timeseries",
        "Webhooks",
        [
            series(
                f"sum by (event_type) (rate({q.m('copyai_webhook_events_total')}[$__rate_interval]))",
                "{{event_type}}",
            ),
            series(
                f"sum by (reason) (rate({q.m('copyai_webhook_requests_rejected_total')}[$__rate_interval]))",
                "rejected: {{reason}}",
            ),
        ],
        w=6,
        h=7,
        unit="reqps",
        description="Webhook deliveries applied, and requests refused by reason.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "Exporter process",
        [
            series(
                f"max by (instance) ({q.m('process_resident_memory_bytes')})", "{{instance}} memory"
            ),
            series(
                f"max by (instance) (rate({q.m('process_cpu_seconds_total')}[$__rate_interval]))",
                "{{instance}} CPU",
            ),
            series(f"max by (instance) ({q.m('process_open_fds')})", "{{instance}} open fds"),
        ],
        w=6,
        h=7,
        unit="bytes",
        description="Memory, CPU and file descriptors of each exporter replica.",
        options=TIMESERIES,
        overrides=[
            {
                "matcher": {"id": "byFrameRefID", "options": ref},
                "properties": [
                    {"id": "unit", "value": unit},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            }
            for ref, unit in (("B", "percentunit"), ("C", "short"))
        ],
    )
    b.add(
        "table",
        "Exporter replicas",
        [
            instant(
                f"max by (job, instance, version, python_version) ({q.m('copyai_exporter_build_info')})",
                table=True,
            ),
            instant(
                f"max by (job, instance) ({q.m('copyai_config_last_reload_successful')})",
                table=True,
            ),
            instant(f"max by (job, instance) ({q.m('copyai_state_backend_up')})", table=True),
            instant(
                f"max by (job, instance) (time() - {q.m('copyai_config_last_reload_success_timestamp_seconds')})",
                table=True,
            ),
            instant(
                f"max by (job, instance) (time() - {q.m('process_start_time_seconds')})", table=True
            ),
            instant(f"max by (job, instance) ({q.m('copyai_state_leader')})", table=True),
        ],
        w=24,
        h=6,
        unit="short",
        description="Version, configuration and state health, uptime and leadership of each "
        "replica (exactly one Leader per job).",
        transformations=table_columns(
            {
                "job": "Job",
                "instance": "Instance",
                "version": "Version",
                "python_version": "Python",
                "Value #B": "Config OK",
                "Value #C": "State OK",
                "Value #D": "Config loaded",
                "Value #E": "Uptime",
                "Value #F": "Leader",
            },
            hide=("Value #A",),
        ),
        overrides=[
            {
                "matcher": {"id": "byName", "options": name},
                "properties": [{"id": "unit", "value": "s"}],
            }
            for name in ("Config loaded", "Uptime")
        ],
        options={"showHeader": True},
    )


def active(q: Queries) -> str:
    """Active runs per workflow and status, over the replicas."""
    return f"max by (workflow_id, status) ({q.m('copyai_workflow_runs', ACTIVE)})"


def _dashed(ref: str) -> dict[str, Any]:
    """Draw query `ref`'s series dashed: a limit or a target next to what reaches it."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}],
    }


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes"


def _merge(*fields: dict[str, Any]) -> dict[str, Any]:
    """Field defaults, with their `custom` parts merged rather than replaced."""
    merged: dict[str, Any] = {}
    for field in fields:
        for key, value in field.items():
            if key == "custom":
                merged.setdefault("custom", {}).update(value)
            else:
                merged[key] = value
    return merged
