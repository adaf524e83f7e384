"""Workspace scale (issue 16): webhook-first freshness, a budget-aware plan that lets
nothing starve, and scrapes that answer fast when waiting cannot help. Counts are exact
(the simulator counts every request); time is a FakeClock wherever the behaviour is
about the exporter's own clock. Real timings are in benchmarks/."""

from __future__ import annotations

import json
import time

import pytest
import requests

from exporter.api.deliveries import parse_event
from exporter.config import Config, build_config
from exporter.runtime import Exporter
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from exporter.tracking.persistence import MemoryStore
from exporter.tracking.refresh import FAST_ANSWER_SECONDS
from tests.support.clocks import FakeClock
from tests.support.exporters import API_KEY, sim_stats
from tests.support.polling import wait_for
from tests.support.samples import parse_samples, sample

TOKEN = "scale-test-token-0123456789"
FOREVER = [("PROCESSING", None)]


def scale_config(sim: RunningSimulator, document: dict) -> Config:
    document = {"api": {"base_url": sim.base_url}, **document}
    return build_config(
        document, source="test", env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": TOKEN}
    )


def fake_time_exporter(config: Config, clock: FakeClock) -> Exporter:
    """Requests are answered at once and the clock moves only when the test says: the
    rate limiter's pacing shows as its schedule running ahead of the clock."""
    return Exporter(
        config,
        clock=clock,
        wall_clock=clock.wall,
        sleep=lambda _seconds: None,
        process_metrics=False,
        state_store=MemoryStore(),
    )


def list_calls(sim: RunningSimulator) -> int:
    return sim_stats(sim).get("list_runs", 0)


def deliver(world: World, exporter: Exporter) -> int:
    """Every delivery the simulator has due, through the receiver's own parser."""
    deliveries = world.tick()
    for _hook, payload in deliveries:
        exporter.apply_webhook(parse_event(json.dumps(payload).encode()))
    return len(deliveries)


def subscribe_all(world: World) -> None:
    with world.lock:
        for event_type in ("workflowRun.started", "workflowRun.completed", "workflowRun.failed"):
            world.webhooks[f"WHK-{event_type}"] = {
                "id": f"WHK-{event_type}",
                "url": "http://127.0.0.1:9/webhook/x",
                "eventType": event_type,
                "workflowId": None,
            }


# --- webhook-first freshness ---------------------------------------------------------------


def webhook_fed(sim: RunningSimulator, world: World, wf: str, clock: FakeClock) -> Exporter:
    """An exporter discovering `wf`, refreshing every 30 s and reconciling a fed workflow
    every 290 s, with every event type subscribed to its receiver."""
    config = scale_config(
        sim,
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
            # no API check (a page of one run a minute when nothing else is due): every
            # list call is then a discovery cycle
            "collector": {"refresh_interval_seconds": 30, "up_check_interval_seconds": 0},
            "webhooks": {"listen_address": "127.0.0.1:0", "reconcile_interval_seconds": 290},
            "workflows": [{"id": wf, "discover": True}],
        },
    )
    exporter = fake_time_exporter(config, clock)
    subscribe_all(world)
    return exporter


def test_deliveries_turn_polling_into_reconciliation_and_it_resumes_when_they_stop():
    """30 s refreshes, a 290 s reconciliation interval (due after 261 s, a tenth early).
    Polling lists the workflow at every refresh; while deliveries about it arrive, at
    every ninth; from the first refresh 290 s after the last delivery, at every one
    again. The counters stay exact throughout."""
    clock = FakeClock()
    world = World(api_key=API_KEY, clock=clock.wall, seed=16)
    sim = RunningSimulator(world)
    wf = world.add_workflow("hooks", "WCFG-scale-hooks")
    world.add_run(wf, FOREVER, age_seconds=3600, run_id="WRUN-long")  # listed every cycle
    exporter = webhook_fed(sim, world, wf, clock)
    world.faults.update({"webhook_shape": "record"})  # deliveries carry createdAt
    since = clock.wall()

    def step(with_runs: bool) -> bool:
        """One 30 s interval (a run started and ended in it, announced by webhook, or
        nothing), then a refresh; whether the refresh listed the workflow."""
        if with_runs:
            world.start_run(wf)
            assert deliver(world, exporter) == 1  # started
        clock.advance(30)
        if with_runs:
            assert deliver(world, exporter) == 1  # completed or failed
        before = list_calls(sim)
        exporter.refresh(time.monotonic() + 30)
        return list_calls(sim) > before

    try:
        exporter.refresh(time.monotonic() + 30)  # the first cycle: the baseline
        assert list_calls(sim) == 1
        polling = [step(with_runs=False) for _ in range(4)]
        assert polling == [True] * 4

        fed = [step(with_runs=True) for _ in range(20)]
        listed_at = [k + 1 for k, listed in enumerate(fed) if listed]
        assert listed_at == [9, 18], "reconciliation: every 270 s, not every 30 s"
        assert sim_stats(sim).get("get_run", 0) == 0, "deliveries made every run fetch unneeded"

        quiet = [step(with_runs=False) for _ in range(14)]
        listed_at = [j + 1 for j, listed in enumerate(quiet) if listed]
        # the slow cycle due at 7; deliveries stopped 300 s ago at 10: polling again
        assert listed_at == [7, 10, 11, 12, 13, 14]

        samples = parse_samples(exporter.render().decode())
        truth = world.truth(since)[wf]
        assert truth["created"] == 20 and truth["active"] == 0
        for key, metric in (
            ("created", "copyai_workflow_runs_created_total"),
            ("finished", "copyai_workflow_runs_finished_total"),
            ("failed", "copyai_workflow_runs_failed_total"),
            ("credits", "copyai_workflow_run_credits_total"),
        ):
            assert sample(samples, metric, workflow_id=wf) == truth[key], metric
        last_hook = sample(
            samples, "copyai_workflow_last_webhook_timestamp_seconds", workflow_id=wf
        )
        assert last_hook == since + 30 * 24
    finally:
        exporter.close()
        sim.stop()


def test_deliveries_without_created_at_are_counted_without_a_listing_when_they_can_be():
    """The documented payloads carry no createdAt. A run first heard of by its start,
    once the first listing has covered the window, was created while watched: counted
    at once, no request. An end alone (its start missed) cannot be judged without
    createdAt: the workflow is listed at the next refresh (one page brings it for all
    such runs), counted there, and reconciles again after."""
    clock = FakeClock()
    world = World(api_key=API_KEY, clock=clock.wall, seed=21)
    sim = RunningSimulator(world)
    wf = world.add_workflow("hooks", "WCFG-scale-documented")
    world.add_run(wf, FOREVER, age_seconds=3600)
    exporter = webhook_fed(sim, world, wf, clock)
    since = clock.wall()

    def step(shape: str, start_delivered: bool) -> tuple[bool, float | None, float | None]:
        """A run in a 30 s interval, delivered in `shape` (its start, or only its end);
        whether the refresh after it listed the workflow, and the runs counted as
        created and as finished then."""
        world.faults.update({"webhook_shape": shape})
        world.start_run(wf, fail=False)
        if start_delivered:
            deliver(world, exporter)
        else:
            world.tick()  # the start is lost on its way
        clock.advance(30)
        deliver(world, exporter)
        before = list_calls(sim)
        exporter.refresh(time.monotonic() + 30)
        samples = parse_samples(exporter.render().decode())
        return (
            list_calls(sim) > before,
            sample(samples, "copyai_workflow_runs_created_total", workflow_id=wf),
            sample(samples, "copyai_workflow_runs_finished_total", workflow_id=wf),
        )

    try:
        exporter.refresh(time.monotonic() + 30)  # the first listing covers the window
        assert step("record", True) == (False, 1, 1)
        assert step("documented", True) == (False, 2, 2)  # the start proves it new
        assert step("documented", False) == (True, 3, 3)  # an end alone: listed at once
        assert step("record", False) == (False, 4, 4)  # the record has createdAt
        assert step("documented", True) == (False, 5, 5)  # reconciling again
        assert sim_stats(sim).get("get_run", 0) == 0
        truth = world.truth(since)[wf]
        assert truth["created"] == truth["finished"] == 5
    finally:
        exporter.close()
        sim.stop()


def test_a_workspace_wide_registration_slows_every_workflow_while_any_delivery_arrives():
    clock = FakeClock()
    world = World(api_key=API_KEY, clock=clock.wall, seed=17)
    sim = RunningSimulator(world)
    busy = world.add_workflow("busy", "WCFG-scale-busy")
    idle = world.add_workflow("idle", "WCFG-scale-idle")
    for wf in (busy, idle):
        world.add_run(wf, FOREVER, age_seconds=3600)

    def run(per_workflow: bool) -> int:
        config = scale_config(
            sim,
            {
                "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
                "collector": {"refresh_interval_seconds": 30, "up_check_interval_seconds": 0},
                "webhooks": {
                    "listen_address": "127.0.0.1:0",
                    "reconcile_interval_seconds": 290,
                    "register": {
                        "public_url": "http://127.0.0.1:9/webhook",
                        "per_workflow": per_workflow,
                    },
                },
                "workflows": [{"id": busy, "discover": True}, {"id": idle, "discover": True}],
            },
        )
        exporter = fake_time_exporter(config, clock)
        try:
            exporter.refresh(time.monotonic() + 30)
            before = list_calls(sim)
            for _ in range(8):  # deliveries about `busy` only
                world.start_run(busy, fail=False)
                deliver(world, exporter)
                clock.advance(30)
                deliver(world, exporter)
                exporter.refresh(time.monotonic() + 30)
            return list_calls(sim) - before
        finally:
            exporter.close()

    subscribe_all(world)
    world.faults.update({"webhook_shape": "record"})
    try:
        assert run(per_workflow=True) == 8, "only the workflow with deliveries slows down"
        assert run(per_workflow=False) == 0, "one workspace-wide stream feeds every workflow"
    finally:
        sim.stop()


# --- the budget: no starvation, visible backlog -------------------------------------------


def test_a_third_of_the_budget_refreshes_every_workflow_within_the_documented_bound():
    """300 discovered workflows, one list page each per 50 s interval; the budget (2
    requests/s x 50 s) is 100 pages, a third of the due work. Every refresh spends the
    budget exactly, stalest first, and no workflow's data is ever older than
    (due work / budget) intervals: 150 s."""
    clock = FakeClock()
    world = World(api_key=API_KEY, clock=clock.wall, seed=18)
    sim = RunningSimulator(world)
    ids = [world.add_workflow(f"wf{i}", f"WCFG-scale-{i:03d}") for i in range(300)]
    for wf in ids:
        world.add_run(wf, FOREVER, age_seconds=60)
    config = scale_config(
        sim,
        {
            "api": {
                "base_url": sim.base_url,
                "max_requests_per_second": 2,
                "timeout_seconds": 300,  # the limiter's schedule may run 50 s ahead
            },
            "collector": {"refresh_interval_seconds": 50},
            "workflows": [{"id": wf, "discover": True} for wf in ids],
        },
    )
    exporter = fake_time_exporter(config, clock)
    try:
        worst: list[float] = []
        for refresh in range(9):
            before = list_calls(sim)
            exporter.refresh(time.monotonic() + 60)
            assert list_calls(sim) - before == 100, f"refresh {refresh} spends the budget"
            samples = parse_samples(exporter.render().decode())
            assert sample(samples, "copyai_refresh_backlog") == 200
            looks = [
                sample(samples, "copyai_workflow_oldest_look_timestamp_seconds", workflow_id=wf)
                for wf in ids
            ]
            if refresh >= 2:  # every workflow has been listed once
                assert None not in looks
                worst.append(clock.wall() - min(looks))  # type: ignore[type-var]
            clock.advance(50)
        assert worst and max(worst) <= 150
        # round robin: the stalest third goes first, so all three thirds take turns
        assert max(worst) == 100
    finally:
        exporter.close()
        sim.stop()


def test_the_budget_utilization_counts_requests_against_the_limit(start_exporter):
    """The ratio and the backlog, in /metrics and in /status.json alike."""
    world = World(api_key=API_KEY, seed=19)
    sim = RunningSimulator(world)
    wf = world.add_workflow("runs", "WCFG-scale-runs")
    runs = [world.add_run(wf, FOREVER, age_seconds=60).run_id for _ in range(30)]
    config = scale_config(
        sim,
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 1},
            "collector": {"refresh_interval_seconds": 60},
            "workflows": [{"id": wf, "runs": runs}],
        },
    )
    running = start_exporter(config, process_metrics=False)
    exporter = running.exporter
    try:
        samples = parse_samples(exporter.render().decode())
        assert sample(samples, "copyai_api_budget_utilization_ratio") == 0
        # 30 runs at one request a second: the first refresh cannot have them all, so
        # it answers early and the limiter paces the rest in the background
        report = exporter.refresh(time.monotonic() + 10)
        assert not report.completed
        wait_for(lambda: sim_stats(sim).get("get_run", 0) >= 3, timeout=30)
        samples = parse_samples(exporter.render().decode())
        ratio = sample(samples, "copyai_api_budget_utilization_ratio")
        assert ratio is not None and 3 / 60 <= ratio <= 30 / 60
        budget = requests.get(f"{running.url}/status.json", timeout=10).json()["api"]["budget"]
        assert budget["limit_per_minute"] == 60
        assert budget["used_ratio"] == budget["requests_last_minute"] / 60 >= 3 / 60
        assert 0 < budget["refresh_backlog"] <= 30 - 3
    finally:
        exporter.close()
        sim.stop()


# --- scrapes that answer fast ----------------------------------------------------------


@pytest.mark.parametrize("runs, completes", [(10, True), (1000, False)])
def test_a_scrape_waits_only_when_waiting_can_help(runs, completes):
    """At 20 requests/s, 10 runs are in well before a 10 s deadline: the scrape waits
    for the complete picture. 1,000 runs (a 600-request budget, 30 s of requests) are
    not: the scrape answers after about FAST_ANSWER_SECONDS, the work goes on."""
    world = World(api_key=API_KEY, seed=20)
    sim = RunningSimulator(world)
    wf = world.add_workflow("many", "WCFG-scale-many")
    run_ids = [world.add_run(wf, FOREVER, age_seconds=60).run_id for _ in range(runs)]
    config = scale_config(
        sim,
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 20},
            "collector": {"refresh_interval_seconds": 30},
            "workflows": [{"id": wf, "runs": run_ids}],
        },
    )
    exporter = Exporter(config, process_metrics=False, state_store=MemoryStore())
    try:
        started = time.monotonic()
        report = exporter.refresh(started + 10)
        took = time.monotonic() - started
        assert report.completed is completes
        fetched = sim_stats(sim).get("get_run", 0)
        if completes:
            assert fetched == runs
            assert sample(parse_samples(exporter.render().decode()), "copyai_refresh_backlog") == 0
            return
        assert took < FAST_ANSWER_SECONDS + 4, f"answered after {took:.1f}s"
        assert fetched < runs
        backlog = sample(parse_samples(exporter.render().decode()), "copyai_refresh_backlog")
        assert backlog is not None and backlog >= runs - 600  # the rest waits its turn
        # the planned work goes on after the scrape has answered
        wait_for(lambda: sim_stats(sim).get("get_run", 0) >= fetched + 10, timeout=10)
    finally:
        exporter.close()
        sim.stop()
