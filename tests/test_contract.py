"""The contract corpus: every example body of the public Copy.ai API documentation, kept
as data in tests/fixtures/api/ (each file names the page it comes from), run through the
client's parsers, and served by the simulator to a running exporter whose metrics must
say what each body means. Placeholders such as <run_id> become valid IDs here."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import responses

from exporter.api.client import CopyaiClient
from exporter.api.deliveries import parse_event
from exporter.api.errors import ApiError
from exporter.api.records import error_code, unwrap_success
from exporter.config import ApiConfig, Secret, build_config
from exporter.web.http import HttpServer
from exporter.web.webhooks import WebhookApp
from tests.support.api_examples import (
    FIXTURES,
    WEBHOOK_ID,
    WORKFLOW_ID,
    load,
    names,
    run_id_for,
    substitute,
)
from tests.support.exporters import API_KEY
from tests.support.samples import Samples, sample

BASE = "http://copyai.test/api"
WF = WORKFLOW_ID
HOOK_ID = WEBHOOK_ID
TOKEN = "contract-token-6a2f9e1c47b8d305"
DOCS_TIME = 1_696_118_400.0  # 2023-10-01, after every documented example


def fixtures(*endpoints: str) -> list[str]:
    return [n for n in names() if not endpoints or load(n)["endpoint"] in endpoints]


def body_bytes(document: dict[str, Any]) -> bytes:
    if "text" in document:
        return document["text"].encode()
    return json.dumps(document["body"]).encode()


def record_id(document: dict[str, Any]) -> str:
    return document["body"]["data"]["id"]


def test_the_corpus_covers_every_endpoint_and_shape():
    names = fixtures()
    endpoints = {load(n)["endpoint"] for n in names}
    assert endpoints == {
        "get_run",
        "list_runs",
        "start_run",
        "register_webhook",
        "list_webhooks",
        "delete_webhook",
        "webhook_delivery",
    }
    statuses = {load(n)["status"] for n in names}
    assert {200, 202, 400, 404, 422, 502} <= statuses
    for name in names:  # every file says where it comes from
        source = json.loads((FIXTURES / name).read_text())["source"]
        assert source["page"] and source["where"] and source["reference"]


# --- through the parsers -------------------------------------------------------------------


@pytest.fixture
def client() -> CopyaiClient:
    config = ApiConfig(base_url=BASE, max_retries=0, api_key=Secret(API_KEY))
    return CopyaiClient(config, sleep=lambda _s: None)


def served(document: dict[str, Any], method: str, url: str) -> None:
    responses.add(
        method,
        url,
        body=body_bytes(document),
        status=document["status"],
        content_type=document.get("content_type", "application/json"),
    )


def assert_run(run, expect: dict[str, Any]) -> None:
    assert run.status.value == expect["status"]
    assert run.reported is expect["reported"]
    assert run.credits == expect["credits"]
    assert run.created_at == pytest.approx(expect["created_at"])


@responses.activate
@pytest.mark.parametrize("name", fixtures("get_run"))
def test_run_bodies_through_the_client(name, client):
    document = load(name)
    expect = document["expect"]
    run_id = record_id(document) if document["status"] == 200 else run_id_for(name)
    served(document, "GET", f"{BASE}/workflow/{WF}/run/{run_id}")
    if "error" in expect:
        with pytest.raises(ApiError) as caught:
            client.get_run(WF, run_id)
        assert caught.value.kind == expect["error"]
        assert caught.value.status == document["status"]
        if expect["error_code"]:
            assert expect["error_code"] in str(caught.value)
        return
    run = client.get_run(WF, run_id)
    assert run.run_id == run_id
    assert_run(run, expect)


@responses.activate
@pytest.mark.parametrize("name", fixtures("list_runs"))
def test_list_bodies_through_the_client(name, client):
    document = load(name)
    served(document, "GET", f"{BASE}/workflow/{WF}/run")
    page = client.list_runs(WF, page=1, size=10)
    assert page.total == document["expect"]["total"]
    assert page.invalid_items == document["expect"]["invalid_items"]
    assert len(page.runs) == len(document["expect"]["runs"])
    for run, expect in zip(page.runs, document["expect"]["runs"], strict=True):
        assert run.run_id == expect["run_id"]
        assert_run(run, expect)


@pytest.mark.parametrize("name", fixtures("start_run"))
def test_start_run_bodies_through_the_parsers(name):
    """The exporter starts no runs, but reads the same envelope and error codes."""
    document = load(name)
    if "error_code" in document["expect"]:
        assert error_code(document["body"]) == document["expect"]["error_code"]
    else:
        assert unwrap_success(document["body"]) == substitute(
            document["expect"]["data"], run_id_for(name)
        )


@responses.activate
@pytest.mark.parametrize("name", fixtures("register_webhook", "list_webhooks", "delete_webhook"))
def test_webhook_api_bodies_through_the_client(name, client):
    document = load(name)
    expect = document["expect"]
    endpoint = document["endpoint"]
    if endpoint == "register_webhook":
        served(document, "POST", f"{BASE}/webhook")
        hook = client.register_webhook("https://example.com/webhook", "workflowRun.completed", WF)
        assert (hook.id, hook.url, hook.event_type, hook.workflow_id) == (
            expect["id"],
            expect["url"],
            expect["event_type"],
            expect["workflow_id"],
        )
    elif endpoint == "list_webhooks":
        served(document, "GET", f"{BASE}/webhook")
        total, hooks = client.list_webhooks(page=0, size=100)
        assert total == expect["total"]
        assert [(h.event_type, h.workflow_id) for h in hooks] == [
            (h["event_type"], h["workflow_id"]) for h in expect["hooks"]
        ]
    else:
        served(document, "DELETE", f"{BASE}/webhook/{HOOK_ID}")
        assert client.delete_webhook(HOOK_ID) is None  # no error: a success


@pytest.mark.parametrize("name", fixtures("webhook_delivery"))
def test_delivery_bodies_through_the_parser(name):
    document = load(name)
    event = parse_event(body_bytes(document))
    expect = document["expect"]
    assert event.event_type == expect["event_type"]
    assert event.workflow_id == expect["workflow_id"]
    assert event.run_id == expect["run_id"]
    assert (event.status.value if event.status else None) == expect["status"]
    assert event.credits == expect["credits"]
    assert event.created_at == (
        pytest.approx(expect["created_at"]) if expect["created_at"] is not None else None
    )


# --- served by the simulator to a running exporter --------------------------------------------

LIST_WORKFLOWS = {name: f"WCFG-list-{i}" for i, name in enumerate(fixtures("list_runs"))}
IN_PROGRESS = "get_run_in_progress.json"


def can(sim, method: str, path: str, status: int, payload: bytes, content_type: str) -> None:
    answer = requests.post(
        sim.base_url.rsplit("/api", 1)[0] + "/_sim/canned",
        json={
            "method": method,
            "path": path,
            "status": status,
            "text": payload.decode(),
            "content_type": content_type,
        },
        timeout=10,
    )
    assert answer.status_code == 200


def run_status(samples: Samples, workflow_id: str, run_id: str) -> str | None:
    hot = [
        dict(labels)["status"]
        for (name, labels), value in samples.items()
        if name == "copyai_workflow_run_status"
        and dict(labels)["run_id"] == run_id
        and dict(labels)["workflow_id"] == workflow_id
        and value == 1
    ]
    return hot[0] if hot else None


def test_every_documented_body_gives_the_right_metrics(sim, start_exporter):
    runs: dict[str, str] = {}  # run id -> fixture
    for name in fixtures("get_run"):
        document = load(name)
        run_id = record_id(document) if document["status"] == 200 else run_id_for(name)
        runs[run_id] = name
        can(
            sim,
            "GET",
            f"/workflow/{WF}/run/{run_id}",
            document["status"],
            body_bytes(document),
            document.get("content_type", "application/json"),
        )
    for name, workflow_id in LIST_WORKFLOWS.items():
        document = load(name)
        can(
            sim,
            "GET",
            f"/workflow/{workflow_id}/run",
            200,
            body_bytes(document),
            "application/json",
        )
        for item in document["body"]["data"]["data"]:  # a run alone answers as listed
            single = json.dumps({"status": "success", "data": item}).encode()
            path = f"/workflow/{workflow_id}/run/{item['id']}"
            can(sim, "GET", path, 200, single, "application/json")
    # the runs the deliveries are about: in progress when the exporter first looks
    deliveries = {name: load(name) for name in fixtures("webhook_delivery")}
    hooked = {name: run_id_for(name) for name, d in deliveries.items() if d["expect"]["run_id"]}
    for run_id in hooked.values():
        progress = json.loads(json.dumps(load(IN_PROGRESS)["body"]))
        progress["data"]["id"] = run_id
        can(
            sim,
            "GET",
            f"/workflow/{WF}/run/{run_id}",
            200,
            json.dumps(progress).encode(),
            "application/json",
        )

    document = {
        "api": {"base_url": sim.base_url, "max_requests_per_second": 0, "max_retries": 0},
        "collector": {"refresh_interval_seconds": 3600},
        "workflows": [
            {"id": WF, "runs": [*runs, *hooked.values()]},
            *(
                {"id": wid, "discover": True, "discovery": {"window_seconds": 31_536_000}}
                for wid in LIST_WORKFLOWS.values()
            ),
        ],
        "webhooks": {"listen_address": "127.0.0.1:0"},
    }
    config = build_config(
        document, source="test", env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": TOKEN}
    )
    # the documented examples are from 2023: watch from then, so they are in the window
    running = start_exporter(config, process_metrics=False, wall_clock=lambda: DOCS_TIME)
    exporter = running.exporter
    receiver = HttpServer(WebhookApp(lambda: exporter.config.webhooks, exporter), "127.0.0.1:0")
    receiver.start()
    try:
        samples = running.scrape()
        for run_id, name in runs.items():
            expect = load(name)["expect"]
            fetched_ok = sample(
                samples, "copyai_workflow_run_fetch_success", workflow_id=WF, run_id=run_id
            )
            if "error" in expect:
                assert fetched_ok == 0, name
                assert run_status(samples, WF, run_id) is None, name  # never fetched: no series
                continue
            assert fetched_ok == 1, name
            assert run_status(samples, WF, run_id) == expect["status"], name
            credits = sample(samples, "copyai_workflow_run_credits", workflow_id=WF, run_id=run_id)
            assert credits == expect["credits"], name
            created = sample(
                samples,
                "copyai_workflow_run_created_timestamp_seconds",
                workflow_id=WF,
                run_id=run_id,
            )
            assert created == pytest.approx(expect["created_at"]), name
        for kind in ("not_found", "client_error", "server_error"):
            expected = sum(1 for name in runs.values() if load(name)["expect"].get("error") == kind)
            assert (
                sample(samples, "copyai_api_errors_total", endpoint="get_run", kind=kind)
                == expected
            )
        assert sample(samples, "copyai_up") == 1  # one run's 404 or 502 is not the API down
        for name, workflow_id in LIST_WORKFLOWS.items():
            expect = load(name)["expect"]
            for status in ("COMPLETE", "UNKNOWN", "PROCESSING"):
                wanted = sum(1 for run in expect["runs"] if run["status"] == status)
                assert (
                    sample(samples, "copyai_workflow_runs", workflow_id=workflow_id, status=status)
                    == wanted
                ), (name, status)

        url = f"{receiver.url}/webhook/{TOKEN}"
        for name, delivery in deliveries.items():
            answer = requests.post(url, data=body_bytes(delivery), timeout=10)
            assert answer.status_code == 202, (name, answer.text)
        samples = running.scrape()
        for name, delivery in deliveries.items():
            expect = delivery["expect"]
            if expect["run_id"] is None:
                continue
            assert run_status(samples, WF, hooked[name]) == expect["status"], name
            if expect["credits"] is not None:
                credits = sample(
                    samples, "copyai_workflow_run_credits", workflow_id=WF, run_id=hooked[name]
                )
                assert credits == expect["credits"], name
        for event_type in {d["expect"]["event_type"] for d in deliveries.values()}:
            count = sum(1 for d in deliveries.values() if d["expect"]["event_type"] == event_type)
            assert sample(samples, "copyai_webhook_events_total", event_type=event_type) == count
        assert sample(samples, "copyai_credit_limit_reached_total", workflow_id=WF) == 1
        rejected = "copyai_webhook_requests_rejected_total"
        assert all(v == 0 for (n, _), v in samples.items() if n == rejected)
    finally:
        receiver.stop()
