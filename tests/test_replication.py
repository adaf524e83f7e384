"""Replication units against a real redis-server on loopback: the backend's leases,
fenced commits, streams, shared health and rate budget; the coordinator's election,
observation loop and mirror; and RedisReplication's share of the work. (Three whole
exporter processes sharing one Redis are in test_replicas.py.)"""

from __future__ import annotations

import threading
import time

import pytest

from exporter.api.records import Run, RunStatus
from exporter.config import RedisConfig, build_config
from exporter.replication.backend import LeadershipLostError, RedisBackend, SharedRateLimiter
from exporter.replication.coordinator import Coordinator, RedisStore
from exporter.replication.work import RedisReplication
from exporter.tracking.book import HistoryBook
from exporter.tracking.health import ApiHealth
from exporter.tracking.observations import Applier, RunSeen, to_json
from exporter.tracking.persistence import StateError
from exporter.tracking.runs import RunStore
from tests.support.exporters import API_KEY
from tests.support.polling import wait_for

WF = "WCFG-repl"


@pytest.fixture
def backends(redis_server):
    made: list[RedisBackend] = []

    def make(name: str, prefix: str = "unit:") -> RedisBackend:
        backend = RedisBackend(RedisConfig(url=redis_server.url, key_prefix=prefix), name)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


# --- the backend -------------------------------------------------------------------------


def test_one_leader_at_a_time_and_a_successor_after_the_lease(backends):
    a, b = backends("a"), backends("b")
    assert a.hold_leadership(300)
    assert not b.hold_leadership(300)
    assert a.hold_leadership(300)  # a renewal
    assert a.leader() == "a"
    wait_for(lambda: b.hold_leadership(300), timeout=5)  # once a stops renewing
    assert b.leader() == "b"
    assert not a.hold_leadership(300)


def test_a_work_lease_goes_to_the_first_taker_for_its_own_time(backends):
    a, b = backends("a"), backends("b")
    assert a.take_leases(["run:W:1", "run:W:2"], [200, 5_000]) == [True, True]
    assert b.take_leases(["run:W:1", "run:W:2", "run:W:3"], [200, 200, 200]) == [
        False,
        False,
        True,
    ]
    wait_for(lambda: b.take_leases(["run:W:1"], [200]) == [True], timeout=5)
    assert b.take_leases(["run:W:2"], [200]) == [False]  # its lease is longer


def test_a_commit_is_fenced_by_the_leader_lease(backends):
    a, b = backends("a"), backends("b")
    assert a.hold_leadership(10_000)
    meta = {"watch_start": 1.0, "created": 3}
    run = {"run_id": "WRUN-1", "status": "COMPLETE"}
    a.commit([(WF, meta, [run], [])], "1-0", [], "epoch-1")
    loaded, last_id, epoch = b.load_all()
    assert loaded == {WF: (meta, [run])}
    assert epoch == "epoch-1"
    assert b.applied() == "1-0"
    changes = b.read_changes("0-0")
    assert changes is not None and len(changes) == 1 and changes[0][0] == last_id
    a.client.delete(a.key("leader"))  # a's lease is gone; b leads now
    assert b.hold_leadership(10_000)
    with pytest.raises(LeadershipLostError):
        a.commit([(WF, {"watch_start": 1.0, "created": 99}, [], [])], "2-0", [], None)
    assert b.load_all()[0][WF][0]["created"] == 3  # nothing of a's late write landed


def test_observations_stream_in_order(backends):
    a = backends("a")
    a.push_observations([{"n": 1}, {"n": 2}])
    first = a.read_observations("0-0", block_ms=10)
    assert [data for _, data in first] == [{"n": 1}, {"n": 2}]
    a.push_observations([{"n": 3}])
    assert [data for _, data in a.read_observations(first[-1][0], block_ms=10)] == [{"n": 3}]


def test_shared_health_keeps_the_newest_verdict(backends):
    a, b = backends("a"), backends("b")
    a.publish_health(1, 100.0, 90.0)
    b.publish_health(0, 50.0, None)  # older: ignored
    assert a.read_health() == (1, 90.0)
    b.publish_health(0, 200.0, 95.0)
    assert a.read_health() == (0, 95.0)


def test_the_rate_budget_and_a_pause_hold_for_every_replica(backends):
    a, b = backends("a"), backends("b")
    waits = [backend.rate_wait(2.0, max_wait=10) for backend in (a, b, a, b)]
    # two a second, whoever asks: a burst of one second's worth, then one every 0.5 s
    assert waits[:2] == [0, 0]
    assert waits[2] == pytest.approx(0.5, abs=0.1) and waits[3] == pytest.approx(1.0, abs=0.1)
    assert a.rate_wait(2.0, max_wait=0.1) is None  # too long a wait: nothing is reserved
    b.pause_until(time.time() + 30)
    assert a.paused_for() == pytest.approx(30, abs=1)
    slept: list[float] = []
    limiter = SharedRateLimiter(a, 1000.0, slept.append)
    assert not limiter.acquire(max_wait=5)  # held back by the pause, for everyone
    assert limiter.paused_for() == pytest.approx(30, abs=1)


def test_without_redis_every_call_is_a_state_error(backends, redis_server):
    a = backends("a")
    a.hold_leadership(1_000)
    assert a.up == 1
    redis_server.stop()
    with pytest.raises(StateError):
        a.hold_leadership(1_000)
    assert a.up == 0
    assert RedisReplication(
        a,
        Coordinator(
            a, 2, health=ApiHealth(time.time, time.monotonic), writer_lock=threading.RLock()
        ),
    ).claim(["run:W:1"], [1.0]) == [False]  # no Redis, no leases: no API calls


# --- the coordinator ---------------------------------------------------------------------


class Replica:
    """What a runtime wires for one replica, without the API and the HTTP server."""

    def __init__(self, backend: RedisBackend):
        config = build_config(
            {"workflows": [{"id": WF, "runs": ["WRUN-pinned"], "discover": True}]},
            env={"COPYAI_API_KEY": API_KEY},
        )
        lock = threading.RLock()
        self.health = ApiHealth(time.time, time.monotonic)
        self.coordinator = Coordinator(backend, 2, health=self.health, writer_lock=lock)
        self.book = HistoryBook(RedisStore(backend, self.coordinator), time.time, writer_lock=lock)
        self.book.configure(config)
        self.runs = RunStore(config.run_keys())
        self.applier = Applier(
            self.book, self.runs, clock=time.monotonic, accept_unknown_workflows=lambda: False
        )
        self.coordinator.start(self.book, self.runs, self.applier)
        self.replication = RedisReplication(backend, self.coordinator)

    def status(self, run_id: str) -> RunStatus | None:
        history = self.book.get(WF)
        run = history.runs.get(run_id) if history is not None else None
        return run.status if run is not None else None

    def close(self) -> None:
        self.book.close()


@pytest.fixture
def replicas(backends):
    made: list[Replica] = []

    def make(name: str) -> Replica:
        replica = Replica(backends(name))
        made.append(replica)
        return replica

    yield make
    for replica in made:
        replica.close()


def seen(run_id: str, status: RunStatus, when: float, *, pinned: bool = False) -> RunSeen:
    run = Run(run_id, status, when - 10, 2.0, status.value)
    return RunSeen.of(WF, run, when, pinned=pinned, fetched=True)


def test_a_follower_observation_reaches_the_leader_and_every_mirror(replicas):
    one, two = replicas("one"), replicas("two")
    leader = wait_for(
        lambda: next((r for r in (one, two) if r.coordinator.is_leader), None), timeout=10
    )
    follower = two if leader is one else one
    assert not follower.replication.leads
    now = time.time()
    follower.replication.submit(seen("WRUN-1", RunStatus.PROCESSING, now))
    follower.replication.submit(seen("WRUN-pinned", RunStatus.COMPLETE, now, pinned=True))
    wait_for(lambda: leader.status("WRUN-1") is RunStatus.PROCESSING, timeout=10)

    def mirrored() -> bool:
        follower.replication.sync()
        state = follower.runs.get((WF, "WRUN-pinned"))
        return (
            follower.status("WRUN-1") is RunStatus.PROCESSING
            and state is not None
            and state.run is not None
            and state.run.status is RunStatus.COMPLETE
            and state.fetch_ok is True
        )

    wait_for(mirrored, timeout=10)  # the configured run's series on every replica


def test_a_leader_applies_its_own_observations_at_once(replicas):
    only = replicas("only")
    wait_for(lambda: only.coordinator.is_leader, timeout=10)
    only.replication.submit(seen("WRUN-2", RunStatus.FAILED, time.time()))
    assert only.status("WRUN-2") is RunStatus.FAILED


def test_unreadable_observations_are_skipped_not_fatal(replicas, backends, caplog):
    only = replicas("only")
    wait_for(lambda: only.coordinator.is_leader, timeout=10)
    other = backends("other")
    other.push_observations(
        [{"v": 9, "t": "run"}, to_json(seen("WRUN-3", RunStatus.COMPLETE, time.time()))]
    )
    wait_for(lambda: only.status("WRUN-3") is RunStatus.COMPLETE, timeout=10)
    assert any("observation skipped: unknown version" in r.getMessage() for r in caplog.records)
