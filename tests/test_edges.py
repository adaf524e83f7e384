"""Truth at the edges: deliveries that arrive late, twice or out of order, an API that
lags behind its own webhooks, records without a status, workspace-wide webhook
registrations echoed with workflowId "", a DELETE answered 202 with `{}` or nothing, and
an exception while handling one answer. Each runs end to end over HTTP against the
simulator, and the counters are checked against its ground truth."""

from __future__ import annotations

import logging

import pytest
import requests

from exporter.api.records import Run
from exporter.api.registration import WebhookRegistrar
from exporter.config import WEBHOOK_EVENT_TYPES, Config, WebhookRegistration, build_config
from exporter.sim.world import World
from exporter.tracking.runs import DUE_EARLY, MAX_SILENT_BACKOFF, RunKey, RunStore
from tests.support.clocks import FakeClock, ShiftedClock
from tests.support.exporters import API_KEY, Receiver, sim_stats
from tests.support.polling import wait_for
from tests.support.samples import Samples, sample

TOKEN = "edge-token-5c1e9a7d30b4f826"
WF = "WCFG-edges"
STATUSES = ("NEW", "WAITING", "PROCESSING", "COMPLETE", "RETRYING", "FAILED", "UNKNOWN")
STARTED, COMPLETED, FAILED, _CREDIT_LIMIT = WEBHOOK_EVENT_TYPES


def edge_config(sim, workflows: list[dict], *, refresh: float = 0.0, hooks: bool = True) -> Config:
    document: dict = {
        "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
        "collector": {"refresh_interval_seconds": refresh},
        "workflows": workflows,
    }
    if hooks:
        document["webhooks"] = {"listen_address": "127.0.0.1:0"}
    return build_config(
        document, source="test", env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": TOKEN}
    )


def subscribe(world: World, receiver: Receiver, workflow_id: str | None = WF) -> None:
    """The simulator delivers every run event to the receiver (as a registration would)."""
    with world.lock:
        for i, event_type in enumerate((STARTED, COMPLETED, FAILED)):
            world.webhooks[f"WHK-test-{i}"] = {
                "id": f"WHK-test-{i}",
                "url": receiver.hook_url,
                "eventType": event_type,
                "workflowId": workflow_id,
            }


def accepted(samples: Samples, event_type: str) -> float | None:
    return sample(samples, "copyai_webhook_events_total", event_type=event_type)


def status_of(samples: Samples, run_id: str, workflow_id: str = WF) -> dict[str, float]:
    return {
        dict(labels)["status"]: value
        for (name, labels), value in samples.items()
        if name == "copyai_workflow_run_status"
        and dict(labels)["run_id"] == run_id
        and dict(labels)["workflow_id"] == workflow_id
    }


def one_hot(status: str) -> dict[str, float]:
    return {s: float(s == status) for s in STATUSES}


def runs_by_status(samples: Samples, workflow_id: str = WF) -> dict[str, float | None]:
    return {
        s: sample(samples, "copyai_workflow_runs", workflow_id=workflow_id, status=s)
        for s in STATUSES
    }


def fetches(world: World, run_id: str) -> int:
    with world.lock:
        return world.run_stats[run_id]


def assert_counters_equal_truth(samples: Samples, world: World, since: float) -> None:
    truth = world.truth(since)[WF]
    assert truth["active"] == 0, "the scenario should have ended every run"
    counted = {
        "created": sample(samples, "copyai_workflow_runs_created_total", workflow_id=WF),
        "finished": sample(samples, "copyai_workflow_runs_finished_total", workflow_id=WF),
        "failed": sample(samples, "copyai_workflow_runs_failed_total", workflow_id=WF),
        "credits": sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF),
    }
    assert counted == {key: truth[key] for key in counted}
    by_status = runs_by_status(samples)
    assert by_status["COMPLETE"] == truth["finished"] - truth["failed"]
    assert by_status["FAILED"] == truth["failed"]
    assert by_status["PROCESSING"] == by_status["NEW"] == by_status["RETRYING"] == 0
    assert (
        sample(
            samples, "copyai_workflow_oldest_active_run_created_timestamp_seconds", workflow_id=WF
        )
        is None
    )


# --- a run's end is final ------------------------------------------------------------------


def test_an_end_by_webhook_stays_while_the_api_still_says_processing(sim, world, start_receiver):
    """The API lags an hour behind its own webhooks: a configured and a discovered run,
    both ended by delivery, stay ended; the configured one is never fetched again."""
    clock = ShiftedClock()
    world.clock = clock
    world.add_workflow("edges", WF)
    since = clock()
    # created a moment after the watch starts: both are counted as watched runs
    configured = world.add_run(
        WF, [("PROCESSING", 20), ("COMPLETE", None)], credits=5, age_seconds=-1
    ).run_id
    receiver = start_receiver(
        edge_config(sim, [{"id": WF, "runs": [configured], "discover": True}]), wall_clock=clock
    )
    subscribe(world, receiver)
    clock.advance(2)  # past the watch's start even as a createdAt without milliseconds
    assert status_of(receiver.scrape(), configured) == one_hot("PROCESSING")
    discovered = world.start_run(WF, fail=True)
    wait_for(lambda: accepted(receiver.scrape(), STARTED) == 1)

    world.faults.api_lag_seconds = 3600  # from now on the API answers an hour behind
    clock.advance(120)  # both runs end; the simulator delivers their ends at once
    wait_for(
        lambda: (
            (s := receiver.scrape()) and accepted(s, COMPLETED) == 1 and accepted(s, FAILED) == 1
        )
    )
    fetched = fetches(world, configured)
    for _ in range(3):  # every scrape polls: the configured run is not due, the list lags
        samples = receiver.scrape()
        assert status_of(samples, configured) == one_hot("COMPLETE")
    assert fetches(world, configured) == fetched
    assert sample(samples, "copyai_workflow_run_credits", workflow_id=WF, run_id=configured) == 5
    assert sim_stats(sim)["list_runs"] >= 3  # the listings (still PROCESSING) were looked at
    assert discovered.run_id not in {dict(labels).get("run_id") for _, labels in samples}
    assert_counters_equal_truth(samples, world, since)


def test_late_repeated_and_out_of_order_deliveries_count_once(sim, world, start_receiver):
    """Every delivery twice, late, and each run's `started` after its end: nothing moves
    an ended run back to PROCESSING, nothing is counted twice."""
    clock = ShiftedClock()
    world.clock = clock
    world.add_workflow("edges", WF)
    world.faults.update(
        {"webhook_reorder": True, "webhook_duplicate": True, "webhook_delay_seconds": 0.2}
    )
    since = clock()
    receiver = start_receiver(
        edge_config(sim, [{"id": WF}], refresh=3600), wall_clock=clock
    )  # polling only fetches runs it has no createdAt for: the deliveries decide
    subscribe(world, receiver)
    receiver.scrape()
    # createdAt may come without milliseconds: start the runs a whole second past the
    # watch's start, or one truncated to the second would look older than the watch
    clock.advance(2)
    runs = [world.start_run(WF, fail=i % 3 == 0) for i in range(6)]
    clock.advance(120)  # every run ends
    wait_for(lambda: sim_stats(sim).get("webhook_delivered") == len(runs) * 2 * 2, timeout=15)

    samples = receiver.scrape()  # fetches the runs whose deliveries carried no createdAt
    assert accepted(samples, STARTED) == 2 * len(runs)
    assert accepted(samples, COMPLETED) + accepted(samples, FAILED) == 2 * len(runs)
    assert all(fetches(world, run.run_id) <= 1 for run in runs)
    samples = receiver.scrape()
    assert_counters_equal_truth(samples, world, since)
    assert runs_by_status(samples)["UNKNOWN"] == 0


def test_a_record_without_status_never_replaces_a_known_end(sim, world, start_receiver):
    """A run completed by a delivery without createdAt is fetched once for it; the API
    answers without a status: the run stays COMPLETE and is counted once."""
    clock = ShiftedClock()
    world.clock = clock
    world.add_workflow("edges", WF)
    since = clock()
    receiver = start_receiver(edge_config(sim, [{"id": WF}], refresh=3600), wall_clock=clock)
    receiver.scrape()
    run = world.add_run(WF, [("COMPLETE", None)], credits=8, age_seconds=-1, omit_status=True)
    clock.advance(1)
    response = requests.post(  # the documented delivery: no createdAt, no status
        receiver.hook_url,
        json={
            "type": COMPLETED,
            "workflowRunId": run.run_id,
            "workflowId": WF,
            "result": {"Output 1": "done"},
            "metadata": {},
            "credits": 8,
        },
        timeout=10,
    )
    assert response.status_code == 202
    for _ in range(3):
        samples = receiver.scrape()
    assert fetches(world, run.run_id) == 1  # for its createdAt, once
    assert runs_by_status(samples)["COMPLETE"] == 1
    assert runs_by_status(samples)["UNKNOWN"] == 0
    assert sample(
        samples, "copyai_workflow_last_run_created_timestamp_seconds", workflow_id=WF
    ) == pytest.approx(run.created_at, abs=0.001)
    assert_counters_equal_truth(samples, world, since)


def test_a_status_less_listing_after_an_end_changes_nothing(sim, world, start_receiver):
    clock = ShiftedClock()
    world.clock = clock
    world.add_workflow("edges", WF)
    since = clock()
    run_id = world.add_run(
        WF, [("PROCESSING", 20), ("COMPLETE", None)], credits=6, age_seconds=-1
    ).run_id
    receiver = start_receiver(
        edge_config(sim, [{"id": WF, "runs": [run_id], "discover": True}]), wall_clock=clock
    )
    subscribe(world, receiver)
    clock.advance(1)
    assert status_of(receiver.scrape(), run_id) == one_hot("PROCESSING")
    clock.advance(60)
    wait_for(lambda: accepted(receiver.scrape(), COMPLETED) == 1)
    world.faults.omit_status = True  # every record from now on: no status at all
    fetched = fetches(world, run_id)
    listings = sim_stats(sim)["list_runs"]
    for _ in range(3):
        samples = receiver.scrape()
        assert status_of(samples, run_id) == one_hot("COMPLETE")
    assert sim_stats(sim)["list_runs"] > listings
    assert fetches(world, run_id) == fetched
    assert runs_by_status(samples)["UNKNOWN"] == 0
    assert_counters_equal_truth(samples, world, since)


# --- runs that never report a status -------------------------------------------------------


def silent_fetch_times(interval: float, until: float, step: float) -> list[float]:
    """When the documented rule fetches a run that never reports a status, scraped every
    `step` seconds: again after 1, 2, 4, 8, then 10 refresh intervals (each 10 % early)."""
    times: list[float] = []
    t = 0.0
    while t <= until:
        silent = len(times)
        wait = interval * (1 - DUE_EARLY) * min(MAX_SILENT_BACKOFF, 2 ** max(0, silent - 1))
        if not times or t - times[-1] >= wait:
            times.append(t)
        t += step
    return times


def test_a_run_that_never_reports_a_status_is_not_active_and_polled_slower(
    sim, world, start_exporter, caplog
):
    caplog.set_level(logging.WARNING, logger="exporter")
    clock = FakeClock()
    world.clock = clock.wall
    listed, discovered = "WCFG-listed", "WCFG-discovered"
    for workflow_id in (listed, discovered):
        world.add_workflow(workflow_id, workflow_id)
    silent = world.add_run(listed, [("PROCESSING", None)], age_seconds=30, omit_status=True)
    normal = world.add_run(listed, [("PROCESSING", None)], age_seconds=20)
    hidden = world.add_run(discovered, [("PROCESSING", None)], age_seconds=40, omit_status=True)
    running = start_exporter(
        edge_config(
            sim,
            [
                {"id": listed, "runs": [silent.run_id, normal.run_id]},
                {"id": discovered, "discover": True},
            ],
            refresh=10,
            hooks=False,
        ),
        clock=clock,
        wall_clock=clock.wall,
        process_metrics=False,
    )
    for _ in range(31):  # a scrape every 10 s for 300 s
        samples = running.scrape()
        clock.advance(10)

    expected = len(silent_fetch_times(10, 300, 10))
    assert expected == 6  # 0, 10, 30, 70, 150, 240
    assert fetches(world, silent.run_id) == expected
    assert fetches(world, hidden.run_id) == expected
    assert fetches(world, normal.run_id) == 31
    assert status_of(samples, silent.run_id, listed) == one_hot("UNKNOWN")
    assert status_of(samples, normal.run_id, listed) == one_hot("PROCESSING")
    assert runs_by_status(samples, listed)["UNKNOWN"] == 1
    assert runs_by_status(samples, discovered)["UNKNOWN"] == 1
    assert runs_by_status(samples, discovered)["PROCESSING"] == 0
    oldest = "copyai_workflow_oldest_active_run_created_timestamp_seconds"
    # the silent run is the older one, but UNKNOWN is not active: it cannot look stuck
    assert sample(samples, oldest, workflow_id=listed) == pytest.approx(normal.created_at)
    assert sample(samples, oldest, workflow_id=discovered) is None
    warnings = [
        r.getMessage() for r in caplog.records if "without a usable status" in r.getMessage()
    ]
    assert len(warnings) == 2
    assert any(silent.run_id in w for w in warnings) and any(hidden.run_id in w for w in warnings)


# --- webhook registration ------------------------------------------------------------------


def hooks_of(world: World) -> list[dict]:
    with world.lock:
        return sorted((dict(h) for h in world.webhooks.values()), key=lambda h: h["id"])


@pytest.mark.parametrize(
    "delete_empty", [False, True], ids=["delete-202-braces", "delete-202-empty"]
)
def test_workspace_wide_registration_echoed_with_empty_workflow_id(
    sim, world, start_receiver, delete_empty, caplog
):
    caplog.set_level(logging.INFO, logger="exporter")
    clock = ShiftedClock()
    world.clock = clock
    world.add_workflow("edges", WF)
    world.faults.update({"webhook_empty_workflow_id": True, "webhook_delete_empty": delete_empty})
    run_id = world.add_run(WF, [("PROCESSING", 10), ("COMPLETE", None)], credits=3).run_id
    receiver = start_receiver(edge_config(sim, [{"id": WF, "runs": [run_id]}]), wall_clock=clock)
    public_url = receiver.hook_url.rsplit("/", 1)[0]
    registration = WebhookRegistration(public_url=public_url, per_workflow=False)
    client = receiver.running.exporter.client
    # an older version left a duplicate of one registration behind
    with world.lock:
        world.webhooks["WHK-left-behind"] = {
            "id": "WHK-left-behind",
            "url": receiver.hook_url,
            "eventType": COMPLETED,
            "workflowId": "",
        }
    registrar = WebhookRegistrar(client, registration, TOKEN, [WF])
    for _ in range(3):
        assert registrar.register()
    hooks = hooks_of(world)
    assert sorted(h["eventType"] for h in hooks) == sorted(WEBHOOK_EVENT_TYPES)
    assert {h["workflowId"] for h in hooks} == {""}
    stats = sim_stats(sim)
    assert stats.get("post_webhook", 0) == len(WEBHOOK_EVENT_TYPES) - 1  # one existed already
    assert stats.get("get_webhook", 0) == 3  # one listing per pass
    assert stats.get("delete_webhook", 0) == 0  # no copy of the one that existed was made

    assert status_of(receiver.scrape(), run_id) == one_hot("PROCESSING")
    clock.advance(30)  # the delivery names workflowId "": the receiver finds the run's
    wait_for(lambda: accepted(receiver.scrape(), COMPLETED) == 1)
    samples = receiver.scrape()
    assert status_of(samples, run_id) == one_hot("COMPLETE")
    assert sample(samples, "copyai_webhook_requests_rejected_total", reason="bad_payload") == 0

    registrar.deregister()
    assert hooks_of(world) == []
    assert registrar.ids == []
    assert sim_stats(sim).get("delete_webhook", 0) == len(WEBHOOK_EVENT_TYPES)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "not removed" in m]
    assert f"webhooks removed count={len(WEBHOOK_EVENT_TYPES)}" in messages


def test_duplicates_left_by_an_older_version_are_removed(sim, world, start_receiver):
    world.add_workflow("edges", WF)
    world.faults.webhook_empty_workflow_id = True
    receiver = start_receiver(edge_config(sim, [{"id": WF}]))
    with world.lock:
        for i in range(3):
            world.webhooks[f"WHK-dup-{i}"] = {
                "id": f"WHK-dup-{i}",
                "url": receiver.hook_url,
                "eventType": STARTED,
                "workflowId": "",
            }
    registration = WebhookRegistration(
        public_url=receiver.hook_url.rsplit("/", 1)[0], event_types=(STARTED,), per_workflow=False
    )
    registrar = WebhookRegistrar(receiver.running.exporter.client, registration, TOKEN, [WF])
    assert registrar.register()
    assert [h["id"] for h in hooks_of(world)] == ["WHK-dup-0"]
    assert registrar.ids == ["WHK-dup-0"]
    assert sim_stats(sim).get("post_webhook", 0) == 0


# --- a fault costs one run -----------------------------------------------------------------


class PoisonedRunStore(RunStore):
    """Breaks while recording one run's answer, as a bug would."""

    def __init__(self, poisoned: RunKey):
        super().__init__()
        self.poisoned = poisoned

    def record_success(self, key: RunKey, run: Run, now: float) -> None:
        if key == self.poisoned:
            raise RuntimeError("injected fault while applying an answer")
        super().record_success(key, run, now)


@pytest.mark.parametrize("backend", ["embedded", "redis"])
def test_an_exception_handling_one_answer_costs_that_run_only(
    sim, world, start_exporter, backend, request, caplog
):
    caplog.set_level(logging.ERROR, logger="exporter")
    world.add_workflow("edges", WF)
    run_ids = [world.add_run(WF, [("PROCESSING", None)], credits=i).run_id for i in range(40)]
    poisoned = (WF, run_ids[13])
    document: dict = {
        "api": {"base_url": sim.base_url, "max_requests_per_second": 0, "max_concurrency": 2},
        "collector": {"refresh_interval_seconds": 0.2},
        "workflows": [{"id": WF, "runs": run_ids}],
    }
    if backend == "redis":
        redis = request.getfixturevalue("redis_server")
        document["state"] = {
            "backend": "redis",
            "redis": {"url": redis.url, "key_prefix": "edges:", "lease_seconds": 2},
        }
    config = build_config(document, source="test", env={"COPYAI_API_KEY": API_KEY})
    store = PoisonedRunStore(poisoned)
    running = start_exporter(config, run_store=store, process_metrics=False)
    if backend == "redis":  # the replica fetches once it can take leases in Redis
        wait_for(lambda: running.exporter.coordinator.is_leader, timeout=10)

    wait_for(lambda: running.scrape() and all(fetches(world, r) >= 1 for r in run_ids), timeout=15)
    samples = running.scrape()
    fetch_ok = "copyai_workflow_run_fetch_success"
    for run_id in run_ids:
        expected = 0 if (WF, run_id) == poisoned else 1
        assert sample(samples, fetch_ok, workflow_id=WF, run_id=run_id) == expected
    state = store.get(poisoned)
    assert state is not None and state.error == "bad_response"
    assert sample(samples, "copyai_up") == 1

    # every run, the broken one too, is fetched again at the next refreshes
    counts = {r: fetches(world, r) for r in run_ids}
    wait_for(
        lambda: running.scrape() and all(fetches(world, r) > counts[r] for r in run_ids),
        timeout=15,
    )
    logged = [r for r in caplog.records if "internal error while refreshing" in r.getMessage()]
    assert len(logged) == 1  # once per run and message, however often it happens
    assert run_ids[13] in logged[0].getMessage()
