"""The collector and refresh logic against `responses`-mocked API answers: the documented
example bodies, error answers, caching, the refresh interval, copyai_up and logging."""

from __future__ import annotations

import json
import logging

import pytest
import responses

from exporter.runtime import Exporter
from tests.support.clocks import FakeClock
from tests.support.exporters import make_config
from tests.support.samples import names, parse_samples, sample

BASE = "https://api.test/api"
WF = "WCFG-84e56597-ebaf-4b49-a98c-75cacd4aecaa"
RUN_A = "WRUN-dc46baf3-cb19-4424-be04-95ba630409bf"
RUN_B = "WRUN-00000000-0000-4000-8000-00000000000b"
RUN_C = "WRUN-00000000-0000-4000-8000-00000000000c"
STATUSES = ("NEW", "WAITING", "PROCESSING", "COMPLETE", "RETRYING", "FAILED", "UNKNOWN")


def run_url(run_id: str, workflow_id: str = WF) -> str:
    return f"{BASE}/workflow/{workflow_id}/run/{run_id}"


def body(run_id: str, **fields) -> dict:
    data = {"id": run_id, "createdAt": "2023-04-06T22:34:46.704Z", **fields}
    return {"status": "success", "data": data}


def config(runs, refresh=30.0, **collector):
    return make_config(
        {
            "api": {"base_url": BASE, "max_requests_per_second": 0, "max_retries": 0},
            "collector": {"refresh_interval_seconds": refresh, **collector},
            "workflows": [{"id": WF, "name": "blog-writer", "runs": list(runs)}],
        }
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock):
    made: list[Exporter] = []

    def build(cfg) -> Exporter:
        exporter = Exporter(
            cfg, clock=clock, wall_clock=clock.wall, sleep=lambda s: None, process_metrics=False
        )
        made.append(exporter)
        return exporter

    yield build
    for exporter in made:
        exporter.close()


def scrape(exporter: Exporter, clock: FakeClock):
    report = exporter.refresh(deadline=clock() + 30)
    assert report.completed
    return parse_samples(exporter.render().decode())


def status_of(samples, run_id: str) -> dict[str, float]:
    return {
        s: sample(samples, "copyai_workflow_run_status", workflow_id=WF, run_id=run_id, status=s)
        for s in STATUSES
    }


@responses.activate
def test_documented_examples_produce_the_right_samples(make, clock):
    # First documented example: integer credits, milliseconds, COMPLETE.
    responses.get(
        run_url(RUN_A),
        json=body(
            RUN_A,
            status="COMPLETE",
            credits=2,
            metadata={"api": True},
            input={"Input 1": "x"},
            output={"Output 1": "y"},
        ),
    )
    # Second documented example: string credits, no status, no milliseconds.
    responses.get(
        run_url(RUN_B),
        json={
            "status": "success",
            "data": {
                "output": {"text": "workflow run output"},
                "metadata": {"interestingValue": "doublelyInterestingValue"},
                "createdAt": "2023-09-27T18:24:47Z",
                "id": RUN_B,
                "workflowRunId": RUN_B,
                "workflowId": WF,
                "credits": "9001",
            },
        },
    )
    # In progress: no credits, metadata null.
    responses.get(run_url(RUN_C), json=body(RUN_C, status="PROCESSING", metadata=None))
    exporter = make(config([RUN_A, RUN_B, RUN_C]))
    samples = scrape(exporter, clock)

    assert status_of(samples, RUN_A) == {s: float(s == "COMPLETE") for s in STATUSES}
    assert status_of(samples, RUN_B) == {s: float(s == "UNKNOWN") for s in STATUSES}
    assert status_of(samples, RUN_C) == {s: float(s == "PROCESSING") for s in STATUSES}
    credits = "copyai_workflow_run_credits"
    assert sample(samples, credits, workflow_id=WF, run_id=RUN_A) == 2
    assert sample(samples, credits, workflow_id=WF, run_id=RUN_B) == 9001
    assert sample(samples, credits, workflow_id=WF, run_id=RUN_C) is None
    created = "copyai_workflow_run_created_timestamp_seconds"
    assert sample(samples, created, workflow_id=WF, run_id=RUN_A) == pytest.approx(1680820486.704)
    assert sample(samples, created, workflow_id=WF, run_id=RUN_B) == 1695839087.0
    age = sample(samples, "copyai_workflow_run_age_seconds", workflow_id=WF, run_id=RUN_A)
    assert age == pytest.approx(clock.wall() - 1680820486.704)
    for run in (RUN_A, RUN_B, RUN_C):
        assert sample(samples, "copyai_workflow_run_fetch_success", workflow_id=WF, run_id=run) == 1
    per_status = {
        s: sample(samples, "copyai_workflow_runs", workflow_id=WF, status=s) for s in STATUSES
    }
    assert per_status == {
        "NEW": 0,
        "WAITING": 0,
        "PROCESSING": 1,
        "COMPLETE": 1,
        "RETRYING": 0,
        "FAILED": 0,
        "UNKNOWN": 1,
    }
    assert sample(samples, "copyai_workflow_info", workflow_id=WF, workflow_name="blog-writer") == 1
    assert sample(samples, "copyai_up") == 1
    assert sample(samples, "copyai_last_successful_refresh_timestamp_seconds") == clock.wall()
    assert sample(samples, "copyai_api_requests_total", endpoint="get_run", code="200") == 3


@responses.activate
def test_error_answers_mark_only_their_run_and_keep_up(make, clock):
    responses.get(run_url(RUN_A), json=body(RUN_A, status="PROCESSING", credits=5))
    responses.get(run_url(RUN_B), status=404, json={"status": "error", "errorCode": "NOT_FOUND"})
    responses.get(
        run_url(RUN_C),
        status=502,
        body="<html><h1>502 Bad Gateway</h1></html>",
        content_type="text/html",
    )
    exporter = make(config([RUN_A, RUN_B, RUN_C]))
    samples = scrape(exporter, clock)

    fetch = "copyai_workflow_run_fetch_success"
    assert sample(samples, fetch, workflow_id=WF, run_id=RUN_A) == 1
    assert sample(samples, fetch, workflow_id=WF, run_id=RUN_B) == 0
    assert sample(samples, fetch, workflow_id=WF, run_id=RUN_C) == 0
    # A run never fetched successfully has no status, credits or age series.
    for run in (RUN_B, RUN_C):
        assert all(v is None for v in status_of(samples, run).values())
        assert (
            sample(samples, "copyai_workflow_run_age_seconds", workflow_id=WF, run_id=run) is None
        )
    assert sample(samples, "copyai_up") == 1  # the API answered; one run's 404/502 is not "down"
    assert sample(samples, "copyai_api_errors_total", endpoint="get_run", kind="not_found") == 1
    assert sample(samples, "copyai_api_errors_total", endpoint="get_run", kind="server_error") == 1
    assert sample(samples, "copyai_api_requests_total", endpoint="get_run", code="502") == 1
    # a 502 is a refresh error, so the refresh timestamp does not move
    assert sample(samples, "copyai_last_successful_refresh_timestamp_seconds") == 0


@responses.activate
def test_failed_fetch_keeps_last_known_values(make, clock):
    responses.get(run_url(RUN_A), json=body(RUN_A, status="RETRYING", credits="7"))
    exporter = make(config([RUN_A], refresh=30))
    first = scrape(exporter, clock)
    assert status_of(first, RUN_A)["RETRYING"] == 1

    responses.replace(responses.GET, run_url(RUN_A), status=503, body="unavailable")
    clock.advance(30)
    second = scrape(exporter, clock)
    assert status_of(second, RUN_A) == status_of(first, RUN_A)
    assert sample(second, "copyai_workflow_run_credits", workflow_id=WF, run_id=RUN_A) == 7
    assert sample(second, "copyai_workflow_run_fetch_success", workflow_id=WF, run_id=RUN_A) == 0
    assert sample(second, "copyai_up") == 0  # only 5xx answers: cannot talk to the API


@responses.activate
def test_terminal_runs_are_fetched_exactly_once(make, clock):
    responses.get(run_url(RUN_A), json=body(RUN_A, status="COMPLETE", credits=3))
    responses.get(run_url(RUN_B), json=body(RUN_B, status="FAILED", credits=1))
    exporter = make(config([RUN_A, RUN_B], refresh=0, up_check_interval_seconds=0))
    for _ in range(25):
        samples = scrape(exporter, clock)
        clock.advance(60)
    assert len(responses.calls) == 2
    assert status_of(samples, RUN_B)["FAILED"] == 1


@responses.activate
def test_active_runs_respect_the_refresh_interval(make, clock):
    calls = responses.get(run_url(RUN_A), json=body(RUN_A, status="PROCESSING"))
    exporter = make(config([RUN_A], refresh=30))
    scrape(exporter, clock)
    assert calls.call_count == 1
    for _ in range(5):  # scrapes every 5 s for 25 s: still cached
        clock.advance(5)
        scrape(exporter, clock)
    assert calls.call_count == 1
    clock.advance(5)  # 30 s since the fetch
    scrape(exporter, clock)
    assert calls.call_count == 2


@responses.activate
def test_a_slow_fetch_is_still_due_at_the_scrape_one_interval_later(make, clock):
    """Each fetch takes 200 ms of the exporter's clock, so it finishes after the scrape
    that started it; the scrape one interval later must still fetch the run, not the
    one after it (with 15 s scrapes and a 30 s interval: every 30 s, not every 45 s)."""

    def slow(request):
        clock.advance(0.2)
        return 200, {}, json.dumps(body(RUN_A, status="PROCESSING"))

    responses.add_callback(responses.GET, run_url(RUN_A), callback=slow)
    exporter = make(config([RUN_A], refresh=30, up_check_interval_seconds=0))
    fetched_at = []
    start = clock()
    for tick in range(9):  # a scrape every 15 s from 0 to 120 s
        calls = len(responses.calls)
        scrape(exporter, clock)
        if len(responses.calls) > calls:
            fetched_at.append(tick * 15)
        clock.advance(start + (tick + 1) * 15 - clock())  # the next scrape, on the grid
    assert fetched_at == [0, 30, 60, 90, 120]


@responses.activate
def test_refresh_interval_zero_fetches_active_runs_on_every_scrape(make, clock):
    calls = responses.get(run_url(RUN_A), json=body(RUN_A, status="WAITING"))
    exporter = make(config([RUN_A], refresh=0))
    for _ in range(4):
        scrape(exporter, clock)
    assert calls.call_count == 4


@responses.activate
def test_run_becoming_terminal_stops_being_fetched(make, clock):
    responses.get(run_url(RUN_A), json=body(RUN_A, status="PROCESSING", credits=1))
    exporter = make(config([RUN_A], refresh=10, up_check_interval_seconds=0))
    scrape(exporter, clock)
    responses.replace(responses.GET, run_url(RUN_A), json=body(RUN_A, status="COMPLETE", credits=4))
    for _ in range(6):
        clock.advance(10)
        samples = scrape(exporter, clock)
    assert len(responses.calls) == 2  # the fetch that saw COMPLETE was the last one
    assert sample(samples, "copyai_workflow_run_credits", workflow_id=WF, run_id=RUN_A) == 4


@responses.activate
def test_unauthorized_sets_up_to_zero(make, clock):
    responses.get(run_url(RUN_A), status=401, json={"status": "error", "errorCode": "UNAUTHORIZED"})
    responses.get(run_url(RUN_B), json=body(RUN_B, status="PROCESSING"))
    exporter = make(config([RUN_A, RUN_B]))
    samples = scrape(exporter, clock)
    assert sample(samples, "copyai_up") == 0
    assert sample(samples, "copyai_api_errors_total", endpoint="get_run", kind="unauthorized") == 1


@responses.activate
def test_unreachable_api_still_answers_with_up_zero(make, clock):
    import requests

    responses.get(run_url(RUN_A), body=requests.ConnectionError("Connection refused"))
    exporter = make(config([RUN_A]))
    samples = scrape(exporter, clock)
    assert sample(samples, "copyai_up") == 0
    assert sample(samples, "copyai_api_requests_total", endpoint="get_run", code="error") == 1
    assert sample(samples, "copyai_workflow_run_fetch_success", workflow_id=WF, run_id=RUN_A) == 0


@responses.activate
def test_rate_limited_answer_is_counted_and_keeps_up(make, clock):
    responses.get(
        run_url(RUN_A),
        status=429,
        headers={"Retry-After": "120"},
        json={"status": "error", "errorCode": "RATE_LIMITED"},
    )
    exporter = make(config([RUN_A]))
    samples = scrape(exporter, clock)
    assert sample(samples, "copyai_api_requests_total", endpoint="get_run", code="429") == 1
    assert sample(samples, "copyai_api_errors_total", endpoint="get_run", kind="rate_limited") == 1
    assert sample(samples, "copyai_up") == 1  # the API answered and took the key


@responses.activate
def test_probe_keeps_up_honest_when_every_run_is_finished(make, clock):
    responses.get(run_url(RUN_A), json=body(RUN_A, status="COMPLETE"))
    listing = responses.get(
        f"{BASE}/workflow/{WF}/run",
        json={"status": "success", "data": {"total": "1", "data": []}},
    )
    exporter = make(config([RUN_A], up_check_interval_seconds=60))
    scrape(exporter, clock)
    clock.advance(30)
    scrape(exporter, clock)
    assert listing.call_count == 0  # the run fetch 30 s ago proved the API answers
    clock.advance(30)
    scrape(exporter, clock)
    assert listing.call_count == 1
    assert listing.calls[0].request.params == {"size": "1", "page": "1"}
    # the key is revoked: the next probe notices
    responses.replace(responses.GET, f"{BASE}/workflow/{WF}/run", status=403, body="forbidden")
    clock.advance(60)
    samples = scrape(exporter, clock)
    assert sample(samples, "copyai_up") == 0
    assert len(responses.calls) == 3


@responses.activate
def test_sparse_status_emits_only_the_current_status(make, clock):
    responses.get(run_url(RUN_A), json=body(RUN_A, status="WAITING"))
    exporter = make(config([RUN_A], sparse_status=True))
    samples = scrape(exporter, clock)
    series = names(samples, "copyai_workflow_run_status")
    assert series == [{"workflow_id": WF, "run_id": RUN_A, "status": "WAITING"}]
    assert (
        sample(
            samples, "copyai_workflow_run_status", workflow_id=WF, run_id=RUN_A, status="WAITING"
        )
        == 1
    )
    # per-workflow counts stay zero-filled
    assert len(names(samples, "copyai_workflow_runs")) == 7


@responses.activate
def test_errors_are_logged_once_per_run_and_change(make, clock, caplog):
    responses.get(run_url(RUN_A), status=404, json={"status": "error", "errorCode": "NOT_FOUND"})
    exporter = make(config([RUN_A], refresh=0))
    caplog.set_level(logging.INFO, logger="exporter")
    for _ in range(5):
        scrape(exporter, clock)
    failures = [r for r in caplog.records if "run fetch failed" in r.getMessage()]
    assert len(failures) == 1
    assert "not_found" in failures[0].getMessage()

    responses.replace(responses.GET, run_url(RUN_A), status=500, body="oops")
    for _ in range(3):
        scrape(exporter, clock)
    failures = [r for r in caplog.records if "run fetch failed" in r.getMessage()]
    assert len(failures) == 2

    responses.replace(responses.GET, run_url(RUN_A), json=body(RUN_A, status="NEW"))
    for _ in range(3):
        scrape(exporter, clock)
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(recovered) == 1


@responses.activate
def test_reload_drops_removed_runs_and_keeps_known_ones(make, clock):
    responses.get(run_url(RUN_A), json=body(RUN_A, status="COMPLETE"))
    responses.get(run_url(RUN_B), json=body(RUN_B, status="COMPLETE"))
    exporter = make(config([RUN_A, RUN_B], up_check_interval_seconds=0))
    scrape(exporter, clock)
    exporter.apply_config(config([RUN_A], up_check_interval_seconds=0))
    samples = scrape(exporter, clock)
    assert {s["run_id"] for s in names(samples, "copyai_workflow_run_status")} == {RUN_A}
    assert len(responses.calls) == 2  # RUN_A was finished and known: not fetched again
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="COMPLETE") == 1
