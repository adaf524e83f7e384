"""Three exporter processes sharing state through a real redis-server on loopback:
API calls no more than one replica's, counters equal on every replica and to the
simulator's ground truth, through a kill -9 of the leader and a Redis restart."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from exporter.tracking.budgets import period_bounds
from tests.support.exporters import API_KEY, sim_stats
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.redis import Redis
from tests.support.samples import parse_samples, sample

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LISTENING = re.compile(r"listening url=(http://\S+?)/metrics")
WF = "WCFG-ha"


class Replica:
    def __init__(self, config: Path, log: Path):
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            env={**os.environ, "COPYAI_API_KEY": API_KEY},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self.ready, timeout=20, interval=0.05)

    def ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"replica exited: {self.log.read_text()[-2000:]}")
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def scrape(self) -> dict:
        return parse_samples(requests.get(f"{self.url}/metrics", timeout=20).text)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=20)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list]:
    started: list[Replica] = []

    def start(config: Path, count: int) -> list[Replica]:
        new = [Replica(config, tmp_path / f"replica-{len(started) + i}.log") for i in range(count)]
        started.extend(new)
        return new

    yield start  # type: ignore[misc]
    for replica in started:
        replica.stop(signal.SIGKILL if replica.alive() else signal.SIGTERM)


def write_config(
    path: Path,
    sim,
    redis: Redis,
    prefix: str,
    runs: list[str],
    discover: bool,
    refresh: float = 1.0,
) -> Path:
    workflow: dict = {"id": WF, "name": "ha", "runs": runs}
    if discover:
        workflow["discover"] = True
    path.write_text(
        yaml.safe_dump(
            {
                "api": {
                    "base_url": sim.base_url,
                    "max_requests_per_second": 0,
                    "max_retries": 0,
                    "timeout_seconds": 2,
                },
                "collector": {"refresh_interval_seconds": refresh, "up_check_interval_seconds": 0},
                "state": {
                    "backend": "redis",
                    "redis": {"url": redis.url, "key_prefix": prefix, "lease_seconds": 2},
                },
                "workflows": [workflow],
            }
        )
    )
    return path


def keep_scraping(targets: list[Replica], stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            for replica in targets:
                if replica.alive():
                    with contextlib.suppress(requests.RequestException):
                        requests.get(f"{replica.url}/metrics", timeout=10)
            stop.wait(0.25)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def get_run_calls(sim) -> int:
    return sim_stats(sim).get("get_run", 0)


def test_three_replicas_cost_the_api_no_more_than_one(sim, world, redis_server, replicas, tmp_path):
    world.add_workflow("ha", WF)
    runs = [world.add_run(WF, [("PROCESSING", None)]).run_id for _ in range(20)]
    counts = []
    for phase, count in (("one", 1), ("three", 3)):
        config = write_config(
            tmp_path / f"{phase}.yaml", sim, redis_server, f"ha-{phase}:", runs, discover=False
        )
        group = replicas(config, count)
        wait_for(
            lambda g=group: all(
                len(
                    [
                        1
                        for (n, _), v in r.scrape().items()
                        if n == "copyai_workflow_run_fetch_success" and v == 1
                    ]
                )
                == 20
                for r in g
            ),
            timeout=30,
            interval=0.2,
        )
        before = get_run_calls(sim)
        stop = threading.Event()
        scraper = keep_scraping(group, stop)
        stop.wait(15.0)  # the measured window: 15 refresh intervals
        stop.set()
        scraper.join(timeout=20)
        counts.append(get_run_calls(sim) - before)
        for replica in group:
            replica.stop()
    one, three = counts
    assert one >= 20 * 12  # each run fetched about once per second
    assert abs(three - one) <= 0.10 * one, counts


def counters(replica: Replica) -> dict[str, float]:
    samples = replica.scrape()
    return {
        name: sample(samples, f"copyai_workflow_{name}", workflow_id=WF) or 0.0
        for name in (
            "runs_created_total",
            "runs_finished_total",
            "runs_failed_total",
            "run_credits_total",
        )
    }


def leader_of(group: list[Replica]) -> Replica:
    def find():
        leaders = [r for r in group if r.alive() and sample(r.scrape(), "copyai_state_leader") == 1]
        return leaders[0] if len(leaders) == 1 else None

    return wait_for(find, timeout=30, interval=0.2)


def test_replicas_agree_with_the_truth_through_kill_9_and_a_redis_restart(
    sim, world, redis_server, replicas, tmp_path
):
    world.add_workflow("ha", WF)
    for i in range(20):  # before anyone watched: a baseline, never counted
        world.add_run(WF, [("COMPLETE", None)], age_seconds=3000 - i, credits=5)
    listed = world.add_run(WF, [("PROCESSING", None)], age_seconds=600).run_id
    config = write_config(tmp_path / "ha.yaml", sim, redis_server, "ha:", [listed], discover=True)
    group = replicas(config, 3)
    leader_of(group)
    wait_for(
        lambda: all(
            counters(r)["runs_created_total"] == 0
            and sample(r.scrape(), "copyai_workflow_runs", workflow_id=WF, status="COMPLETE") == 20
            for r in group
        ),
        timeout=30,
        interval=0.2,
    )
    since = time.time()
    stop = threading.Event()
    scraper = keep_scraping(group, stop)
    try:

        def batch(n: int, failing: int) -> None:
            for i in range(n):
                end = "FAILED" if i < failing else "COMPLETE"
                world.add_run(
                    WF,
                    [("NEW", 0.3), ("PROCESSING", 1.0), (end, None)],
                    credits=i + 1,
                    credits_as_string=bool(i % 2),
                )

        batch(8, 2)
        wait_for(lambda: counters(group[0])["runs_finished_total"] >= 4, timeout=30, interval=0.2)
        leader = leader_of(group)
        leader.stop(signal.SIGKILL)  # mid-run, without a goodbye
        batch(8, 3)
        survivors = [r for r in group if r.alive()]
        leader_of(survivors)  # a successor takes the lease once it expires
        redis_server.stop()  # Redis restarts, losing everything (no persistence)
        wait_for(  # each replica says so, and goes on serving
            lambda: all(sample(r.scrape(), "copyai_state_backend_up") == 0 for r in survivors),
            timeout=30,
            interval=0.2,
        )
        stale = counters(survivors[0])
        assert stale["runs_created_total"] >= 8  # served from memory meanwhile
        batch(4, 1)
        redis_server.start()
        truth = world.truth(since)[WF]

        def settled():
            current = world.truth(since)[WF]
            seen = [counters(r) for r in survivors]
            done = current["active"] == 0 and all(
                c["runs_finished_total"] == current["finished"] for c in seen
            )
            return (seen, current) if done else None

        seen, truth = wait_for(settled, timeout=60, interval=0.5)
    finally:
        stop.set()
        scraper.join(timeout=20)
    assert truth["created"] == 20
    expected = {
        "runs_created_total": truth["created"],
        "runs_finished_total": truth["finished"],
        "runs_failed_total": truth["failed"],
        "run_credits_total": truth["credits"],
    }
    for replica_counters in seen:
        assert replica_counters == expected
    logs = "".join(r.log.read_text() for r in survivors)
    assert "Redis lost the shared state; writing this replica's copy back" in logs
    assert "now leads" in logs  # the lease passed to a survivor after the kill
    # a replica that starts now catches up from Redis and counts nothing twice
    (late,) = replicas(config, 1)
    wait_for(lambda: counters(late) == expected, timeout=30, interval=0.2)
    for replica in [*survivors, late]:
        samples = replica.scrape()
        assert sample(samples, "copyai_state_backend_up") == 1
        assert sample(samples, "copyai_workflow_runs", workflow_id=WF, status="COMPLETE") == (
            20 + truth["finished"] - truth["failed"]
        )
    assert counters(late) == expected


def insight(replica: Replica) -> dict:
    """What replicas must agree on for issue 14: the budget and every attributed series."""
    samples = replica.scrape()
    return {
        "used": sample(samples, "copyai_credit_budget_used_credits", budget="all"),
        "attributed": {
            (name, *sorted(labels)): value
            for (name, labels), value in samples.items()
            if name.endswith("_by_attribute_total")
        },
    }


def test_replicas_agree_on_budgets_and_admitted_attribution_values(
    sim, world, redis_server, replicas, tmp_path
):
    world.add_workflow("ha", WF)
    baseline = [  # before anyone watched: in the budget by createdAt, not attributed
        world.add_run(
            WF, [("COMPLETE", None)], age_seconds=600 - i, credits=5, metadata={"customer": "old"}
        )
        for i in range(10)
    ]
    month_start, _ = period_bounds("month", time.time())
    base = 5.0 * len([r for r in baseline if r.created_at >= month_start])  # 50 but on the 1st
    config = write_config(tmp_path / "ha.yaml", sim, redis_server, "insight:", [], discover=True)
    document = yaml.safe_load(config.read_text())
    document["budgets"] = [{"name": "all", "credits": 1000, "period": "month", "workflows": "*"}]
    document["attribution"] = {"keys": ["metadata.customer"], "max_values_per_key": 3}
    config.write_text(yaml.safe_dump(document))
    group = replicas(config, 3)
    leader_of(group)
    wait_for(lambda: all(insight(r)["used"] == base for r in group), timeout=30, interval=0.2)
    stop = threading.Event()
    scraper = keep_scraping(group, stop)
    try:

        def batch(customers: list[str], credits: int) -> None:
            for customer in customers:
                world.add_run(
                    WF,
                    [("NEW", 0.2), ("PROCESSING", 0.5), ("COMPLETE", None)],
                    credits=credits,
                    metadata={"customer": customer},
                )

        def agreed(members: list[Replica], used: float) -> dict | None:
            seen = [insight(r) for r in members]
            if all(s == seen[0] for s in seen) and seen[0]["used"] == used:
                return seen[0]
            return None

        batch(["a", "b"], 1)
        wait_for(lambda: agreed(group, base + 2), timeout=30, interval=0.2)
        batch(["c", "d", "e"], 10)  # room for one more value: which one, all replicas agree
        first = wait_for(lambda: agreed(group, base + 32), timeout=30, interval=0.2)
        customers = {
            dict(labels[1:])["value"]
            for labels in first["attributed"]
            if labels[0].startswith("copyai_workflow_run_credits")
        }
        assert len(customers) == 3 + 1  # a, b, one of c/d/e, and __other__
        assert {"a", "b", "__other__"} < customers
        leader_of(group).stop(signal.SIGKILL)
        survivors = [r for r in group if r.alive()]
        leader_of(survivors)
        batch(["f", "a"], 100)  # a new value: __other__; an admitted one: itself
        after = wait_for(lambda: agreed(survivors, base + 232), timeout=60, interval=0.2)
    finally:
        stop.set()
        scraper.join(timeout=20)
    credits = {
        dict(labels[1:])["value"]: value
        for labels, value in after["attributed"].items()
        if labels[0].startswith("copyai_workflow_run_credits")
    }
    third = (customers - {"a", "b", "__other__"}).pop()
    assert credits == {"a": 101.0, "b": 1.0, third: 10.0, "__other__": 120.0}
    (late,) = replicas(config, 1)  # catches up from Redis: the same values, nothing twice
    wait_for(lambda: insight(late) == after, timeout=30, interval=0.2)
