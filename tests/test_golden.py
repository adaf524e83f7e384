"""Golden exposition: a fixed simulated world, watched through a fixed sequence of
scrapes, webhook deliveries and clock steps, rendered and compared byte for byte with
tests/golden/*.prom. A refactoring that changes any line of /metrics fails here.

Regenerate after an intended change (and read the diff before committing it):

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from exporter.api.deliveries import WebhookEvent
from exporter.api.records import RunStatus
from exporter.config import build_config
from exporter.runtime import Exporter
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from exporter.tracking.persistence import MemoryStore
from tests.support.clocks import FakeClock
from tests.support.exporters import API_KEY

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
# what varies between machines or with real time, not with the exporter's behaviour
VOLATILE = (
    (re.compile(r'python_version="[^"]*"'), 'python_version="X"'),
    (re.compile(r"^copyai_api_request_duration_seconds_(bucket|sum)\{.*\n", re.M), ""),
)


# families whose series appear in the order concurrent requests first finished
UNORDERED = ("copyai_api_requests_total",)


def normalise(text: str) -> str:
    for pattern, replacement in VOLATILE:
        text = pattern.sub(replacement, text)
    lines = text.splitlines(keepends=True)
    for family in UNORDERED:
        rows = [i for i, line in enumerate(lines) if line.startswith(family + "{")]
        for i, line in zip(rows, sorted(lines[i] for i in rows), strict=True):
            lines[i] = line
    return "".join(lines)


def golden_world(clock: FakeClock) -> World:
    """Three workflows: configured runs of every shape, a discovered workflow with
    baseline and watched runs, and one watched by webhooks only."""
    world = World(api_key=API_KEY, seed=11, clock=clock.wall)
    blog = world.add_workflow("blog-writer", "WCFG-golden-blog")
    seo = world.add_workflow("seo", "WCFG-golden-seo")
    world.add_workflow("hooks", "WCFG-golden-hooks")
    world.add_run(blog, [("COMPLETE", None)], age_seconds=3600, credits=42, run_id="WRUN-b1")
    world.add_run(
        blog,
        [("PROCESSING", 50), ("COMPLETE", None)],
        age_seconds=10,
        credits=9,
        credits_as_string=True,
        millis=False,
        run_id="WRUN-b2",
    )
    world.add_run(blog, [("WAITING", None)], age_seconds=5, omit_status=True, run_id="WRUN-b3")
    world.add_run(blog, [("FAILED", None)], age_seconds=600, credits=3, run_id="WRUN-b4")
    for i in range(12):
        steps = [
            [("COMPLETE", None)],
            [("PROCESSING", 40), ("RETRYING", 20), ("FAILED", None)],
            [("NEW", 5), ("PROCESSING", 30), ("COMPLETE", None)],
        ][i % 3]
        world.add_run(seo, steps, age_seconds=900 - i * 60, credits=i + 1, run_id=f"WRUN-s{i}")
    return world


def scenario() -> list[str]:
    clock = FakeClock()
    world = golden_world(clock)
    sim = RunningSimulator(world)
    document = {
        "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
        "collector": {"refresh_interval_seconds": 30},
        "workflows": [
            {
                "id": "WCFG-golden-blog",
                "name": "Blog writer",
                "runs": ["WRUN-b1", "WRUN-b2", "WRUN-b3", "WRUN-b4"],
            },
            {
                "id": "WCFG-golden-seo",
                "discover": True,
                "runs": ["WRUN-s1"],
                "discovery": {"page_size": 5, "run_series": True, "max_run_series": 2},
            },
            {"id": "WCFG-golden-hooks"},
        ],
        "budgets": [{"name": "seo-month", "credits": 100, "workflows": ["WCFG-golden-seo"]}],
        "attribution": {"keys": ["metadata.api", "input.team"], "max_values_per_key": 2},
    }
    config = build_config(document, source="golden", env={"COPYAI_API_KEY": API_KEY})
    exporter = Exporter(
        config,
        clock=clock,
        wall_clock=clock.wall,
        process_metrics=False,
        state_store=MemoryStore(),
    )
    outputs = []
    try:
        for step in range(4):
            report = exporter.refresh(time.monotonic() + 30)  # noqa: F841 - waits for all
            outputs.append(normalise(exporter.render().decode()))
            if step == 0:  # new runs after the watch began, and webhook deliveries
                world.add_run(
                    "WCFG-golden-seo",
                    [("PROCESSING", 20), ("COMPLETE", None)],
                    credits=7,
                    run_id="WRUN-s-new",
                )
                hooks = "WCFG-golden-hooks"
                world.add_run(hooks, [("COMPLETE", None)], credits=4, run_id="WRUN-h1")
                exporter.apply_webhook(
                    WebhookEvent(
                        "workflowRun.completed", hooks, "WRUN-h1", RunStatus.COMPLETE, 4.0, None
                    )
                )
                exporter.apply_webhook(
                    WebhookEvent(
                        "workflowRun.completed",
                        "WCFG-golden-blog",
                        "WRUN-b2",
                        RunStatus.COMPLETE,
                        9.0,
                        None,
                    )
                )
                exporter.apply_webhook(WebhookEvent("workflowCreditLimit.reached", hooks))
                exporter.apply_webhook(WebhookEvent("workflowCreditLimit.reached", None))
            clock.advance(31)
    finally:
        exporter.close()
        sim.stop()
    return outputs


def test_the_exposition_is_unchanged():
    outputs = scenario()
    GOLDEN.mkdir(exist_ok=True)
    for step, text in enumerate(outputs):
        path = GOLDEN / f"step{step}.prom"
        if UPDATE:
            path.write_text(text)
            continue
        if not path.exists():
            pytest.fail(f"{path} is missing: run UPDATE_GOLDEN=1 pytest tests/test_golden.py")
        expected = path.read_text()
        if text != expected:
            import difflib

            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    str(path),
                    "rendered",
                    n=1,
                )
            )
            pytest.fail(f"step {step} differs from {path}:\n{diff[:6000]}")
