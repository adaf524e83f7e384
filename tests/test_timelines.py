"""Queue wait and processing time through the real simulator and exporter, on a FakeClock:
runs with known timelines (queued, then running, retrying, ending), watched by polling
only and by webhooks. Histogram counts are exact; sums are exact where the start and the
end are delivered, and within the documented precision (a refresh interval per look)
where they are polled. Runs from before the watch are never observed."""

from __future__ import annotations

import pytest

from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from tests.support.exporters import API_KEY
from tests.support.fake_time import Watch, clock_at, subscribe, utc, watch
from tests.support.samples import Samples, sample

WF = "WCFG-timelines"
R = 10.0  # refresh_interval_seconds
# (steps, true queue wait, true processing time); None: not observed (never seen running)
TIMELINES = {
    "queued-then-done": ([("NEW", 25), ("PROCESSING", 40), ("COMPLETE", None)], 25.0, 40.0),
    "waits-retries-fails": (
        [("WAITING", 5), ("PROCESSING", 12), ("RETRYING", 6), ("PROCESSING", 3), ("FAILED", None)],
        5.0,
        21.0,
    ),
    "long-queue": (
        [("NEW", 61), ("WAITING", 30), ("PROCESSING", 15), ("COMPLETE", None)],
        91.0,
        15.0,
    ),
}


def histogram(samples: Samples, name: str) -> tuple[float | None, float | None]:
    return (
        sample(samples, f"copyai_workflow_run_{name}_seconds_count", workflow_id=WF),
        sample(samples, f"copyai_workflow_run_{name}_seconds_sum", workflow_id=WF),
    )


def gauge(samples: Samples, name: str) -> float | None:
    return sample(samples, f"copyai_workflow_oldest_{name}_timestamp_seconds", workflow_id=WF)


@pytest.fixture
def timeline_world():
    clock = clock_at(utc(2024, 3, 5, 9, 0, 0))
    world = World(api_key=API_KEY, seed=4, clock=clock.wall)
    world.add_workflow("timelines", WF)
    # from before the watch: queued (it will start and end while watched) and running
    world.add_run(
        WF,
        [("NEW", 30), ("PROCESSING", 30), ("COMPLETE", None)],
        age_seconds=10,
        credits=1,
        announce_start=True,
    )
    world.add_run(WF, [("PROCESSING", 45), ("FAILED", None)], age_seconds=5, credits=2)
    sim = RunningSimulator(world)
    yield clock, world, sim
    sim.stop()


def start(clock, world, sim) -> tuple[Watch, dict[str, str]]:
    """The exporter starts watching; then the timelines' runs are created (run ids)."""
    w = watch(
        world,
        sim,
        clock,
        {
            "collector": {"refresh_interval_seconds": R, "up_check_interval_seconds": 0},
            "workflows": [{"id": WF, "discover": True}],
        },
    )
    w.refresh()  # the watch begins: the two runs above are baseline
    clock.advance(1)
    created = {}
    for name, (steps, _queue, _processing) in TIMELINES.items():
        created[name] = world.add_run(WF, steps, credits=3, announce_start=True).run_id
    world.add_run(WF, [("PROCESSING", 4), ("COMPLETE", None)], credits=1)  # never seen running
    return w, created


def test_polling_only_counts_exactly_and_measures_within_a_refresh_interval(timeline_world):
    clock, world, sim = timeline_world
    w, created = start(clock, world, sim)
    try:
        history = w.exporter.book.get(WF)
        long_queue = created["long-queue"]
        watched_at = clock.wall() - 1  # the first look
        for step in range(1, 14):  # 130 s: every run has ended
            clock.advance(R)
            samples = w.refresh()
            if step == 5:  # 51 s: long-queue waits; queued-then-done runs since 31 s
                assert gauge(samples, "queued_run_created") == history.runs[long_queue].created_at
                assert gauge(samples, "running_run_started") == watched_at + 31
            if step == 10:  # 101 s: long-queue has run since 92 s, seen now; nothing waits
                assert gauge(samples, "queued_run_created") is None
                assert gauge(samples, "running_run_started") == watched_at + 101
        count, total = histogram(samples, "queue")
        assert count == len(TIMELINES)
        true_queue = sum(q for _, q, _ in TIMELINES.values())
        assert true_queue <= total <= true_queue + len(TIMELINES) * R  # each late by < R
        count, total = histogram(samples, "processing")
        assert count == len(TIMELINES)
        true_processing = sum(p for _, _, p in TIMELINES.values())
        assert abs(total - true_processing) <= len(TIMELINES) * R  # start and end each late
        # every run ended: nothing queued or running is left
        assert gauge(samples, "queued_run_created") is None
        assert gauge(samples, "running_run_started") is None
        # the ends counted as before: the four new runs and the two seen active
        assert sample(samples, "copyai_workflow_runs_finished_total", workflow_id=WF) == 6
    finally:
        w.close()


def test_with_webhooks_the_deliveries_make_the_measures_exact(timeline_world):
    clock, world, sim = timeline_world
    subscribe(world, "workflowRun.started", "workflowRun.completed", "workflowRun.failed")
    world.faults.update({"webhook_shape": "documented"})  # no createdAt: listings bring it
    w, created = start(clock, world, sim)
    try:
        delivered = 0
        for second in range(1, 131):  # a delivery the second it is due, a refresh each R
            clock.advance(1)
            delivered += w.deliver()
            if second % R == 0:
                w.refresh()
        samples = w.refresh()
        # started and ended: the baseline queued run, the three timelines; ended only: the
        # baseline running run and the run never seen running
        assert delivered == 4 * 2 + 2
        assert histogram(samples, "queue") == (
            len(TIMELINES),
            sum(q for _, q, _ in TIMELINES.values()),
        )
        assert histogram(samples, "processing") == (
            len(TIMELINES),
            sum(p for _, _, p in TIMELINES.values()),
        )
        history = w.exporter.book.get(WF)
        for name, (_steps, queue, _processing) in TIMELINES.items():
            run = history.runs[created[name]]
            assert run.started_at - run.created_at == queue
    finally:
        w.close()
