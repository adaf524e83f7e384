"""Shared fixtures: a real simulator and a real exporter on loopback port 0, a fake
clock, metric parsing, polling with a deadline, and the external tools CI installs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config, build_config
from exporter.runtime import Exporter
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from exporter.web.app import ExporterApp, WebOptions
from exporter.web.http import HttpServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
API_KEY = "test-key-canary-7f3a9c"
DEBIAN_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "redis-server": "redis-server",
}


def require_tool(name: str) -> str:
    """Path of an external tool; under CI its absence fails the test instead of skipping."""
    path = shutil.which(name)
    if path:
        return path
    package = DEBIAN_PACKAGES.get(name, name)
    if IN_CI:
        pytest.fail(f"{name} is required under CI=true (.ci/run installs it)")
    pytest.skip(f"{name} not installed (apt-get install {package}); CI runs this test")
    raise AssertionError  # unreachable


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02):
    """Poll until predicate() is truthy; return its value or fail at the deadline."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        event.wait(interval)


class FakeClock:
    """Monotonic and wall clocks that move only when told to."""

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_700_000_000.0):
        self.now = start
        self.wall_offset = wall_start - start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def wall(self) -> float:
        with self._lock:
            return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def names(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def make_config(document: dict, key: str = API_KEY) -> Config:
    return build_config(document, source="test", env={"COPYAI_API_KEY": key})


@pytest.fixture
def world() -> World:
    return World(api_key=API_KEY, seed=3)


@pytest.fixture
def sim(world: World) -> Iterator[RunningSimulator]:
    running = RunningSimulator(world)
    yield running
    running.stop()


def sim_stats(sim: RunningSimulator) -> dict[str, int]:
    with sim.world.lock:
        return dict(sim.world.stats)


@dataclass
class RunningExporter:
    exporter: Exporter
    app: ExporterApp
    server: HttpServer

    @property
    def url(self) -> str:
        return self.server.url

    def scrape(self, timeout: float | None = None, headers: dict | None = None) -> Samples:
        response = requests.get(f"{self.url}/metrics", headers=headers or {}, timeout=30)
        response.raise_for_status()
        return parse_samples(response.text)


@pytest.fixture
def start_exporter() -> Iterator[Callable[..., RunningExporter]]:
    started: list[RunningExporter] = []

    def start(
        config: Config,
        options: WebOptions | None = None,
        *,
        config_file: Path | None = None,
        **exporter_kwargs,
    ) -> RunningExporter:
        """An exporter served on loopback; with `config_file`, /-/reload re-reads it
        (with the test's API key) through the runtime's own reload."""
        exporter = Exporter(config, **exporter_kwargs)
        env = {"COPYAI_API_KEY": config.api.api_key.reveal()}

        def reload() -> tuple[bool, str]:
            if config_file is None:
                return True, "fixed configuration"
            return exporter.reload(config_file, env=env)

        app = ExporterApp(
            exporter,
            options or WebOptions(),
            reload,
            # the scrape deadline on the exporter's own clock (a FakeClock in some tests)
            clock=exporter_kwargs.get("clock", time.monotonic),
        )
        server = HttpServer(app, "127.0.0.1:0").start()
        running = RunningExporter(exporter, app, server)
        started.append(running)
        return running

    yield start
    for running in started:
        running.server.stop()
        running.exporter.close()


# --- a real redis-server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Redis:
    """A redis-server of the test's own, on loopback, without persistence."""

    def __init__(self, binary: str, directory: Path):
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    return conn.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(answers, timeout=10, interval=0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(require_tool("redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()
