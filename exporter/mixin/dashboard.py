"""The Grafana dashboard "Copy.ai workflows", generated so that its many PromQL
expressions share one selector and one way of naming and de-duplicating workflows.

Conventions in every query:
- every metric is selected with the mixin's selector, its job matcher replaced by the
  `$job` variable (a query variable, multi-value), so the dashboard works under any job
  name, for one job or several;
- workflow-level values are taken with max by (workflow_id) first (or read from the
  recording rules, which do), so several exporter replicas count once;
- names come from copyai_workflow_info, which also applies the $workflow filter;
- panels and alerts share recorded series and windows, and thresholds are drawn where
  the alerts fire.

The panels themselves are in dashboard_panels.py.
"""

from __future__ import annotations

from typing import Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.grafana import DS, Board
from exporter.mixin.rules import LEVEL


class Queries:
    """PromQL pieces under the dashboard's selector."""

    def __init__(self, config: MixinConfig):
        others = [f'{name}{op}"{value}"' for name, op, value in config.matchers if name != "job"]
        self.matchers = ", ".join(['job=~"$job"', *others])
        self.others = ", ".join(others)
        self.default_job = next(
            (value for name, op, value in config.matchers if name == "job" and op == "="), None
        )

    def m(self, metric: str, extra: str = "") -> str:
        """`metric{job=~"$job", <the selector's other matchers>, extra}`."""
        return f"{metric}{{{', '.join(x for x in (self.matchers, extra) if x)}}}"

    def recorded(self, metric: str, operation: str) -> str:
        return self.m(f"{LEVEL}:{metric}:{operation}")

    @property
    def info(self) -> str:
        info = self.m("copyai_workflow_info", 'workflow_name=~"$workflow"')
        return f"max by (workflow_id, workflow_name) ({info})"

    def named(self, expr: str) -> str:
        """A per-workflow_id vector with workflow_name attached ($workflow applied); any
        other label of `expr` (status, le, run_id) is kept."""
        return f"({expr}) * on (workflow_id) group_left (workflow_name) {self.info}"

    def filtered(self, expr: str) -> str:
        """A per-workflow_id vector restricted to $workflow, labels unchanged."""
        info = self.m("copyai_workflow_info", 'workflow_name=~"$workflow"')
        return f"({expr}) * on (workflow_id) group_left () max by (workflow_id) ({info})"

    def workflow(self, metric: str, agg: str = "max", extra: str = "") -> str:
        """One value per workflow, over the replicas."""
        return f"{agg} by (workflow_id) ({self.m(metric, extra)})"

    def per_workflow(self, recorded: str) -> str:
        """A recorded per-(job, workflow) series as one value per workflow."""
        return f"max by (workflow_id) ({recorded})"


def build_dashboard(config: MixinConfig) -> dict[str, Any]:
    from exporter.mixin import dashboard_panels  # noqa: PLC0415 - the panels use Queries

    q = Queries(config)
    b = Board()
    dashboard_panels.add_all(b, q, config)
    return {
        "title": "Copy.ai workflows",
        "uid": config.dashboard_uid,
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
        "annotations": {"list": _annotations(q)},
        "links": [
            {
                "title": "Runbooks",
                "type": "link",
                "url": config.runbook_url_base,
                "targetBlank": True,
            },
            {
                "title": "Prometheus alerts",
                "type": "link",
                "url": f"{config.prometheus_url}/alerts",
                "targetBlank": True,
            },
            {
                "title": "Alertmanager",
                "type": "link",
                "url": config.alertmanager_url,
                "targetBlank": True,
            },
        ],
        "templating": {"list": _variables(q)},
        "panels": b.panels,
    }


def _annotations(q: Queries) -> list[dict[str, Any]]:
    alerts = q.m("ALERTS", 'alertname=~"Copyai.*", alertstate="firing"')
    return [
        {
            "name": "Copy.ai alerts firing",
            "datasource": DS,
            "enable": True,
            "iconColor": "red",
            "expr": f"max by (alertname, severity, workflow_name, instance) ({alerts})",
            "step": "60s",
            "titleFormat": "{{alertname}} ({{severity}})",
            "textFormat": "{{workflow_name}} {{instance}}",
        },
        {
            "name": "Exporter restarts",
            "datasource": DS,
            "enable": True,
            "iconColor": "orange",
            "expr": f"changes({q.m('process_start_time_seconds')}[2m]) > 0",
            "step": "60s",
            "titleFormat": "copyai-exporter restarted",
            "textFormat": "{{instance}}",
        },
    ]


def _variables(q: Queries) -> list[dict[str, Any]]:
    build_info = (
        f"copyai_exporter_build_info{{{q.others}}}" if q.others else "copyai_exporter_build_info"
    )
    job_query = f"label_values({build_info}, job)"
    workflow_query = f"label_values({q.m('copyai_workflow_info')}, workflow_name)"
    current = (
        {"text": q.default_job, "value": q.default_job}
        if q.default_job
        else {"text": "All", "value": "$__all"}
    )
    return [
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
            "type": "query",
            "name": "job",
            "label": "Job",
            "datasource": DS,
            "definition": job_query,
            "query": {"query": job_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "includeAll": True,
            "multi": True,
            "allValue": ".+",
            "current": current,
            "refresh": 2,
            "sort": 1,
            "hide": 0,
            "options": [],
            "regex": "",
        },
        {
            "type": "query",
            "name": "workflow",
            "label": "Workflow",
            "datasource": DS,
            "definition": workflow_query,
            "query": {
                "query": workflow_query,
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
