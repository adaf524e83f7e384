"""The monitoring mixin: its config (refused like the exporter's), the files it writes
(the shipped ones when no config is given), the selector in every expression, and the
rules under a custom selector and per-workflow SLO targets, tested with promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter.config import ConfigError
from exporter.mixin import ALERTS, DASHBOARD, INHIBIT, RULES, render
from exporter.mixin.config import MixinConfig, build_mixin_config, parse_selector
from tests.support.processes import run_cli
from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    ALERTS: ROOT / "prometheus" / "alerts.yml",
    RULES: ROOT / "prometheus" / "rules.yml",
    DASHBOARD: ROOT / "grafana" / "dashboards" / "copyai-exporter.json",
}
MARKER = "# --- the mixin's alertmanager_inhibit_rules.yaml, as generated ---\n"
CUSTOM_JOB = "monitoring/copyai-exporter"
METRIC = re.compile(
    r"\b((?:[a-z_]+:)?(?:copyai|process)_[a-z0-9_]+(?::[a-z0-9_]+)?|up|ALERTS)\b(\{[^}]*\})?"
)


def test_without_a_config_the_outputs_are_the_shipped_files():
    outputs = render()
    for name, path in SHIPPED.items():
        assert path.read_text() == outputs[name], f"{path}: run python tools/ship_mixin.py"
    alertmanager = (ROOT / "alertmanager" / "alertmanager.yml").read_text()
    assert alertmanager.split(MARKER)[1] == outputs[INHIBIT], "run python tools/ship_mixin.py"


def test_the_command_writes_the_mixin_layout(tmp_path):
    config = tmp_path / "mixin.yaml"
    config.write_text(
        f'selector: job="{CUSTOM_JOB}"\ndashboard_url_base: https://grafana.example/\n'
    )
    result = run_cli("mixin", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.*"))
    assert written == sorted([ALERTS, RULES, DASHBOARD, INHIBIT])
    alerts = yaml.safe_load((tmp_path / "out" / ALERTS).read_text())
    for rule in alerts["groups"][0]["rules"]:
        assert f'job="{CUSTOM_JOB}"' in rule["expr"]
        assert rule["annotations"]["dashboard_url"].startswith(
            "https://grafana.example/d/copyai-exporter/copyai-exporter?var-job={{ $labels.job }}"
        )


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("selector: 'job=copyai'\n", ["selector: must be PromQL label matchers"]),
        ("selector: 'job=\"a\",'\n", ["selector: must be PromQL label matchers"]),
        (
            "thresholds: {run_stuck_seconds: -1, nonsense: 3}\n",
            [
                "thresholds.nonsense: unknown key",
                "thresholds.run_stuck_seconds: must be between",
            ],
        ),
        (
            "slo: {target: 1.5, workflows: {'a/b': 0.9, WCFG-1: 2}}\n",
            [
                "slo.target: must be between",
                "slo.workflows.a/b: is not a plain workflow id",
                "slo.workflows.WCFG-1: must be a target between 0.5 and 0.9999",
            ],
        ),
        (
            "runbook_url_base: README.md\ndashboard_uid: 'a b'\ncolour: red\n",
            [
                "colour: unknown key",
                "dashboard_uid: must be 1-40 letters",
                "runbook_url_base: must be an absolute http:// or https:// URL",
            ],
        ),
        ("slo:\n  target: 0.9\n  target: 0.99\n", ["duplicate key 'target'"]),
    ],
)
def test_a_bad_config_lists_every_problem_and_exits_2(tmp_path, text, problems):
    config = tmp_path / "mixin.yaml"
    config.write_text(text)
    result = run_cli("mixin", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for problem in problems:
        assert problem in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_selectors_parse_as_prometheus_does():
    assert parse_selector('job="a", namespace=~"mon.*",team!="x"') == [
        ("job", "=", "a"),
        ("namespace", "=~", "mon.*"),
        ("team", "!=", "x"),
    ]
    config = build_mixin_config({"selector": 'job=~"copyai.*", cluster="eu"'})
    assert config.group_labels == ["job", "cluster"]
    with pytest.raises(ConfigError):
        build_mixin_config({"selector": "job"})


def selected(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2) or "") for m in METRIC.finditer(text)]


@pytest.mark.parametrize("selector", ['job="copyai-exporter"', f'job="{CUSTOM_JOB}", cluster="eu"'])
def test_every_expression_and_query_carries_the_selector(selector):
    outputs = render(build_mixin_config({"selector": selector}))
    expressions = [
        rule["expr"]
        for name in (ALERTS, RULES)
        for group in yaml.safe_load(outputs[name])["groups"]
        for rule in group["rules"]
    ]
    for expr in expressions:
        for metric, matchers in selected(expr):
            if metric in ("time",):
                continue
            assert selector in matchers, f"{metric} without the selector in:\n{expr}"
    board = json.loads(outputs[DASHBOARD])
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [a["expr"] for a in board["annotations"]["list"]]
    others = selector.split(", ", 1)[1] if ", " in selector else ""
    for query in queries:
        for metric, matchers in selected(query):
            assert 'job=~"$job"' in matchers, f"{metric} without $job in:\n{query}"
            assert others in matchers, query
    job = {v["name"]: v for v in board["templating"]["list"]}["job"]
    assert job["type"] == "query" and job["multi"] and job["includeAll"]
    assert job["definition"].startswith("label_values(copyai_exporter_build_info")
    assert job["current"]["value"] == parse_selector(selector)[0][2]


def test_dashboard_draws_the_alert_thresholds_and_says_never():
    config = build_mixin_config(
        {
            "thresholds": {
                "runs_failing_ratio": 0.3,
                "run_stuck_seconds": 1800,
                "data_stale_seconds": 600,
                "run_queued_seconds": 900,
                "run_hung_seconds": 7200,
            }
        }
    )
    board = json.loads(render(config)[DASHBOARD])
    panels = {p["title"]: p for p in board["panels"]}

    def steps(title: str) -> list[float | None]:
        defaults = panels[title]["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] == "line+area"
        return [s["value"] for s in defaults["thresholds"]["steps"]]

    assert 0.3 in steps("Failure ratio (30m)")
    assert 1800 in steps("Oldest active run age")
    assert 600 in steps("Scrape time and freshness")
    assert 900 in steps("Oldest queued run age")
    assert 7200 in steps("Longest running run")
    assert panels["Credit limit reached"]["fieldConfig"]["defaults"]["noValue"] == "never"
    assert all("vector(-1)" not in t["expr"] for p in board["panels"] for t in p.get("targets", []))
    assert {link["title"] for link in board["links"]} == {
        "Runbooks",
        "Prometheus alerts",
        "Alertmanager",
    }
    titles = [a["name"] for a in board["annotations"]["list"]]
    assert titles == ["Copy.ai alerts firing", "Exporter restarts"]


def test_the_queue_and_budget_thresholds_reach_their_alerts():
    config = build_mixin_config(
        {
            "thresholds": {
                "run_queued_seconds": 900,
                "run_hung_seconds": 7200,
                "budget_exhaustion_for_seconds": 3600,
            }
        }
    )
    rules = yaml.safe_load(render(config)[ALERTS])["groups"][0]["rules"]
    alerts = {rule["alert"]: rule for rule in rules}
    assert "> 900\n" in alerts["CopyaiRunsQueuedTooLong"]["expr"]
    assert "> 7200\n" in alerts["CopyaiRunHung"]["expr"]
    assert alerts["CopyaiCreditBudgetExhaustionProjected"]["for"] == "1h"
    assert alerts["CopyaiCreditBudgetExceeded"]["labels"]["severity"] == "critical"
    # the exceeded budget silences its projection; the specific stuck-run alerts the generic
    inhibit = yaml.safe_load(render(config)[INHIBIT])["inhibit_rules"]
    by_source = {tuple(rule["source_matchers"]): rule for rule in inhibit}
    spent = by_source[('alertname="CopyaiCreditBudgetExceeded"',)]
    assert spent["equal"] == ["job", "budget"]
    assert spent["target_matchers"] == ['alertname="CopyaiCreditBudgetExhaustionProjected"']
    down = by_source[('alertname=~"CopyaiExporterDown|CopyaiApiUnreachable|CopyaiApiKeyRefused"',)]
    assert "CopyaiRunsQueuedTooLong" in down["target_matchers"][0]
    assert "CopyaiRunHung" in down["target_matchers"][0]


def test_every_alert_has_an_absolute_runbook_and_a_readme_section():
    readme = (ROOT / "README.md").read_text()
    for rule in yaml.safe_load(render()[ALERTS])["groups"][0]["rules"]:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://") and url.endswith("#" + rule["alert"].lower())
        assert f"### {rule['alert']}" in readme


def promtool_test(
    tmp_path: Path, outputs: dict[str, str], tests: str
) -> subprocess.CompletedProcess:
    promtool = require_tool("promtool")
    (tmp_path / "rules.yml").write_text(outputs[RULES])
    (tmp_path / "alerts.yml").write_text(outputs[ALERTS])
    (tmp_path / "alerts_test.yml").write_text(tests)
    return subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("tests_file", ["alerts_test.yml", "slo_test.yml"])
def test_the_unit_tests_pass_under_a_kubernetes_job_name(tmp_path, tests_file):
    """Prometheus Operator names the job namespace/name: every alert, firing and silent,
    behaves the same under that selector (and the default job's series are ignored)."""
    outputs = render(build_mixin_config({"selector": f'job="{CUSTOM_JOB}"'}))
    tests = (ROOT / "prometheus" / tests_file).read_text()
    tests = tests.replace('job="copyai-exporter"', f'job="{CUSTOM_JOB}"')
    tests = tests.replace("job: copyai-exporter", f"job: {CUSTOM_JOB}")
    tests = tests.replace("of job copyai-exporter", f"of job {CUSTOM_JOB}")
    tests = tests.replace("(job copyai-exporter)", f"(job {CUSTOM_JOB})")
    tests = tests.replace("Job copyai-exporter", f"Job {CUSTOM_JOB}")
    tests = tests.replace("to job copyai-exporter", f"to job {CUSTOM_JOB}")
    tests = tests.replace("requests of job copyai-exporter", f"requests of job {CUSTOM_JOB}")
    result = promtool_test(tmp_path, outputs, tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_workflow_with_its_own_target_burns_its_own_budget(tmp_path):
    """tests/fixtures/mixin/per_workflow_target_test.yml: the same failure ratio is within
    the default target and burns a stricter workflow's budget."""
    config = build_mixin_config({"slo": {"workflows": {"WCFG-strict": 0.999}}})
    tests = (ROOT / "tests" / "fixtures" / "mixin" / "per_workflow_target_test.yml").read_text()
    result = promtool_test(tmp_path, render(config), tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_avoid_what_prometheus_3_removed_or_changed():
    """Debian's Prometheus here is 2.42, the compose images 3.x: the rules must mean the
    same on both (holt_winters was renamed, a regex's `.` now matches a newline)."""
    text = "".join(render().values())
    for removed in ("holt_winters", '=~".*\\n', "query_range"):
        assert removed not in text


def test_the_default_runbooks_are_the_project_readme():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert MixinConfig().runbook_url_base == project["urls"]["Homepage"] + "/blob/main/README.md"
