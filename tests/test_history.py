"""WorkflowHistory and HistoryBook with explicit observation times: what is counted once,
what is baseline, decisions deferred until createdAt is known, keeping the history
bounded, change tracking for persistence, restore, and following the config."""

from __future__ import annotations

import json
import math
from dataclasses import replace

from exporter.api.records import ALL_STATUSES, RunStatus
from exporter.config import Config, DiscoveryConfig
from exporter.tracking.book import HistoryBook
from exporter.tracking.history import (
    BASELINE,
    GONE,
    MAX_REMEMBERED_DROPS,
    OUTSIDE_WINDOW,
    OVER_CAP,
    UNCONFIGURED,
    WATCHED,
    DroppedRun,
    TrackedRun,
    WorkflowHistory,
)
from exporter.tracking.persistence import MemoryStore, StateError
from tests.support.exporters import make_config

S = RunStatus
WF = "WCFG-history"
WATCH_START = 1_000.0
BUCKETS = (10.0, 30.0, 60.0, 120.0)


def history(
    window: float = 86_400.0, cap: int = 10_000, buckets: tuple[float, ...] = BUCKETS
) -> WorkflowHistory:
    return WorkflowHistory(
        WF,
        WATCH_START,
        {"duration": buckets},
        DiscoveryConfig(window_seconds=window, max_tracked_runs=cap),
    )


def counters(h: WorkflowHistory) -> dict[str, float]:
    snap = h.snapshot()
    return {
        "created": snap.values["created"],
        "finished": snap.values["finished"],
        "failed": snap.values["failed"],
        "retried": snap.values["retried"],
        "credits": snap.values["credits"],
        "durations": snap.histograms["duration"].counts[-1],
        "duration_sum": snap.histograms["duration"].sum,
    }


NOTHING = {
    "created": 0,
    "finished": 0,
    "failed": 0,
    "retried": 0,
    "credits": 0.0,
    "durations": 0,
    "duration_sum": 0.0,
}


# --- one run's life, counted once ----------------------------------------------------


def test_watched_run_through_a_retry_is_counted_once_however_often_it_is_seen_done():
    h = history()
    created = 1_010.0
    assert h.observe("r1", when=1_020.0, status=S.NEW, created_at=created)
    assert h.observe("r1", when=1_030.0, status=S.PROCESSING)
    assert h.observe("r1", when=1_040.0, status=S.RETRYING)
    assert h.observe("r1", when=1_045.0, status=S.RETRYING)  # still retrying: no new retry
    assert h.observe("r1", when=1_050.0, status=S.PROCESSING, created_at=created)
    assert h.observe("r1", when=1_070.0, status=S.COMPLETE, credits=7.5)
    for when in (1_080.0, 1_090.0, 1_100.0):
        assert h.observe("r1", when=when, status=S.COMPLETE, created_at=created, credits=7.5)

    snap = h.snapshot()
    assert counters(h) == {
        "created": 1,
        "finished": 1,
        "failed": 0,
        "retried": 1,
        "credits": 7.5,
        "durations": 1,
        "duration_sum": 60.0,  # first seen COMPLETE at 1070, created at 1010
    }
    # 60 s falls in le=60 (bucket bounds are inclusive), so le=10 and le=30 stay empty
    assert snap.histograms["duration"].buckets == BUCKETS
    assert snap.histograms["duration"].counts == (0, 0, 1, 1, 1)
    assert snap.values["last_success"] == 1_070.0
    assert snap.values["last_failure"] is None
    assert snap.values["last_created"] == created
    assert snap.status_counts[S.COMPLETE] == 1
    assert sum(snap.status_counts.values()) == 1
    assert snap.values["oldest_active_created"] is None
    run = h.runs["r1"]
    assert run.origin == WATCHED
    assert run.terminal_at == 1_070.0
    assert run.first_status is S.NEW


def test_run_that_started_and_failed_between_two_looks_is_counted():
    h = history()
    assert h.observe("r1", when=1_050.0, status=S.FAILED, created_at=1_020.0, credits=2.0)
    expected = {
        "created": 1,
        "finished": 1,
        "failed": 1,
        "retried": 0,
        "credits": 2.0,
        "durations": 1,
        "duration_sum": 30.0,
    }
    assert counters(h) == expected
    assert h.snapshot().values["last_failure"] == 1_050.0
    assert h.snapshot().values["last_success"] is None
    assert h.snapshot().histograms["duration"].counts == (0, 1, 1, 1, 1)  # 30 s: le=30

    for when in (1_060.0, 1_070.0):
        assert h.observe("r1", when=when, status=S.FAILED, created_at=1_020.0, credits=2.0)
    assert counters(h) == expected
    assert h.snapshot().values["last_failure"] == 1_050.0


# --- baseline: runs created before watching began ------------------------------------


def test_baseline_runs_seen_finished_move_no_counter_but_set_last_success_and_failure():
    h = history()
    assert h.observe("ok-old", when=1_020.0, status=S.COMPLETE, created_at=900.0, credits=4.0)
    assert h.observe("ok-older", when=1_020.0, status=S.COMPLETE, created_at=800.0, credits=1.0)
    assert h.observe("bad-old", when=1_020.0, status=S.FAILED, created_at=950.0)
    for when in (1_030.0, 1_040.0):  # seen again: still nothing
        assert h.observe("ok-old", when=when, status=S.COMPLETE, created_at=900.0, credits=4.0)
        assert h.observe("bad-old", when=when, status=S.FAILED, created_at=950.0)

    assert counters(h) == NOTHING
    snap = h.snapshot()
    assert snap.values["last_success"] == 900.0  # a lower bound: the newest createdAt, not 800
    assert snap.values["last_failure"] == 950.0
    assert snap.values["last_created"] == 950.0
    assert snap.status_counts[S.COMPLETE] == 2
    assert snap.status_counts[S.FAILED] == 1
    assert {r.origin for r in h.runs.values()} == {BASELINE}


def test_baseline_run_seen_active_then_finished_counts_its_end_but_not_its_creation():
    h = history()
    assert h.observe("r1", when=1_020.0, status=S.PROCESSING, created_at=950.0)
    assert counters(h) == NOTHING
    assert h.observe("r1", when=1_040.0, status=S.COMPLETE, created_at=950.0, credits=3.0)
    assert h.observe("r1", when=1_050.0, status=S.COMPLETE, created_at=950.0, credits=3.0)
    assert counters(h) == {
        "created": 0,
        "finished": 1,
        "failed": 0,
        "retried": 0,
        "credits": 3.0,
        "durations": 1,
        "duration_sum": 90.0,
    }
    assert h.snapshot().values["last_success"] == 1_040.0


# --- decisions that wait for createdAt ------------------------------------------------


def test_end_reported_before_created_at_is_counted_once_created_at_says_watched():
    h = history()
    assert h.observe("r1", when=1_100.0, status=S.COMPLETE, credits=5.0)  # a webhook
    assert counters(h) == NOTHING  # cannot tell baseline from watched yet
    assert h.snapshot().values["last_success"] is None

    assert h.observe("r1", when=1_130.0, status=S.COMPLETE, created_at=1_060.0, credits=5.0)
    assert h.observe("r1", when=1_140.0, status=S.COMPLETE, created_at=1_060.0, credits=5.0)
    assert counters(h) == {
        "created": 1,
        "finished": 1,
        "failed": 0,
        "retried": 0,
        "credits": 5.0,
        "durations": 1,
        "duration_sum": 40.0,  # ended when first reported (1100), not when createdAt came
    }
    assert h.snapshot().values["last_success"] == 1_100.0


def test_end_reported_before_created_at_counts_nothing_once_created_at_says_baseline():
    h = history()
    assert h.observe("r1", when=1_100.0, status=S.COMPLETE, credits=5.0)
    assert h.observe("r1", when=1_130.0, status=S.COMPLETE, created_at=990.0, credits=5.0)
    assert counters(h) == NOTHING
    assert h.snapshot().values["last_success"] == 990.0
    assert h.runs["r1"].origin == BASELINE


def test_end_without_created_at_then_a_listing_without_status_decides_it():
    h = history()
    assert h.observe("r1", when=1_100.0, status=S.FAILED)
    assert h.observe("r1", when=1_110.0, created_at=1_090.0)  # list item without status
    assert counters(h)["created"] == 1
    assert counters(h)["failed"] == 1
    assert counters(h)["duration_sum"] == 10.0


def test_first_seen_retrying_without_created_at_counts_the_retry_once_watched():
    h = history()
    assert h.observe("r1", when=1_100.0, status=S.RETRYING)
    assert counters(h)["retried"] == 0
    assert h.observe("r1", when=1_110.0, status=S.RETRYING, created_at=1_050.0)
    assert h.observe("r1", when=1_120.0, status=S.PROCESSING, created_at=1_050.0)
    assert counters(h)["retried"] == 1
    assert counters(h)["created"] == 1


def test_first_seen_retrying_without_created_at_is_not_a_retry_when_baseline():
    h = history()
    assert h.observe("r1", when=1_100.0, status=S.RETRYING)
    assert h.observe("r1", when=1_110.0, status=S.RETRYING, created_at=950.0)
    assert counters(h) == NOTHING


def test_credits_reported_after_the_end_are_added_once():
    h = history()
    assert h.observe("r1", when=1_020.0, status=S.PROCESSING, created_at=1_010.0)
    assert h.observe("r1", when=1_030.0, status=S.COMPLETE)
    assert counters(h)["finished"] == 1
    assert counters(h)["credits"] == 0.0
    assert h.observe("r1", when=1_040.0, status=S.COMPLETE, credits=12.0)
    assert h.observe("r1", when=1_050.0, status=S.COMPLETE, credits=12.0)
    assert h.observe("r1", when=1_060.0, credits=12.0)
    assert counters(h)["credits"] == 12.0
    assert counters(h)["finished"] == 1


def test_observations_without_status_do_not_change_status_counts():
    h = history()
    assert h.observe("r1", when=1_020.0, created_at=1_010.0)
    snap = h.snapshot()
    assert all(n == 0 for n in snap.status_counts.values())
    assert snap.tracked == 1
    assert snap.values["oldest_active_created"] is None  # no status: not known to be active
    assert snap.values["created"] == 1

    assert h.observe("r1", when=1_030.0, status=S.PROCESSING)
    assert h.observe("r1", when=1_040.0, credits=3.0)
    assert h.observe("r1", when=1_050.0, created_at=1_010.0)
    snap = h.snapshot()
    assert snap.status_counts[S.PROCESSING] == 1
    assert sum(snap.status_counts.values()) == 1
    assert h.runs["r1"].status is S.PROCESSING
    assert snap.values["finished"] == 0


# --- snapshot --------------------------------------------------------------------------


def test_snapshot_of_an_empty_history_is_zero_filled():
    snap = history().snapshot(run_series_limit=5)
    assert set(snap.status_counts) == set(ALL_STATUSES)
    assert len(ALL_STATUSES) == 7
    assert all(n == 0 for n in snap.status_counts.values())
    assert snap.histograms["duration"].counts == (0, 0, 0, 0, 0)
    assert snap.values["oldest_active_created"] is None
    assert snap.active_runs == []
    assert snap.values["last_success"] is None
    assert snap.values["last_failure"] is None
    assert snap.values["last_created"] is None


def test_snapshot_status_counts_oldest_active_and_run_series():
    h = history()
    h.observe("new", when=1_100.0, status=S.NEW, created_at=1_050.0)
    h.observe("waiting", when=1_100.0, status=S.WAITING, created_at=1_030.0)
    h.observe("pinned", when=1_100.0, status=S.PROCESSING, created_at=1_010.0, pinned=True)
    h.observe("retrying", when=1_100.0, status=S.RETRYING, created_at=1_040.0)
    h.observe("no-created", when=1_100.0, status=S.PROCESSING)
    # the oldest of all, but UNKNOWN is not active: not the oldest active run
    h.observe("unknown", when=1_100.0, status=S.UNKNOWN, created_at=1_000.0)
    h.observe("complete", when=1_100.0, status=S.COMPLETE, created_at=1_001.0)
    h.observe("failed", when=1_100.0, status=S.FAILED, created_at=1_002.0)

    snap = h.snapshot()
    assert snap.status_counts == {
        S.NEW: 1,
        S.WAITING: 1,
        S.PROCESSING: 2,
        S.COMPLETE: 1,
        S.RETRYING: 1,
        S.FAILED: 1,
        S.UNKNOWN: 1,
    }
    assert snap.tracked == 8
    assert (
        snap.values["oldest_active_created"] == 1_010.0
    )  # the pinned run is active too, UNKNOWN not
    assert snap.active_runs == []  # no run series asked for

    series = h.snapshot(run_series_limit=3).active_runs
    assert [r.run_id for r in series] == ["waiting", "retrying", "new"]
    everything = h.snapshot(run_series_limit=100).active_runs
    assert [r.run_id for r in everything] == [
        "waiting",
        "retrying",
        "new",
        "no-created",  # no createdAt: last (and no "unknown": UNKNOWN is not active)
    ]
    # copies: changing them does not change the history
    series[0].status = S.FAILED
    assert h.runs["waiting"].status is S.WAITING

    h.observe("pinned", when=1_200.0, status=S.COMPLETE)
    assert h.snapshot().values["oldest_active_created"] == 1_030.0
    for run_id in ("new", "waiting", "retrying", "no-created", "unknown"):
        h.observe(run_id, when=1_200.0, status=S.COMPLETE)
    assert h.snapshot().values["oldest_active_created"] is None
    assert h.snapshot(run_series_limit=3).active_runs == []


# --- keeping it bounded ----------------------------------------------------------------


def test_forget_drops_finished_runs_that_left_the_window_but_keeps_active_and_pinned():
    h = history(window=100.0)
    h.observe("old-done", when=1_020.0, status=S.COMPLETE, created_at=1_010.0, credits=1.0)
    h.observe("old-active", when=1_020.0, status=S.PROCESSING, created_at=1_011.0)
    h.observe("old-pinned", when=1_020.0, status=S.COMPLETE, created_at=1_012.0, pinned=True)
    h.observe("no-created", when=1_050.0, status=S.COMPLETE)
    h.observe("recent-done", when=1_160.0, status=S.FAILED, created_at=1_150.0)
    before = counters(h)

    assert h.forget(1_200.0) == 2  # window starts at 1100
    assert set(h.runs) == {"old-active", "old-pinned", "recent-done"}
    assert counters(h) == before  # forgetting is not un-counting
    snap = h.snapshot()
    assert snap.status_counts[S.COMPLETE] == 1
    assert snap.status_counts[S.PROCESSING] == 1
    assert snap.status_counts[S.FAILED] == 1
    assert snap.tracked == 3

    # seen again in a listing, it is older than the window: ignored
    assert not h.observe("old-done", when=1_210.0, status=S.COMPLETE, created_at=1_010.0)
    assert not h.known("old-done")
    assert h.forget(1_200.0) == 0


def test_run_first_seen_with_created_at_older_than_the_window_is_ignored():
    h = history(window=100.0)
    assert not h.observe("ancient", when=1_300.0, status=S.PROCESSING, created_at=1_150.0)
    assert not h.observe("ancient", when=1_310.0, status=S.COMPLETE, created_at=1_150.0)
    assert not h.known("ancient")
    assert counters(h) == NOTHING
    assert h.snapshot().tracked == 0
    assert all(n == 0 for n in h.snapshot().status_counts.values())
    # a configured run is tracked whatever its age
    assert h.observe(
        "configured", when=1_300.0, status=S.PROCESSING, created_at=1_150.0, pinned=True
    )
    assert h.known("configured")


def test_cap_drops_finished_runs_first_then_the_oldest_active_and_ignores_them_later():
    h = history(cap=3)
    h.observe("done-1", when=1_100.0, status=S.COMPLETE, created_at=1_080.0)
    h.observe("done-2", when=1_100.0, status=S.FAILED, created_at=1_090.0)
    h.observe("active-1", when=1_100.0, status=S.PROCESSING, created_at=1_010.0)
    h.observe("active-2", when=1_100.0, status=S.PROCESSING, created_at=1_020.0)
    h.observe("active-3", when=1_100.0, status=S.NEW, created_at=1_030.0)
    assert h.forget(1_100.0) == 2
    assert set(h.runs) == {"active-1", "active-2", "active-3"}

    h.observe("active-4", when=1_110.0, status=S.NEW, created_at=1_100.0)
    h.observe("pinned", when=1_110.0, status=S.NEW, created_at=1_000.0, pinned=True)
    assert h.forget(1_110.0) == 2
    assert set(h.runs) == {"active-3", "active-4", "pinned"}  # pinned, though the oldest
    before = counters(h)
    assert before["created"] == 7
    assert before["finished"] == 2

    # dropped runs seen again are ignored, whatever they show now
    assert not h.observe("active-1", when=1_120.0, status=S.COMPLETE, created_at=1_010.0)
    assert not h.observe("active-2", when=1_120.0, status=S.FAILED, created_at=1_020.0)
    assert not h.observe("done-1", when=1_120.0, status=S.COMPLETE, created_at=1_080.0)
    assert counters(h) == before
    assert set(h.runs) == {"active-3", "active-4", "pinned"}
    assert h.snapshot().status_counts[S.NEW] == 3
    assert h.snapshot().status_counts[S.PROCESSING] == 0
    # new runs are still tracked and counted
    assert h.observe("active-5", when=1_130.0, status=S.NEW, created_at=1_120.0)
    assert counters(h)["created"] == before["created"] + 1


def test_run_dropped_by_the_cap_and_then_reported_by_a_webhook_is_not_counted_again():
    h = history(cap=2)
    for i in range(3):
        h.observe(f"r{i}", when=1_100.0, status=S.PROCESSING, created_at=1_010.0 + i)
    assert h.forget(1_100.0) == 1
    assert not h.known("r0")
    before = counters(h)
    h.observe("r0", when=1_200.0, status=S.COMPLETE)  # workflowRun.completed: no createdAt
    h.observe("r0", when=1_210.0, status=S.COMPLETE, created_at=1_010.0)  # its fetch
    assert counters(h)["created"] == before["created"]


def test_why_a_run_is_no_longer_tracked_is_remembered_for_the_status_page():
    h = history(window=100.0, cap=2)
    h.observe("old", when=1_020.0, status=S.COMPLETE, created_at=1_010.0)
    for i in range(3):
        h.observe(f"r{i}", when=1_160.0, status=S.PROCESSING, created_at=1_150.0 + i)
    h.observe("gone", when=1_160.0, status=S.PROCESSING, created_at=1_159.0, pinned=True)
    h.set_pinned([], drop_unpinned=False)  # unpinned, kept by discovery
    h.forget(1_200.0)  # "old" left the window, then the cap drops the oldest
    assert h.lookup("old") == DroppedRun("old", OUTSIDE_WINDOW, 1_200.0, 1_010.0)
    dropped = [h.lookup(f"r{i}") for i in range(3)]
    assert [d.reason for d in dropped if isinstance(d, DroppedRun)] == [OVER_CAP, OVER_CAP]
    assert not h.observe("ancient", when=1_210.0, status=S.COMPLETE, created_at=1_000.0)
    assert h.lookup("ancient") == DroppedRun("ancient", OUTSIDE_WINDOW, 1_210.0, 1_000.0)
    assert not h.observe("early", when=1_210.0, status=S.COMPLETE, created_at=1_150.5)
    assert h.lookup("early").reason == OVER_CAP  # at or before the cap's horizon
    tracked = h.lookup("gone")
    assert isinstance(tracked, TrackedRun) and tracked.status is S.PROCESSING
    tracked.status = S.FAILED  # a copy: the history is not changed through it
    assert h.runs["gone"].status is S.PROCESSING
    h.drop("gone", when=1_220.0)  # the API answered 404
    assert h.lookup("gone").reason == GONE
    h.observe("pinned", when=1_230.0, status=S.NEW, created_at=1_225.0, pinned=True)
    h.set_pinned([], drop_unpinned=True)
    assert h.lookup("pinned") == DroppedRun("pinned", UNCONFIGURED, None, 1_225.0)
    assert h.lookup("never") is None
    h.observe("old", when=1_240.0, status=S.NEW, created_at=1_235.0)  # tracked again
    assert isinstance(h.lookup("old"), TrackedRun)
    for i in range(MAX_REMEMBERED_DROPS + 10):  # bounded: the newest are kept
        h.observe(f"x{i}", when=1_250.0, status=S.COMPLETE, created_at=1_000.0)
    assert len(h.dropped) == MAX_REMEMBERED_DROPS
    assert h.lookup("x0") is None and h.lookup(f"x{MAX_REMEMBERED_DROPS + 9}") is not None


def test_pinned_runs_survive_the_cap():
    h = history(cap=1)
    h.observe("a", when=1_100.0, status=S.COMPLETE, created_at=1_010.0, pinned=True)
    h.observe("b", when=1_100.0, status=S.COMPLETE, created_at=1_020.0, pinned=True)
    h.forget(1_100.0)
    assert set(h.runs) == {"a", "b"}


# --- persistence: changes and restore --------------------------------------------------


def test_take_changes_reports_changed_runs_and_removed_ids_once():
    h = history(window=100.0)
    h.observe("a", when=1_020.0, status=S.COMPLETE, created_at=1_010.0)
    h.observe("b", when=1_020.0, status=S.PROCESSING, created_at=1_015.0)
    meta, runs, removed = h.take_changes()
    assert meta is not None
    assert meta["created"] == 2
    assert meta["finished"] == 1
    assert {r["run_id"] for r in runs} == {"a", "b"}
    assert removed == []
    assert h.take_changes() == (None, [], [])

    h.observe("b", when=1_030.0, status=S.PROCESSING)
    meta, runs, removed = h.take_changes()
    assert [r["run_id"] for r in runs] == ["b"]
    assert runs[0]["status"] == "PROCESSING"
    assert removed == []
    assert h.take_changes() == (None, [], [])

    assert h.forget(1_200.0) == 1  # "a" left the window
    _, runs, removed = h.take_changes()
    assert runs == []
    assert removed == ["a"]
    assert h.take_changes() == (None, [], [])

    h.observe("c", when=1_200.0, status=S.NEW, created_at=1_190.0)
    h.drop("c")  # observed and dropped between two flushes: only the removal is left
    _, runs, removed = h.take_changes()
    assert runs == []
    assert removed == ["c"]


def test_a_run_seen_again_after_its_removal_was_taken_is_written_not_removed():
    h = history()
    h.observe("a", when=1_020.0, status=S.PROCESSING, created_at=1_010.0)
    h.take_changes()
    h.drop("a")
    h.observe("a", when=1_030.0, status=S.PROCESSING, created_at=1_010.0)
    _, runs, removed = h.take_changes()
    assert [r["run_id"] for r in runs] == ["a"]
    assert removed == []


def busy_history() -> WorkflowHistory:
    h = history(cap=5)
    h.observe("watched", when=1_020.0, status=S.PROCESSING, created_at=1_010.0)
    h.observe("watched", when=1_030.0, status=S.RETRYING)
    h.observe("watched", when=1_100.0, status=S.COMPLETE, credits=4.5)
    h.observe("failed", when=1_050.0, status=S.FAILED, created_at=1_045.0, credits=1.0)
    h.observe("baseline", when=1_020.0, status=S.COMPLETE, created_at=900.0)
    h.observe("active", when=1_120.0, status=S.PROCESSING, created_at=1_110.0, credits=2.0)
    h.observe("pinned", when=1_120.0, status=S.WAITING, created_at=1_111.0, pinned=True)
    h.observe("pending", when=1_130.0, status=S.COMPLETE)  # createdAt not known yet
    h.observe("no-status", when=1_130.0, created_at=1_125.0)
    assert h.forget(1_140.0) == 2  # the cap drops runs not active first: pending, baseline
    h.credit_limit_reached(1_135.0)
    h.discovery.known_total = 42
    h.discovery.order = "newest_first"
    h.discovery.cursor = 3
    h.discovery.cursor_total = 40
    h.discovery.filled = True
    h.discovery.last_cycle = 1_138.0
    return h


def test_restore_round_trips_counters_histogram_timestamps_runs_and_discovery():
    h = busy_history()
    assert set(h.runs) == {"watched", "failed", "active", "pinned", "no-status"}
    assert h.forget_horizon == 900.0
    # through JSON, as the SQLite store keeps them
    meta = json.loads(json.dumps(h.meta_record()))
    runs = json.loads(json.dumps([r.to_record() for r in h.runs.values()]))

    restored = WorkflowHistory.restore(
        WF, meta, runs, {"duration": BUCKETS}, DiscoveryConfig(max_tracked_runs=5)
    )
    assert restored.watch_start == WATCH_START
    assert restored.snapshot(run_series_limit=10) == h.snapshot(run_series_limit=10)
    snap = restored.snapshot()
    assert (
        snap.values["created"],
        snap.values["finished"],
        snap.values["failed"],
        snap.values["retried"],
    ) == (5, 2, 1, 1)
    assert snap.values["credits"] == 5.5
    assert snap.histograms["duration"].counts == (1, 1, 1, 2, 2)  # 5 s and 90 s
    assert snap.histograms["duration"].sum == 95.0
    assert snap.values["last_success"] == 1_100.0
    assert snap.values["last_failure"] == 1_050.0
    assert snap.values["credit_limit_count"] == 1
    assert snap.values["credit_limit_at"] == 1_135.0
    assert restored.runs == h.runs
    assert restored.discovery == h.discovery
    assert restored.forget_horizon == h.forget_horizon
    assert restored.oldest_active_created() == 1_110.0
    assert restored.take_changes() == (None, [], [])  # nothing to write back

    # it carries on where it was: nothing counted twice, new ends counted once
    restored.observe("watched", when=1_200.0, status=S.COMPLETE, credits=4.5)
    restored.observe("failed", when=1_200.0, status=S.FAILED, credits=1.0)
    restored.observe("active", when=1_210.0, status=S.COMPLETE, credits=3.0)
    assert not restored.observe("baseline", when=1_210.0, status=S.COMPLETE, created_at=900.0)
    snap = restored.snapshot()
    assert (
        snap.values["created"],
        snap.values["finished"],
        snap.values["failed"],
        snap.values["retried"],
    ) == (5, 3, 1, 1)
    assert snap.values["credits"] == 8.5
    assert snap.histograms["duration"].sum == 195.0


def test_restore_without_forget_horizon_and_with_empty_state():
    h = history()
    meta = json.loads(json.dumps(h.meta_record()))
    assert meta["forget_horizon"] is None
    restored = WorkflowHistory.restore(WF, meta, [], {"duration": BUCKETS}, None)
    assert restored.forget_horizon == -math.inf
    assert restored.snapshot() == h.snapshot()
    assert restored.discovery_config == DiscoveryConfig()


def test_restore_with_other_buckets_restarts_only_the_histogram():
    h = busy_history()
    meta = json.loads(json.dumps(h.meta_record()))
    runs = [r.to_record() for r in h.runs.values()]
    restored = WorkflowHistory.restore(WF, meta, runs, {"duration": (5.0, 50.0)}, None)
    before, after = h.snapshot(), restored.snapshot()
    assert after.histograms["duration"].buckets == (5.0, 50.0)
    assert after.histograms["duration"].counts == (0, 0, 0)
    assert after.histograms["duration"].sum == 0.0
    assert after.values == before.values  # every counter and time, by values.py's names
    assert (after.status_counts, after.tracked) == (before.status_counts, before.tracked)
    assert restored.runs == h.runs
    restored.observe("active", when=1_150.0, status=S.COMPLETE)
    assert restored.snapshot().histograms["duration"].counts == (0, 1, 1)  # 40 s


def test_tracked_run_record_round_trip():
    run = TrackedRun(
        run_id="r1",
        first_seen=1.0,
        created_at=2.0,
        status=S.RETRYING,
        credits=3.0,
        first_status=S.NEW,
        origin=WATCHED,
        pinned=True,
    )
    record = json.loads(json.dumps(run.to_record()))
    assert record["status"] == "RETRYING"
    assert TrackedRun.from_record({**record, "from_a_newer_version": 1}) == run


# --- HistoryBook follows the config ----------------------------------------------------


class RecordingStore(MemoryStore):
    persistent = True  # it keeps what it is given: flush must build the records

    def __init__(self, loaded=None):
        self.loaded = loaded or {}
        self.saved: list = []
        self.deleted: list[list[str]] = []

    def load(self):
        return dict(self.loaded)

    def save(self, changes):
        self.saved.append(changes)

    def delete_workflows(self, workflow_ids):
        self.deleted.append(list(workflow_ids))


def with_buckets(config: Config, buckets: tuple[float, ...]) -> Config:
    return replace(config, collector=replace(config.collector, duration_buckets_seconds=buckets))


def book_config(a_runs, *, with_b: bool = True, buckets=BUCKETS) -> Config:
    workflows = [{"id": "WCFG-a", "runs": list(a_runs)}]
    if with_b:
        workflows.append({"id": "WCFG-b", "discover": True, "runs": ["WRUN-b1"]})
    config = make_config({"api": {"base_url": "http://127.0.0.1:1/api"}, "workflows": workflows})
    return with_buckets(config, buckets)


def test_history_book_configure_keeps_drops_and_unpins():
    store = RecordingStore()
    now = [5_000.0]
    book = HistoryBook(store, wall_clock=lambda: now[0])
    book.configure(book_config(["WRUN-a1", "WRUN-a2"]))
    a, b = book.get("WCFG-a"), book.get("WCFG-b")
    assert a is not None
    assert b is not None
    assert a.watch_start == 5_000.0
    a.observe("WRUN-a1", when=5_010.0, status=S.PROCESSING, created_at=5_005.0, pinned=True)
    a.observe("WRUN-a2", when=5_010.0, status=S.COMPLETE, created_at=5_001.0, pinned=True)
    a.observe("WRUN-listed", when=5_010.0, status=S.NEW, created_at=5_002.0)  # a webhook's
    b.observe("WRUN-b1", when=5_010.0, status=S.PROCESSING, created_at=5_003.0, pinned=True)
    b.observe("WRUN-b2", when=5_010.0, status=S.PROCESSING, created_at=5_004.0)

    now[0] = 6_000.0
    book.configure(book_config(["WRUN-a1", "WRUN-a2"]))
    assert book.get("WCFG-a") is a  # the same history: counters and watch_start kept
    assert book.get("WCFG-b") is b
    assert a.watch_start == 5_000.0
    assert a.values["created"] == 3
    assert store.deleted == []

    # WRUN-a2 leaves a workflow without discovery: dropped; WCFG-b leaves the config
    book.configure(book_config(["WRUN-a1"], with_b=False))
    assert book.get("WCFG-a") is a
    assert book.get("WCFG-b") is None
    assert [h.workflow_id for h in book.all()] == ["WCFG-a"]
    assert set(a.runs) == {"WRUN-a1", "WRUN-listed"}
    assert a.runs["WRUN-a1"].pinned
    assert not a.runs["WRUN-listed"].pinned
    assert a.values["created"] == 3  # counted runs stay counted
    assert a.values["finished"] == 1
    _, _, removed = a.take_changes()
    assert "WRUN-a2" in removed
    book.flush()  # the removed workflow's rows go with the next write
    assert store.deleted == [["WCFG-b"]]

    # WCFG-b configured again: a fresh history, watched from now
    book.configure(book_config(["WRUN-a1"]))
    fresh = book.get("WCFG-b")
    assert fresh is not None
    assert fresh is not b
    assert fresh.watch_start == 6_000.0
    assert fresh.runs == {}


def test_history_book_unpins_but_keeps_runs_of_a_discover_workflow():
    book = HistoryBook(RecordingStore(), wall_clock=lambda: 5_000.0)
    book.configure(book_config(["WRUN-a1"]))
    b = book.get("WCFG-b")
    assert b is not None
    b.observe("WRUN-b1", when=5_010.0, status=S.PROCESSING, created_at=5_003.0, pinned=True)
    config = make_config(
        {
            "api": {"base_url": "http://127.0.0.1:1/api"},
            "workflows": [
                {"id": "WCFG-a", "runs": ["WRUN-a1"]},
                {"id": "WCFG-b", "discover": True},
            ],
        }
    )
    book.configure(with_buckets(config, BUCKETS))
    assert book.get("WCFG-b") is b
    assert b.known("WRUN-b1")  # discovery keeps it up to date
    assert not b.runs["WRUN-b1"].pinned


def test_history_book_restores_from_the_store_and_resets_histogram_on_new_buckets():
    source = busy_history()
    meta = json.loads(json.dumps(source.meta_record()))
    runs = [r.to_record() for r in source.runs.values()]
    store = RecordingStore({"WCFG-a": (meta, runs)})
    book = HistoryBook(store, wall_clock=lambda: 9_000.0)
    book.configure(book_config(["pinned"], with_b=False))
    a = book.get("WCFG-a")
    assert a is not None
    assert a.watch_start == WATCH_START  # persisted, not restarted
    assert replace(a.snapshot(), workflow_id=WF) == source.snapshot()
    assert set(a.runs) == set(source.runs)

    book.configure(book_config(["pinned"], with_b=False, buckets=(1.0, 2.0)))
    assert book.get("WCFG-a") is a
    snap = a.snapshot()
    assert snap.histograms["duration"].counts == (0, 0, 0)
    assert snap.histograms["duration"].sum == 0.0
    assert snap.values["created"] == source.values["created"]
    assert snap.values["credits"] == source.values["credits"]

    book.flush()
    assert len(store.saved) == 1
    [(workflow_id, saved_meta, _, _)] = store.saved[0]
    assert workflow_id == "WCFG-a"
    assert saved_meta is not None
    assert saved_meta["buckets"] == [1.0, 2.0]
    assert saved_meta["created"] == source.values["created"]


def test_history_book_uses_the_configured_duration_buckets():
    config = make_config(
        {
            "api": {"base_url": "http://127.0.0.1:1/api"},
            "collector": {"duration_buckets_seconds": [1, 5, 25]},
            "workflows": [{"id": "WCFG-a"}],
        }
    )
    book = HistoryBook(RecordingStore(), wall_clock=lambda: 5_000.0)
    book.configure(config)
    a = book.get("WCFG-a")
    assert a is not None
    assert a.snapshot().histograms["duration"].buckets == (1.0, 5.0, 25.0)


class FlakyStore(RecordingStore):
    def __init__(self):
        super().__init__()
        self.failing = False

    def save(self, changes):
        if self.failing:
            raise StateError("disk full")
        super().save(changes)


def discover_book(store) -> tuple[HistoryBook, WorkflowHistory]:
    book = HistoryBook(store, wall_clock=lambda: 1_000.0)
    book.configure(
        make_config(
            {
                "api": {"base_url": "http://127.0.0.1:1/api"},
                "workflows": [{"id": WF, "discover": True}],
            }
        )
    )
    h = book.get(WF)
    assert h is not None
    return book, h


def test_a_failed_flush_is_written_in_full_by_the_next_one():
    store = FlakyStore()
    book, h = discover_book(store)
    h.observe("a", when=1_010.0, status=S.PROCESSING, created_at=1_005.0)
    book.flush()
    store.saved.clear()
    h.observe("a", when=1_020.0, status=S.COMPLETE, credits=2.0)
    h.observe("b", when=1_020.0, status=S.NEW, created_at=1_015.0)
    store.failing = True
    book.flush()
    assert book.backend_up == 0
    assert store.saved == []
    store.failing = False
    book.flush()
    assert book.backend_up == 1
    [[(workflow_id, meta, runs, _)]] = store.saved
    assert workflow_id == WF
    assert meta is not None
    assert meta["finished"] == 1
    assert meta["credits"] == 2.0
    assert {r["run_id"]: r["status"] for r in runs} == {"a": "COMPLETE", "b": "NEW"}


def test_a_removal_whose_flush_failed_is_written_by_the_next_one():
    store = FlakyStore()
    book, h = discover_book(store)
    h.observe("a", when=1_010.0, status=S.PROCESSING, created_at=1_005.0)
    book.flush()
    store.saved.clear()
    h.drop("a")  # e.g. the API answered 404 for it
    store.failing = True
    book.flush()
    store.failing = False
    book.flush()
    removed = [run_id for changes in store.saved for (_, _, _, gone) in changes for run_id in gone]
    assert removed == ["a"]


def test_a_start_delivered_without_created_at_counts_once_the_first_listing_is_complete():
    """Before the first listing has covered the window, a start says nothing about when
    the run was created (it may have waited in NEW since before the watch): it waits for
    createdAt. After it, an unknown run that starts was created while watched."""
    h = history()
    h.discovering = True
    h.observe("R-early", when=2_000.0, status=S.PROCESSING, started=True)
    assert counters(h)["created"] == 0 and h.awaiting_origin()
    h.observe("R-early", when=2_010.0, status=S.PROCESSING, created_at=900.0)  # listed
    assert counters(h)["created"] == 0 and not h.awaiting_origin()  # baseline after all
    h.discovery.filled = True
    h.observe("R-new", when=2_100.0, status=S.PROCESSING, started=True)
    assert counters(h)["created"] == 1 and not h.awaiting_origin()
    h.observe("R-new", when=2_130.0, status=S.COMPLETE, credits=4.0)
    h.observe("R-new", when=2_400.0, status=S.COMPLETE, created_at=2_099.0)  # reconciled
    assert counters(h) == {
        **counters(h),
        "created": 1,
        "finished": 1,
        "credits": 4.0,
        "durations": 1,
        "duration_sum": 31.0,  # createdAt to the end delivery
    }
    h.observe("R-known", when=2_200.0, status=S.NEW, created_at=2_150.0)
    h.observe("R-known", when=2_210.0, status=S.PROCESSING, started=True)
    assert counters(h)["created"] == 2  # counted once, from its createdAt


# --- queue wait, processing, wasted credits (issue 14) -----------------------------------


def histogram(h: WorkflowHistory, name: str) -> tuple[int, float]:
    """(observations, sum) of one of the workflow's histograms."""
    snap = h.snapshot().histograms[name]
    return snap.counts[-1], snap.sum


def test_queue_and_processing_are_observed_once_from_the_first_look_that_sees_it_running():
    h = history()
    h.observe("r1", when=1_020.0, status=S.NEW, created_at=1_010.0)
    h.observe("r1", when=1_030.0, status=S.WAITING)
    assert h.snapshot().values["oldest_queued_created"] == 1_010.0
    assert h.snapshot().values["oldest_running_started"] is None
    h.observe("r1", when=1_045.0, status=S.PROCESSING)  # its start, as far as we know
    h.observe("r1", when=1_050.0, status=S.RETRYING)  # still the same start
    h.observe("r1", when=1_055.0, status=S.PROCESSING)
    snap = h.snapshot()
    assert snap.values["oldest_queued_created"] is None
    assert snap.values["oldest_running_started"] == 1_045.0
    assert histogram(h, "queue") == (1, 35.0)
    assert histogram(h, "processing") == (0, 0.0)  # not ended yet
    h.observe("r1", when=1_100.0, status=S.COMPLETE, credits=12.0)
    h.observe("r1", when=1_130.0, status=S.COMPLETE, credits=12.0)  # seen again: nothing
    assert histogram(h, "queue") == (1, 35.0)
    assert histogram(h, "processing") == (1, 55.0)
    assert histogram(h, "credits_used") == (1, 12.0)
    assert h.snapshot().histograms["credits_used"].counts == (0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1)
    snap = h.snapshot()
    assert snap.values["failed_credits"] == 0
    assert snap.values["oldest_running_started"] is None


def test_a_run_first_seen_finished_has_no_start_so_neither_queue_nor_processing():
    h = history()
    h.observe("r1", when=1_050.0, status=S.COMPLETE, created_at=1_020.0, credits=3.0)
    h.observe("r2", when=1_050.0, status=S.FAILED, created_at=1_030.0, credits=5.0)
    h.observe("r3", when=1_050.0, status=S.FAILED, created_at=1_040.0)  # credits later
    assert histogram(h, "queue") == (0, 0.0)
    assert histogram(h, "processing") == (0, 0.0)
    assert histogram(h, "credits_used") == (2, 8.0)
    assert h.snapshot().values["failed_credits"] == 5.0
    h.observe("r3", when=1_060.0, status=S.FAILED, credits=7.0)
    h.observe("r3", when=1_070.0, status=S.FAILED, credits=9.0)  # final once known
    snap = h.snapshot()
    assert snap.values["failed_credits"] == 12.0
    assert snap.values["credits"] == 15.0
    assert histogram(h, "credits_used") == (3, 15.0)


def test_baseline_runs_are_never_observed_in_the_new_histograms_or_wasted_credits():
    h = history()
    # created before the watch began: running, queued and ended ones
    h.observe("b1", when=1_020.0, status=S.PROCESSING, created_at=990.0)
    h.observe("b2", when=1_020.0, status=S.NEW, created_at=995.0)
    h.observe("b3", when=1_020.0, status=S.FAILED, created_at=980.0, credits=4.0)
    h.observe("b2", when=1_030.0, status=S.PROCESSING)
    h.observe("b1", when=1_040.0, status=S.FAILED, credits=6.0)  # seen active: counted end
    h.observe("b2", when=1_050.0, status=S.COMPLETE, credits=1.0)
    assert histogram(h, "queue") == (0, 0.0)
    assert histogram(h, "processing") == (0, 0.0)
    snap = h.snapshot()
    # the ends it saw happen are counted as before (seen active), b3 is not an event
    assert (snap.values["finished"], snap.values["credits"]) == (2, 7.0)
    assert snap.values["failed_credits"] == 6.0
    assert histogram(h, "credits_used") == (2, 7.0)


def test_a_started_delivery_is_the_start_and_waits_for_created_at_like_the_rest():
    h = history()
    # workflowRun.started, documented shape: no createdAt, no status
    h.observe("r1", when=1_040.0, started=True)
    assert histogram(h, "queue") == (0, 0.0)
    h.observe("r1", when=1_045.0, status=S.PROCESSING, created_at=1_010.0)  # the fetch
    assert histogram(h, "queue") == (1, 30.0)  # from the delivery, not the fetch
    assert h.snapshot().values["oldest_running_started"] == 1_040.0
    h.observe("r1", when=1_050.0, started=True)  # delivered twice: nothing
    h.observe("r1", when=1_090.0, status=S.COMPLETE, credits=2.0)
    assert histogram(h, "queue") == (1, 30.0)
    assert histogram(h, "processing") == (1, 50.0)
    # a late `started` after the end changes nothing
    h.observe("r2", when=1_100.0, status=S.COMPLETE, created_at=1_090.0, credits=1.0)
    h.observe("r2", when=1_105.0, started=True)
    assert h.runs["r2"].started_at is None
    assert histogram(h, "processing") == (1, 50.0)


def test_start_and_end_seen_before_created_at_are_observed_once_it_is_known():
    h = history()
    h.observe("r1", when=1_030.0, status=S.PROCESSING)  # a record without createdAt
    h.observe("r1", when=1_060.0, status=S.COMPLETE, credits=3.0)  # counted (seen active)
    assert histogram(h, "processing") == (0, 0.0)  # watched or baseline? not known yet
    h.observe("r1", when=1_070.0, status=S.COMPLETE, created_at=1_020.0)
    assert histogram(h, "queue") == (1, 10.0)
    assert histogram(h, "processing") == (1, 30.0)
    h.observe("r1", when=1_080.0, status=S.COMPLETE, created_at=1_020.0)
    assert (histogram(h, "queue"), histogram(h, "processing")) == ((1, 10.0), (1, 30.0))
    # the same, but created before the watch: never observed
    h.observe("r2", when=1_030.0, status=S.PROCESSING)
    h.observe("r2", when=1_060.0, status=S.COMPLETE, credits=3.0)
    h.observe("r2", when=1_070.0, status=S.COMPLETE, created_at=900.0)
    assert (histogram(h, "queue"), histogram(h, "processing")) == ((1, 10.0), (1, 30.0))


def test_oldest_queued_and_running_gauges_tell_a_backlog_from_a_hung_run():
    h = history()
    h.observe("q1", when=1_020.0, status=S.NEW, created_at=1_015.0)
    h.observe("q2", when=1_020.0, status=S.WAITING, created_at=1_005.0)
    h.observe("p1", when=1_030.0, status=S.PROCESSING, created_at=1_001.0)
    h.observe("p2", when=1_040.0, status=S.RETRYING, created_at=1_002.0)
    h.observe("u1", when=1_040.0, status=S.UNKNOWN, created_at=1_000.0)  # not active
    snap = h.snapshot()
    assert snap.values["oldest_queued_created"] == 1_005.0
    assert snap.values["oldest_running_started"] == 1_030.0
    assert snap.values["oldest_active_created"] == 1_001.0
    h.observe("q2", when=1_050.0, status=S.PROCESSING)
    h.observe("p1", when=1_050.0, status=S.FAILED)
    snap = h.snapshot()
    assert snap.values["oldest_queued_created"] == 1_015.0
    assert snap.values["oldest_running_started"] == 1_040.0


def test_new_run_fields_round_trip_and_records_without_them_still_load():
    h = history()
    h.observe("r1", when=1_030.0, status=S.PROCESSING, created_at=1_020.0)
    record = json.loads(json.dumps(h.runs["r1"].to_record()))
    assert record["started_at"] == 1_030.0
    assert TrackedRun.from_record(record) == h.runs["r1"]
    old = {k: v for k, v in record.items() if k not in ("started_at", "attributes")}
    loaded = TrackedRun.from_record(old)
    assert (loaded.started_at, loaded.attributes) == (None, None)
    # an old record of a running run: no start known, so no queue or processing from it
    restored = WorkflowHistory.restore(WF, h.meta_record(), [old], {}, None)
    restored.observe("r1", when=1_040.0, status=S.PROCESSING)
    restored.observe("r1", when=1_050.0, status=S.COMPLETE, credits=1.0)
    assert histogram(restored, "queue") == (1, 10.0)  # as persisted in the meta
    assert histogram(restored, "processing") == (0, 0.0)
    assert restored.snapshot().values["finished"] == 1


def test_the_days_budgets_read_are_rebuilt_from_the_runs_of_an_older_state():
    h = history(window=200_000.0)
    h.observe("w", when=90_000.0, status=S.COMPLETE, created_at=89_000.0, credits=4.0)
    h.observe("b", when=90_000.0, status=S.COMPLETE, created_at=500.0, credits=3.0)
    day = 86_400.0
    assert h.credits_between(0.0, day) == 3.0  # the baseline run, by its createdAt
    assert h.credits_between(day, 2 * day) == 4.0  # the watched run, by its end
    meta = json.loads(json.dumps(h.meta_record()))
    runs = [r.to_record() for r in h.runs.values()]
    assert WorkflowHistory.restore(WF, meta, runs, {}, None).daily_credits.days == {
        0: 3.0,
        1: 4.0,
    }
    del meta["daily_credits"]  # written by a version that kept no days
    restored = WorkflowHistory.restore(WF, meta, runs, {}, None)
    assert restored.daily_credits.days == {0: 3.0, 1: 4.0}
