"""Discovery against the real simulator over HTTP: paging (string totals, every list
order), incremental refreshes that cost only what changed, the window and caps, and
counters that agree with the simulator's ground truth."""

from __future__ import annotations

import time

import pytest

from exporter.runtime import Exporter
from tests.support.exporters import make_config, sim_stats
from tests.support.polling import wait_for
from tests.support.samples import names, parse_samples, sample

WF = "WCFG-discover"
DONE = [("COMPLETE", None)]


@pytest.fixture
def make(sim):
    made: list[Exporter] = []

    def build(discovery: dict | None = None, refresh: float = 0, **workflow) -> Exporter:
        config = make_config(
            {
                "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
                "collector": {"refresh_interval_seconds": refresh, "up_check_interval_seconds": 0},
                "workflows": [
                    {
                        "id": WF,
                        "name": "disc",
                        "discover": True,
                        "discovery": discovery or {},
                        **workflow,
                    }
                ],
            }
        )
        exporter = Exporter(config, process_metrics=False)
        made.append(exporter)
        return exporter

    yield build
    for exporter in made:
        exporter.close()


def scrape(exporter: Exporter):
    report = exporter.refresh(time.monotonic() + 30)
    assert report.completed
    return parse_samples(exporter.render().decode())


def tracked(samples) -> float:
    return sum(v for (n, labels), v in samples.items() if n == "copyai_workflow_runs")


def reset_stats(sim) -> None:
    with sim.world.lock:
        sim.world.stats.clear()
        sim.world.run_stats.clear()


def counter(samples, name: str) -> float | None:
    return sample(samples, name, workflow_id=WF)


def add_finished(world, count: int, oldest_age: float = 3000.0) -> None:
    world.add_workflow("disc", WF)
    for i in range(count):
        world.add_run(WF, DONE, age_seconds=oldest_age - i, credits=1)


def test_pages_through_every_page_with_string_totals(sim, world, make):
    add_finished(world, 1050)  # 11 pages of 100; the simulator sends total as a string
    exporter = make()  # on even pages and as an integer on odd ones
    samples = scrape(exporter)
    assert tracked(samples) == 1050
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="COMPLETE") == 1050
    assert sim_stats(sim) == {"list_runs": 11}
    # all of them existed before the workflow was watched: a baseline, not events
    assert counter(samples, "copyai_workflow_runs_created_total") == 0
    assert counter(samples, "copyai_workflow_runs_finished_total") == 0


def test_refresh_after_the_first_look_lists_only_what_changed(sim, world, make):
    add_finished(world, 1050)
    exporter = make()
    scrape(exporter)
    reset_stats(sim)
    samples = scrape(exporter)
    assert sim_stats(sim) == {"list_runs": 1}  # nothing new: the newest page only
    for _ in range(5):
        world.add_run(WF, [("PROCESSING", None)], credits=2)
    reset_stats(sim)
    samples = scrape(exporter)
    assert sim_stats(sim) == {"list_runs": 1}
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="PROCESSING") == 5
    assert counter(samples, "copyai_workflow_runs_created_total") == 5
    oldest = counter(samples, "copyai_workflow_oldest_active_run_created_timestamp_seconds")
    assert oldest == pytest.approx(
        min(r.created_at for r in world.all_runs() if r.steps[0][0] == "PROCESSING")
    )


def test_a_stuck_run_deep_in_history_is_fetched_alone(sim, world, make):
    world.add_workflow("disc", WF)
    stuck = world.add_run(WF, [("WAITING", None)], age_seconds=5000)
    add_finished(world, 1000)
    exporter = make()
    scrape(exporter)
    reset_stats(sim)
    samples = scrape(exporter)
    # one page for anything new, one call for the stuck run: not the 11 pages above it
    assert sim_stats(sim) == {"list_runs": 1, "get_run": 1}
    assert sim.world.run_stats == {stuck.run_id: 1}
    assert counter(
        samples, "copyai_workflow_oldest_active_run_created_timestamp_seconds"
    ) == pytest.approx(stuck.created_at)


@pytest.mark.parametrize("order", ["oldest_first", "shuffled"])
def test_every_list_order_is_handled(sim, world, make, order):
    add_finished(world, 530)
    world.faults.list_order = order
    world.faults.list_omit_status_every = 9  # some items come without a status
    exporter = make()
    samples = scrape(exporter)
    assert tracked(samples) == 530
    for _ in range(4):
        world.add_run(WF, [("PROCESSING", 0.2), ("COMPLETE", None)], credits=3)

    def all_counted():
        got = scrape(exporter)
        return counter(got, "copyai_workflow_runs_finished_total") == 4 and got

    samples = wait_for(all_counted, timeout=15)
    assert counter(samples, "copyai_workflow_runs_created_total") == 4
    assert counter(samples, "copyai_workflow_run_credits_total") == 12
    assert tracked(samples) == 534


def test_first_look_resumes_across_refreshes_within_the_page_budget(sim, world, make):
    add_finished(world, 1050)
    exporter = make(discovery={"max_pages_per_refresh": 4})
    calls = []
    for _ in range(4):
        reset_stats(sim)
        samples = scrape(exporter)
        calls.append(sim_stats(sim).get("list_runs", 0))
    assert all(c <= 4 for c in calls)
    assert tracked(samples) == 1050


def test_window_bounds_what_is_listed_and_tracked(sim, world, make):
    world.add_workflow("disc", WF)
    for i in range(600):  # one run every 2 s over the last 20 minutes
        world.add_run(WF, DONE, age_seconds=1200 - 2 * i)
    exporter = make(discovery={"window_seconds": 300})
    samples = scrape(exporter)
    assert tracked(samples) == pytest.approx(150, abs=2)
    assert sim_stats(sim)["list_runs"] == 2  # stopped at the page crossing the window


def test_cardinality_stays_within_the_caps(sim, world, make):
    world.add_workflow("disc", WF)
    for i in range(3000):
        world.add_run(WF, [("PROCESSING", None)], age_seconds=3000 - i)
    exporter = make(discovery={"max_tracked_runs": 500, "run_series": True, "max_run_series": 10})
    samples = scrape(exporter)
    assert tracked(samples) <= 500
    per_run = {s["run_id"] for s in names(samples, "copyai_workflow_run_status")}
    assert len(per_run) == 10
    assert len(names(samples, "copyai_workflow_run_status")) == 70
    assert sim_stats(sim)["list_runs"] <= 6
    assert len(samples) < 1000


def test_discovered_runs_have_no_per_run_series_unless_asked(sim, world, make):
    world.add_workflow("disc", WF)
    for _ in range(20):
        world.add_run(WF, [("PROCESSING", None)])
    samples = scrape(make())
    assert names(samples, "copyai_workflow_run_status") == []
    assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="PROCESSING") == 20


def test_counters_agree_with_the_simulators_ground_truth(sim, world, make):
    add_finished(world, 120)  # baseline
    world.add_run(WF, [("PROCESSING", None)], age_seconds=100)  # active before watching
    exporter = make()
    scrape(exporter)
    watch_start = exporter.book.get(WF).watch_start
    retrying = [("NEW", 0.2), ("PROCESSING", 0.3), ("RETRYING", 1.0), ("PROCESSING", 0.3)]
    for i in range(12):
        end = "FAILED" if i % 3 == 0 else "COMPLETE"
        steps = [*retrying, (end, None)] if i % 2 else [("PROCESSING", 0.5), (end, None)]
        world.add_run(WF, steps, credits=i + 1, credits_as_string=bool(i % 4))
    # one that starts and ends between two looks
    world.add_run(WF, [("COMPLETE", None)], credits=50)

    def settled():
        got = scrape(exporter)
        truth = world.truth(watch_start)[WF]
        if (
            truth["active"] == 0
            and counter(got, "copyai_workflow_runs_finished_total") == (truth["finished"])
        ):
            return got, truth
        return None

    samples, truth = wait_for(settled, timeout=20, interval=0.05)
    assert truth["created"] == 13
    assert counter(samples, "copyai_workflow_runs_created_total") == truth["created"]
    assert counter(samples, "copyai_workflow_runs_finished_total") == truth["finished"]
    assert counter(samples, "copyai_workflow_runs_failed_total") == truth["failed"] == 4
    assert counter(samples, "copyai_workflow_run_credits_total") == truth["credits"]
    assert counter(samples, "copyai_workflow_runs_retried_total") == 6
    assert counter(samples, "copyai_workflow_run_duration_seconds_count") == 13
    assert counter(samples, "copyai_workflow_last_success_timestamp_seconds") >= watch_start
    assert counter(samples, "copyai_workflow_last_failure_timestamp_seconds") >= watch_start
    # seen again and again since: still counted once
    for _ in range(3):
        again = scrape(exporter)
        assert counter(again, "copyai_workflow_runs_finished_total") == truth["finished"]


def test_order_detection_tolerates_timestamps_without_milliseconds():
    from exporter.api.records import Run, RunStatus
    from exporter.tracking.discovery import NEWEST_FIRST, OLDEST_FIRST, UNKNOWN, detect_order

    def page(*times):
        return [Run(f"WRUN-{i}", RunStatus.COMPLETE, t, None) for i, t in enumerate(times)]

    # 100.5 sent as "…:40Z" reads 100.0 next to a run created at 100.3
    assert detect_order(page(105.0, 100.0, 100.3, 90.0)) == NEWEST_FIRST
    assert detect_order(page(90.0, 100.3, 100.0, 105.0)) == OLDEST_FIRST
    assert detect_order(page(90.0, 105.0, 80.0)) == UNKNOWN
    assert detect_order(page(100.0, 100.2)) is None  # cannot tell
    assert detect_order(page(100.0)) is None


def test_api_down_during_discovery_sets_up_to_zero_and_logs_once(sim, world, make, caplog):
    add_finished(world, 5)
    exporter = make(refresh=0)
    assert sample(scrape(exporter), "copyai_up") == 1
    sim.stop()  # also cuts the pooled keep-alive connections
    caplog.set_level("INFO", logger="exporter")
    for _ in range(3):
        samples = scrape(exporter)
    assert sample(samples, "copyai_up") == 0
    assert sample(samples, "copyai_api_errors_total", endpoint="list_runs", kind="unreachable") == 3
    failures = [r for r in caplog.records if "run discovery failed" in r.getMessage()]
    assert len(failures) == 1
