"""Alerting rules and the Alertmanager inhibitions that go with them.

Every expression carries the mixin's selector and keeps `job` (and `workflow_id`,
`workflow_name` where it is about a workflow), so a user with any job name and any
number of replicas gets the pages they should and no others:
- an exporter target down pages only when every target of the job is down (or none is
  scraped); one replica of several down is a warning;
- what replicas agree on (the API, freshness, workflows) is alerted per job, not per
  instance; what each replica owns (its config, state store, restarts) per instance;
- each workflow has an SLO on its run success ratio, with multi-window, multi-burn-rate
  alerts (Google SRE workbook, chapter "Alerting on SLOs");
- each credit budget is alerted per job and budget: spent (a page: money goes on
  being spent past it), or spent before its period ends at the pace of 6 hours.
"""

from __future__ import annotations

from typing import Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.rules import BUDGET_WINDOW, Names

CRITICAL, WARNING = "critical", "warning"
# (long window, short window, burn rate, severity): a page spends 2 % of a 30-day
# budget in an hour (14.4x) or 5 % in 6 hours (6x); a ticket 10 % in a day (3x) or
# the whole budget at its pace over 3 days (1x)
BURN_TIERS = (
    ("1h", "5m", 14.4, CRITICAL),
    ("6h", "30m", 6.0, CRITICAL),
    ("1d", "2h", 3.0, WARNING),
    ("3d", "6h", 1.0, WARNING),
)
WORKFLOW = "{{ $labels.workflow_name }} ({{ $labels.workflow_id }})"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def alerting_rules(config: MixinConfig) -> dict[str, Any]:
    n = Names(config)
    t = config.thresholds
    by, byw = n.by, n.by_workflow
    up = n.select("up")
    rules: list[dict[str, Any]] = []

    def alert(
        name: str,
        expr: str,
        *,
        severity: str,
        summary: str,
        description: str,
        for_: str = "0m",
        workflow: bool = False,
    ) -> None:
        annotations = {
            "summary": summary,
            "description": description,
            "runbook_url": f"{config.runbook_url_base}#{name.lower()}",
        }
        if config.dashboard_url_base:
            query = "var-job={{ $labels.job }}"
            if workflow:
                query += "&var-workflow={{ $labels.workflow_name }}"
            annotations["dashboard_url"] = (
                f"{config.dashboard_url_base}/d/{config.dashboard_uid}/copyai-exporter?{query}"
            )
        rules.append(
            {
                "alert": name,
                "expr": expr,
                "for": for_,
                "labels": {"severity": severity},
                "annotations": annotations,
            }
        )

    alert(
        "CopyaiExporterDown",
        f"sum by ({by}) ({up}) == 0\nor\nabsent({up})",
        for_="5m",
        severity=CRITICAL,
        summary="copyai-exporter is down: no target of job {{ $labels.job }} can be scraped",
        description=(
            "Prometheus cannot scrape any copyai-exporter target of job {{ $labels.job }} "
            "(or finds none): Copy.ai workflow runs are not being watched, and no other "
            "alert about them can fire."
        ),
    )
    alert(
        "CopyaiExporterReplicaDown",
        f"{up} == 0\nand on ({by})\n(sum by ({by}) ({up}) > 0)",
        for_="5m",
        severity=WARNING,
        summary="copyai-exporter replica {{ $labels.instance }} of job {{ $labels.job }} is down",
        description=(
            "Prometheus cannot scrape {{ $labels.instance }}; other replicas of job "
            "{{ $labels.job }} still serve, so nothing is lost yet, but the job has "
            "fewer replicas than it should."
        ),
    )
    alert(
        "CopyaiApiUnreachable",
        f"max by ({by}) ({n.select('copyai_up')}) == 0",
        for_="5m",
        severity=CRITICAL,
        summary="copyai-exporter (job {{ $labels.job }}) cannot talk to the Copy.ai API",
        description=(
            "The Copy.ai API gave no answer, refused the API key or answered only 5xx to "
            "the last requests of job {{ $labels.job }}. Workflow data is frozen at its "
            "last known values; copyai_api_errors_total by kind tells which."
        ),
    )
    refused = n.select("copyai_api_errors_total", 'kind="unauthorized"')
    alert(
        "CopyaiApiKeyRefused",
        f"sum by ({by}) (increase({refused}[10m])) > 0",
        severity=CRITICAL,
        summary="The Copy.ai API refuses the key of copyai-exporter (job {{ $labels.job }})",
        description=(
            "Requests of job {{ $labels.job }} were answered 401/403 in the last 10 "
            "minutes: the API key was revoked, rotated or mistyped."
        ),
    )
    refresh = n.select("copyai_last_successful_refresh_timestamp_seconds")
    alert(
        "CopyaiDataStale",
        f"time() - max by ({by}) ({refresh})\n> {t.data_stale_seconds:g}",
        for_="5m",
        severity=WARNING,
        summary="Copy.ai data of job {{ $labels.job }} is stale",
        description=(
            "copyai-exporter (job {{ $labels.job }}) has not completed an error-free "
            "refresh for {{ $value | humanizeDuration }}."
        ),
    )
    alert(
        "CopyaiWorkflowRunsFailing",
        n.with_names(
            f"{n.failures_ratio('30m')} > {t.runs_failing_ratio:g}\n"
            f"  and\n  {n.failed('30m')} >= {t.runs_failing_min_failures}"
        ),
        for_="5m",
        severity=WARNING,
        workflow=True,
        summary="Copy.ai workflow {{ $labels.workflow_name }} is failing runs",
        description=(
            "{{ $value | humanizePercentage }} of the runs of workflow "
            f"{WORKFLOW} that finished in the last 30 minutes failed."
        ),
    )
    oldest = n.recorded("copyai_workflow_oldest_active_run_created_timestamp_seconds", "min")
    alert(
        "CopyaiRunStuck",
        n.with_names(f"time() - {oldest} > {t.run_stuck_seconds:g}"),
        for_="10m",
        severity=WARNING,
        workflow=True,
        summary="A run of Copy.ai workflow {{ $labels.workflow_name }} is stuck",
        description=(
            f"The oldest active run of workflow {WORKFLOW} was created "
            "{{ $value | humanizeDuration }} ago and is still NEW, WAITING, PROCESSING "
            "or RETRYING."
        ),
    )
    queued = n.recorded("copyai_workflow_oldest_queued_run_created_timestamp_seconds", "min")
    alert(
        "CopyaiRunsQueuedTooLong",
        n.with_names(f"time() - {queued} > {t.run_queued_seconds:g}"),
        for_="5m",
        severity=WARNING,
        workflow=True,
        summary="Runs of Copy.ai workflow {{ $labels.workflow_name }} wait long to start",
        description=(
            f"The oldest queued run of workflow {WORKFLOW} was created "
            "{{ $value | humanizeDuration }} ago and has not started yet (NEW or "
            "WAITING): a backlog."
        ),
    )
    running = n.recorded("copyai_workflow_oldest_running_run_started_timestamp_seconds", "min")
    alert(
        "CopyaiRunHung",
        n.with_names(f"time() - {running} > {t.run_hung_seconds:g}"),
        for_="10m",
        severity=WARNING,
        workflow=True,
        summary="A run of Copy.ai workflow {{ $labels.workflow_name }} runs without end",
        description=(
            f"The longest-running run of workflow {WORKFLOW} started "
            "{{ $value | humanizeDuration }} ago and is still PROCESSING or RETRYING."
        ),
    )
    look = n.recorded("copyai_workflow_oldest_look_timestamp_seconds", "min")
    alert(
        "CopyaiWorkflowDataLagging",
        n.with_names(f"time() - {look} > {t.workflow_data_lag_seconds:g}"),
        for_="10m",
        severity=WARNING,
        workflow=True,
        summary="Copy.ai data of workflow {{ $labels.workflow_name }} lags behind",
        description=(
            f"The stalest data behind workflow {WORKFLOW} (its run list, or an active "
            "run) was looked at {{ $value | humanizeDuration }} ago: more work is due "
            "than the API budget allows, or the API keeps failing for it."
        ),
    )
    success = n.recorded("copyai_workflow_last_success_timestamp_seconds", "max")
    alert(
        "CopyaiNoRecentSuccess",
        n.with_names(f"time() - {success} > {t.no_recent_success_seconds:g}"),
        for_="15m",
        severity=WARNING,
        workflow=True,
        summary="Copy.ai workflow {{ $labels.workflow_name }} has not succeeded lately",
        description=(
            f"No run of workflow {WORKFLOW} has completed for {{{{ $value | humanizeDuration }}}}."
        ),
    )
    credits = n.recorded("copyai_workflow_run_credits", "increase1h")
    alert(
        "CopyaiCreditBurnHigh",
        n.with_names(f"{credits} > {t.credits_per_hour:g}"),
        for_="5m",
        severity=WARNING,
        workflow=True,
        summary="Copy.ai workflow {{ $labels.workflow_name }} burns credits fast",
        description=(
            f"Runs of workflow {WORKFLOW} that finished in the last hour used "
            "{{ $value | humanize }} credits."
        ),
    )
    limit = f"time() - max by ({byw}) ({n.select('copyai_credit_limit_reached_timestamp_seconds')})"
    alert(
        "CopyaiCreditLimitReached",
        # workflow_id is empty when the event named no workflow (the whole workspace)
        f"{n.with_names(f'{limit} < 900')}\nor on ({byw})\n({limit} < 900)",
        severity=CRITICAL,
        workflow=True,
        summary=(
            "Copy.ai credit limit reached for {{ if $labels.workflow_name }}workflow "
            "{{ $labels.workflow_name }}{{ else }}the workspace{{ end }}"
        ),
        description=(
            "Copy.ai reported workflowCreditLimit.reached for {{ if $labels.workflow_id }}"
            f"workflow {WORKFLOW}{{{{ else }}}}the workspace{{{{ end }}}}: new runs are "
            "refused until credits are added or the limit is raised."
        ),
    )
    used = n.budget("copyai_credit_budget_used_credits", "max")
    budget = n.budget("copyai_credit_budget_credits", "max")
    alert(
        "CopyaiCreditBudgetExceeded",
        f"{used}\n>= on ({n.by_budget})\n{budget}",
        severity=CRITICAL,
        summary="Copy.ai credit budget {{ $labels.budget }} is spent",
        description=(
            "The workflows of credit budget {{ $labels.budget }} (job {{ $labels.job }}) "
            "used {{ $value | humanize }} credits this period, its whole limit or more: "
            "every run that finishes now spends past the budget."
        ),
    )
    runway = n.budget("copyai_credit_budget_runway_seconds", f"rate{BUDGET_WINDOW}")
    end = n.select("copyai_credit_budget_period_end_timestamp_seconds")
    end = f"max by ({n.by_budget}) ({end})"
    alert(
        "CopyaiCreditBudgetExhaustionProjected",
        # the runway exists only while the budget spends (its pace above 0)
        f"{runway}\n< on ({n.by_budget})\n({end} - time())\n"
        f"and on ({n.by_budget})\n({used} < on ({n.by_budget}) {budget})",
        for_=_duration(t.budget_exhaustion_for_seconds),
        severity=WARNING,
        summary="Copy.ai credit budget {{ $labels.budget }} runs out before its period ends",
        description=(
            "At the pace of the last 6 hours, credit budget {{ $labels.budget }} (job "
            "{{ $labels.job }}) is spent in {{ $value | humanizeDuration }}, before its "
            "period ends."
        ),
    )
    limited = n.select("copyai_api_requests_total", 'code="429"')
    alert(
        "CopyaiApiRateLimited",
        f"sum by ({by}) (rate({limited}[5m])) > 0",
        for_="10m",
        severity=WARNING,
        summary="The Copy.ai API rate-limits copyai-exporter (job {{ $labels.job }})",
        description=(
            "Job {{ $labels.job }} has been answered 429 for 10 minutes "
            '({{ $value | printf "%.2f" }} per second). Data is refreshed late.'
        ),
    )
    alert(
        "CopyaiConfigReloadFailed",
        f"{n.select('copyai_config_last_reload_successful')} == 0",
        for_="5m",
        severity=WARNING,
        summary="copyai-exporter {{ $labels.instance }} refused its new configuration",
        description=(
            "The last configuration reload of {{ $labels.instance }} (job "
            "{{ $labels.job }}) failed; it keeps running the previous configuration. "
            "The exporter's log lists every problem."
        ),
    )
    alert(
        "CopyaiStateBackendDown",
        f"{n.select('copyai_state_backend_up')} == 0",
        for_="5m",
        severity=WARNING,
        summary="copyai-exporter {{ $labels.instance }} cannot write its state",
        description=(
            "{{ $labels.instance }} (job {{ $labels.job }}) cannot read or write its "
            "state store (SQLite file or Redis). It keeps working from memory, but "
            "history would be lost on a restart."
        ),
    )
    rejected = n.select(
        "copyai_webhook_requests_rejected_total", 'reason!~"not_found|method_not_allowed"'
    )
    alert(
        "CopyaiWebhookRejections",
        f"sum by ({by}, reason) (increase({rejected}[15m]))\n> {t.webhook_rejections_per_15m}",
        severity=WARNING,
        summary=(
            "copyai-exporter (job {{ $labels.job }}) refuses webhook deliveries "
            "({{ $labels.reason }})"
        ),
        description=(
            "{{ $value | humanize }} webhook requests to job {{ $labels.job }} were "
            "refused in 15 minutes with reason {{ $labels.reason }}: a wrong token in the "
            "registered URL, a sender that changed its payload, or someone probing."
        ),
    )
    alert(
        "CopyaiReplicaLeaderCount",
        f"sum by ({by}) ({n.select('copyai_state_leader')}) != 1",
        for_=_duration(t.leader_count_wrong_for_seconds),
        severity=WARNING,
        summary="Job {{ $labels.job }} has {{ $value }} leaders instead of 1",
        description=(
            "Exactly one replica of job {{ $labels.job }} should write the workflow "
            "history (copyai_state_leader 1). With none, no history is written and "
            "counters stand still; more than one can only last a lease."
        ),
    )
    alert(
        "CopyaiExporterRestarting",
        f"changes({n.select('process_start_time_seconds')}[15m]) > {t.restarts_per_15m}",
        severity=WARNING,
        summary="copyai-exporter {{ $labels.instance }} keeps restarting",
        description=(
            "{{ $labels.instance }} (job {{ $labels.job }}) restarted "
            "{{ $value }} times in 15 minutes: a crash loop, or a memory limit too low."
        ),
    )
    for severity in (CRITICAL, WARNING):
        tiers = []
        for long, short, factor, tier_severity in BURN_TIERS:
            if tier_severity != severity:
                continue
            tiers.append(
                f"(\n    {n.burn(long)} > {factor:g}\n    and\n    {n.burn(short)} > {factor:g}\n"
                f"    and on ({byw})\n    {n.finished(long)} >= {config.slo.min_runs}\n  )"
            )
        alert(
            "CopyaiWorkflowErrorBudgetBurn",
            n.with_names("\n  or\n  ".join(tiers)),
            for_="2m" if severity == CRITICAL else "15m",
            severity=severity,
            workflow=True,
            summary=(
                "Copy.ai workflow {{ $labels.workflow_name }} burns its error budget "
                '{{ $value | printf "%.1f" }} times too fast'
            ),
            description=(
                f"Runs of workflow {WORKFLOW} fail so often that, at this pace, its "
                "success-ratio objective will be missed"
                + (" within days" if severity == WARNING else " within hours")
                + " (the burn rate is the failure ratio divided by the error budget, "
                "1 minus the target)."
            ),
        )
    return {"groups": [{"name": "copyai-exporter", "rules": rules}]}


def inhibit_rules(config: MixinConfig) -> dict[str, Any]:
    """While a job's exporter or its API access is down, the symptoms it causes for
    that job's workflows are noise; nothing of another job is silenced, and one replica
    down of several silences nothing."""
    equal = config.group_labels
    symptoms = (
        "CopyaiDataStale|CopyaiRunStuck|CopyaiNoRecentSuccess|CopyaiWorkflowRunsFailing|"
        "CopyaiWorkflowErrorBudgetBurn|CopyaiApiRateLimited|CopyaiWorkflowDataLagging|"
        "CopyaiRunsQueuedTooLong|CopyaiRunHung"
    )
    return {
        "inhibit_rules": [
            {
                "source_matchers": [
                    'alertname=~"CopyaiExporterDown|CopyaiApiUnreachable|CopyaiApiKeyRefused"'
                ],
                "target_matchers": [f'alertname=~"{symptoms}"'],
                "equal": equal,
            },
            {
                "source_matchers": ['alertname="CopyaiExporterDown"'],
                "target_matchers": [
                    'alertname=~"CopyaiExporterReplicaDown|CopyaiReplicaLeaderCount"'
                ],
                "equal": equal,
            },
            {
                # a page for a burning error budget makes its ticket redundant
                "source_matchers": [
                    'alertname="CopyaiWorkflowErrorBudgetBurn"',
                    'severity="critical"',
                ],
                "target_matchers": [
                    'alertname="CopyaiWorkflowErrorBudgetBurn"',
                    'severity="warning"',
                ],
                "equal": [*equal, "workflow_id"],
            },
            {
                # out of credits: the failures that follow are its consequence
                "source_matchers": ['alertname="CopyaiCreditLimitReached"'],
                "target_matchers": [
                    'alertname=~"CopyaiWorkflowRunsFailing|CopyaiWorkflowErrorBudgetBurn"'
                ],
                "equal": [*equal, "workflow_id"],
            },
            {
                # the specific alerts say which kind of stuck run it is: waiting to
                # start, or started and never ending
                "source_matchers": ['alertname=~"CopyaiRunsQueuedTooLong|CopyaiRunHung"'],
                "target_matchers": ['alertname="CopyaiRunStuck"'],
                "equal": [*equal, "workflow_id"],
            },
            {
                # a budget spent: its projection to be spent is old news
                "source_matchers": ['alertname="CopyaiCreditBudgetExceeded"'],
                "target_matchers": ['alertname="CopyaiCreditBudgetExhaustionProjected"'],
                "equal": [*equal, "budget"],
            },
        ]
    }
