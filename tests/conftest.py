"""Fixtures shared by every test module: a real simulator and a real exporter on
loopback port 0, subprocesses of the CLI, a redis-server and a certificate authority of
the test's own. Everything a fixture starts, it stops. Helpers are in tests/support."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from tests.support.exporters import API_KEY, ExporterStarter, ReceiverStarter, RunningExporter
from tests.support.pki import make_pki
from tests.support.processes import Process
from tests.support.redis import Redis
from tests.support.tools import require_tool


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """e2e: runs real processes or servers besides the simulator (Prometheus,
    Alertmanager, Redis, a browser, the CLI); slow: takes more than a few seconds.
    `pytest -m "not e2e and not slow"` is the quick inner loop."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"redis_server", "spawn", "pki", "replicas"}:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def world() -> World:
    return World(api_key=API_KEY, seed=3)


@pytest.fixture
def sim(world: World) -> Iterator[RunningSimulator]:
    running = RunningSimulator(world)
    yield running
    running.stop()


@pytest.fixture
def start_exporter() -> Iterator[Callable[..., RunningExporter]]:
    starter = ExporterStarter()
    yield starter
    starter.close()


@pytest.fixture
def start_receiver(start_exporter: ExporterStarter) -> Iterator[ReceiverStarter]:
    """Exporters with their webhook receivers (the config must configure webhooks)."""
    starter = ReceiverStarter(start_exporter)
    yield starter
    starter.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Process]]:
    """copyai-exporter subprocesses, killed at the end if still running."""
    started: list[Process] = []

    def start(*args: str, env: dict[str, str] | None = None, clean_env: bool = False) -> Process:
        process = Process(list(args), env, clean_env=clean_env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(require_tool("redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate authority and certificates (see tests/support/pki.py)."""
    require_tool("openssl")  # fails under CI=true, skips locally
    return make_pki(tmp_path_factory.mktemp("pki"))
