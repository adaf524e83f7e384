"""Recording rules, named `level:metric:operations` as Prometheus recommends: the
per-workflow values alerts and dashboard panels share, each taken once over the
exporter's replicas (`max by (job, workflow_id)`: every replica exports the same
workflow values), so a panel and its alert read the same series over the same window.

    job_workflow_id:copyai_workflow_run_failures_per_run:ratio_rate30m
        failed / finished runs over 30 minutes (the SLO's error ratio)
    job_workflow_id:copyai_workflow_error_budget_burn:rate1h
        that ratio over 1 hour divided by the error budget (1 - the SLO target)
    job_budget:copyai_credit_budget_used_credits:rate6h
        credits per second a budget spent over 6 hours (`rate()` of its used credits,
        which takes their fall at a period's start as the counter reset it is)
    job_budget:copyai_credit_budget_runway_seconds:rate6h
        how long the budget's credits left last at that pace (0 once spent); absent
        while the budget spends nothing

Budgets are taken the same way, `max by (job, budget)`.

`Names` builds every name and selector the alerts and the dashboard refer to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter.mixin.config import MixinConfig

SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
LONG_WINDOWS = ("1d", "3d")
LEVEL = "job_workflow_id"
BUDGET_LEVEL = "job_budget"
BUDGET_WINDOW = "6h"  # the pace a budget's runway is projected at


@dataclass(frozen=True)
class Names:
    """The selector, the labels a job is told apart by, and the recorded series."""

    config: MixinConfig

    @property
    def by(self) -> str:
        return ", ".join(self.config.group_labels)

    @property
    def by_workflow(self) -> str:
        return f"{self.by}, workflow_id"

    @property
    def by_budget(self) -> str:
        return f"{self.by}, budget"

    def select(self, metric: str, extra: str = "") -> str:
        """`metric{selector, extra}`."""
        matchers = ", ".join(m for m in (self.config.selector, extra) if m)
        return f"{metric}{{{matchers}}}"

    def recorded(self, metric: str, operation: str, extra: str = "") -> str:
        """A recorded per-workflow series, selected like the raw ones (several mixins
        with other selectors may record into the same Prometheus)."""
        return self.select(f"{LEVEL}:{metric}:{operation}", extra)

    def budget(self, metric: str, operation: str) -> str:
        """A recorded per-(job, budget) series."""
        return self.select(f"{BUDGET_LEVEL}:{metric}:{operation}")

    def with_names(self, expr: str) -> str:
        """A per-workflow vector with workflow_name attached, for notifications."""
        info = self.select("job_workflow_id_workflow_name:copyai_workflow_info:max")
        return f"(\n  {expr}\n)\n* on ({self.by_workflow}) group_left (workflow_name)\n  {info}"

    def failures_ratio(self, window: str) -> str:
        return self.recorded("copyai_workflow_run_failures_per_run", f"ratio_rate{window}")

    def failed(self, window: str) -> str:
        return self.recorded("copyai_workflow_runs_failed", f"increase{window}")

    def finished(self, window: str) -> str:
        return self.recorded("copyai_workflow_runs_finished", f"increase{window}")

    def burn(self, window: str) -> str:
        return self.recorded("copyai_workflow_error_budget_burn", f"rate{window}")

    def slo_target(self) -> str:
        return self.recorded("copyai_workflow_slo_target", "ratio")


def recording_rules(config: MixinConfig) -> dict[str, Any]:
    n = Names(config)
    byw = n.by_workflow
    rules: list[dict[str, str]] = [
        {
            "record": "job_workflow_id_workflow_name:copyai_workflow_info:max",
            "expr": f"max by ({byw}, workflow_name) ({n.select('copyai_workflow_info')})",
        },
        {"record": f"{LEVEL}:copyai_workflow_slo_target:ratio", "expr": _targets(config, n)},
    ]
    long_rules: list[dict[str, str]] = []
    for window in SLO_WINDOWS:
        into = long_rules if window in LONG_WINDOWS else rules
        for counter in ("finished", "failed"):
            metric = f"copyai_workflow_runs_{counter}"
            into.append(
                {
                    "record": f"{LEVEL}:{metric}:increase{window}",
                    "expr": f"max by ({byw}) (increase({n.select(metric + '_total')}[{window}]))",
                }
            )
        into.append(
            {
                "record": f"{LEVEL}:copyai_workflow_run_failures_per_run:ratio_rate{window}",
                "expr": f"{n.failed(window)}\n/\n{n.finished(window)}",
            }
        )
        into.append(
            {
                "record": f"{LEVEL}:copyai_workflow_error_budget_burn:rate{window}",
                "expr": f"{n.failures_ratio(window)}\n/ on ({byw})\n(1 - {n.slo_target()})",
            }
        )
    credits = n.select("copyai_workflow_run_credits_total")
    rules += [
        {
            "record": f"{LEVEL}:copyai_workflow_run_credits:increase1h",
            "expr": f"max by ({byw}) (increase({credits}[1h]))",
        },
        {
            "record": f"{LEVEL}:copyai_workflow_oldest_active_run_created_timestamp_seconds:min",
            "expr": "min by ({}) ({})".format(
                byw, n.select("copyai_workflow_oldest_active_run_created_timestamp_seconds")
            ),
        },
        *(
            {
                "record": f"{LEVEL}:{metric}:min",
                "expr": f"min by ({byw}) ({n.select(metric)})",
            }
            for metric in (
                "copyai_workflow_oldest_queued_run_created_timestamp_seconds",
                "copyai_workflow_oldest_running_run_started_timestamp_seconds",
            )
        ),
        {
            "record": f"{LEVEL}:copyai_workflow_oldest_look_timestamp_seconds:min",
            "expr": "min by ({}) ({})".format(
                byw, n.select("copyai_workflow_oldest_look_timestamp_seconds")
            ),
        },
        {
            "record": f"{LEVEL}:copyai_workflow_last_success_timestamp_seconds:max",
            "expr": "max by ({}) ({})".format(
                byw, n.select("copyai_workflow_last_success_timestamp_seconds")
            ),
        },
    ]
    rules += _budget_rules(n)
    return {
        "groups": [
            {"name": "copyai-exporter.rules", "rules": rules},
            # days of samples per series: evaluated less often
            {"name": "copyai-exporter.slo-long", "interval": "5m", "rules": long_rules},
        ]
    }


def _budget_rules(n: Names) -> list[dict[str, str]]:
    """Each credit budget's limit, use and pace over the replicas, and its runway."""
    byb, window = n.by_budget, BUDGET_WINDOW
    used = n.select("copyai_credit_budget_used_credits")
    rules = [
        {
            "record": f"{BUDGET_LEVEL}:{metric}:max",
            "expr": f"max by ({byb}) ({n.select(metric)})",
        }
        for metric in ("copyai_credit_budget_credits", "copyai_credit_budget_used_credits")
    ]
    pace = n.budget("copyai_credit_budget_used_credits", f"rate{window}")
    left = "clamp_min(\n  {}\n  - {},\n  0\n)".format(
        n.budget("copyai_credit_budget_credits", "max"),
        n.budget("copyai_credit_budget_used_credits", "max"),
    )
    return [
        *rules,
        {
            "record": f"{BUDGET_LEVEL}:copyai_credit_budget_used_credits:rate{window}",
            "expr": f"max by ({byb}) (rate({used}[{window}]))",
        },
        {
            "record": f"{BUDGET_LEVEL}:copyai_credit_budget_runway_seconds:rate{window}",
            "expr": f"{left}\n/\n({pace} > 0)",
        },
    ]


def _targets(config: MixinConfig, n: Names) -> str:
    """The SLO target of every workflow as a series (0 * its info + the target), with
    the workflows that have targets of their own taken out of the default."""
    special = config.slo.workflows
    parts = []
    default_extra = 'workflow_id!~"' + "|".join(sorted(special)) + '"' if special else ""
    info = "max by ({}) ({})"
    parts.append(
        f"0 * {info.format(n.by_workflow, n.select('copyai_workflow_info', default_extra))}"
        f" + {config.slo.target:g}"
    )
    for workflow_id, target in sorted(special.items()):
        only = n.select("copyai_workflow_info", f'workflow_id="{workflow_id}"')
        parts.append(f"0 * {info.format(n.by_workflow, only)} + {target:g}")
    return "\nor\n".join(parts)
