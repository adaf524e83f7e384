"""Credit budgets: the calendar periods, the credits by day they sum, and the whole path
through the real simulator and exporter on a FakeClock: a run finishing one second
before and one second after a period boundary, baseline runs by their createdAt, a
restart mid-period with a state file, webhook-fed ends, and the config's refusals.
(Three replicas agreeing through Redis are in test_replicas.py.)"""

from __future__ import annotations

import pytest

from exporter.config import ConfigError, build_config
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from exporter.tracking.budgets import KEPT_DAYS, DailyCredits, day_of, period_bounds
from tests.support.exporters import API_KEY
from tests.support.fake_time import clock_at, subscribe, utc, watch
from tests.support.samples import Samples, sample

WF = "WCFG-budget"
OTHER = "WCFG-budget-other"


# --- periods -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", utc(2024, 2, 29, 12, 0, 0), utc(2024, 2, 29), utc(2024, 3, 1)),
        ("day", utc(2024, 2, 29), utc(2024, 2, 29), utc(2024, 3, 1)),  # its first second
        ("day", utc(2024, 2, 29) - 1, utc(2024, 2, 28), utc(2024, 2, 29)),
        ("week", utc(2024, 1, 3, 8, 0, 0), utc(2024, 1, 1), utc(2024, 1, 8)),  # Wed; Mon 1st
        ("week", utc(2024, 1, 7, 23, 59, 59), utc(2024, 1, 1), utc(2024, 1, 8)),  # Sunday
        ("week", utc(2024, 1, 8), utc(2024, 1, 8), utc(2024, 1, 15)),  # Monday midnight
        ("week", utc(2023, 12, 31, 10, 0, 0), utc(2023, 12, 25), utc(2024, 1, 1)),
        ("month", utc(2024, 2, 10), utc(2024, 2, 1), utc(2024, 3, 1)),  # leap February
        ("month", utc(2023, 2, 28, 23, 59, 59), utc(2023, 2, 1), utc(2023, 3, 1)),
        ("month", utc(2023, 12, 31, 23, 59, 59), utc(2023, 12, 1), utc(2024, 1, 1)),
        ("month", utc(2024, 1, 1), utc(2024, 1, 1), utc(2024, 2, 1)),
        ("month", utc(2024, 7, 31, 12, 0, 0), utc(2024, 7, 1), utc(2024, 8, 1)),
    ],
)
def test_periods_are_utc_calendar_days_weeks_from_monday_and_months(period, now, start, end):
    assert period_bounds(period, now) == (start, end)


def test_credits_by_day_sum_to_any_period_and_stay_bounded():
    days = DailyCredits()
    days.add(utc(2024, 1, 31, 23, 59, 59), 5.0)
    days.add(utc(2024, 2, 1), 7.0)
    days.add(utc(2024, 2, 1, 18, 0, 0), 1.5)
    assert days.between(*period_bounds("month", utc(2024, 1, 20))) == 5.0
    assert days.between(*period_bounds("month", utc(2024, 2, 20))) == 8.5
    assert days.between(*period_bounds("day", utc(2024, 2, 1, 5, 0, 0))) == 8.5
    assert days.between(*period_bounds("week", utc(2024, 2, 1))) == 13.5  # Mon 29 Jan on
    # a year of days: only the newest KEPT_DAYS are kept, enough for any current period
    for n in range(365):
        days.add(utc(2024, 3, 1) + n * 86_400, 1.0)
    assert len(days.days) == KEPT_DAYS
    assert min(days.days) == day_of(utc(2024, 3, 1) + 364 * 86_400) - KEPT_DAYS + 1
    month = period_bounds("month", utc(2024, 3, 1) + 364 * 86_400)
    assert days.between(*month) == 28.0  # 1 .. 28 February 2025


# --- through the simulator and the exporter ------------------------------------------------


def budget_samples(samples: Samples, name: str) -> tuple[float | None, ...]:
    return tuple(
        sample(samples, f"copyai_credit_budget_{metric}", budget=name)
        for metric in (
            "credits",
            "used_credits",
            "period_start_timestamp_seconds",
            "period_end_timestamp_seconds",
        )
    )


def document(**extra) -> dict:
    return {
        "collector": {"refresh_interval_seconds": 1, "up_check_interval_seconds": 0},
        "workflows": [
            {"id": WF, "discover": True, "discovery": {"window_seconds": 40 * 86_400}},
            {"id": OTHER, "discover": True},
        ],
        "budgets": [
            {"name": "monthly", "credits": 1000, "period": "month", "workflows": [WF]},
            {"name": "daily-all", "credits": 50, "period": "day", "workflows": "*"},
        ],
        **extra,
    }


@pytest.fixture
def month_end():
    """A world whose clock stands two minutes before February 2024, with history from
    before the exporter watched: runs created in January (counted by the budget by
    their createdAt) and on 31 December (not this month's)."""
    clock = clock_at(utc(2024, 1, 31, 23, 58, 0))
    world = World(api_key=API_KEY, seed=5, clock=clock.wall)
    world.add_workflow("budget", WF)
    world.add_workflow("other", OTHER)
    done = [("COMPLETE", None)]
    world.add_run(WF, done, age_seconds=16 * 86_400, credits=10)  # 15 January
    world.add_run(WF, done, age_seconds=86_400 + 3600, credits=20)  # 30 January, 22:58
    world.add_run(WF, [("FAILED", None)], age_seconds=600, credits=3)  # 31 Jan, failed too
    world.add_run(WF, done, age_seconds=31 * 86_400 + 1, credits=40)  # 31 December
    world.add_run(OTHER, done, age_seconds=60, credits=2)  # 31 January
    sim = RunningSimulator(world)
    yield clock, world, sim
    sim.stop()


def test_a_run_one_second_before_the_boundary_counts_in_the_old_period_one_after_in_the_new(
    month_end,
):
    clock, world, sim = month_end
    w = watch(world, sim, clock, document())
    try:
        samples = w.refresh()  # the first look: history from before the watch is baseline
        january = (utc(2024, 1, 1), utc(2024, 2, 1))
        assert budget_samples(samples, "monthly") == (1000.0, 33.0, *january)
        today = (utc(2024, 1, 31), utc(2024, 2, 1))
        assert budget_samples(samples, "daily-all") == (50.0, 5.0, *today)  # 3 + 2
        assert sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF) == 0
        assert sample(samples, "copyai_workflow_failed_run_credits_total", workflow_id=WF) == 0

        w.at(utc(2024, 1, 31, 23, 59, 0))
        before = world.add_run(WF, [("PROCESSING", 59), ("COMPLETE", None)], credits=100)
        after = world.add_run(WF, [("PROCESSING", 61), ("COMPLETE", None)], credits=200)
        w.refresh()  # both running
        w.at(utc(2024, 1, 31, 23, 59, 59))  # `before` ends now, and a look sees it
        samples = w.refresh()
        assert budget_samples(samples, "monthly") == (1000.0, 133.0, *january)
        assert budget_samples(samples, "daily-all")[1] == 105.0
        assert w.exporter.book.get(WF).runs[before.run_id].terminal_at == utc(
            2024, 1, 31, 23, 59, 59
        )

        w.at(utc(2024, 2, 1))  # the boundary: the new period holds nothing yet
        samples = w.scrape()
        february = (utc(2024, 2, 1), utc(2024, 3, 1))
        assert budget_samples(samples, "monthly") == (1000.0, 0.0, *february)
        assert budget_samples(samples, "daily-all") == (50.0, 0.0, utc(2024, 2, 1), utc(2024, 2, 2))

        w.at(utc(2024, 2, 1, 0, 0, 1))  # `after` ended at 00:00:01 and is seen now
        samples = w.refresh()
        assert budget_samples(samples, "monthly") == (1000.0, 200.0, *february)
        assert budget_samples(samples, "daily-all")[1] == 200.0
        assert w.exporter.book.get(WF).runs[after.run_id].terminal_at == utc(2024, 2, 1, 0, 0, 1)
        # the workflow counters count both once, whatever the period
        assert sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF) == 300.0
        samples = w.refresh()
        assert budget_samples(samples, "monthly")[1] == 200.0  # seen again: once
    finally:
        w.close()


def test_webhook_ends_count_by_the_delivery_time(month_end):
    clock, world, sim = month_end
    subscribe(world, "workflowRun.completed", "workflowRun.failed")
    world.faults.update({"webhook_shape": "documented"})  # no createdAt: a fetch brings it
    w = watch(world, sim, clock, document())
    try:
        w.refresh()
        run = world.add_run(WF, [("PROCESSING", 119), ("FAILED", None)], credits=8)
        w.refresh()  # seen running at 23:58
        w.at(utc(2024, 1, 31, 23, 59, 59))
        assert w.deliver() == 1  # workflowRun.failed arrives at 23:59:59
        w.at(utc(2024, 2, 1, 0, 0, 30))
        samples = w.refresh()
        assert w.exporter.book.get(WF).runs[run.run_id].terminal_at == utc(2024, 1, 31, 23, 59, 59)
        assert budget_samples(samples, "monthly")[1] == 0.0  # it ended in January
        assert sample(samples, "copyai_workflow_failed_run_credits_total", workflow_id=WF) == 8.0
        w.at(utc(2024, 2, 1, 0, 0, 31))
        assert budget_samples(w.scrape(), "monthly")[1] == 0.0
    finally:
        w.close()


def test_a_restart_mid_period_with_a_state_file_keeps_used_credits_and_counts_nothing_twice(
    month_end, tmp_path
):
    clock, world, sim = month_end
    state = {"state": {"path": str(tmp_path / "state.db")}}
    first = watch(world, sim, clock, document(**state))
    try:
        first.refresh()
        world.add_run(WF, [("PROCESSING", 10), ("COMPLETE", None)], credits=100)
        first.at(utc(2024, 1, 31, 23, 58, 30))
        samples = first.refresh()
        assert budget_samples(samples, "monthly")[1] == 133.0
    finally:
        first.close()

    # down for a while; a run ends meanwhile, still in January
    world.add_run(WF, [("PROCESSING", 5), ("COMPLETE", None)], credits=7)
    clock.advance(20)
    second = watch(world, sim, clock, document(**state))
    try:
        samples = second.scrape()  # before any look: what the state file kept
        assert budget_samples(samples, "monthly")[1] == 133.0
        samples = second.refresh()  # the run that ended while it was down: once
        assert budget_samples(samples, "monthly")[1] == 140.0
        assert sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF) == 107.0
        second.at(utc(2024, 2, 1, 0, 0, 1))
        samples = second.refresh()
        assert budget_samples(samples, "monthly")[1] == 0.0
        assert sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF) == 107.0
    finally:
        second.close()


def test_a_budget_over_a_workflow_without_discover_is_refused_with_a_clear_message():
    base = {
        "workflows": [{"id": WF, "discover": True}, {"id": OTHER, "runs": ["WRUN-1"]}],
    }
    for workflows in ([OTHER], "*"):
        with pytest.raises(ConfigError) as caught:
            build_config(
                {**base, "budgets": [{"name": "b", "credits": 10, "workflows": workflows}]},
                env={"COPYAI_API_KEY": API_KEY},
            )
        assert caught.value.problems == [
            f"budgets[0].workflows: workflow {OTHER} (workflows[1]) has no discover: true; a "
            "budget counts every run of its workflows, so each needs discover: true (with "
            "only listed runs, the budget would miss the others)"
        ]


def test_budget_keys_are_validated_together():
    with pytest.raises(ConfigError) as caught:
        build_config(
            {
                "workflows": [{"id": WF, "discover": True}],
                "budgets": [
                    {"name": "ok", "credits": 10, "workflows": [WF]},
                    {"name": "ok", "credits": 0, "period": "year", "workflows": ["WCFG-none"]},
                    {"name": "bad name!", "credits": "lots", "workflows": []},
                    {"credits": 5, "workflows": [WF, WF], "colour": "red"},
                ],
            },
            env={"COPYAI_API_KEY": API_KEY},
        )
    assert caught.value.problems == [
        "budgets[1].period: must be day or week or month",
        "budgets[1].name: duplicate budget name ok (also budgets[0])",
        "budgets[1].credits: must be more than 0",
        "budgets[1].workflows[0]: WCFG-none is not a configured workflow",
        "budgets[2].name: must be 1-64 letters, digits, '-' or '_'",
        "budgets[2].credits: must be a number, got a string",
        'budgets[2].workflows: must be a non-empty list of workflow ids, or "*" for every workflow',
        "budgets[3].colour: unknown key (known keys here: credits, name, period, workflows)",
        "budgets[3].name: is required",
        f"budgets[3].workflows[1]: {WF} is listed twice",
    ]
