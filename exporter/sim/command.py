"""`copyai-exporter simulate`: serve only the simulated API."""

from __future__ import annotations

import argparse
import logging
import threading

from exporter.sim.http import RunningSimulator
from exporter.sim.scenarios import bulk_world, demo_world
from exporter.sim.world import DEFAULT_API_KEY

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8080", help="host:port to serve on")
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help="key the simulator accepts (default: %(default)s)",
    )
    parser.add_argument("--scenario", choices=("demo", "bulk"), default="demo")
    parser.add_argument("--workflows", type=int, default=10, help="bulk: workflows")
    parser.add_argument("--runs-per-workflow", type=int, default=100, help="bulk: runs each")
    parser.add_argument(
        "--active-fraction", type=float, default=0.1, help="bulk: share of runs that never finish"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each answer")
    parser.add_argument(
        "--error-rate", type=float, default=0.0, help="share of answers that are HTML 502s"
    )
    parser.add_argument(
        "--rate-limit", type=float, default=0.0, help="requests per second before 429 (0 = none)"
    )
    parser.add_argument(
        "--spawn-per-minute",
        type=float,
        default=0.0,
        help="new runs started per workflow and minute (0 = none)",
    )
    parser.add_argument(
        "--spawn-fail-rate", type=float, default=0.1, help="share of started runs that end FAILED"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--write-config",
        metavar="PATH",
        help="write an exporter config watching every run, then serve",
    )
    parser.add_argument(
        "--config-base-url",
        metavar="URL",
        help="base_url to put in --write-config (default: this server's)",
    )


def run_from_args(args: argparse.Namespace, stop: threading.Event) -> int:
    host, _, port = args.listen.rpartition(":")
    if args.scenario == "bulk":
        world = bulk_world(
            args.workflows,
            args.runs_per_workflow,
            args.active_fraction,
            api_key=args.api_key,
            seed=args.seed,
        )
    else:
        world = demo_world(api_key=args.api_key, seed=args.seed)
    world.faults.update(
        {
            "latency_seconds": args.latency,
            "error_rate": args.error_rate,
            "rate_limit_per_second": args.rate_limit,
            "spawn_per_minute": args.spawn_per_minute,
            "spawn_fail_rate": args.spawn_fail_rate,
        }
    )
    sim = RunningSimulator(world, host.strip("[]") or "0.0.0.0", int(port))
    if args.write_config:
        with open(args.write_config, "w", encoding="utf-8") as handle:
            handle.write(world.exporter_config(args.config_base_url or sim.base_url))
    log.info("simulator listening url=%s runs=%d", sim.base_url, len(world.all_runs()))
    try:
        stop.wait()
    finally:
        sim.stop()
    return 0
