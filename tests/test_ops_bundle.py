"""The ops bundle proven end to end: the shipped alert rules and dashboard against a real
Prometheus and Alertmanager (Debian packages, on loopback) scraping the real exporter
watching the simulator. Plus promtool/amtool checks of every shipped file."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from exporter.api.registration import WebhookRegistrar
from exporter.config import WebhookRegistration, build_config
from exporter.runtime import Exporter
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from exporter.web.app import ExporterApp, WebOptions
from exporter.web.http import HttpServer
from exporter.web.webhooks import WebhookApp
from tests.support.exporters import API_KEY
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.samples import parse_samples
from tests.support.tools import require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "prometheus" / "alerts.yml"
RULES = ROOT / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "copyai-exporter.json"
TOKEN = "e2e-webhook-token-0123456789abcdef"
# Grafana's variables, as the "All" selection and a short test would set them
VARIABLES = {
    "$workflow": ".*",
    "$job": "copyai-exporter",
    "$__rate_interval": "1m",
    "$__range": "1h",
    "$__interval": "15s",
}
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


# --- static checks of the shipped files ------------------------------------------------


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_shipped_prometheus_config_and_rules():
    promtool = require_tool("promtool")
    for args in (
        ("check", "config", str(ROOT / "prometheus" / "prometheus.yml")),
        ("check", "rules", str(RULES), str(ALERTS)),
        ("test", "rules", str(ROOT / "prometheus" / "alerts_test.yml")),
        ("test", "rules", str(ROOT / "prometheus" / "slo_test.yml")),
    ):
        result = run_tool(promtool, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_firing_and_silent():
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((ROOT / "prometheus" / "alerts_test.yml").read_text())["tests"]
    fired, silent = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in rules}
    assert names == fired
    assert names == silent
    for rule in rules:
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert "for" in rule
        anchor = annotations["runbook_url"].split("#", 1)[1]
        assert f"### {rule['alert']}" in (ROOT / "README.md").read_text(), anchor


def test_amtool_accepts_the_shipped_alertmanager_config():
    amtool = require_tool("amtool")
    result = run_tool(amtool, "check-config", str(ROOT / "alertmanager" / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_dashboard_uses_only_built_in_panels_and_a_datasource_variable():
    board = json.loads(DASHBOARD.read_text())
    built_in = {"row", "stat", "timeseries", "table", "bargauge", "gauge", "text"}
    assert {p["type"] for p in board["panels"]} <= built_in
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["workflow"]["definition"].startswith("label_values(copyai_workflow_info{")
    assert variables["job"]["type"] == "query"
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert "__inputs" not in board  # importable as is, through the UI or provisioning


# --- the live stack --------------------------------------------------------------------


@dataclass
class Receiver:
    """Alertmanager's webhook receiver, inside the test."""

    notifications: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> tuple[ThreadingHTTPServer, threading.Thread]:
        store = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                store.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        return server, thread

    def alertnames(self) -> set[str]:
        return {
            alert["labels"]["alertname"]
            for note in self.notifications
            for alert in note.get("alerts", [])
            if alert.get("status") == "firing"
        }


@dataclass
class Stack:
    world: World
    sim: RunningSimulator
    exporter_url: str
    prometheus_url: str
    alertmanager_url: str
    receiver: Receiver
    workflow_ids: list[str]

    def query(self, expr: str) -> dict[str, Any]:
        answer = requests.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10
        )
        return answer.json()

    def firing(self) -> set[str]:
        alerts = requests.get(f"{self.prometheus_url}/api/v1/alerts", timeout=10).json()
        return {
            a["labels"]["alertname"] for a in alerts["data"]["alerts"] if a["state"] == "firing"
        }

    def firing_alerts(self) -> list[dict[str, Any]]:
        alerts = requests.get(f"{self.prometheus_url}/api/v1/alerts", timeout=10).json()
        return [a for a in alerts["data"]["alerts"] if a["state"] == "firing"]


def customer(name: str) -> dict[str, Any]:
    """A run's metadata naming whom it was for (attribution.keys: [metadata.customer])."""
    return {"api": True, "customer": name}


def start_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{url} exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(ready, timeout=30, interval=0.1)


def rules_with_short_for(tmp_path: Path, alerts: str, rules: str) -> list[str]:
    """The rules, every group evaluated each second and every `for:` cut short, so the
    test runs in seconds."""
    paths = []
    for name, text in (("rules.yml", rules), ("alerts.yml", alerts)):
        document = yaml.safe_load(text)
        for group in document["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = "0s"
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        paths.append(str(path))
    return paths


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    alertmanager = require_tool("prometheus-alertmanager")
    cleanup: list[Any] = []
    world = World(api_key=API_KEY, seed=11)
    blog = world.add_workflow("blog-writer", "WCFG-e2e-blog")
    seo = world.add_workflow("seo-meta", "WCFG-e2e-seo")
    listed = [
        world.add_run(blog, [("PROCESSING", None)], age_seconds=120, credits=3).run_id,
        world.add_run(seo, [("COMPLETE", None)], age_seconds=600, credits=9).run_id,
    ]
    for i in range(20):  # history from before the exporter watched
        world.add_run([blog, seo][i % 2], [("COMPLETE", None)], age_seconds=3000 - i, credits=2)
    # waiting to start for an hour: a backlog (CopyaiRunsQueuedTooLong)
    world.add_run(seo, [("NEW", None)], age_seconds=3600, metadata=customer("initech"))
    sim = RunningSimulator(world)
    cleanup.append(sim.stop)

    config = build_config(
        {
            "api": {
                "base_url": sim.base_url,
                # limited, as users run it: the budget panel has a series to show
                "max_requests_per_second": 100,
                "max_retries": 0,
                "timeout_seconds": 2,
            },
            "collector": {
                "refresh_interval_seconds": 1,
                "duration_buckets_seconds": [1, 5, 30, 120],
            },
            "state": {"path": str(tmp_path / "state.db")},
            "webhooks": {"listen_address": "127.0.0.1:0"},
            # one budget with room, one the runs below spend (CopyaiCreditBudgetExceeded)
            "budgets": [
                {"name": "content", "credits": 1000, "period": "month", "workflows": "*"},
                {"name": "seo", "credits": 10, "period": "day", "workflows": [seo]},
            ],
            "attribution": {"keys": ["metadata.customer"], "max_values_per_key": 5},
            "workflows": [
                {"id": blog, "name": "blog-writer", "discover": True, "runs": [listed[0]]},
                {"id": seo, "name": "seo-meta", "discover": True, "runs": [listed[1]]},
            ],
        },
        env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": TOKEN},
    )
    exporter = Exporter(config)
    cleanup.append(exporter.close)
    metrics = HttpServer(
        ExporterApp(exporter, WebOptions(), lambda: (True, "")),
        "127.0.0.1:0",
        listener="metrics",
        observer=exporter.telemetry,
    ).start()
    cleanup.append(metrics.stop)
    hooks = HttpServer(
        WebhookApp(lambda: exporter.config.webhooks, exporter),
        "127.0.0.1:0",
        listener="webhook",
        observer=exporter.telemetry,
    ).start()
    cleanup.append(hooks.stop)
    registration = WebhookRegistration(public_url=f"{hooks.url}/webhook")
    registrar = WebhookRegistrar(exporter.client, registration, TOKEN, [blog, seo])
    registrar.register()

    receiver = Receiver()
    receiver_server, receiver_thread = receiver.start()
    cleanup.append(lambda: (receiver_server.shutdown(), receiver_server.server_close()))

    am_port, prom_port = free_port(), free_port()
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "test",
                    "group_by": ["alertname", "workflow_id"],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "test",
                        "webhook_configs": [
                            {
                                "url": f"http://127.0.0.1:{receiver_server.server_address[1]}/hook",
                                "send_resolved": False,
                            }
                        ],
                    }
                ],
            }
        )
    )
    am_log = tmp_path / "alertmanager.log"
    am = start_process(
        [
            alertmanager,
            f"--config.file={am_config}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ],
        am_log,
    )
    cleanup.append(lambda: (am.terminate(), am.wait(timeout=20)))
    wait_ready(f"http://127.0.0.1:{am_port}", am, am_log)

    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": rules_with_short_for(tmp_path, ALERTS.read_text(), RULES.read_text()),
                "alerting": {
                    "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                },
                "scrape_configs": [
                    {
                        "job_name": "copyai-exporter",
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics.port}"]}],
                    }
                ],
            }
        )
    )
    prom_log = tmp_path / "prometheus.log"
    prom = start_process(
        [
            prometheus,
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        prom_log,
    )
    cleanup.append(lambda: (prom.terminate(), prom.wait(timeout=20)))
    wait_ready(f"http://127.0.0.1:{prom_port}", prom, prom_log)

    yield Stack(
        world,
        sim,
        metrics.url,
        f"http://127.0.0.1:{prom_port}",
        f"http://127.0.0.1:{am_port}",
        receiver,
        [blog, seo],
    )
    registrar.deregister()
    for step in reversed(cleanup):
        step()
    receiver_thread.join(timeout=10)


def readme_promql_examples() -> list[str]:
    """The expressions of the README's "PromQL examples" block: comment lines dropped, an
    expression running on while its brackets are open or the next line is indented."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("### PromQL examples", 1)[1].split("```promql\n", 1)[1]
    lines = [line for line in block.split("\n```", 1)[0].splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    expressions: list[str] = []
    current = ""
    for i, line in enumerate(lines):
        current += line + "\n"
        following = lines[i + 1] if i + 1 < len(lines) else ""
        balanced = current.count("(") == current.count(")")
        if balanced and not following.startswith((" ", ")")):
            expressions.append(current.strip())
            current = ""
    assert current == "", f"unbalanced example: {current}"
    return expressions


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    for variable in board["templating"]["list"]:
        definition = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
        if match:
            exprs.append(match.group(1))
    return exprs


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\b(?:copyai_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?!\s*[:(])", text))


def test_the_stack_end_to_end(stack: Stack):
    world, (blog, seo) = stack.world, stack.workflow_ids
    # Prometheus has the counters at zero before anything happens
    wait_for(
        lambda: len(stack.query("copyai_workflow_runs_failed_total == 0")["data"]["result"]) == 2,
        timeout=30,
        interval=0.2,
    )
    # runs that fail and succeed while Prometheus watches; a credit limit webhook
    for i in range(6):
        world.add_run(
            blog,
            [("PROCESSING", 1), ("FAILED" if i < 5 else "COMPLETE", None)],
            credits=4,
            metadata=customer(("acme", "globex")[i % 2]),
        )
        world.add_run(
            seo,
            [("NEW", 0.5), ("RETRYING", 1), ("PROCESSING", 1), ("COMPLETE", None)],
            credits=2,
            metadata=customer("initech"),
        )
    world.credit_limit_reached(seo)

    # 3. the failing-runs alert fires in Prometheus and reaches the receiver
    wait_for(lambda: "CopyaiWorkflowRunsFailing" in stack.firing(), timeout=45, interval=0.5)
    failing = [
        a for a in stack.firing_alerts() if a["labels"]["alertname"] == "CopyaiWorkflowRunsFailing"
    ]
    assert {a["labels"]["workflow_name"] for a in failing} == {"blog-writer"}
    assert "blog-writer" in failing[0]["annotations"]["summary"]
    wait_for(
        lambda: "CopyaiWorkflowRunsFailing" in stack.receiver.alertnames(), timeout=30, interval=0.2
    )
    assert "CopyaiCreditLimitReached" in stack.firing()
    # the runs spent the seo budget: a page for that budget only; the run waiting for an
    # hour is a backlog of its workflow
    wait_for(lambda: "CopyaiCreditBudgetExceeded" in stack.firing(), timeout=30, interval=0.5)
    spent = [
        a for a in stack.firing_alerts() if a["labels"]["alertname"] == "CopyaiCreditBudgetExceeded"
    ]
    assert [(a["labels"]["budget"], a["labels"]["severity"]) for a in spent] == [
        ("seo", "critical")
    ]
    assert float(spent[0]["value"]) >= 10
    wait_for(lambda: "CopyaiRunsQueuedTooLong" in stack.firing(), timeout=30, interval=0.5)
    queued = [
        a for a in stack.firing_alerts() if a["labels"]["alertname"] == "CopyaiRunsQueuedTooLong"
    ]
    assert [a["labels"]["workflow_name"] for a in queued] == ["seo-meta"]
    wait_for(
        lambda: "CopyaiCreditBudgetExceeded" in stack.receiver.alertnames(),
        timeout=30,
        interval=0.2,
    )

    # 1. every dashboard query is valid PromQL and returns data
    exporter_text = requests.get(f"{stack.exporter_url}/metrics", timeout=10).text
    for histogram in ("duration", "queue", "processing"):
        wait_for(
            lambda h=histogram: stack.query(f"sum(copyai_workflow_run_{h}_seconds_count) > 0")[
                "data"
            ]["result"],
            timeout=20,
            interval=0.5,
        )
    empty = []
    annotations = {a["expr"] for a in json.loads(DASHBOARD.read_text())["annotations"]["list"]}
    for expr in dashboard_queries():
        answer = stack.query(substitute(expr))
        assert answer["status"] == "success", (expr, answer)
        if not answer["data"]["result"] and expr not in annotations:  # restarts: none here
            empty.append(expr)
    assert empty == [], "dashboard queries returning no data:\n" + "\n".join(empty)

    # 1b. every PromQL example of the README is valid and names only exported metrics
    examples = readme_promql_examples()
    assert len(examples) >= 20
    for expr in examples:
        answer = stack.query(expr)
        assert answer["status"] == "success", (expr, answer)

    # 2. no dead queries: every metric the dashboard and rules name is exported...
    exported = {n for (n, _labels) in parse_samples(exporter_text)}
    families = set(re.findall(r"^# TYPE (\S+) ", exporter_text, re.MULTILINE))
    used = (
        metric_names(DASHBOARD.read_text())
        | metric_names(ALERTS.read_text())
        | metric_names(RULES.read_text())
    )
    used |= {name for expr in examples for name in metric_names(expr)}
    dead = {name for name in used - PROMETHEUS_SYNTHETIC if name not in exported}
    assert dead == set(), f"dashboard or rules query metrics the exporter does not expose: {dead}"
    # ...and every exported metric is on the dashboard or documented as deliberately not
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- not-on-dashboard:start -->", 1)[1].split(
        "<!-- not-on-dashboard:end -->", 1
    )[0]
    not_on_dashboard = set(re.findall(r"`([a-z_]+)`", section))
    # a recorded series on the dashboard shows the metrics its recording rule reads
    dashboard_names = metric_names(DASHBOARD.read_text()) | metric_names(RULES.read_text())
    missing = {
        family
        for family in families
        if not any(n == family or n.startswith(family + "_") for n in dashboard_names)
        and family not in not_on_dashboard
    }
    assert missing == set(), f"exported but neither on the dashboard nor documented: {missing}"

    # 3b. the API becomes unreachable: the alert says so
    stack.sim.stop()
    wait_for(lambda: "CopyaiApiUnreachable" in stack.firing(), timeout=30, interval=0.5)
    assert stack.query("copyai_up")["data"]["result"][0]["value"][1] == "0"


# --- paging right: inhibitions in a real Alertmanager --------------------------------------


def post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    body = [{"labels": labels, "annotations": {"summary": "test"}} for labels in alerts]
    answer = requests.post(f"{url}/api/v2/alerts", json=body, timeout=10)
    assert answer.status_code == 200, answer.text


def alert_states(url: str) -> dict[tuple[str, ...], str]:
    answer = requests.get(f"{url}/api/v2/alerts", timeout=10).json()
    return {
        tuple(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k != "severity"): a["status"][
            "state"
        ]
        for a in answer
    }


def test_the_shipped_inhibitions_silence_only_the_job_that_is_down(tmp_path):
    """One job's API outage silences that job's workflow symptoms only; one replica down
    of several silences nothing; a page for a burning budget silences its ticket; a hung
    or queued run silences the generic stuck-run alert of its workflow; a spent credit
    budget silences its own projection, of that job only."""
    alertmanager = require_tool("prometheus-alertmanager")
    port = free_port()
    log = tmp_path / "alertmanager.log"
    process = start_process(
        [
            alertmanager,
            f"--config.file={ROOT / 'alertmanager' / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'am'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        post_alerts(
            url,
            [
                # job A cannot reach the API; job B's replica b2 is down
                {"alertname": "CopyaiApiUnreachable", "severity": "critical", "job": "A"},
                {"alertname": "CopyaiDataStale", "severity": "warning", "job": "A"},
                {
                    "alertname": "CopyaiRunStuck",
                    "severity": "warning",
                    "job": "A",
                    "workflow_id": "W1",
                },
                {
                    "alertname": "CopyaiRunsQueuedTooLong",
                    "severity": "warning",
                    "job": "A",
                    "workflow_id": "W1",
                },
                {
                    "alertname": "CopyaiRunHung",
                    "severity": "warning",
                    "job": "A",
                    "workflow_id": "W1",
                },
                {
                    "alertname": "CopyaiExporterReplicaDown",
                    "severity": "warning",
                    "job": "B",
                    "instance": "b2:10117",
                },
                {
                    "alertname": "CopyaiRunHung",
                    "severity": "warning",
                    "job": "B",
                    "workflow_id": "W4",
                },
                {
                    "alertname": "CopyaiRunStuck",
                    "severity": "warning",
                    "job": "B",
                    "workflow_id": "W4",
                },
                {
                    "alertname": "CopyaiCreditBudgetExceeded",
                    "severity": "critical",
                    "job": "B",
                    "budget": "content",
                },
                {
                    "alertname": "CopyaiCreditBudgetExhaustionProjected",
                    "severity": "warning",
                    "job": "B",
                    "budget": "content",
                },
                {
                    "alertname": "CopyaiCreditBudgetExhaustionProjected",
                    "severity": "warning",
                    "job": "B",
                    "budget": "ads",
                },
                {
                    "alertname": "CopyaiCreditBudgetExhaustionProjected",
                    "severity": "warning",
                    "job": "A",
                    "budget": "content",
                },
                {"alertname": "CopyaiDataStale", "severity": "warning", "job": "B"},
                {
                    "alertname": "CopyaiRunStuck",
                    "severity": "warning",
                    "job": "B",
                    "workflow_id": "W2",
                },
                {
                    "alertname": "CopyaiWorkflowErrorBudgetBurn",
                    "severity": "critical",
                    "job": "B",
                    "workflow_id": "W2",
                },
                {
                    "alertname": "CopyaiWorkflowErrorBudgetBurn",
                    "severity": "warning",
                    "job": "B",
                    "workflow_id": "W3",
                },
                {
                    "alertname": "CopyaiWorkflowErrorBudgetBurn",
                    "severity": "warning",
                    "job": "B",
                    "workflow_id": "W2",
                    "x": "ticket",
                },
            ],
        )
        expected = {
            ("alertname=CopyaiApiUnreachable", "job=A"): "active",
            ("alertname=CopyaiDataStale", "job=A"): "suppressed",
            ("alertname=CopyaiRunStuck", "job=A", "workflow_id=W1"): "suppressed",
            ("alertname=CopyaiRunsQueuedTooLong", "job=A", "workflow_id=W1"): "suppressed",
            ("alertname=CopyaiRunHung", "job=A", "workflow_id=W1"): "suppressed",
            ("alertname=CopyaiExporterReplicaDown", "instance=b2:10117", "job=B"): "active",
            ("alertname=CopyaiRunHung", "job=B", "workflow_id=W4"): "active",
            ("alertname=CopyaiRunStuck", "job=B", "workflow_id=W4"): "suppressed",
            ("alertname=CopyaiCreditBudgetExceeded", "budget=content", "job=B"): "active",
            ("alertname=CopyaiCreditBudgetExhaustionProjected", "budget=content", "job=B"): (
                "suppressed"
            ),
            ("alertname=CopyaiCreditBudgetExhaustionProjected", "budget=ads", "job=B"): "active",
            ("alertname=CopyaiCreditBudgetExhaustionProjected", "budget=content", "job=A"): (
                "active"
            ),
            ("alertname=CopyaiDataStale", "job=B"): "active",
            ("alertname=CopyaiRunStuck", "job=B", "workflow_id=W2"): "active",
            ("alertname=CopyaiWorkflowErrorBudgetBurn", "job=B", "workflow_id=W2"): "active",
            ("alertname=CopyaiWorkflowErrorBudgetBurn", "job=B", "workflow_id=W3"): "active",
            ("alertname=CopyaiWorkflowErrorBudgetBurn", "job=B", "workflow_id=W2", "x=ticket"): (
                "suppressed"
            ),
        }
        wait_for(lambda: alert_states(url) == expected, timeout=20, interval=0.2)
    finally:
        process.terminate()
        process.wait(timeout=20)


# --- the rules under a Kubernetes job name, on a real Prometheus ---------------------------


def test_rules_built_for_another_job_name_evaluate_cleanly_on_a_real_prometheus(
    tmp_path, sim, world, start_exporter
):
    """Rules built with selector job="monitoring/copyai-exporter", as the Prometheus
    Operator names jobs, loaded by Prometheus scraping a healthy exporter under that job:
    every rule evaluates without error and no critical alert fires."""
    from exporter.mixin import ALERTS as ALERTS_FILE
    from exporter.mixin import RULES as RULES_FILE
    from exporter.mixin import render
    from exporter.mixin.config import build_mixin_config

    prometheus = require_tool("prometheus")
    job = "monitoring/copyai-exporter"
    outputs = render(build_mixin_config({"selector": f'job="{job}"'}))
    world.add_workflow("blog", "WCFG-k8s")
    runs = [world.add_run("WCFG-k8s", [("COMPLETE", None)], credits=2).run_id]
    config = build_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
            "workflows": [{"id": "WCFG-k8s", "runs": runs, "discover": True}],
        },
        env={"COPYAI_API_KEY": API_KEY},
    )
    running = start_exporter(config)
    port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": rules_with_short_for(
                    tmp_path, outputs[ALERTS_FILE], outputs[RULES_FILE]
                ),
                "scrape_configs": [
                    {
                        "job_name": job,
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": [f"127.0.0.1:{running.server.port}"]}],
                    }
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    process = start_process(
        [
            prometheus,
            f"--config.file={prom_config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)

        def rules_evaluated() -> list[dict[str, Any]] | None:
            groups = requests.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            done = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
            info = requests.get(
                f"{url}/api/v1/query",
                params={"query": "job_workflow_id_workflow_name:copyai_workflow_info:max"},
                timeout=10,
            ).json()["data"]["result"]
            return rules if done and info else None

        rules = wait_for(rules_evaluated, timeout=30, interval=0.5)
        assert len(rules) == len(
            [
                r
                for name in (ALERTS_FILE, RULES_FILE)
                for g in yaml.safe_load(outputs[name])["groups"]
                for r in g["rules"]
            ]
        )
        broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert broken == []
        # a healthy set: no critical alert's expression returns a series
        critical = [
            rule["expr"]
            for group in yaml.safe_load(outputs[ALERTS_FILE])["groups"]
            for rule in group["rules"]
            if rule["labels"]["severity"] == "critical"
        ]
        assert len(critical) >= 4
        for expr in critical:
            answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
            assert answer.json()["status"] == "success", expr
            assert answer.json()["data"]["result"] == [], expr
        info = requests.get(
            f"{url}/api/v1/query",
            params={"query": "job_workflow_id_workflow_name:copyai_workflow_info:max"},
            timeout=10,
        ).json()["data"]["result"]
        assert [r["metric"]["job"] for r in info] == [job]
    finally:
        process.terminate()
        process.wait(timeout=20)
