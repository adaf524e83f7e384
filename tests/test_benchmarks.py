"""The benchmarks' exact call counts, at small sizes and with in-process servers: what
rows 2, 4 and 6 of BENCHMARKS.md claim about API cost, and that row 8's slow clients are
all closed. No timing is asserted here; timings are figures, measured by
`python -m benchmarks`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks import rows
from benchmarks.harness import API_KEY, SimClient, api_calls, exporter_document, workflows_of
from benchmarks.naive import NaiveExporter
from benchmarks.run import Line, Report, merge_rows
from benchmarks.simworld import DISCOVER_WORKFLOW, active_positions, discovery_world
from exporter.config import build_config
from exporter.sim.http import RunningSimulator
from exporter.sim.scenarios import bulk_world
from exporter.web.http import HttpServer

pytestmark = pytest.mark.slow


def serve(world) -> Iterator[SimClient]:
    running = RunningSimulator(world)
    try:
        yield SimClient(running.base_url.removesuffix("/api"))
    finally:
        running.stop()


@pytest.fixture
def bulk(tmp_path) -> Iterator[tuple[SimClient, list[dict]]]:
    """20 runs in 2 workflows, every 5th run active (4 active)."""
    world = bulk_world(2, 10, 0.2, api_key=API_KEY)
    config = tmp_path / "sim.yaml"
    for sim in serve(world):
        config.write_text(world.exporter_config(sim.base_url), encoding="utf-8")
        yield sim, workflows_of(config)


@pytest.fixture
def finished(tmp_path) -> Iterator[tuple[SimClient, list[dict]]]:
    """20 runs, all finished."""
    world = bulk_world(2, 10, 0.0, api_key=API_KEY)
    config = tmp_path / "sim.yaml"
    for sim in serve(world):
        config.write_text(world.exporter_config(sim.base_url), encoding="utf-8")
        yield sim, workflows_of(config)


def steady_document(sim: SimClient, workflows: list[dict]) -> dict:
    return exporter_document(
        sim.base_url,
        workflows,
        api={"max_concurrency": 4},
        collector={"refresh_interval_seconds": 30, "up_check_interval_seconds": 60},
    )


def test_scrape_times_of_an_ha_pair():
    # two servers 5 s apart, every 15 s, after the cold scrape at 0
    assert rows.scrape_times(2, 15, 5, 60) == [5, 15, 20, 30, 35, 45, 50, 60]


def test_steady_state_costs_nothing_for_finished_runs_and_one_call_per_active_run(bulk):
    sim, workflows = bulk
    result = rows.steady_state(
        sim, steady_document(sim, workflows), scrapers=2, scrape_interval=15, intervals=4
    )
    assert (result.runs, result.active, result.scrapes) == (20, 4, 16)
    assert result.terminal_calls == 0
    assert result.active_calls == 4 * 4  # each active run once per refresh interval
    assert result.max_calls_per_active_run == 1
    assert result.list_calls == 0  # runs to fetch keep copyai_up honest: no up check
    assert result.other_calls == 0


def test_steady_state_cost_does_not_grow_with_the_number_of_scrapers(bulk):
    sim, workflows = bulk
    result = rows.steady_state(
        sim, steady_document(sim, workflows), scrapers=5, scrape_interval=15, intervals=2
    )
    assert result.scrapes == 19  # 5 servers 5 s apart: 10 + 10 - 1 (the one at 0)
    assert result.terminal_calls == 0
    assert (result.active_calls, result.max_calls_per_active_run) == (4 * 2, 1)


def test_every_run_finished_costs_one_up_check_per_interval_per_exporter(finished):
    sim, workflows = finished
    result = rows.steady_state(
        sim, steady_document(sim, workflows), scrapers=2, scrape_interval=15, intervals=4
    )
    assert result.terminal_calls == result.active_calls == 0
    assert result.list_calls == 2  # 120 s of scrapes, up_check_interval_seconds 60


def test_naive_baseline_fetches_every_run_on_every_scrape(bulk):
    sim, workflows = bulk
    config = build_config(
        steady_document(sim, workflows), source="test", env={"COPYAI_API_KEY": API_KEY}
    )
    server = HttpServer(NaiveExporter(config), "127.0.0.1:0").start()
    try:
        calls = rows.calls_for_scrapes(sim, "127.0.0.1", server.port, 3)
    finally:
        server.stop()
    assert calls == {"get_run": 3 * 20}


def test_scrape_storm_on_a_cold_cache_costs_one_set_of_calls(bulk):
    sim, workflows = bulk
    sim.faults(latency_seconds=0.02)  # so the scrapes overlap the fetches
    document = exporter_document(sim.base_url, workflows, api={"max_concurrency": 4})
    with rows.LocalExporter(document) as local:
        storm = rows.storm(sim, local.host, local.port, scrapers=20, expected_runs=20)
    assert api_calls(storm.calls) == 20
    assert storm.answered == storm.complete == 20


@pytest.fixture
def discovered() -> Iterator[SimClient]:
    """1,000 runs of one workflow, 2 active among the newest 100 and 2 deep."""
    yield from serve(discovery_world(1000, active_newest=2, active_deep=2, api_key=API_KEY))


DISCOVERY = {
    "page_size": 100,
    "max_tracked_runs": 1000,
    "window_seconds": 30 * 86400,
    "max_pages_per_refresh": 1000,
}


def test_discovery_lists_each_page_once_then_only_what_changed(discovered):
    result = rows.discovery(
        discovered,
        DISCOVER_WORKFLOW,
        discovery_config=DISCOVERY,
        concurrency=4,
        steps=[("nothing new", 0), ("5 new", 5)],
    )
    assert result.first.calls == {"list_runs": 10}
    assert result.first.tracked == 1000
    # the newest page (new runs, the front active runs), the deep active runs alone
    assert [step.calls for step in result.later] == [
        {"list_runs": 1, "get_run": 2},
        {"list_runs": 1, "get_run": 2},
    ]
    assert [step.tracked for step in result.later] == [1000, 1000]  # max_tracked_runs


def test_discovery_lists_no_more_pages_than_new_and_active_runs_need(discovered):
    result = rows.discovery(
        discovered,
        DISCOVER_WORKFLOW,
        discovery_config=DISCOVERY,
        concurrency=4,
        steps=[("150 new", 150)],
    )
    positions = active_positions(1000, 2, 2)
    assert api_calls(result.later[0].calls) == rows.discovery_limit(150, positions, 100)


def test_discovery_limit():
    assert active_positions(1000, 2, 2) == [0, 7, 400, 700]
    # nothing new: the newest page, and the two deep active runs alone
    assert rows.discovery_limit(0, [0, 7, 400, 700], 100) == 3
    # 150 new runs: two pages hold them and the front active runs (now 150, 157)
    assert rows.discovery_limit(150, [0, 7, 400, 700], 100) == 4
    # paging deeper pays when it covers more active runs than it costs pages
    assert rows.discovery_limit(0, [0, 120, 150, 170], 100) == 2
    assert rows.cold_limit(1000, 32, 0.05) == pytest.approx(1.6)


def test_slow_clients_are_all_closed_and_scrapes_answered_meanwhile(bulk):
    sim, workflows = bulk
    document = exporter_document(sim.base_url, workflows, api={"max_concurrency": 4})
    with rows.LocalExporter(document) as local:
        attack = rows.slow_attack(local.host, local.port, os.getpid(), clients=40)
    assert (attack.cut, attack.refused, attack.failed_scrapes) == (40, 0, 0)
    assert attack.scrape_seconds  # scrapes were answered while slow clients held on


RECORDED = """Measured ... exporter at abc1234.

Machine: ...

| # | Measure | Exporter | Limit | Naive baseline | Target | Met |
|---|---|---|---|---|---|---|
| 1 | one | 1 s | | | | yes |
| 7 | seven | 7 s | | | | yes |
| 8 | eight, old | 9 s | | | | **no** |

Notes from this run:

- row 1: about one
- row 8: old note
"""


def test_one_phase_run_alone_replaces_only_its_rows_and_notes():
    report = Report(lines=[Line("8", "eight", "3 s", "", "", "", True)], notes=["row 8: new"])
    merged = merge_rows(RECORDED, report, {"8"}, "row 8: measured on its own")
    assert merged.splitlines()[6:] == [
        "| 1 | one | 1 s | | | | yes |",
        "| 7 | seven | 7 s | | | | yes |",
        "| 8 | eight | 3 s |  |  |  | yes |",
        "",
        "Notes from this run:",
        "",
        "- row 1: about one",
        "- row 8: new",
        "- row 8: measured on its own",
    ]
    assert merged.startswith("Measured ... exporter at abc1234.\n")
