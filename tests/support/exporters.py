"""The test API key, configs built from documents, and an exporter served on loopback."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from exporter.config import Config, build_config
from exporter.runtime import Exporter
from exporter.sim.http import RunningSimulator
from exporter.web.app import ExporterApp, WebOptions
from exporter.web.http import HttpServer
from exporter.web.webhooks import WebhookApp
from tests.support.samples import Samples, parse_samples

API_KEY = "test-key-canary-7f3a9c"


def make_config(document: dict, key: str = API_KEY) -> Config:
    return build_config(document, source="test", env={"COPYAI_API_KEY": key})


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


@dataclass
class ExporterStarter:
    """Starts exporters served on loopback port 0; `close()` stops every one."""

    started: list[RunningExporter] = field(default_factory=list)

    def __call__(
        self,
        config: Config,
        options: WebOptions | None = None,
        *,
        config_file: Path | None = None,
        **exporter_kwargs: Any,
    ) -> RunningExporter:
        """With `config_file`, /-/reload re-reads it (with the config's API key) through
        the runtime's own reload."""
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
        self.started.append(running)
        return running

    def close(self) -> None:
        for running in self.started:
            running.server.stop()
            running.exporter.close()


@dataclass
class Receiver:
    """An exporter with its webhook receiver, both served on loopback."""

    running: RunningExporter
    server: HttpServer
    token: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def hook_url(self) -> str:
        """Where deliveries go: the receiver's URL with the token."""
        return f"{self.server.url}/webhook/{self.token}"

    @property
    def exporter(self) -> Exporter:
        return self.running.exporter

    def post(
        self,
        payload: object = None,
        *,
        data: bytes | None = None,
        path: str | None = None,
        headers: dict | None = None,
    ) -> requests.Response:
        return requests.post(
            self.url + (path if path is not None else f"/webhook/{self.token}"),
            data=json.dumps(payload).encode() if data is None else data,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=10,
        )

    def scrape(self) -> Samples:
        return self.running.scrape()


@dataclass
class ReceiverStarter:
    """Starts exporters with their webhook receivers; `close()` stops the receivers (the
    exporters are stopped by their ExporterStarter)."""

    start_exporter: ExporterStarter
    servers: list[HttpServer] = field(default_factory=list)

    def __call__(self, config: Config, **exporter_kwargs: Any) -> Receiver:
        assert config.webhooks is not None, "a receiver needs webhooks in the config"
        running = self.start_exporter(config, **{"process_metrics": False, **exporter_kwargs})
        exporter = running.exporter
        app = WebhookApp(
            lambda: exporter.config.webhooks, exporter, lambda: exporter.config.attribution.keys
        )
        server = HttpServer(app, "127.0.0.1:0").start()
        self.servers.append(server)
        return Receiver(running, server, config.webhooks.token.reveal())

    def close(self) -> None:
        for server in self.servers:
            server.stop()
