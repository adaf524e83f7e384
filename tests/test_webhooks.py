"""Webhooks: delivery payloads parsed into events, the receiver over real HTTP on loopback
(authorization, size limits, rejections counted by reason), webhook state reaching
/metrics without API calls, registration against the real simulator with its own
deliveries, and the webhook token kept out of logs and metrics."""

from __future__ import annotations

import io
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import requests

from exporter.api.deliveries import (
    COMPLETED,
    CREDIT_LIMIT,
    FAILED,
    STARTED,
    WebhookError,
    WebhookEvent,
    parse_event,
)
from exporter.api.records import RunStatus
from exporter.api.registration import WebhookRegistrar
from exporter.config import WEBHOOK_EVENT_TYPES, Config, WebhookRegistration, build_config
from exporter.logs import REDACTOR, LogfmtFormatter
from exporter.metrics.telemetry import REJECT_REASONS
from exporter.runtime import protect_secrets
from exporter.sim.world import World
from tests.support.clocks import ShiftedClock
from tests.support.exporters import API_KEY, Receiver, sim_stats
from tests.support.polling import wait_for
from tests.support.samples import Samples, sample

TOKEN = "whk-canary-3b9d0e7f51a2c468"
WF = "WCFG-hooks"
WF_DOC = "WCFG-84e56597-ebaf-4b49-a98c-75cacd4aecaa"
RUN_DOC = "WRUN-dc46baf3-cb19-4424-be04-95ba630409bf"


def unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def encode(payload: object) -> bytes:
    return json.dumps(payload).encode()


# --- parse_event ---------------------------------------------------------------------

DOCUMENTED_COMPLETED = {
    "type": "workflowRun.completed",
    "workflowRunId": "WRUN-1",
    "workflowId": "WCFG-1",
    "result": {"Output 1": "a blog post"},
    "metadata": {},
    "credits": 2,
}

PARSED = {
    "documented_completed": (
        DOCUMENTED_COMPLETED,
        WebhookEvent(COMPLETED, "WCFG-1", "WRUN-1", RunStatus.COMPLETE, 2.0, None),
    ),
    "older_result_output": (
        {
            "type": "workflowRun.completed",
            "workflowRunId": "WRUN-2",
            "workflowId": "WCFG-1",
            "result": {"output": "<result of workflow>"},
        },
        WebhookEvent(COMPLETED, "WCFG-1", "WRUN-2", RunStatus.COMPLETE, None, None),
    ),
    "whole_run_record_with_ids": (
        {
            "output": {"text": "workflow run output"},
            "metadata": {"interestingValue": "doublelyInterestingValue"},
            "createdAt": "2023-09-27T18:34:13.091Z",
            "id": RUN_DOC,
            "workflowRunId": RUN_DOC,
            "workflowId": WF_DOC,
            "credits": "9001",
            "status": "COMPLETE",
            "type": "workflowRun.completed",
        },
        WebhookEvent(
            COMPLETED,
            WF_DOC,
            RUN_DOC,
            RunStatus.COMPLETE,
            9001.0,
            unix("2023-09-27T18:34:13.091Z"),
        ),
    ),
    "whole_run_record_without_workflow": (
        {
            "status": "COMPLETE",
            "input": {"Input 1": "topic"},
            "output": {"Output 1": "text"},
            "metadata": {"api": True},
            "createdAt": "2023-04-06T22:34:46.704Z",
            "id": "WRUN-3",
            "credits": 2,
            "type": "workflowRun.completed",
        },
        WebhookEvent(
            COMPLETED, None, "WRUN-3", RunStatus.COMPLETE, 2.0, unix("2023-04-06T22:34:46.704Z")
        ),
    ),
    "failed_documented_shape": (
        {
            "type": "workflowRun.failed",
            "workflowRunId": "WRUN-4",
            "workflowId": "WCFG-1",
            "result": {},
            "metadata": None,
        },
        WebhookEvent(FAILED, "WCFG-1", "WRUN-4", RunStatus.FAILED, None, None),
    ),
    "failed_whole_record_with_error": (
        {
            "id": "WRUN-5",
            "workflowId": "WCFG-1",
            "status": "FAILED",
            "createdAt": "2023-09-27T18:24:47Z",
            "credits": "22",
            "error": {"message": "step 2 failed"},
            "type": "workflowRun.failed",
        },
        WebhookEvent(
            FAILED, "WCFG-1", "WRUN-5", RunStatus.FAILED, 22.0, unix("2023-09-27T18:24:47Z")
        ),
    ),
    "started_without_status": (
        {"type": "workflowRun.started", "workflowRunId": "WRUN-6", "workflowId": "WCFG-1"},
        # a start says the run is running, even when the payload has no record
        WebhookEvent(STARTED, "WCFG-1", "WRUN-6", RunStatus.PROCESSING, None, None),
    ),
    "started_with_status": (
        {
            "id": "WRUN-7",
            "status": "NEW",
            "createdAt": "2023-09-27T18:24:47.5Z",
            "input": {"Input 1": "topic"},
            "metadata": {"api": True},
            "type": "workflowRun.started",
            "workflowRunId": "WRUN-7",
            "workflowId": "WCFG-1",
        },
        WebhookEvent(
            STARTED, "WCFG-1", "WRUN-7", RunStatus.NEW, None, unix("2023-09-27T18:24:47.500Z")
        ),
    ),
    "started_with_status_processing": (
        {
            "type": "workflowRun.started",
            "workflowRunId": "WRUN-8",
            "workflowId": "WCFG-1",
            "status": "PROCESSING",
            "credits": 0,
        },
        WebhookEvent(STARTED, "WCFG-1", "WRUN-8", RunStatus.PROCESSING, 0.0, None),
    ),
    "started_never_claims_an_end": (
        {
            "type": "workflowRun.started",
            "workflowRunId": "WRUN-9",
            "workflowId": "WCFG-1",
            "status": "COMPLETE",
        },
        WebhookEvent(STARTED, "WCFG-1", "WRUN-9", None, None, None),
    ),
    "credit_limit_with_workflow": (
        {"type": "workflowCreditLimit.reached", "workflowId": "WCFG-1"},
        WebhookEvent(CREDIT_LIMIT, "WCFG-1"),
    ),
    "credit_limit_without_workflow": (
        {"type": "workflowCreditLimit.reached"},
        WebhookEvent(CREDIT_LIMIT, None),
    ),
}


@pytest.mark.parametrize(("payload", "expected"), PARSED.values(), ids=PARSED.keys())
def test_parse_event_accepts_every_documented_shape(payload, expected):
    assert parse_event(encode(payload)) == expected


def test_parse_event_constants_are_the_documented_event_types():
    assert (STARTED, COMPLETED, FAILED, CREDIT_LIMIT) == (
        "workflowRun.started",
        "workflowRun.completed",
        "workflowRun.failed",
        "workflowCreditLimit.reached",
    )


def run_event(**changes) -> bytes:
    return encode({**DOCUMENTED_COMPLETED, **changes})


def without(key: str) -> bytes:
    return encode({k: v for k, v in DOCUMENTED_COMPLETED.items() if k != key})


REJECTED = {
    "not_json": (b"this is not json", "bad_json"),
    "truncated": (encode(DOCUMENTED_COMPLETED)[:-12], "bad_json"),
    "empty_body": (b"", "bad_json"),
    "not_utf8": (b'\xff\xfe{"type": 1}', "bad_json"),
    "nested_too_deep": (b"[" * 100_000 + b"]" * 100_000, "bad_json"),
    "array": (b'[{"type": "workflowRun.completed"}]', "bad_payload"),
    "string": (b'"workflowRun.completed"', "bad_payload"),
    "null": (b"null", "bad_payload"),
    "no_type": (without("type"), "bad_payload"),
    "type_not_a_string": (run_event(type=["workflowRun.completed"]), "bad_payload"),
    "run_event_without_run_id": (without("workflowRunId"), "bad_payload"),
    "run_id_path_traversal": (run_event(workflowRunId="../x"), "bad_payload"),
    "run_id_with_space": (run_event(workflowRunId="WRUN 1"), "bad_payload"),
    "run_id_empty": (run_event(workflowRunId=""), "bad_payload"),
    "run_id_too_long": (run_event(workflowRunId="W" * 129), "bad_payload"),
    "run_id_a_number": (run_event(workflowRunId=42), "bad_payload"),
    "record_id_path_traversal": (
        encode({"type": "workflowRun.failed", "id": "../../etc", "workflowId": "WCFG-1"}),
        "bad_payload",
    ),
    "workflow_id_path_traversal": (run_event(workflowId="../x"), "bad_payload"),
    "workflow_id_an_object": (run_event(workflowId={"id": "WCFG-1"}), "bad_payload"),
    "credit_limit_bad_workflow_id": (
        encode({"type": "workflowCreditLimit.reached", "workflowId": "WCFG/1"}),
        "bad_payload",
    ),
    "credits_boolean": (run_event(credits=True), "bad_payload"),
    "credits_list": (run_event(credits=[2]), "bad_payload"),
    "credits_object": (run_event(credits={"used": 2}), "bad_payload"),
    "credits_words": (run_event(credits="lots"), "bad_payload"),
    "credits_negative": (run_event(credits=-1), "bad_payload"),
    "created_at_a_number": (run_event(createdAt=1680820486), "bad_payload"),
    "created_at_not_a_date": (run_event(createdAt="yesterday"), "bad_payload"),
    "paused": (run_event(type="workflowRun.paused"), "unknown_event"),
    "type_wrong_case": (run_event(type="WORKFLOWRUN.COMPLETED"), "unknown_event"),
}


@pytest.mark.parametrize(("body", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_parse_event_rejects_with_a_reason(body, reason):
    with pytest.raises(WebhookError) as caught:
        parse_event(body)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)
    assert str(caught.value)


# --- the receiver over HTTP -----------------------------------------------------------


def hook_config(
    sim, workflows: dict[str, list[str]], *, refresh: float = 3600.0, **webhooks
) -> Config:
    document = {
        "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
        "collector": {"refresh_interval_seconds": refresh},
        "workflows": [{"id": wid, "runs": runs} for wid, runs in workflows.items()],
        "webhooks": {"listen_address": "127.0.0.1:0", **webhooks},
    }
    return build_config(
        document,
        source="test",
        env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": TOKEN},
    )


def add_processing_run(world: World, workflow_id: str = WF, **details) -> str:
    """A configured run the simulator reports PROCESSING forever."""
    world.add_workflow("hooks", workflow_id)
    return world.add_run(workflow_id, [("PROCESSING", None)], credits=3, **details).run_id


def run_fetches(world: World, run_id: str) -> int:
    with world.lock:
        return world.run_stats[run_id]


def rejected(samples: Samples, reason: str) -> float | None:
    return sample(samples, "copyai_webhook_requests_rejected_total", reason=reason)


def accepted(samples: Samples, event_type: str) -> float | None:
    return sample(samples, "copyai_webhook_events_total", event_type=event_type)


def run_and_workflow_state(samples: Samples) -> Samples:
    """Everything about runs and workflows; the age moves with the clock, so not that."""
    return {
        key: value
        for key, value in samples.items()
        if key[0].startswith(("copyai_workflow", "copyai_credit_limit"))
        and key[0] != "copyai_workflow_run_age_seconds"
    }


def status_of(samples: Samples, run_id: str, workflow_id: str = WF) -> dict[str, float]:
    return {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "copyai_workflow_run_status"
        and dict(labels)["run_id"] == run_id
        and dict(labels)["workflow_id"] == workflow_id
    }


def completed_event(run_id: str, workflow_id: str = WF, credits: object = 7) -> dict:
    return {
        "type": "workflowRun.completed",
        "workflowRunId": run_id,
        "workflowId": workflow_id,
        "result": {"Output 1": "done"},
        "metadata": {},
        "credits": credits,
    }


def chunked(payload: bytes) -> Iterator[bytes]:
    yield payload[:10]
    yield payload[10:]


@dataclass(frozen=True)
class Refused:
    status: int
    reason: str
    method: str = "POST"
    path: str = f"/webhook/{TOKEN}"
    headers: tuple[tuple[str, str], ...] = ()
    body: Callable[[str], object] = lambda run_id: encode(completed_event(run_id))


REFUSALS = {
    "wrong_token_in_path": Refused(401, "unauthorized", path="/webhook/wrong-token-00000000000"),
    "token_with_a_suffix": Refused(401, "unauthorized", path=f"/webhook/{TOKEN}0"),
    "token_prefix_only": Refused(401, "unauthorized", path=f"/webhook/{TOKEN[:-1]}"),
    "no_token": Refused(401, "unauthorized", path="/webhook"),
    "no_token_trailing_slash": Refused(401, "unauthorized", path="/webhook/"),
    "wrong_bearer_token": Refused(
        401, "unauthorized", path="/webhook", headers=(("Authorization", "Bearer wrong-0000"),)
    ),
    "bearer_without_scheme": Refused(
        401, "unauthorized", path="/webhook", headers=(("Authorization", TOKEN),)
    ),
    "body_over_max_body_bytes": Refused(
        413,
        "too_large",
        body=lambda run_id: encode({**completed_event(run_id), "result": {"text": "x" * 2000}}),
    ),
    "no_content_length": Refused(
        411, "length_required", body=lambda run_id: chunked(encode(completed_event(run_id)))
    ),
    "malformed_json": Refused(400, "bad_json", body=lambda run_id: b'{"type": "workflowRun.'),
    "unknown_event_type": Refused(
        422,
        "unknown_event",
        body=lambda run_id: encode({**completed_event(run_id), "type": "workflowRun.paused"}),
    ),
    "run_id_not_a_token": Refused(
        422,
        "bad_payload",
        body=lambda run_id: encode({**completed_event(run_id), "workflowRunId": "../x"}),
    ),
    "credits_of_the_wrong_type": Refused(
        422, "bad_payload", body=lambda run_id: encode(completed_event(run_id, credits=[7]))
    ),
    "unknown_workflow": Refused(
        422,
        "unknown_workflow",
        body=lambda run_id: encode(completed_event(run_id, workflow_id="WCFG-stranger")),
    ),
    "unknown_run_without_workflow": Refused(
        422,
        "unknown_workflow",
        body=lambda run_id: encode(
            {"type": "workflowRun.completed", "workflowRunId": "WRUN-nobody-knows"}
        ),
    ),
    "credit_limit_of_unknown_workflow": Refused(
        422,
        "unknown_workflow",
        body=lambda run_id: encode(
            {"type": "workflowCreditLimit.reached", "workflowId": "WCFG-stranger"}
        ),
    ),
    "get": Refused(405, "method_not_allowed", method="GET", body=lambda run_id: None),
    "put": Refused(405, "method_not_allowed", method="PUT"),
    "other_path": Refused(404, "not_found", path="/other"),
    "other_path_with_token": Refused(404, "not_found", path=f"/webhooks/{TOKEN}"),
}


def refusal_problems(receiver: Receiver, run_id: str, case: Refused) -> list[str]:
    """Send one refused request; what differs from the expected outcome."""
    before = receiver.scrape()
    response = requests.request(
        case.method,
        receiver.url + case.path,
        data=case.body(run_id),
        headers={"Content-Type": "application/json", **dict(case.headers)},
        timeout=10,
    )
    after = receiver.scrape()
    problems = []
    if response.status_code != case.status:
        problems.append(f"status {response.status_code}, expected {case.status}")
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if answer != {"status": "rejected", "reason": case.reason}:
        problems.append(f"body {response.text}")
    if case.status == 405 and response.headers.get("Allow") != "POST":
        problems.append(f"Allow {response.headers.get('Allow')!r}")
    for reason in REJECT_REASONS:
        grown = rejected(after, reason) - rejected(before, reason)
        if grown != (1 if reason == case.reason else 0):
            problems.append(f"rejected_total{{reason={reason}}} grew by {grown}")
    for event_type in WEBHOOK_EVENT_TYPES:
        if accepted(after, event_type) != 0:
            problems.append(
                f"events_total{{event_type={event_type}}} is {accepted(after, event_type)}"
            )
    changed = {
        key
        for key in run_and_workflow_state(before).keys() | run_and_workflow_state(after).keys()
        if before.get(key) != after.get(key)
    }
    if changed:
        problems.append(f"run/workflow series changed: {sorted(changed)}")
    return problems


def test_refused_requests_count_their_reason_once_and_change_nothing(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}, max_body_bytes=1024))
    first = receiver.scrape()
    assert status_of(first, run_id)["PROCESSING"] == 1  # the run is known before
    assert all(rejected(first, reason) == 0 for reason in REJECT_REASONS)
    # one exporter for every case (each compares a scrape before and after it), so the
    # file stays fast; every case's problems are reported together
    problems = {
        name: found
        for name, case in REFUSALS.items()
        if (found := refusal_problems(receiver, run_id, case))
    }
    assert problems == {}
    last = receiver.scrape()
    assert status_of(last, run_id)["PROCESSING"] == 1
    for reason in REJECT_REASONS:
        expected = sum(1 for case in REFUSALS.values() if case.reason == reason)
        assert rejected(last, reason) == expected, reason


def test_health_endpoints_of_the_listener_need_no_token(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}))
    for path in ("/-/healthy", "/-/ready"):
        answer = requests.get(receiver.url + path, timeout=5)
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok"}
    samples = receiver.scrape()
    assert all(rejected(samples, reason) == 0 for reason in REJECT_REASONS)


def test_token_in_bearer_header_is_accepted_and_counted(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}))
    assert status_of(receiver.scrape(), run_id)["PROCESSING"] == 1
    response = receiver.post(
        completed_event(run_id, credits="7"),
        path="/webhook",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    samples = receiver.scrape()
    assert accepted(samples, COMPLETED) == 1
    for event_type in (STARTED, FAILED, CREDIT_LIMIT):
        assert accepted(samples, event_type) == 0
    assert all(rejected(samples, reason) == 0 for reason in REJECT_REASONS)
    assert status_of(samples, run_id)["COMPLETE"] == 1
    assert sample(samples, "copyai_workflow_run_credits", workflow_id=WF, run_id=run_id) == 7


def test_unknown_workflow_is_adopted_when_accept_unknown_workflows(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}, accept_unknown_workflows=True))
    before = receiver.scrape()
    assert sample(before, "copyai_workflow_info", workflow_id=WF, workflow_name=WF) == 1
    assert sample(before, "copyai_workflow_info", workflow_id="WCFG-stranger") is None
    response = receiver.post(
        {
            "type": "workflowRun.started",
            "workflowRunId": "WRUN-stranger-1",
            "workflowId": "WCFG-stranger",
        }
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    samples = receiver.scrape()
    info = {
        dict(labels)["workflow_id"]: dict(labels)["workflow_name"]
        for (name, labels) in samples
        if name == "copyai_workflow_info"
    }
    assert info == {WF: WF, "WCFG-stranger": "WCFG-stranger"}
    assert (
        sample(
            samples,
            "copyai_workflow_info",
            workflow_id="WCFG-stranger",
            workflow_name="WCFG-stranger",
        )
        == 1
    )
    assert accepted(samples, STARTED) == 1
    assert rejected(samples, "unknown_workflow") == 0
    assert sample(samples, "copyai_workflow_runs_created_total", workflow_id="WCFG-stranger") == 0


# --- webhook state on /metrics ---------------------------------------------------------


def test_webhook_completion_shows_at_next_scrape_without_an_api_call(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}, refresh=0))
    first = receiver.scrape()
    assert status_of(first, run_id) == {
        "NEW": 0,
        "WAITING": 0,
        "PROCESSING": 1,
        "COMPLETE": 0,
        "RETRYING": 0,
        "FAILED": 0,
        "UNKNOWN": 0,
    }
    assert sample(first, "copyai_workflow_runs_finished_total", workflow_id=WF) == 0
    fetched = run_fetches(world, run_id)
    assert fetched == 1
    get_runs = sim_stats(sim)["get_run"]

    response = receiver.post(completed_event(run_id, credits=7))
    assert response.status_code == 202

    samples = receiver.scrape()
    assert status_of(samples, run_id)["COMPLETE"] == 1
    assert status_of(samples, run_id)["PROCESSING"] == 0
    assert sum(status_of(samples, run_id).values()) == 1
    assert sample(samples, "copyai_workflow_run_credits", workflow_id=WF, run_id=run_id) == 7
    assert sample(samples, "copyai_workflow_runs_finished_total", workflow_id=WF) == 1
    assert sample(samples, "copyai_workflow_runs_failed_total", workflow_id=WF) == 0
    assert sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF) == 7
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="COMPLETE") == 1
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="PROCESSING") == 0
    assert sample(samples, "copyai_workflow_last_success_timestamp_seconds", workflow_id=WF)
    assert accepted(samples, COMPLETED) == 1
    # the createdAt learned by the first fetch is kept (the delivery carries none)
    assert sample(
        samples, "copyai_workflow_run_created_timestamp_seconds", workflow_id=WF, run_id=run_id
    ) == sample(
        first, "copyai_workflow_run_created_timestamp_seconds", workflow_id=WF, run_id=run_id
    )
    # a terminal run is never fetched again, however often Prometheus scrapes
    for _ in range(4):
        again = receiver.scrape()
        assert status_of(again, run_id)["COMPLETE"] == 1
    assert run_fetches(world, run_id) == fetched
    assert sim_stats(sim)["get_run"] == get_runs
    assert sample(again, "copyai_workflow_runs_finished_total", workflow_id=WF) == 1
    assert sample(again, "copyai_workflow_run_credits_total", workflow_id=WF) == 7


def test_webhook_started_unknown_run_is_fetched_once_for_its_details(sim, world, start_receiver):
    configured = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [configured]}, refresh=0))
    receiver.scrape()
    # created after the exporter started: a watched run, its creation is an event
    new = world.add_run(WF, [("PROCESSING", None)], credits=4)
    response = receiver.post(
        {"type": "workflowRun.started", "workflowRunId": new.run_id, "workflowId": WF}
    )
    assert response.status_code == 202
    assert run_fetches(world, new.run_id) == 0  # nothing is fetched on delivery

    samples = receiver.scrape()
    assert run_fetches(world, new.run_id) == 1
    assert accepted(samples, STARTED) == 1
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="PROCESSING") == 2
    assert sample(samples, "copyai_workflow_runs_created_total", workflow_id=WF) == 1
    assert sample(
        samples, "copyai_workflow_last_run_created_timestamp_seconds", workflow_id=WF
    ) == pytest.approx(new.created_at, abs=0.001)
    assert sample(
        samples, "copyai_workflow_oldest_active_run_created_timestamp_seconds", workflow_id=WF
    ) == pytest.approx(world.runs[WF][configured].created_at, abs=0.001)
    # an unconfigured run gets no per-run series
    assert status_of(samples, new.run_id) == {}

    # once it has ended (by webhook) and its createdAt is known, it is never fetched again
    assert receiver.post(completed_event(new.run_id, credits=4)).status_code == 202
    for _ in range(3):
        samples = receiver.scrape()
    assert run_fetches(world, new.run_id) == 1
    assert sample(samples, "copyai_workflow_runs_finished_total", workflow_id=WF) == 1
    assert sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF) == 4
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="COMPLETE") == 1


def test_record_shaped_delivery_without_workflow_id_finds_a_fetched_run(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}))
    assert status_of(receiver.scrape(), run_id)["PROCESSING"] == 1
    response = receiver.post(
        {"type": "workflowRun.failed", "id": run_id, "status": "FAILED", "credits": "5"}
    )
    assert response.status_code == 202
    samples = receiver.scrape()
    assert status_of(samples, run_id)["FAILED"] == 1
    assert sample(samples, "copyai_workflow_runs_failed_total", workflow_id=WF) == 1
    assert sample(samples, "copyai_workflow_run_credits", workflow_id=WF, run_id=run_id) == 5


def test_record_shaped_delivery_without_workflow_id_finds_a_configured_run(
    sim, world, start_receiver
):
    """The config says which workflow a configured run belongs to (a run id may appear
    in one workflow only), so a delivery naming only the run is not an unknown workflow,
    even before the exporter's first fetch of that run."""
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}))
    response = receiver.post(
        {
            "type": "workflowRun.completed",
            "id": run_id,
            "status": "COMPLETE",
            "createdAt": "2023-04-06T22:34:46.704Z",
            "credits": "7",
            "output": {"Output 1": "done"},
        }
    )
    assert response.status_code == 202, response.text
    samples = receiver.scrape()
    assert rejected(samples, "unknown_workflow") == 0
    assert status_of(samples, run_id)["COMPLETE"] == 1


def test_credit_limit_events_per_workflow_and_for_the_workspace(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}))
    before = receiver.scrape()
    assert sample(before, "copyai_credit_limit_reached_total", workflow_id=WF) == 0
    assert sample(before, "copyai_credit_limit_reached_total", workflow_id="") is None
    assert sample(before, "copyai_credit_limit_reached_timestamp_seconds", workflow_id=WF) is None
    assert sample(before, "copyai_credit_limit_reached_timestamp_seconds", workflow_id="") is None

    started = time.time()
    assert receiver.post({"type": CREDIT_LIMIT, "workflowId": WF}).status_code == 202
    assert receiver.post({"type": CREDIT_LIMIT}).status_code == 202
    assert receiver.post({"type": CREDIT_LIMIT}).status_code == 202
    ended = time.time()

    samples = receiver.scrape()
    assert sample(samples, "copyai_credit_limit_reached_total", workflow_id=WF) == 1
    assert sample(samples, "copyai_credit_limit_reached_total", workflow_id="") == 2
    for workflow_id in (WF, ""):
        at = sample(
            samples, "copyai_credit_limit_reached_timestamp_seconds", workflow_id=workflow_id
        )
        assert at is not None
        assert started <= at <= ended
    assert accepted(samples, CREDIT_LIMIT) == 3
    assert all(rejected(samples, reason) == 0 for reason in REJECT_REASONS)
    # no run changed
    assert status_of(samples, run_id)["PROCESSING"] == 1


# --- registration, end to end in process -----------------------------------------------


def registrations(world: World) -> list[dict]:
    with world.lock:
        return sorted((dict(hook) for hook in world.webhooks.values()), key=lambda h: h["id"])


def test_registration_delivery_and_deregistration_end_to_end(sim, world, start_receiver):
    clock = ShiftedClock()
    world.clock = clock
    writer = world.add_workflow("writer", "WCFG-writer")
    enricher = world.add_workflow("enricher", "WCFG-enricher")
    receiver = start_receiver(hook_config(sim, {writer: [], enricher: []}, refresh=0))
    event_types = (STARTED, COMPLETED, FAILED)
    registration = WebhookRegistration(
        public_url=f"{receiver.url}/webhook", event_types=event_types
    )
    workflow_ids = [writer, enricher]

    registrar = WebhookRegistrar(receiver.exporter.client, registration, TOKEN, workflow_ids)
    registrar.register()
    hooks = registrations(world)
    assert sorted((h["eventType"], h["workflowId"]) for h in hooks) == sorted(
        itertools.product(event_types, workflow_ids)
    )
    assert {h["url"] for h in hooks} == {f"{receiver.url}/webhook/{TOKEN}"}
    assert all(h["url"].endswith(f"/webhook/{TOKEN}") for h in hooks)
    assert sorted(registrar.ids) == [h["id"] for h in hooks]

    # a restart finds its own registrations by URL and adopts them
    again = WebhookRegistrar(receiver.exporter.client, registration, TOKEN, workflow_ids)
    again.register()
    assert registrations(world) == hooks
    assert sorted(again.ids) == sorted(registrar.ids)

    completes = world.start_run(writer, fail=False)
    fails = world.start_run(enricher, fail=True)
    wait_for(lambda: accepted(receiver.scrape(), STARTED) == 2, timeout=10)
    clock.advance(120)  # past every step start_run can draw: both runs end now

    def settled() -> Samples | None:
        samples = receiver.scrape()
        done = (
            accepted(samples, COMPLETED) == 1
            and accepted(samples, FAILED) == 1
            and sample(samples, "copyai_workflow_runs_finished_total", workflow_id=writer) == 1
            and sample(samples, "copyai_workflow_runs_finished_total", workflow_id=enricher) == 1
        )
        return samples if done else None

    samples = wait_for(settled, timeout=15)
    assert accepted(samples, STARTED) == 2
    assert accepted(samples, CREDIT_LIMIT) == 0
    assert all(rejected(samples, reason) == 0 for reason in REJECT_REASONS)
    assert sample(samples, "copyai_workflow_runs_failed_total", workflow_id=writer) == 0
    assert sample(samples, "copyai_workflow_runs_failed_total", workflow_id=enricher) == 1
    for workflow_id, run in ((writer, completes), (enricher, fails)):
        assert sample(samples, "copyai_workflow_runs_created_total", workflow_id=workflow_id) == 1
        assert (
            sample(samples, "copyai_workflow_run_credits_total", workflow_id=workflow_id)
            == run.credits
        )
    assert sample(samples, "copyai_workflow_runs", workflow_id=writer, status="COMPLETE") == 1
    assert sample(samples, "copyai_workflow_runs", workflow_id=enricher, status="FAILED") == 1
    wait_for(lambda: sim_stats(sim).get("webhook_delivered") == 4)
    stats = sim_stats(sim)
    assert stats.get("webhook_refused", 0) == 0
    assert stats.get("webhook_failed", 0) == 0

    again.deregister()
    assert registrations(world) == []
    assert again.ids == []


# --- the token stays secret --------------------------------------------------------------


def exercise(receiver: Receiver, run_id: str) -> None:
    """Accepted and refused deliveries, with the token in the path and in the header."""
    assert (
        receiver.post({"type": "workflowRun.started", "workflowRunId": run_id}).status_code == 202
    )
    assert (
        receiver.post(
            {"type": CREDIT_LIMIT, "workflowId": WF},
            path="/webhook",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ).status_code
        == 202
    )
    assert receiver.post({"type": "workflowRun.paused"}).status_code == 422
    assert receiver.post(data=b"{").status_code == 400
    assert receiver.post(data=b"x" * 2000).status_code == 413
    assert receiver.post({}, path="/webhook/not-the-token-000000").status_code == 401
    assert requests.get(f"{receiver.url}/webhook/{TOKEN}", timeout=5).status_code == 405
    assert receiver.post(completed_event(run_id)).status_code == 202
    receiver.scrape()


def test_token_never_appears_in_metrics(sim, world, start_receiver):
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}, max_body_bytes=1024))
    receiver.scrape()
    exercise(receiver, run_id)
    text = requests.get(f"{receiver.running.url}/metrics", timeout=10).text
    assert "copyai_webhook_events_total" in text
    assert TOKEN not in text
    landing = requests.get(receiver.running.url, timeout=10).text
    assert TOKEN not in landing


def exporter_records(caplog) -> list[logging.LogRecord]:
    # the simulator stands in for Copy.ai; urllib3 is the test's and the simulator's client
    return [
        r
        for r in caplog.records
        if r.name.split(".")[0] == "exporter" and not r.name.startswith("exporter.sim")
    ]


def test_token_never_appears_in_log_records(sim, world, start_receiver, caplog):
    caplog.set_level(logging.DEBUG)
    run_id = add_processing_run(world)
    receiver = start_receiver(hook_config(sim, {WF: [run_id]}, max_body_bytes=1024))
    receiver.scrape()
    exercise(receiver, run_id)
    records = exporter_records(caplog)
    assert any("webhook rejected reason=unauthorized" in r.getMessage() for r in records)
    leaking = [f"{r.name}: {r.getMessage()}" for r in records if TOKEN in r.getMessage()]
    assert leaking == [], "\n".join(leaking)


def test_token_never_appears_in_formatted_log_output(sim, world, start_receiver, caplog):
    """What the CLI writes: every record through its formatter, with the secrets of the
    loaded config registered for redaction."""
    caplog.set_level(logging.DEBUG)
    run_id = add_processing_run(world)
    config = hook_config(sim, {WF: [run_id]}, max_body_bytes=1024)
    protect_secrets(config)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter(REDACTOR))
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger("exporter")
    logger.addHandler(handler)
    try:
        receiver = start_receiver(config)
        receiver.scrape()
        exercise(receiver, run_id)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "webhook rejected reason=unauthorized" in output
    assert TOKEN not in output
