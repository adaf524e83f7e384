"""Writes grafana/dashboards/copyai-exporter.json.

The dashboard is generated so that its many PromQL expressions share one way of
naming and de-duplicating workflows; tests check the committed JSON is what this
script produces (run `python tools/build_dashboard.py` after editing it).

Conventions in every query:
- workflow-level values are taken with max by (workflow_id, ...) first, so that several
  exporter replicas scraped at once count once;
- names come from copyai_workflow_info, which also applies the $workflow filter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / "copyai-exporter.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
INFO = 'max by (workflow_id, workflow_name) (copyai_workflow_info{workflow_name=~"$workflow"})'
ONLY = 'on (workflow_id) group_left () max by (workflow_id) (copyai_workflow_info{workflow_name=~"$workflow"})'
ACTIVE = 'status=~"NEW|WAITING|PROCESSING|RETRYING|UNKNOWN"'
JOB = 'job=~"$job"'


def named(expr: str) -> str:
    """A per-workflow_id vector, with workflow_name attached (and $workflow applied)."""
    return f"({expr}) * on (workflow_id) group_left (workflow_name) {INFO}"


def filtered(expr: str) -> str:
    """A per-workflow_id vector restricted to $workflow, labels unchanged."""
    return f"({expr}) * {ONLY}"


class Board:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_height = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": self._id(),
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
            self.x = 0
            self.row_height = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def add(
        self,
        kind: str,
        title: str,
        targets: list[dict[str, Any]],
        *,
        w: int,
        h: int,
        description: str,
        unit: str = "short",
        options: dict[str, Any] | None = None,
        field: dict[str, Any] | None = None,
        transformations: list[dict[str, Any]] | None = None,
        overrides: list[dict[str, Any]] | None = None,
    ) -> None:
        if self.x + w > 24:
            self._newline()
        defaults: dict[str, Any] = {"unit": unit}
        defaults.update(field or {})
        panel: dict[str, Any] = {
            "type": kind,
            "title": title,
            "description": description,
            "id": self._id(),
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "targets": [
                {"datasource": DS, "refId": chr(ord("A") + i), **target}
                for i, target in enumerate(targets)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
        }
        if transformations:
            panel["transformations"] = transformations
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)


def series(expr: str, legend: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "range": True, "instant": False}


def instant(expr: str, legend: str = "__auto", table: bool = False) -> dict[str, Any]:
    target = {"expr": expr, "legendFormat": legend, "range": False, "instant": True}
    if table:
        target["format"] = "table"
    return target


def stat_options(text_mode: str = "value") -> dict[str, Any]:
    return {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background",
        "graphMode": "none",
        "textMode": text_mode,
        "justifyMode": "center",
        "orientation": "auto",
    }


def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {
        "thresholds": {
            "mode": "absolute",
            "steps": [{"value": value, "color": color} for value, color in steps],
        }
    }


TIMESERIES = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "desc"},
}


def build() -> dict[str, Any]:
    b = Board()
    b.row("Overview")
    b.add(
        "stat",
        "Copy.ai API",
        [instant("min(copyai_up)")],
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
        [instant(f"sum(up{{{JOB}}}) or vector(0)")],
        w=4,
        h=4,
        description="Exporter replicas Prometheus can scrape (job $job).",
        options=stat_options(),
        field=thresholds((None, "red"), (1, "green")),
    )
    b.add(
        "stat",
        "Active runs",
        [
            instant(
                f"sum({filtered(f'max by (workflow_id, status) (copyai_workflow_runs{{{ACTIVE}}})')}) or vector(0)"
            )
        ],
        w=4,
        h=4,
        description="Tracked runs not yet COMPLETE or FAILED.",
        options=stat_options(),
        field=thresholds((None, "blue")),
    )
    b.add(
        "stat",
        "Runs failed (24h)",
        [
            instant(
                f"sum({filtered('max by (workflow_id) (increase(copyai_workflow_runs_failed_total[24h]))')}) or vector(0)"
            )
        ],
        w=4,
        h=4,
        description="Runs seen reaching FAILED in the last 24 hours.",
        options=stat_options(),
        field={"decimals": 0, **thresholds((None, "green"), (1, "orange"))},
    )
    b.add(
        "stat",
        "Credits (24h)",
        [
            instant(
                f"sum({filtered('max by (workflow_id) (increase(copyai_workflow_run_credits_total[24h]))')}) or vector(0)"
            )
        ],
        w=4,
        h=4,
        description="Credits of runs that finished in the last 24 hours.",
        options=stat_options(),
        field={"decimals": 0, **thresholds((None, "purple"))},
    )
    b.add(
        "stat",
        "Oldest active run",
        [
            instant(
                f"max(time() - {filtered('min by (workflow_id) (copyai_workflow_oldest_active_run_created_timestamp_seconds)')}) or vector(0)"
            )
        ],
        w=4,
        h=4,
        unit="s",
        description="Age of the longest-running unfinished run: a stuck run shows here first.",
        options=stat_options(),
        field=thresholds((None, "green"), (1800, "orange"), (3600, "red")),
    )

    b.row("Runs")
    b.add(
        "timeseries",
        "Runs by status",
        [
            series(
                f"sum by (status) ({filtered('max by (workflow_id, status) (copyai_workflow_runs)')})",
                "{{status}}",
            )
        ],
        w=8,
        h=8,
        description="Tracked runs (listed and discovered) in each status.",
        options=TIMESERIES,
        field={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}},
    )
    b.add(
        "timeseries",
        "Runs finished and failed per hour",
        [
            series(
                f"sum by (workflow_name) ({named('max by (workflow_id) (rate(copyai_workflow_runs_finished_total[$__rate_interval])) * 3600')})",
                "{{workflow_name}} finished",
            ),
            series(
                f"sum by (workflow_name) ({named('max by (workflow_id) (rate(copyai_workflow_runs_failed_total[$__rate_interval])) * 3600')})",
                "{{workflow_name}} failed",
            ),
        ],
        w=8,
        h=8,
        unit="short",
        description="Runs reaching COMPLETE or FAILED, and FAILED alone, as an hourly rate.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "Failure ratio",
        [
            series(
                named(
                    "max by (workflow_id) (increase(copyai_workflow_runs_failed_total[1h])) / max by (workflow_id) (increase(copyai_workflow_runs_finished_total[1h]))"
                ),
                "{{workflow_name}}",
            )
        ],
        w=8,
        h=8,
        unit="percentunit",
        description="Share of the runs finished in the past hour that failed (the CopyaiWorkflowRunsFailing alert uses 30 minutes).",
        options=TIMESERIES,
        field={"min": 0, "max": 1},
    )
    b.add(
        "timeseries",
        "Runs created and retried per hour",
        [
            series(
                f"sum by (workflow_name) ({named('max by (workflow_id) (rate(copyai_workflow_runs_created_total[$__rate_interval])) * 3600')})",
                "{{workflow_name}} created",
            ),
            series(
                f"sum by (workflow_name) ({named('max by (workflow_id) (rate(copyai_workflow_runs_retried_total[$__rate_interval])) * 3600')})",
                "{{workflow_name}} retried",
            ),
        ],
        w=8,
        h=8,
        description="Runs seen being created, and entering RETRYING, as an hourly rate.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "Oldest active run age",
        [
            series(
                named(
                    "time() - min by (workflow_id) (copyai_workflow_oldest_active_run_created_timestamp_seconds)"
                ),
                "{{workflow_name}}",
            )
        ],
        w=8,
        h=8,
        unit="s",
        description="How long the longest-running unfinished run of each workflow has been going.",
        options=TIMESERIES,
    )
    duration = "max by (workflow_id, le) (rate(copyai_workflow_run_duration_seconds_bucket[$__rate_interval]))"
    b.add(
        "timeseries",
        "Run duration",
        [
            series(
                f"histogram_quantile({q}, sum by (workflow_name, le) ({named(duration)}))",
                f"{{{{workflow_name}}}} p{int(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        w=8,
        h=8,
        unit="s",
        description="createdAt to the end of runs finishing now; without webhooks, late by up to the refresh interval.",
        options=TIMESERIES,
    )
    b.add(
        "table",
        "Workflows",
        [
            instant(
                named(
                    "time() - max by (workflow_id) (copyai_workflow_last_success_timestamp_seconds)"
                ),
                table=True,
            ),
            instant(
                named(
                    "time() - max by (workflow_id) (copyai_workflow_last_failure_timestamp_seconds)"
                ),
                table=True,
            ),
            instant(
                named(
                    "time() - max by (workflow_id) (copyai_workflow_last_run_created_timestamp_seconds)"
                ),
                table=True,
            ),
            instant(
                f"sum by (workflow_id, workflow_name) ({named(f'max by (workflow_id, status) (copyai_workflow_runs{{{ACTIVE}}})')})",
                table=True,
            ),
        ],
        w=24,
        h=7,
        unit="s",
        description="Time since each workflow's last success, last failure and newest run, and its active runs.",
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "workflow_name": "Workflow",
                        "workflow_id": "ID",
                        "Value #A": "Since last success",
                        "Value #B": "Since last failure",
                        "Value #C": "Since newest run",
                        "Value #D": "Active runs",
                    },
                },
            },
        ],
        overrides=[
            {
                "matcher": {"id": "byName", "options": "Active runs"},
                "properties": [{"id": "unit", "value": "short"}],
            }
        ],
        options={
            "showHeader": True,
            "sortBy": [{"displayName": "Since last success", "desc": True}],
        },
    )
    b.add(
        "table",
        "Listed runs",
        [
            instant(
                named("max by (workflow_id, run_id, status) (copyai_workflow_run_status == 1)"),
                table=True,
            ),
            instant(
                named("max by (workflow_id, run_id) (copyai_workflow_run_age_seconds)"), table=True
            ),
            instant(
                named("max by (workflow_id, run_id) (copyai_workflow_run_credits)"), table=True
            ),
            instant(
                named("min by (workflow_id, run_id) (copyai_workflow_run_fetch_success)"),
                table=True,
            ),
            instant(
                named(
                    "max by (workflow_id, run_id) (copyai_workflow_run_created_timestamp_seconds) * 1000"
                ),
                table=True,
            ),
        ],
        w=24,
        h=9,
        unit="short",
        description="Runs listed in the config (and discovered active runs with run_series): status, age, credits, whether the last fetch worked.",
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value #A": True},
                    "renameByName": {
                        "workflow_name": "Workflow",
                        "workflow_id": "Workflow ID",
                        "run_id": "Run",
                        "status": "Status",
                        "Value #B": "Age",
                        "Value #C": "Credits",
                        "Value #D": "Last fetch OK",
                        "Value #E": "Created",
                    },
                },
            },
        ],
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

    b.row("Credits")
    b.add(
        "timeseries",
        "Credits per hour by workflow",
        [
            series(
                f"sum by (workflow_name) ({named('max by (workflow_id) (rate(copyai_workflow_run_credits_total[$__rate_interval])) * 3600')})",
                "{{workflow_name}}",
            )
        ],
        w=12,
        h=8,
        description="Credits of finished runs, as an hourly rate (the CopyaiCreditBurnHigh alert compares the last hour to a budget).",
        options=TIMESERIES,
        field={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}},
    )
    b.add(
        "stat",
        "Credits in the time range",
        [
            instant(
                f"sum({filtered('max by (workflow_id) (increase(copyai_workflow_run_credits_total[$__range]))')}) or vector(0)"
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
                f"sum by (workflow_name) ({named('max by (workflow_id, run_id) (copyai_workflow_run_credits)')})",
                "{{workflow_name}}",
            )
        ],
        w=4,
        h=8,
        description="Sum of copyai_workflow_run_credits: runs with per-run series, including ones still running.",
        options={
            "orientation": "horizontal",
            "displayMode": "gradient",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    )
    b.add(
        "stat",
        "Credit limit reached",
        [
            instant("(time() - max(copyai_credit_limit_reached_timestamp_seconds)) or vector(-1)"),
            instant(
                "sum(max by (workflow_id) (increase(copyai_credit_limit_reached_total[$__range]))) or vector(0)"
            ),
        ],
        w=4,
        h=8,
        unit="s",
        description="Time since the last workflowCreditLimit.reached webhook (-1: never), and how many arrived in the time range.",
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
        field=thresholds((None, "green")),
    )

    b.row("Exporter health")
    b.add(
        "timeseries",
        "API requests by code",
        [series("sum by (code) (rate(copyai_api_requests_total[$__rate_interval]))", "{{code}}")],
        w=6,
        h=8,
        unit="reqps",
        description="Requests to the Copy.ai API per second, by HTTP status (error = no answer). Retries count.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "API errors by kind",
        [series("sum by (kind) (rate(copyai_api_errors_total[$__rate_interval]))", "{{kind}}")],
        w=6,
        h=8,
        unit="ops",
        description="API operations that failed after retries, by kind.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "API latency",
        [
            series(
                f"histogram_quantile({q}, sum by (endpoint, le) (rate(copyai_api_request_duration_seconds_bucket[$__rate_interval])))",
                f"{{{{endpoint}}}} p{int(q * 100)}",
            )
            for q in (0.5, 0.95)
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
                f"max by (instance, listener) (copyai_http_connections_open{{{JOB}}})",
                "{{instance}} {{listener}} open",
            ),
            series(
                f"max by (instance, listener) (copyai_http_connections_max{{{JOB}}})",
                "{{instance}} {{listener}} max",
            ),
            series(
                "sum by (listener, reason) "
                f"(rate(copyai_http_client_errors_total{{{JOB}}}[$__rate_interval]))",
                "{{listener}} {{reason}} per second",
            ),
            series(
                "sum by (listener) "
                f"(rate(copyai_http_connection_limit_waits_total{{{JOB}}}[$__rate_interval]))",
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
    b.add(
        "timeseries",
        "Rate limited",
        [
            series(
                'sum(rate(copyai_api_requests_total{code="429"}[$__rate_interval])) or vector(0)',
                "429 per second",
            )
        ],
        w=6,
        h=7,
        unit="reqps",
        description="Answers 429 from the API (the exporter holds back every request until Retry-After).",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "Scrape time and freshness",
        [
            series("max(copyai_scrape_duration_seconds)", "refresh time of the last scrape"),
            series(
                "time() - max(copyai_last_successful_refresh_timestamp_seconds)",
                "since last error-free refresh",
            ),
        ],
        w=6,
        h=7,
        unit="s",
        description="How long scrapes wait for the API, and how old the data is.",
        options=TIMESERIES,
    )
    b.add(
        "timeseries",
        "Webhooks",
        [
            series(
                "sum by (event_type) (rate(copyai_webhook_events_total[$__rate_interval]))",
                "{{event_type}}",
            ),
            series(
                "sum by (reason) (rate(copyai_webhook_requests_rejected_total[$__rate_interval]))",
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
                f"max by (instance) (process_resident_memory_bytes{{{JOB}}})", "{{instance}} memory"
            ),
            series(
                f"max by (instance) (rate(process_cpu_seconds_total{{{JOB}}}[$__rate_interval]))",
                "{{instance}} CPU",
            ),
            series(f"max by (instance) (process_open_fds{{{JOB}}})", "{{instance}} open fds"),
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
                f"max by (instance, version, python_version) (copyai_exporter_build_info{{{JOB}}})",
                table=True,
            ),
            instant(
                f"max by (instance) (copyai_config_last_reload_successful{{{JOB}}})", table=True
            ),
            instant(f"max by (instance) (copyai_state_backend_up{{{JOB}}})", table=True),
            instant(
                f"max by (instance) (time() - copyai_config_last_reload_success_timestamp_seconds{{{JOB}}})",
                table=True,
            ),
            instant(
                f"max by (instance) (time() - process_start_time_seconds{{{JOB}}})", table=True
            ),
            instant(f"max by (instance) (copyai_state_leader{{{JOB}}})", table=True),
        ],
        w=24,
        h=6,
        unit="short",
        description="Version, configuration and state health, and uptime of each replica.",
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value #A": True},
                    "renameByName": {
                        "instance": "Instance",
                        "version": "Version",
                        "python_version": "Python",
                        "Value #B": "Config OK",
                        "Value #C": "State OK",
                        "Value #D": "Config loaded",
                        "Value #E": "Uptime",
                        "Value #F": "Leader",
                    },
                },
            },
        ],
        overrides=[
            {
                "matcher": {"id": "byName", "options": name},
                "properties": [{"id": "unit", "value": "s"}],
            }
            for name in ("Config loaded", "Uptime")
        ],
        options={"showHeader": True},
    )

    return {
        "title": "Copy.ai workflows",
        "uid": "copyai-exporter",
        "description": "Copy.ai workflow runs and the copyai-exporter watching them.",
        "tags": ["copyai", "copyai-exporter"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                {
                    "type": "custom",
                    "name": "job",
                    "label": "Job",
                    "query": "copyai-exporter",
                    "current": {"text": "copyai-exporter", "value": "copyai-exporter"},
                    "hide": 0,
                    "options": [],
                },
                {
                    "type": "query",
                    "name": "workflow",
                    "label": "Workflow",
                    "datasource": DS,
                    "definition": "label_values(copyai_workflow_info, workflow_name)",
                    "query": {
                        "query": "label_values(copyai_workflow_info, workflow_name)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                    "sort": 1,
                    "hide": 0,
                    "options": [],
                    "regex": "",
                },
            ]
        },
        "panels": b.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {OUT}\n")
