"""The status page (/ and /status.json): every "why has this run no series?" produced for
real through the simulator's fault modes against a running exporter, the run lookup,
the API's recent requests and errors, reloads, secrets shown only as set or unset,
escaping of whatever the API or the config says, the Content-Security-Policy, the web
config in front of it, auto-refresh and bounded lists."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re

import bcrypt
import pytest
import requests

from exporter.api.errors import ApiError, ErrorKind
from exporter.api.records import Run, RunStatus
from exporter.config import build_config
from exporter.metrics.telemetry import RecentRequests
from exporter.tracking.journal import RECENT_ERRORS, Journal
from exporter.tracking.persistence import MemoryStore
from exporter.web.app import ExporterApp, WebOptions
from exporter.web.http import HttpServer
from exporter.web.status import MAX_RUNS_SHOWN, NEVER_FETCHED, SCHEMA, budget_use
from exporter.web.status_page import CONTENT_SECURITY_POLICY
from exporter.web.webconfig import WebState
from tests.support.clocks import FakeClock
from tests.support.exporters import API_KEY, RunningExporter, make_config, sim_stats
from tests.support.pki import tls_config, web_file
from tests.support.polling import wait_for
from tests.support.samples import Samples, sample

WF, WF_FOUND = "WCFG-status", "WCFG-status-found"


def status(running: RunningExporter, query: str = "") -> tuple[dict, str]:
    """/status.json and / (same query), both checked for their basic shape."""
    answer = requests.get(f"{running.url}/status.json{query}", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    facts = answer.json()
    assert facts["schema"] == SCHEMA
    page = requests.get(f"{running.url}/{query}", timeout=10)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    return facts, page.text


def run_of(facts: dict, run_id: str) -> dict:
    return next(r for r in facts["runs"]["shown"] if r["run_id"] == run_id)


def workflow_of(facts: dict, workflow_id: str) -> dict:
    return next(w for w in facts["workflows"] if w["id"] == workflow_id)


def scrape(running: RunningExporter) -> None:
    assert requests.get(f"{running.url}/metrics", timeout=30).status_code == 200


@pytest.fixture
def two_workflows(sim, world):
    """WF with a finished and an active listed run; WF_FOUND discovered, two runs."""
    world.add_workflow("status-test", WF)
    done = world.add_run(WF, [("COMPLETE", None)], age_seconds=600, credits=7).run_id
    active = world.add_run(WF, [("PROCESSING", None)], age_seconds=60, credits=3).run_id
    world.add_workflow("found", WF_FOUND)
    for _ in range(2):
        world.add_run(WF_FOUND, [("PROCESSING", None)], age_seconds=30)
    config = make_config(
        {
            "api": {
                "base_url": sim.base_url,
                "max_requests_per_second": 0,
                "max_retries": 0,
                "timeout_seconds": 2,
            },
            "collector": {"refresh_interval_seconds": 0, "up_check_interval_seconds": 0},
            "workflows": [
                {"id": WF, "name": "status-test", "runs": [done, active]},
                {"id": WF_FOUND, "name": "found", "discover": True},
            ],
        }
    )
    return config, done, active


# --- why a run has no series, produced for real ----------------------------------------

FAULTS = {
    # name: (faults, kind, HTTP code, words the explanation starts with)
    "not_found": (None, ErrorKind.NOT_FOUND, 404, "404 from the API"),
    "refuse_key": ({"refuse_key": True}, ErrorKind.UNAUTHORIZED, 401, "key refused"),
    "rate_limited": (
        {"rate_limit_per_second": 0.001, "retry_after": "120"},
        ErrorKind.RATE_LIMITED,
        429,
        "rate limited",
    ),
    "drop_connections": ({"drop_connections": True}, ErrorKind.UNREACHABLE, None, "no answer"),
    "wrong_shape": ({"mode": "wrong_shape"}, ErrorKind.BAD_RESPONSE, 200, "a bad answer"),
    "server_error": ({"error_rate": 1.0}, ErrorKind.SERVER_ERROR, 502, "server error"),
    "huge_body": ({"mode": "huge_body"}, ErrorKind.TOO_LARGE, 200, "a bad answer"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_why_a_run_has_no_series_for_each_fault(world, start_exporter, two_workflows, fault):
    config, done, _ = two_workflows
    change, kind, code, words = FAULTS[fault]
    world.faults.update(change if change is not None else {"not_found": [done]})
    running = start_exporter(config, process_metrics=False)
    scrape(running)

    facts, page = status(running)
    run = run_of(facts, done)
    assert run["has_series"] is False and run["status"] is None
    assert run["reason"] == kind
    assert run["why"].startswith(words), run["why"]
    assert run["last_fetch"]["ok"] is False and run["last_fetch"]["kind"] == kind
    assert run["last_fetch"]["code"] == code
    assert run["last_fetch"]["message"]  # the error's own words, from the journal
    assert run["problem"] is True
    assert facts["runs"]["reasons"][kind] >= 1
    assert html.escape(run["why"]) in page
    # it is among the recent API errors, with its endpoint, code, kind and run
    errors = facts["api"]["recent_errors"]
    assert any(
        e["endpoint"] == "get_run" and e["code"] == code and e["kind"] == kind
        for e in errors
        if e["run_id"] == done and e["workflow_id"] == WF
    ), errors
    assert facts["api"]["last_hour"]["errors_by_kind"][kind] >= 1
    # the same in one line, from the lookup
    looked, page = status(running, f"?run={done}")
    assert looked["lookup"]["verdict"] == "configured"
    assert run["why"] in looked["lookup"]["explanation"]
    assert html.escape(looked["lookup"]["explanation"]) in page
    # a fault of every request also fails the discovered workflow's listing
    listing = workflow_of(facts, WF_FOUND)["discovery"]["last_listing"]
    if fault == "not_found":
        assert listing["ok"] is True
        assert facts["api"]["up"] is True
    else:
        assert listing["ok"] is False and listing["kind"] == kind
        assert "listing failed" in page


def test_a_run_never_fetched_says_so(sim, start_exporter, two_workflows):
    config, done, active = two_workflows
    running = start_exporter(config, process_metrics=False)
    facts, page = status(running)
    status(running, f"?run={done}")
    assert sim_stats(sim) == {}  # the status page itself never calls the API
    assert facts["runs"]["without_series"] == 2
    assert facts["runs"]["reasons"] == {"not_fetched_yet": 2}
    for run_id in (done, active):
        run = run_of(facts, run_id)
        assert run["reason"] == "not_fetched_yet" and run["why"] == NEVER_FETCHED
        assert run["last_fetch"] == {
            "at": None,
            "ok": None,
            "kind": None,
            "code": None,
            "message": None,
        }
    assert "never fetched yet (2)" in facts["summary"][1]["text"]
    assert html.escape(NEVER_FETCHED) in page

    scrape(running)
    facts, page = status(running)
    assert facts["runs"]["without_series"] == 0 and facts["runs"]["problems"] == 0
    run = run_of(facts, active)
    assert run["status"] == "PROCESSING" and run["credits"] is not None
    assert run["last_fetch"]["ok"] is True and run["why"] is None
    assert 55 < run["age_seconds"] < 600
    assert "All 2 configured runs have series." in page


def test_answers_without_status_carry_a_note(world, start_exporter, two_workflows):
    config, done, _ = two_workflows
    silent = world.add_run(WF, [("PROCESSING", None)], omit_status=True).run_id
    config = make_config(
        {
            "api": {"base_url": config.api.base_url, "max_requests_per_second": 0},
            "collector": {"refresh_interval_seconds": 0},
            "workflows": [{"id": WF, "runs": [done, silent]}],
        }
    )
    running = start_exporter(config, process_metrics=False)
    scrape(running)
    facts, page = status(running)
    run = run_of(facts, silent)
    assert run["has_series"] is True and run["status"] == "UNKNOWN"
    assert run["api_status"] is None
    assert run["note_code"] == "no_status" and run["problem"] is True
    assert "carry no status: shown as UNKNOWN" in run["note"]
    assert facts["runs"]["notes"] == {"no_status": 1}
    assert html.escape(run["note"]) in page
    assert run_of(facts, done)["problem"] is False
    assert facts["runs"]["shown"][0]["run_id"] == silent  # problems first


# --- what the API says or the config holds is escaped ------------------------------------

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


def test_api_and_config_text_is_escaped_through_the_real_server(sim, world, start_exporter):
    world.add_workflow("hostile", WF)
    odd = world.add_run(WF, [("COMPLETE", None)]).run_id
    refused = world.add_run(WF, [("COMPLETE", None)]).run_id
    record = {"id": odd, "status": HOSTILE, "createdAt": "2024-01-01T00:00:00Z"}
    world.canned[("GET", f"/workflow/{WF}/run/{odd}")] = (
        200,
        json.dumps({"status": "success", "data": record}).encode(),
        "application/json",
    )
    world.canned[("GET", f"/workflow/{WF}/run/{refused}")] = (
        400,
        json.dumps({"status": "error", "errorCode": HOSTILE, "message": HOSTILE}).encode(),
        "application/json",
    )
    config = make_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
            "workflows": [{"id": WF, "name": HOSTILE, "runs": [odd, refused]}],
        }
    )
    running = start_exporter(config, process_metrics=False)
    scrape(running)
    facts, page = status(running, "?run=" + requests.utils.quote(HOSTILE))
    assert workflow_of(facts, WF)["name"] == HOSTILE  # JSON keeps the text as it is...
    run = run_of(facts, odd)
    assert run["api_status"] == HOSTILE and run["note_code"] == "undocumented_status"
    assert run_of(facts, refused)["reason"] == ErrorKind.CLIENT_ERROR
    assert facts["lookup"]["verdict"] == "invalid"
    raw = requests.get(f"{running.url}/status.json", timeout=10).text
    assert "<" not in raw and ">" not in raw  # ...as JSON escapes, never as markup
    # the page shows it all as text: no element comes from it
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert page.count(html.escape(HOSTILE)) >= 3  # workflow name, status note, lookup


# --- the lookup of any run ID ------------------------------------------------------------


def test_lookup_explains_tracked_dropped_and_never_seen_runs(sim, world, start_exporter):
    world.add_workflow("found", WF_FOUND)
    old = world.add_run(WF_FOUND, [("COMPLETE", None)], age_seconds=7200).run_id
    recent = [
        world.add_run(WF_FOUND, [("COMPLETE", None)], age_seconds=age).run_id
        for age in (300, 200, 100)
    ]
    config = make_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
            "collector": {"refresh_interval_seconds": 0},
            "workflows": [
                {
                    "id": WF_FOUND,
                    "discover": True,
                    "discovery": {"window_seconds": 3600, "max_tracked_runs": 2},
                }
            ],
        }
    )
    running = start_exporter(config, process_metrics=False)
    scrape(running)

    facts, page = status(running, f"?run={recent[-1]}")
    found = facts["lookup"]
    assert found["verdict"] == "tracked" and found["tracked"]["workflow_id"] == WF_FOUND
    assert found["tracked"]["status"] == "COMPLETE" and found["configured"] is None
    assert "no per-run series" in found["explanation"]
    assert html.escape(found["explanation"]) in page

    facts, page = status(running, f"?run={recent[0]}")  # the oldest of 3, cap 2
    assert facts["lookup"]["verdict"] == "dropped"
    assert facts["lookup"]["dropped"]["reason"] == "cap"
    assert "max_tracked_runs (2)" in facts["lookup"]["explanation"]
    horizon = workflow_of(facts, WF_FOUND)["discovery"]["forget_horizon"]
    assert horizon is not None

    facts, _ = status(running, f"?run={old}")  # listed, but older than the window
    assert facts["lookup"]["verdict"] == "dropped"
    assert facts["lookup"]["dropped"]["reason"] in ("window", "cap")
    assert "not tracked" in facts["lookup"]["explanation"]

    facts, page = status(running, "?run=WRUN-never-seen")
    assert facts["lookup"]["verdict"] == "never_seen"
    assert "has never seen it" in facts["lookup"]["explanation"]
    assert facts["lookup"]["discovering"][0]["workflow_id"] == WF_FOUND
    assert html.escape(facts["lookup"]["explanation"]) in page

    facts, _ = status(running, "?run=" + "x" * 300)  # too long for an ID: said so
    assert facts["lookup"]["verdict"] == "invalid"
    assert len(facts["lookup"]["run_id"]) == 200


# --- API numbers, journal, reloads, webhooks --------------------------------------------


def test_recent_requests_keep_one_hour_in_minute_buckets():
    clock = FakeClock(start=10_000.0)
    recent = RecentRequests(clock)
    for _ in range(5):
        recent.request("200")
    recent.request("error")
    recent.error(ErrorKind.UNREACHABLE)
    clock.advance(30)
    recent.request("429")
    summary = recent.summary()
    assert summary.requests == 7 and summary.requests_last_minute == 7
    assert summary.requests_by_code == {"200": 5, "429": 1, "error": 1}
    assert summary.errors_by_kind == {"unreachable": 1}
    clock.advance(45)  # the first six are more than a minute old, not an hour
    summary = recent.summary()
    assert summary.requests == 7 and summary.requests_last_minute == 1
    for _ in range(200):  # a request every minute for 200 minutes
        clock.advance(60)
        recent.request("200")
    summary = recent.summary()
    assert summary.requests == 60 and summary.errors == 0  # bounded: the last hour
    assert len(recent._minutes) == RecentRequests.MINUTES


def test_budget_use_is_requests_in_the_last_minute_against_the_limit():
    assert budget_use(30, 10) == {
        "requests_last_minute": 30,
        "limit_per_minute": 600,
        "used_ratio": 0.05,
    }
    assert budget_use(30, 0.5)["used_ratio"] == 1.0
    assert budget_use(7, 0) == {
        "requests_last_minute": 7,
        "limit_per_minute": None,
        "used_ratio": None,
    }


def test_the_journal_keeps_the_newest_errors():
    journal = Journal(started_at=1.0)
    for i in range(RECENT_ERRORS + 5):
        journal.api_error(float(i), "get_run", ApiError("unreachable", "no answer"), WF, f"R{i}")
    errors = journal.recent_errors()
    assert len(errors) == RECENT_ERRORS
    assert [e.run_id for e in errors[:2]] == [f"R{RECENT_ERRORS + 4}", f"R{RECENT_ERRORS + 3}"]
    assert journal.last_error_of(WF, "R0") is None  # gone from the ring
    assert journal.last_error_of(WF, f"R{RECENT_ERRORS + 4}") is errors[0]


def test_a_failed_reload_shows_every_problem(sim, world, start_exporter, tmp_path):
    world.add_workflow("w", WF)
    run = world.add_run(WF, [("COMPLETE", None)]).run_id
    path = tmp_path / "config.yaml"
    path.write_text(
        f"api:\n  base_url: {sim.base_url}\nworkflows:\n  - id: {WF}\n    runs: [{run}]\n"
    )
    config = make_config(
        {"api": {"base_url": sim.base_url}, "workflows": [{"id": WF, "runs": [run]}]}
    )
    running = start_exporter(
        config, WebOptions(enable_lifecycle=True), config_file=path, process_metrics=False
    )
    facts, _ = status(running)
    assert facts["config"]["last_reload"] is None
    assert facts["config"]["file"] is None  # set by the command line; none here

    path.write_text("api:\n  max_concurrency: 0\n  bogus: 1\nworkflows: 12\n")
    assert requests.post(f"{running.url}/-/reload", timeout=10).status_code == 500
    facts, page = status(running)
    last = facts["config"]["last_reload"]
    assert last["ok"] is False and last["file"] == str(path)
    assert len(last["problems"]) == 3
    assert any("api.max_concurrency" in p for p in last["problems"])
    assert any("api.bogus" in p for p in last["problems"])
    for problem in last["problems"]:
        assert html.escape(problem) in page
    assert any("last reload failed with 3 problem(s)" in s["text"] for s in facts["summary"])

    path.write_text(f"api:\n  base_url: {sim.base_url}\nworkflows:\n  - id: {WF}\n")
    assert requests.post(f"{running.url}/-/reload", timeout=10).status_code == 200
    facts, _ = status(running)
    assert facts["config"]["last_reload"]["ok"] is True
    assert facts["config"]["last_reload"]["problems"] == []
    assert facts["config"]["runs"] == 0


TOKEN = "whk-status-canary-5d8e1f2a3b4c"


def test_last_webhook_delivery_per_workflow(sim, world, start_receiver):
    world.add_workflow("hooked", WF)
    run = world.add_run(WF, [("PROCESSING", None)]).run_id
    config = build_config(
        {
            "api": {"base_url": sim.base_url},
            "workflows": [{"id": WF, "runs": [run]}, {"id": WF_FOUND}],
            "webhooks": {"listen_address": "127.0.0.1:0"},
        },
        env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": TOKEN},
    )
    receiver = start_receiver(config)
    facts, _ = status(receiver.running)
    assert workflow_of(facts, WF)["last_webhook"] is None
    delivery = {"type": "workflowRun.completed", "workflowRunId": run, "workflowId": WF}
    assert receiver.post(delivery).status_code == 202
    facts, page = status(receiver.running)
    assert workflow_of(facts, WF)["last_webhook"] is not None
    assert workflow_of(facts, WF_FOUND)["last_webhook"] is None
    assert run_of(facts, run)["status"] == "COMPLETE"  # applied at once, no fetch
    assert facts["config"]["secrets"]["webhook_token"] == "set"
    assert TOKEN not in page and TOKEN not in json.dumps(facts)


# --- secrets ---------------------------------------------------------------------------

CANARIES = {
    "api_key": "cpy-status-canary-Q7wE2rT9yU4iO1pA",
    "webhook_token": "whk-status-canary-Z3xC8vB5nM1qW6eR",
    "redis_password": "rds-status-canary-L4kJ9hG2fD7sA0pO",
}


def test_secrets_are_shown_as_set_only(sim, world, start_exporter, tmp_path):
    world.api_key = CANARIES["api_key"]
    world.add_workflow("secret", WF)
    run = world.add_run(WF, [("PROCESSING", None)]).run_id
    key_file = tmp_path / "api_key"
    key_file.write_text(CANARIES["api_key"] + "\n")
    password_file = tmp_path / "redis_password"
    password_file.write_text(CANARIES["redis_password"] + "\n")
    config = build_config(
        {
            "api": {"base_url": sim.base_url, "api_key_file": str(key_file)},
            "workflows": [{"id": WF, "runs": [run]}],
            "webhooks": {"listen_address": "127.0.0.1:0"},
            "state": {
                "backend": "redis",
                "redis": {
                    "url": "redis://cache-user@127.0.0.1:6399/2",
                    "password_file": str(password_file),
                },
            },
        },
        env={"COPYAI_WEBHOOK_TOKEN": CANARIES["webhook_token"]},
    )
    # the Redis store is replaced: nothing here talks to Redis
    running = start_exporter(config, state_store=MemoryStore(), process_metrics=False)
    scrape(running)
    world.faults.update({"refuse_key": True})
    scrape(running)
    texts = []
    for query in ("", f"?run={run}", "?run=" + CANARIES["api_key"]):
        facts, page = status(running, query)
        texts += [json.dumps(facts), page]
    assert facts["config"]["secrets"] == {
        "api_key": "set",
        "api_key_from": "file",
        "api_key_file": str(key_file),
        "webhook_token": "set",
        "redis_password": "set",
    }
    assert facts["history"]["backend"] == "redis"
    assert facts["history"]["redis"]["url"] == "redis://127.0.0.1:6399/2"  # no user either
    for text in texts:
        for name, canary in CANARIES.items():
            tail = canary.rsplit("-", 1)[-1]
            for piece in [canary, *(tail[i : i + 8] for i in range(len(tail) - 7))]:
                assert piece not in text, f"the status shows the {name}"


# --- headers, CSP, web config, auto-refresh ----------------------------------------------


def test_the_page_has_no_script_no_external_asset_and_a_strict_csp(start_exporter, two_workflows):
    config, *_ = two_workflows
    running = start_exporter(config, process_metrics=False)
    answer = requests.get(f"{running.url}/", timeout=10)
    page = answer.text
    csp = answer.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    styles = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp  # the hash is the one of the style sent
    lowered = page.lower()
    for forbidden in ("<script", "<img", "<link", "<iframe", " src=", " style=", "javascript:"):
        assert forbidden not in lowered, forbidden
    for href in re.findall(r'(?:href|action)="([^"]*)"', page):
        assert href.startswith("/"), href  # nothing off this exporter
    assert 'href="/metrics"' in page and 'href="/status.json"' in page


def test_auto_refresh_is_off_unless_asked(start_exporter, two_workflows):
    config, *_ = two_workflows
    running = start_exporter(config, process_metrics=False)
    _, page = status(running)
    assert 'http-equiv="refresh"' not in page
    assert 'href="/?refresh=10"' in page
    _, page = status(running, "?refresh=10&run=WRUN-x")
    assert '<meta http-equiv="refresh" content="10">' in page
    assert 'href="/?run=WRUN-x">Stop auto-refresh' in page
    for query, expected in (("?refresh=1", 5), ("?refresh=999999", 3600)):
        _, page = status(running, query)
        assert f'content="{expected}"' in page
    for query in ("?refresh=abc", "?refresh=-5", "?refresh="):
        _, page = status(running, query)
        assert 'http-equiv="refresh"' not in page


PASSWORD = "status-page-password"


def test_basic_auth_of_the_web_config_protects_the_status_page(two_workflows, tmp_path):
    config, *_ = two_workflows
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    web = WebState(web_file(tmp_path, f"basic_auth_users:\n  prom: {hashed}\n"))
    from exporter.runtime import Exporter

    exporter = Exporter(config, process_metrics=False)
    server = HttpServer(ExporterApp(exporter, WebOptions(), lambda: (True, "")), "127.0.0.1:0", web)
    server.start()
    try:
        for path in ("/", "/status.json", "/?run=WRUN-1", "/status.json?run=WRUN-1"):
            assert requests.get(f"{server.url}{path}", timeout=10).status_code == 401, path
            wrong = requests.get(f"{server.url}{path}", auth=("prom", "nope"), timeout=10)
            assert wrong.status_code == 401
            right = requests.get(f"{server.url}{path}", auth=("prom", PASSWORD), timeout=10)
            assert right.status_code == 200, path
    finally:
        server.stop()
        exporter.close()


def test_tls_of_the_web_config_serves_the_status_page(pki, two_workflows, tmp_path):
    config, *_ = two_workflows
    web = WebState(web_file(tmp_path, tls_config(pki)))
    from exporter.runtime import Exporter

    exporter = Exporter(config, process_metrics=False)
    server = HttpServer(ExporterApp(exporter, WebOptions(), lambda: (True, "")), "127.0.0.1:0", web)
    server.start()
    try:
        assert server.url.startswith("https://")
        answer = requests.get(f"{server.url}/status.json", verify=pki / "ca.crt", timeout=10)
        assert answer.status_code == 200 and answer.json()["schema"] == SCHEMA
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url.replace('https', 'http')}/", timeout=10)
    finally:
        server.stop()
        exporter.close()


# --- bounded lists ---------------------------------------------------------------------


def test_ten_thousand_runs_show_problems_first_then_the_newest(start_exporter):
    runs = [f"WRUN-{i:05d}" for i in range(10_000)]
    config = make_config(
        {
            "api": {"base_url": "http://127.0.0.1:1/api"},  # nothing is fetched
            "collector": {"up_check_interval_seconds": 0},
            "workflows": [{"id": WF, "runs": runs}],
        }
    )
    running = start_exporter(config, process_metrics=False)
    problems = set(runs[::1000])  # 10 never fetched
    for i, run_id in enumerate(runs):
        if run_id not in problems:
            run = Run(run_id, RunStatus.COMPLETE, 1_700_000_000.0 + i, 1.0, "COMPLETE")
            running.exporter.store.seed((WF, run_id), run)
    facts, page = status(running)
    shown = facts["runs"]["shown"]
    assert len(shown) == MAX_RUNS_SHOWN
    assert facts["runs"]["not_shown"] == 10_000 - MAX_RUNS_SHOWN
    assert {r["run_id"] for r in shown[:10]} == problems
    created = [r["created_at"] for r in shown[10:]]
    assert created == sorted(created, reverse=True)
    assert shown[10]["run_id"] == "WRUN-09999"  # the newest
    assert facts["runs"]["without_series"] == 10 and facts["runs"]["with_series"] == 9990
    assert page.count('<tr><td title="') == MAX_RUNS_SHOWN
    assert f"{10_000 - MAX_RUNS_SHOWN} more not shown" in page
    assert not math.isnan(facts["generated_at"])


def test_history_section_and_exporter_health(start_exporter, two_workflows):
    config, *_ = two_workflows
    running = start_exporter(config, process_metrics=False)
    scrape(running)
    facts, page = status(running)
    assert facts["history"] == {
        "backend": "memory",
        "path": None,
        "redis": None,
        "up": True,
        "leader": True,
    }
    assert facts["api"]["up"] is True
    assert facts["api"]["last_successful_refresh"] is not None
    assert facts["api"]["last_hour"]["requests"] >= 3  # two runs and a listing
    found = workflow_of(facts, WF_FOUND)
    assert found["tracked_runs"] == 2 and found["runs_by_status"]["PROCESSING"] == 2
    assert found["discover"] is True and found["discovery"]["order"] is not None
    assert workflow_of(facts, WF)["configured_runs"] == 2
    assert "in memory only" in page


def test_credit_budgets_show_what_their_metrics_show_and_a_spent_one_warns(
    sim, world, start_exporter
):
    world.add_workflow("budgeted", WF_FOUND)
    config = make_config(
        {
            "api": {"base_url": sim.base_url},
            "collector": {"refresh_interval_seconds": 0},
            "workflows": [{"id": WF_FOUND, "name": "budgeted", "discover": True}],
            "budgets": [
                {"name": "roomy", "credits": 1000, "period": "month", "workflows": "*"},
                {"name": "tight", "credits": 5, "period": "day", "workflows": [WF_FOUND]},
            ],
        }
    )
    running = start_exporter(config, process_metrics=False)
    running.scrape()  # the watch begins
    world.add_run(WF_FOUND, [("COMPLETE", None)], credits=4)
    world.add_run(WF_FOUND, [("FAILED", None)], credits=3)

    def both_ends_counted() -> Samples | None:
        samples = running.scrape()
        used = sample(samples, "copyai_credit_budget_used_credits", budget="tight")
        return samples if used == 7.0 else None

    samples = wait_for(both_ends_counted, timeout=20, interval=0.1)
    facts, page = status(running)
    budgets = {b["name"]: b for b in facts["budgets"]}
    assert set(budgets) == {"roomy", "tight"}
    for name, budget in budgets.items():
        assert budget["used_credits"] == sample(
            samples, "copyai_credit_budget_used_credits", budget=name
        )
        assert budget["period_end"] == sample(
            samples, "copyai_credit_budget_period_end_timestamp_seconds", budget=name
        )
        assert budget["workflows"] == [WF_FOUND]
    assert budgets["tight"]["used_ratio"] == 7 / 5 and budgets["roomy"]["period"] == "month"
    spent = [line for line in facts["summary"] if "budget tight is spent" in line["text"]]
    assert [line["level"] for line in spent] == ["warn"]
    assert not any("roomy" in line["text"] for line in facts["summary"])
    section = page.split('<section id="budgets">', 1)[1].split("</section>", 1)[0]
    assert "tight" in section and "roomy" in section and "budgeted" in section
    assert '<span class="bad">7 (140%)</span>' in section
