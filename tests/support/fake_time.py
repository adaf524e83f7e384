"""An exporter on a FakeClock watching a simulator whose runs move by the same clock:
what a refresh saw and what /metrics then says, step by step, with no real waiting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporter.api.deliveries import parse_event
from exporter.config import build_config
from exporter.runtime import Exporter
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from exporter.tracking.persistence import StateStore
from tests.support.clocks import FakeClock
from tests.support.exporters import API_KEY
from tests.support.samples import Samples, parse_samples

WEBHOOK_TOKEN = "fake-time-webhook-token-0123456789"


def utc(*parts: int) -> float:
    """Unix time of a UTC date and time: utc(2024, 1, 31, 23, 59, 59)."""
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[arg-type]


def clock_at(wall: float) -> FakeClock:
    return FakeClock(start=1_000.0, wall_start=wall)


@dataclass
class Watch:
    """One exporter, its simulator and the clock they share."""

    clock: FakeClock
    world: World
    sim: RunningSimulator
    exporter: Exporter

    def refresh(self) -> Samples:
        """A refresh (waiting for every piece of it: the deadline is on the exporter's
        own clock, which stands still meanwhile), then the whole exposition."""
        self.exporter.refresh(self.clock() + 600)
        return self.scrape()

    def scrape(self) -> Samples:
        return parse_samples(self.exporter.render().decode())

    def deliver(self) -> int:
        """Every webhook delivery the simulator has due, through the receiver's parser
        (with the exporter's attribution keys)."""
        deliveries = self.world.tick()
        keys = self.exporter.config.attribution.keys
        for _hook, payload in deliveries:
            body = json.dumps(payload).encode()
            self.exporter.apply_webhook(parse_event(body, keys))
        return len(deliveries)

    def at(self, wall: float) -> None:
        """Move the shared clock to `wall` (never back)."""
        step = wall - self.clock.wall()
        assert step >= 0, "the clock only moves forward"
        self.clock.advance(step)

    def close(self) -> None:
        self.exporter.close()


def subscribe(world: World, *event_types: str) -> None:
    """Workspace-wide registrations in the simulator, so tick() has deliveries to make
    (they are handed to the exporter by Watch.deliver, not posted)."""
    with world.lock:
        for event_type in event_types:
            world.webhooks[f"WHK-{event_type}"] = {
                "id": f"WHK-{event_type}",
                "url": "http://127.0.0.1:9/webhook/unused",
                "eventType": event_type,
                "workflowId": None,
            }


def watch(
    world: World,
    sim: RunningSimulator,
    clock: FakeClock,
    document: dict[str, Any],
    state_store: StateStore | None = None,
) -> Watch:
    config = build_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0, "max_retries": 0},
            **document,
        },
        source="test",
        env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": WEBHOOK_TOKEN},
    )
    extra: dict[str, Any] = {} if state_store is None else {"state_store": state_store}
    exporter = Exporter(
        config,
        clock=clock,
        wall_clock=clock.wall,
        sleep=lambda _seconds: None,
        process_metrics=False,
        **extra,
    )
    return Watch(clock, world, sim, exporter)
