"""Cost attribution: values read from a run's metadata and input (bounded, escaped),
admitted first come first kept, counted once per run; 10,000 distinct values through
the real simulator and exporter end in exactly the bounded number of series; the admitted
values survive a restart; deliveries carry attributes too; the config is checked.
(Replicas agreeing on the admitted values are in test_replicas.py.)"""

from __future__ import annotations

import json

import pytest
import requests
from prometheus_client import generate_latest

from exporter.api.records import NONE_VALUE, RunStatus, attribute_value, attribute_values
from exporter.config import ConfigError, build_config
from exporter.metrics.exposition import registry_chunks
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from exporter.tracking.attribution import OTHER_VALUE, AttributeRow, Attribution
from tests.support.exporters import API_KEY, sim_stats
from tests.support.fake_time import WEBHOOK_TOKEN, clock_at, utc, watch
from tests.support.polling import wait_for
from tests.support.samples import Samples, parse_samples, sample

WF = "WCFG-attr"
KEYS = ("metadata.customer", "input.team")
CREDITS_FAMILY = "copyai_workflow_run_credits_by_attribute_total"
FINISHED_FAMILY = "copyai_workflow_runs_finished_by_attribute_total"


# --- values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("acme", "acme"),
        ("x" * 100, "x" * 64),
        ("é" * 70, "é" * 64),  # characters, not bytes
        (42, "42"),
        (2.5, "2.5"),
        (True, "true"),
        (False, "false"),
        (None, NONE_VALUE),
        ("", NONE_VALUE),
        ({"id": 1}, NONE_VALUE),
        (["a"], NONE_VALUE),
        (float("nan"), NONE_VALUE),
        ('a"b\\c\nd\re\x00f', 'a"b\\c\ufffdd\ufffde\ufffdf'),
        ("\ud800lone", "\ufffdlone"),  # a lone surrogate cannot be encoded
    ],
)
def test_a_value_becomes_a_bounded_printable_label_value(value, label):
    assert attribute_value(value) == label


def test_a_key_is_told_only_by_records_that_carry_its_object():
    keys = ("metadata.customer", "metadata.org.id", "input.team")
    record = {"metadata": {"customer": "acme", "org": {"id": 7}}, "output": {}}
    assert attribute_values(record, keys) == (
        ("metadata.customer", "acme"),
        ("metadata.org.id", "7"),
    )  # no input in the record: it says nothing about input.team
    assert attribute_values({"metadata": None, "input": {}}, keys) == (
        ("metadata.customer", NONE_VALUE),
        ("metadata.org.id", NONE_VALUE),
        ("input.team", NONE_VALUE),
    )
    assert attribute_values({"metadata": "text"}, keys[:1]) == (("metadata.customer", NONE_VALUE),)
    assert attribute_values({"id": "WRUN-1"}, keys) is None


def test_values_are_admitted_first_come_first_kept_and_bounded():
    a = Attribution(("k",), max_values=2)
    S = RunStatus  # noqa: N806 - as short as in the other tests
    for value, status, credits in [
        ("b", S.COMPLETE, 1.0),
        (None, S.FAILED, 2.0),
        ("a", S.FAILED, 3.0),
        ("c", S.COMPLETE, 4.0),  # a third value: __other__
        ("b", S.FAILED, 5.0),
        ("d", S.COMPLETE, 6.0),
    ]:
        attributes = {"k": value} if value is not None else None
        a.finished(attributes, status)
        a.add_credits(attributes, credits)
    assert a.rows() == [
        AttributeRow("k", "b", 6.0, 1, 1),
        AttributeRow("k", NONE_VALUE, 2.0, 0, 1),
        AttributeRow("k", "a", 3.0, 0, 1),
        AttributeRow("k", OTHER_VALUE, 10.0, 2, 0),
    ]
    restored = Attribution(("k",), max_values=2)
    restored.load(json.loads(json.dumps(a.record())))
    assert restored.rows() == a.rows()
    restored.finished({"k": "e"}, S.COMPLETE)  # still bounded after a restore
    assert restored.rows()[-1] == AttributeRow("k", OTHER_VALUE, 10.0, 3, 0)
    # a lowered maximum keeps the values admitted first; a new key starts empty
    assert restored.reconfigure(("k", "j"), max_values=1)
    assert [(r.attribute, r.value) for r in restored.rows()] == [
        ("k", "b"),
        ("k", NONE_VALUE),
        ("k", OTHER_VALUE),
    ]
    restored.finished({"k": "a", "j": "x"}, S.COMPLETE)
    assert restored.rows()[2:] == [
        AttributeRow("k", OTHER_VALUE, 10.0, 4, 0),
        AttributeRow("j", "x", 0.0, 1, 0),
    ]
    assert not restored.reconfigure(("k", "j"), max_values=1)


def test_attribution_keys_are_checked():
    with pytest.raises(ConfigError) as caught:
        build_config(
            {
                "workflows": [{"id": WF}],
                "attribution": {
                    "keys": [
                        "metadata.customer",
                        "output.x",
                        "metadata",
                        "input..a",
                        3,
                        "input.team",
                        "metadata.customer",
                    ],
                    "max_values_per_key": 0,
                },
            },
            env={"COPYAI_API_KEY": API_KEY},
        )
    assert caught.value.problems == [
        "attribution.max_values_per_key: must be between 1 and 1000, got 0",
        "attribution.keys[1]: 'output.x' must be metadata.<field> or input.<field> (fields "
        "separated by dots, none empty, at most 200 characters)",
        "attribution.keys[2]: 'metadata' must be metadata.<field> or input.<field> (fields "
        "separated by dots, none empty, at most 200 characters)",
        "attribution.keys[3]: 'input..a' must be metadata.<field> or input.<field> (fields "
        "separated by dots, none empty, at most 200 characters)",
        "attribution.keys[4]: must be a string, got an integer",
        "attribution.keys[6]: metadata.customer is listed twice",
    ]
    config = build_config({"workflows": [{"id": WF}]}, env={"COPYAI_API_KEY": API_KEY})
    assert config.attribution.keys == ()  # off unless configured


# --- through the simulator and the exporter ------------------------------------------------


def rows(samples: Samples, family: str) -> dict[tuple[str, ...], float]:
    """The family's series: (attribute, value[, status]) -> value."""
    found = {}
    for (name, labels), value in samples.items():
        if name == family:
            label = dict(labels)
            assert label.pop("workflow_id") == WF
            key = (label.pop("attribute"), label.pop("value"), *label.values())
            found[key] = value
    return found


def document(max_values: int = 20, **extra) -> dict:
    return {
        "collector": {"refresh_interval_seconds": 1, "up_check_interval_seconds": 0},
        "workflows": [
            {"id": WF, "discover": True, "discovery": {"max_pages_per_refresh": 200}},
        ],
        "attribution": {"keys": list(KEYS), "max_values_per_key": max_values},
        **extra,
    }


@pytest.mark.slow
def test_ten_thousand_distinct_values_end_in_the_bounded_number_of_series():
    clock = clock_at(utc(2024, 5, 1, 12, 0, 0))
    world = World(api_key=API_KEY, seed=9, clock=clock.wall)
    world.add_workflow("attr", WF)
    sim = RunningSimulator(world)
    w = watch(world, sim, clock, document())
    try:
        w.refresh()  # the watch begins: every run below is an event
        clock.advance(20_000)
        runs = []
        for i in range(10_000):  # i = 0 is the newest: listed first
            metadata = {"customer": f"customer-{i}"} if i % 10 != 9 else {"plan": "x"}
            team = f"team-{i}" if i % 10 != 3 else ["not", "a", "scalar"]
            status = "FAILED" if i % 3 == 0 else "COMPLETE"
            credits = 1 + i % 5
            world.add_run(
                WF,
                [(status, None)],
                age_seconds=i,
                credits=credits,
                metadata=metadata,
                input={"team": team} if i % 10 != 4 else "absent",
            )
            values = {
                "metadata.customer": metadata.get("customer", NONE_VALUE),
                "input.team": team if i % 10 not in (3, 4) else NONE_VALUE,
            }
            # the simulator's list items lack `input` at every second position of a page
            # (as a documented example does): those runs are attributed after a fetch,
            # once the listed ones are, so the values admitted come from listed runs
            complete_in_listing = i % 2 == 0 and i % 10 != 4
            runs.append((not complete_in_listing, i, values, status, credits))
        expected: dict[tuple[str, str], list[float]] = {}
        admitted: dict[str, list[str]] = {key: [] for key in KEYS}
        for _later, _i, values, status, credits in sorted(runs):
            for key, given in values.items():
                value = given
                if given != NONE_VALUE and given not in admitted[key]:
                    if len(admitted[key]) < 20:
                        admitted[key].append(given)
                    else:
                        value = OTHER_VALUE
                row = expected.setdefault((key, value), [0.0, 0, 0])
                row[0] += credits
                row[1 if status == "COMPLETE" else 2] += 1
        before = sim_stats(sim).get("get_run", 0)
        samples = w.refresh()
        # one fetch for each run whose list item lacked the input it is attributed by:
        # the 5,000 at odd positions, and the 1,000 that have no input at all
        assert sim_stats(sim).get("get_run", 0) - before == 6_000
        assert sample(samples, "copyai_workflow_runs_finished_total", workflow_id=WF) == 10_000

        credits_rows = rows(samples, CREDITS_FAMILY)
        finished_rows = rows(samples, FINISHED_FAMILY)
        # the bound: workflows x keys x (max_values_per_key + 2), and x 2 statuses
        assert len(credits_rows) == 1 * 2 * (20 + 2)
        assert len(finished_rows) == 1 * 2 * (20 + 2) * 2
        assert credits_rows == {key: row[0] for key, row in expected.items()}
        assert finished_rows == {
            (*key, status): row[column]
            for key, row in expected.items()
            for status, column in (("COMPLETE", 1), ("FAILED", 2))
        }
        assert admitted["metadata.customer"][:3] == ["customer-0", "customer-2", "customer-6"]
        assert finished_rows[("metadata.customer", NONE_VALUE, "FAILED")] == 334  # i % 10 == 9
        assert sum(v for (k, *_), v in finished_rows.items() if k == "input.team") == 10_000
        assert sum(credits_rows[k] for k in credits_rows if k[0] == "input.team") == sample(
            samples, "copyai_workflow_run_credits_total", workflow_id=WF
        )
        # listed again: nothing more is counted
        clock.advance(5)
        assert rows(w.refresh(), FINISHED_FAMILY) == finished_rows
    finally:
        w.close()
        sim.stop()


def test_admitted_values_survive_a_restart_and_runs_are_attributed_once(tmp_path):
    clock = clock_at(utc(2024, 5, 1, 12, 0, 0))
    world = World(api_key=API_KEY, seed=9, clock=clock.wall)
    world.add_workflow("attr", WF)
    sim = RunningSimulator(world)
    state = {"state": {"path": str(tmp_path / "state.db")}}

    def run(customer: str, credits: int, steps=(("COMPLETE", None),)) -> None:
        world.add_run(WF, list(steps), credits=credits, metadata={"customer": customer})

    try:
        first = watch(world, sim, clock, document(max_values=2, **state))
        try:
            first.refresh()
            clock.advance(1)
            run("beta", 3)
            clock.advance(1)
            run("alpha", 5)
            run("alpha", 1, steps=(("PROCESSING", 30), ("COMPLETE", None)))  # ends later
            first.refresh()
        finally:
            first.close()
        clock.advance(40)  # down meanwhile: the running one ends
        second = watch(world, sim, clock, document(max_values=2, **state))
        try:
            samples = second.scrape()  # from the state file, before any look
            assert rows(samples, CREDITS_FAMILY) == {
                ("metadata.customer", "beta"): 3.0,
                ("metadata.customer", "alpha"): 5.0,
                ("input.team", NONE_VALUE): 8.0,
            }
            run("gamma", 7)  # a third value: __other__, whatever happened before
            samples = second.refresh()
            assert rows(samples, CREDITS_FAMILY) == {
                ("metadata.customer", "beta"): 3.0,
                ("metadata.customer", "alpha"): 6.0,  # the run that ended while it was down
                ("metadata.customer", OTHER_VALUE): 7.0,
                ("input.team", NONE_VALUE): 16.0,
            }
            assert rows(samples, FINISHED_FAMILY)[("metadata.customer", "alpha", "COMPLETE")] == 2
            clock.advance(5)
            assert rows(second.refresh(), CREDITS_FAMILY)[("input.team", NONE_VALUE)] == 16.0
        finally:
            second.close()
    finally:
        sim.stop()


def test_deliveries_carry_the_attributes_of_their_metadata(start_receiver, sim, world):
    """Through the real receiver: a run started and ended between two looks, known only
    from its deliveries (documented shape: metadata, no input, no createdAt)."""
    world.add_workflow("attr", WF)
    config = build_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
            "webhooks": {"listen_address": "127.0.0.1:0"},
            **document(),
        },
        env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": WEBHOOK_TOKEN},
    )
    receiver = start_receiver(config)
    receiver.scrape()  # the watch begins
    run = world.add_run(WF, [("COMPLETE", None)], credits=6, metadata={"customer": "hooked"})
    answer = receiver.post(
        {
            "type": "workflowRun.completed",
            "workflowRunId": run.run_id,
            "workflowId": WF,
            "result": {},
            "metadata": {"customer": "hooked"},
            "credits": 6,
        }
    )
    assert answer.status_code == 202
    # a later refresh lists or fetches it for its createdAt: counted then
    samples = wait_for(
        lambda: (
            (s := receiver.scrape())
            and sample(s, "copyai_workflow_runs_finished_total", workflow_id=WF) == 1
            and s
        ),
        timeout=10,
    )
    assert rows(samples, CREDITS_FAMILY) == {
        ("metadata.customer", "hooked"): 6.0,
        ("input.team", NONE_VALUE): 6.0,  # the fetch's input has no team
    }
    assert sample(samples, "copyai_workflow_run_credits_total", workflow_id=WF) == 6.0


def test_hostile_values_are_escaped_in_the_exposition_and_read_back_exactly():
    clock = clock_at(utc(2024, 5, 1, 12, 0, 0))
    world = World(api_key=API_KEY, seed=9, clock=clock.wall)
    world.add_workflow("attr", WF)
    sim = RunningSimulator(world)
    hostile = 'x"} 1\n# HELP injected\ncopyai_up{a="' + "\\" + "y" * 80
    w = watch(world, sim, clock, document())
    try:
        w.refresh()
        clock.advance(1)
        world.add_run(WF, [("COMPLETE", None)], credits=2, metadata={"customer": hostile})
        w.refresh()
        text = w.exporter.render().decode()
        assert not any(
            line.startswith(("# HELP injected", "copyai_up{a")) for line in text.splitlines()
        )
        samples = parse_samples(text)
        assert rows(samples, CREDITS_FAMILY)[("metadata.customer", attribute_value(hostile))] == 2.0
        assert len(attribute_value(hostile)) == 64
        assert sample(samples, "copyai_up") == 1.0
        # the fast renderer writes the very bytes of the client library's, hostile
        # values, histograms and all (but the process' own metrics, which move)
        registry = w.exporter.registry
        fast = b"".join(registry_chunks(registry)).decode()
        library = generate_latest(registry).decode()
        assert "copyai_workflow_run_queue_seconds_bucket{" in fast
        assert steady(fast) == steady(library)
    finally:
        w.close()
        sim.stop()


def steady(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith(("process_", "# "))] + [
        line for line in text.splitlines() if line.startswith("# ")
    ]


def test_off_unless_configured(sim, world, start_exporter):
    world.add_workflow("attr", WF)
    config = build_config(
        {"api": {"base_url": sim.base_url}, "workflows": [{"id": WF, "discover": True}]},
        env={"COPYAI_API_KEY": API_KEY},
    )
    running = start_exporter(config, process_metrics=False)
    running.scrape()
    world.add_run(WF, [("COMPLETE", None)], credits=2, metadata={"customer": "acme"})
    text = requests.get(f"{running.url}/metrics", timeout=10).text
    assert f"# TYPE {CREDITS_FAMILY} counter" in text
    assert f"{CREDITS_FAMILY}{{" not in text and f"{FINISHED_FAMILY}{{" not in text
    history = running.exporter.book.get(WF)
    assert all(run.attributes is None for run in history.runs.values())
