"""Typed observations: the wire format between replicas (round trips, the format of
earlier versions, refusals), and the Applier that turns them into history."""

from __future__ import annotations

import json
import math

import pytest

from exporter.api.deliveries import COMPLETED, CREDIT_LIMIT, WebhookEvent
from exporter.api.records import Run, RunStatus
from exporter.config import build_config
from exporter.tracking.book import HistoryBook
from exporter.tracking.observations import (
    VERSION,
    Applier,
    Delivered,
    FetchFailed,
    FetchTried,
    MessageError,
    RunGone,
    RunSeen,
    from_json,
    to_json,
)
from exporter.tracking.persistence import MemoryStore
from exporter.tracking.runs import RunStore
from tests.support.exporters import API_KEY

WF = "WCFG-obs"
MESSAGES = [
    RunSeen(
        WF, "WRUN-1", 1_700_000_000.5, RunStatus.COMPLETE, True, 1_699_999_000.25, 2.0, True, True
    ),
    RunSeen(WF, "WRUN-2", 1_700_000_001.0, RunStatus.UNKNOWN, False, None, None, False, False),
    FetchFailed(WF, "WRUN-3", 1_700_000_002.0, "server_error:502"),
    FetchTried(WF, "WRUN-4", 1_700_000_003.0),
    RunGone(WF, "WRUN-5", 1_700_000_004.0),
    Delivered(
        WebhookEvent(COMPLETED, WF, "WRUN-6", RunStatus.COMPLETE, 7.0, 1_699_999_999.0),
        1_700_000_005.0,
    ),
    Delivered(WebhookEvent(CREDIT_LIMIT, None), 1_700_000_006.0),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_wire(message):
    data = json.loads(json.dumps(to_json(message)))  # as Redis stores it
    assert data["v"] == VERSION
    assert data["t"] == message.TYPE
    assert from_json(data) == message


def test_messages_of_earlier_versions_are_read():
    """What replicas before typed messages sent: no "v", and a run without `reported`
    or `fetched` (their fetches always had a status)."""
    old_run = {
        "t": "run",
        "wf": WF,
        "run_id": "WRUN-1",
        "status": "PROCESSING",
        "raw_status": "PROCESSING",
        "created_at": 1_699_999_000.0,
        "credits": None,
        "when": 1_700_000_000.0,
        "pinned": True,
    }
    assert from_json(old_run) == RunSeen(
        WF, "WRUN-1", 1_700_000_000.0, RunStatus.PROCESSING, True, 1_699_999_000.0, None, True, True
    )
    old_webhook = {
        "t": "webhook",
        "event": {
            "event_type": COMPLETED,
            "workflow_id": WF,
            "run_id": "WRUN-2",
            "status": "COMPLETE",
            "credits": 3.0,
            "created_at": None,
        },
        "when": 1_700_000_000.0,
    }
    assert from_json(old_webhook) == Delivered(
        WebhookEvent(COMPLETED, WF, "WRUN-2", RunStatus.COMPLETE, 3.0, None), 1_700_000_000.0
    )
    old_touch = {"t": "touch", "wf": WF, "run_id": "WRUN-3", "when": 5.0}
    assert from_json(old_touch) == FetchTried(WF, "WRUN-3", 5.0)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([1, 2], "not a JSON object"),
        ({"v": 2, "t": "run"}, "unknown version"),
        ({"v": 1, "t": "teleport", "when": 1.0}, "unknown type"),
        ({"v": 1, "t": "touch", "wf": WF, "run_id": "WRUN-1"}, "no time"),
        ({"v": 1, "t": "touch", "wf": "a/b", "run_id": "WRUN-1", "when": 1.0}, "wf is not an id"),
        ({"v": 1, "t": "run", "wf": WF, "run_id": "R", "when": math.inf}, "when is not"),
        ({"v": 1, "t": "run", "wf": WF, "run_id": "R", "when": 1.0, "credits": "2"}, "credits"),
        ({"v": 1, "t": "webhook", "when": 1.0, "event": None}, "event is not"),
    ],
)
def test_unreadable_messages_are_refused_with_a_reason(data, problem):
    with pytest.raises(MessageError, match=problem):
        from_json(data)


# --- the Applier ---------------------------------------------------------------------------


def applier(*, accept_unknown: bool = False) -> tuple[Applier, HistoryBook, RunStore]:
    config = build_config(
        {"workflows": [{"id": WF, "runs": ["WRUN-pinned"], "discover": True}]},
        env={"COPYAI_API_KEY": API_KEY},
    )
    book = HistoryBook(MemoryStore(), lambda: 1_000.0)
    book.configure(config)
    store = RunStore(config.run_keys())
    return (
        Applier(book, store, clock=lambda: 5.0, accept_unknown_workflows=lambda: accept_unknown),
        book,
        store,
    )


def test_a_fetched_configured_run_is_history_and_its_fetch_outcome():
    apply, book, store = applier()
    seen = RunSeen.of(
        WF,
        Run("WRUN-pinned", RunStatus.PROCESSING, 1_100.0, None, "PROCESSING"),
        1_200.0,
        pinned=True,
        fetched=True,
    )
    assert apply.apply(seen)
    history = book.get(WF)
    assert history.runs["WRUN-pinned"].status is RunStatus.PROCESSING
    assert history.runs["WRUN-pinned"].fetch_ok is True
    apply.apply(FetchFailed(WF, "WRUN-pinned", 1_300.0, "unreachable"))
    assert (history.runs["WRUN-pinned"].fetch_ok, history.runs["WRUN-pinned"].fetch_error) == (
        False,
        "unreachable",
    )
    assert store.get((WF, "WRUN-pinned")).run is None  # the fetcher records its own outcome


def test_a_listed_configured_run_is_fresh_without_a_fetch():
    apply, _book, store = applier()
    run = Run("WRUN-pinned", RunStatus.COMPLETE, 1_100.0, 4.0, "COMPLETE")
    apply.apply(RunSeen.of(WF, run, 1_200.0, pinned=True, fetched=False))
    state = store.get((WF, "WRUN-pinned"))
    assert state.run.status is RunStatus.COMPLETE and state.fetch_ok is True
    assert not state.refresh_due(now=5.0, interval=30.0)


def test_a_run_the_window_has_let_go_is_not_tracked():
    apply, book, _store = applier()
    old = Run("WRUN-old", RunStatus.COMPLETE, 1_000.0 - 2 * 86_400, 1.0, "COMPLETE")
    assert not apply.apply(RunSeen.of(WF, old, 1_000.0, pinned=False, fetched=False))
    assert not book.get(WF).known("WRUN-old")


def test_gone_and_tried_runs():
    apply, book, _store = applier()
    new = Run("WRUN-new", RunStatus.PROCESSING, 1_000.0, None, "PROCESSING")
    apply.apply(RunSeen.of(WF, new, 1_000.0, pinned=False, fetched=False))
    apply.apply(FetchTried(WF, "WRUN-new", 1_500.0))
    assert book.get(WF).runs["WRUN-new"].last_fetch == 1_500.0
    apply.apply(RunGone(WF, "WRUN-new", 1_600.0))
    assert not book.get(WF).known("WRUN-new")


@pytest.mark.parametrize("accept", [False, True])
def test_deliveries_for_unknown_workflows_are_adopted_only_when_accepted(accept):
    apply, book, _store = applier(accept_unknown=accept)
    event = WebhookEvent(COMPLETED, "WCFG-elsewhere", "WRUN-x", RunStatus.COMPLETE, 1.0, 1_001.0)
    apply.apply(Delivered(event, 1_100.0))
    assert (book.get("WCFG-elsewhere") is not None) is accept
    apply.apply(Delivered(WebhookEvent(CREDIT_LIMIT, None), 1_200.0))
    assert book.workspace_credit_limit() == (1, 1_200.0)
