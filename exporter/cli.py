"""Command line: flags, logging, wiring, signals and exit codes; nothing else.

Exit status: 0 on success and clean shutdown, 2 for an invalid configuration or
command line, 1 when the exporter cannot start (for example the port is taken).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import queue
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter import __version__
from exporter.api.registration import WebhookRegistrar
from exporter.config import Config, ConfigError, build_config, load_config_file
from exporter.logs import FORMATS, LEVELS, setup_logging
from exporter.mixin import load_mixin_config
from exporter.mixin import write as write_mixin
from exporter.runtime import Exporter, protect_secrets
from exporter.sim.command import add_arguments as add_simulator_arguments
from exporter.sim.command import run_from_args as run_simulator
from exporter.sim.http import RunningSimulator
from exporter.sim.scenarios import demo_world
from exporter.tracking.persistence import StateError
from exporter.web.app import ExporterApp, WebOptions
from exporter.web.connections import DEFAULT_MAX_CONNECTIONS
from exporter.web.http import HttpServer, parse_listen_address
from exporter.web.webconfig import WebState
from exporter.web.webhooks import WebhookApp

log = logging.getLogger("exporter")

# Prometheus' default port allocations list 9100-9999 as fully taken; this port is in
# the range new exporters are given past it.
DEFAULT_PORT = 10117
DEFAULT_LISTEN = f":{DEFAULT_PORT}"
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def parse_duration(text: str) -> float:
    """Prometheus-style durations: `10s`, `500ms`, `1m`, `1h`, or plain seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 10s, 500ms)")
    value = float(match.group(1))
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def _listen_address(text: str) -> str:
    try:
        parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _max_connections(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def _telemetry_path(text: str) -> str:
    if not text.startswith("/") or text.startswith("/-/") or text == "/":
        raise argparse.ArgumentTypeError("must start with / and not be / or under /-/")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copyai-exporter",
        description="Prometheus exporter for Copy.ai workflow runs.",
        epilog="The API key comes from COPYAI_API_KEY or api.api_key_file in the config. "
        "SIGHUP reloads the configuration.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="configuration file (default: %(default)s)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN,
        type=_listen_address,
        metavar="HOST:PORT",
        help="address to serve metrics on (default: %(default)s)",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        type=_telemetry_path,
        metavar="PATH",
        help="path of the metrics endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="PATH",
        help="TLS, client certificates and basic auth for both listeners, in the "
        "Prometheus exporter-toolkit web config format",
    )
    parser.add_argument(
        "--web.max-connections",
        dest="max_connections",
        default=DEFAULT_MAX_CONNECTIONS,
        type=_max_connections,
        metavar="N",
        help="most client connections served at once, on each listener (metrics and "
        "webhook); more wait to be accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="enable POST /-/reload (SIGHUP always reloads)",
    )
    parser.add_argument(
        "--scrape.default-timeout",
        dest="default_timeout",
        default="10s",
        type=parse_duration,
        metavar="DURATION",
        help="time budget of a scrape that sends no "
        "X-Prometheus-Scrape-Timeout-Seconds header (default: %(default)s)",
    )
    parser.add_argument(
        "--scrape.timeout-offset",
        dest="timeout_offset",
        default="500ms",
        type=parse_duration,
        metavar="DURATION",
        help="time kept back from the scrape timeout to render and send "
        "the answer (default: %(default)s)",
    )
    parser.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    parser.add_argument("--log.format", dest="log_format", choices=FORMATS, default="logfmt")
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration (and API key) and exit: 0 valid, 2 not",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="start a built-in Copy.ai API simulator and watch it; no key needed",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="{simulate,mixin}")
    simulate = commands.add_parser(
        "simulate", help="serve a simulated Copy.ai API (for demos, tests and benchmarks)"
    )
    add_simulator_arguments(simulate)
    mixin = commands.add_parser(
        "mixin",
        help="write the alerting and recording rules, the Grafana dashboard and the "
        "Alertmanager inhibitions for your job name, replicas and thresholds",
    )
    mixin.add_argument(
        "--config", dest="mixin_config", metavar="PATH", help="mixin config (every key optional)"
    )
    mixin.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    return parser


@dataclass
class _Signals:
    """Signals are turned into requests for the main thread, which does the work."""

    requests: queue.SimpleQueue[str]

    def install(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.requests.put("reload"))
        signal.signal(signal.SIGTERM, lambda *_: self.requests.put("stop"))
        signal.signal(signal.SIGINT, lambda *_: self.requests.put("stop"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"copyai-exporter {__version__} (Python {platform.python_version()})")
        return EXIT_OK
    setup_logging(args.log_level, args.log_format)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "mixin":
        return _mixin(args)
    try:
        web = WebState(args.web_config_file)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    if args.demo:
        return _serve_demo(args, web)

    config = _load(args.config_file)
    if config is None:
        return EXIT_CONFIG
    if args.check_config:
        print(
            f"{args.config_file}: valid ({len(config.workflows)} workflow(s), "
            f"{len(config.run_keys())} run(s))"
        )
        return EXIT_OK

    try:
        exporter = Exporter(config)
    except StateError as exc:
        log.error("%s (move the file away to start with empty history)", exc)
        return EXIT_FAILURE
    exporter.journal.config_file(args.config_file)  # for the status page
    return _serve(args, exporter, lambda: exporter.reload(args.config_file, web.reload), web)


def _load(path: str) -> Config | None:
    try:
        config = load_config_file(path)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return None
    protect_secrets(config)
    return config


def _serve(
    args: argparse.Namespace,
    exporter: Exporter,
    reload: Callable[[], tuple[bool, str]],
    web: WebState,
) -> int:
    options = WebOptions(
        telemetry_path=args.telemetry_path,
        enable_lifecycle=args.enable_lifecycle,
        default_scrape_timeout=args.default_timeout,
        scrape_timeout_offset=args.timeout_offset,
    )
    app = ExporterApp(exporter, options, reload)
    servers: list[HttpServer] = []
    webhooks = exporter.config.webhooks
    limits = {"max_connections": args.max_connections, "observer": exporter.telemetry}
    try:
        metrics = HttpServer(app, args.listen_address, web, listener="metrics", **limits)
        servers.append(metrics.start())
        if webhooks is not None:
            receiver = WebhookApp(
                lambda: exporter.config.webhooks,
                exporter,
                lambda: exporter.config.attribution.keys,
            )
            hooks = HttpServer(receiver, webhooks.listen_address, web, listener="webhook", **limits)
            servers.append(hooks.start())
    except OSError as exc:
        log.error("cannot listen: %s", exc.strerror or exc)
        for server in servers:
            server.stop()
        exporter.close()
        return EXIT_FAILURE
    log.info(
        "copyai-exporter %s listening url=%s%s pid=%d",
        __version__,
        servers[0].url,
        args.telemetry_path,
        os.getpid(),
    )
    registrar = None
    registration_stop = threading.Event()
    if webhooks is not None:
        log.info("webhook receiver listening url=%s/webhook/<token>", servers[1].url)
        if webhooks.register is not None:
            registrar = WebhookRegistrar(
                exporter.client,
                webhooks.register,
                webhooks.token.reveal(),
                [w.id for w in exporter.config.workflows],
            )
            threading.Thread(
                target=registrar.run, args=(registration_stop,), name="copyai-register", daemon=True
            ).start()
    signals = _Signals(queue.SimpleQueue())
    signals.install()
    while True:
        request = signals.requests.get()
        if request == "reload":
            log.info("SIGHUP received; reloading configuration")
            reload()
        elif request == "stop":
            break
    log.info("shutting down")
    app.shutting_down = True
    registration_stop.set()
    if registrar is not None:
        registrar.deregister()
    for server in servers:
        server.stop()
    exporter.close()
    return EXIT_OK


def _serve_demo(args: argparse.Namespace, web: WebState) -> int:
    world = demo_world()
    world.faults.update({"spawn_per_minute": 4, "spawn_fail_rate": 0.15})
    sim = RunningSimulator(world)
    document = {
        "api": {"base_url": sim.base_url, "max_requests_per_second": 50},
        "collector": {"refresh_interval_seconds": 5},
        "workflows": [
            {
                "id": wid,
                "name": name,
                "runs": list(world.runs[wid]),  # these keep per-run series
                "discover": True,  # and every new run is found and counted
            }
            for wid, name in world.workflows.items()
        ],
        # the dashboard's budget and attribution panels have something to show
        "budgets": [{"name": "demo", "credits": 20000, "period": "month", "workflows": "*"}],
        "attribution": {"keys": ["metadata.customer"], "max_values_per_key": 20},
    }
    config = build_config(document, source="demo", env={"COPYAI_API_KEY": world.api_key})
    log.info("demo mode: simulated Copy.ai API at %s (no real key used)", sim.base_url)
    exporter = Exporter(config)
    try:
        return _serve(args, exporter, lambda: (True, "demo configuration is fixed"), web)
    finally:
        sim.stop()


def _mixin(args: argparse.Namespace) -> int:
    try:
        config = load_mixin_config(args.mixin_config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_CONFIG
    try:
        written = write_mixin(config, Path(args.out))
    except OSError as exc:
        log.error("cannot write the mixin to %s: %s", args.out, exc.strerror or exc)
        return EXIT_FAILURE
    for path in written:
        print(path)
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        return run_simulator(args, stop)
    except OSError as exc:
        log.error("simulator cannot listen on %s: %s", args.listen, exc.strerror or exc)
        return EXIT_FAILURE
