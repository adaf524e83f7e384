"""The simulator for the discovery rows: the package's World and RunningSimulator, with
one workflow of many runs spread over days.

`exporter simulate --scenario bulk` cannot serve this row: bulk_world puts run i at an
age of 3600 - i seconds, so past 3,600 runs per workflow they lie in the future. And
World.list_runs sorts every run of the workflow on every list request (about 17 ms for
100,000 runs), which over the 1,000 pages of a first look would cost the simulator some
17 s of CPU on the two cores it shares with the exporter. BenchWorld answers the same
pages from a newest-first order it sorts again only when runs were added.

    python -m benchmarks.simworld --listen 127.0.0.1:8081 --runs 100000 --latency 0.05 \
        --write-info sim.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from typing import Any

from exporter.sim.http import RunningSimulator
from exporter.sim.world import DEFAULT_API_KEY, SimRun, World

DISCOVER_WORKFLOW = "WCFG-bench-discover"


class BenchWorld(World):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._newest_first: dict[str, tuple[int, list[SimRun]]] = {}

    def list_runs(self, workflow_id: str, size: int, page: int) -> tuple[int, Any]:
        if self.faults.list_order != "newest_first":
            return super().list_runs(workflow_id, size, page)
        with self.lock:
            runs_by_id = self.runs.get(workflow_id)
            if runs_by_id is None:
                return 404, {"status": "error", "errorCode": "NOT_FOUND"}
            cached = self._newest_first.get(workflow_id)
            if cached is None or cached[0] != len(runs_by_id):  # runs are only ever added
                ordered = sorted(runs_by_id.values(), key=lambda r: -r.created_at)
                cached = self._newest_first[workflow_id] = (len(runs_by_id), ordered)
            runs = cached[1]
        return self.list_page(runs, size, page)


def active_positions(runs: int, newest: int, deep: int) -> list[int]:
    """Where the active runs are, counted from the newest run (0): `newest` of them
    among the newest 100 (page 1), `deep` spread evenly over the rest of the history."""
    front = [i * 7 for i in range(newest) if i * 7 < min(runs, 100)]
    back = [100 + (runs - 100) * (j + 1) // (deep + 1) for j in range(deep)] if runs > 100 else []
    return sorted(set(front + back))


def discovery_world(
    runs: int,
    *,
    active_newest: int = 5,
    active_deep: int = 5,
    spacing_seconds: float = 5.0,
    api_key: str = DEFAULT_API_KEY,
    seed: int = 11,
) -> BenchWorld:
    """One workflow of `runs` runs, one every `spacing_seconds`, the newest a minute old;
    all finished except a few that stay PROCESSING (see active_positions)."""
    world = BenchWorld(api_key=api_key, seed=seed)
    world.add_workflow("bench-discover", DISCOVER_WORKFLOW)
    active = set(active_positions(runs, active_newest, active_deep))
    for i in range(runs):
        steps: list[tuple[str, float | None]]
        steps = [("PROCESSING", None)] if i in active else [("PROCESSING", 1), ("COMPLETE", None)]
        world.add_run(
            DISCOVER_WORKFLOW,
            steps,
            age_seconds=60 + i * spacing_seconds,
            credits=i % 50,
            credits_as_string=bool(i % 2),
            millis=bool(i % 3),
        )
    return world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--active-newest", type=int, default=5)
    parser.add_argument("--active-deep", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--write-info", required=True, help="JSON file written once serving")
    args = parser.parse_args()
    world = discovery_world(
        args.runs, active_newest=args.active_newest, active_deep=args.active_deep
    )
    world.faults.update({"latency_seconds": args.latency})
    serve(
        world,
        args.listen,
        args.write_info,
        {
            "workflow_id": DISCOVER_WORKFLOW,
            "runs": args.runs,
            "active_positions": active_positions(args.runs, args.active_newest, args.active_deep),
        },
    )


def serve(world: World, listen: str, write_info: str, info: dict[str, Any]) -> None:
    """Serve `world` on `listen` (host:port) until SIGTERM or SIGINT, once serving
    writing `info` and the base URL as JSON to `write_info`."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    host, _, port = listen.rpartition(":")
    sim = RunningSimulator(world, host, int(port))
    partial = f"{write_info}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump({"base_url": sim.base_url, **info}, handle)
    os.replace(partial, write_info)  # readers never see half a file
    try:
        stop.wait()
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
