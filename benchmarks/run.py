"""The one command: `python -m benchmarks` (add `--quick` for small sizes, `--update
BENCHMARKS.md` to write the results into that file between its markers, `--only
slow_clients` for one phase, whose rows then replace only theirs in that file).

Runs the exporter against the simulator, each in its own process, and prints a markdown
table in which every row is measured side by side with its theoretical limit and the
naive baseline (benchmarks/naive.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import insight, rows, workspace
from benchmarks.harness import (
    API_KEY,
    ROOT,
    Child,
    Processes,
    RedisServer,
    SimClient,
    api_calls,
    cpu_seconds,
    exporter_document,
    free_port,
    machine,
    percentile,
    proc_status,
    scrape,
    thread_count,
    tracked_runs,
    wait_until_answers,
    workflows_of,
    write_yaml,
)
from exporter.web.connections import (
    BUSY_DEADLINE_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    HEADER_DEADLINE_SECONDS,
)
from exporter.web.status import MAX_RUNS_SHOWN

MARK_START = "<!-- benchmarks:results:start -->"
MARK_END = "<!-- benchmarks:results:end -->"
CONCURRENCY = 32
SCRAPE_TIMEOUT = 10.0  # X-Prometheus-Scrape-Timeout-Seconds, as Prometheus' default
CONCURRENCY_DEMO = 8  # the demo's api.max_concurrency (the default)
STATUS_TARGET_SECONDS = 0.1  # row 9: p99 of / and /status.json at 10,000 runs
# row 8 before issue 17 (no connection cap, no request deadlines), as the issue reports
# them for 3,000 slow clients against --demo on the machine below
BEFORE_THREADS, BEFORE_PEAK_MB, BEFORE_IDLE_MB, BEFORE_SCRAPE_SECONDS = 3022, 113, 42, 7.3
# the rows each phase writes: a phase run alone replaces only its rows in BENCHMARKS.md
PHASE_ROWS = {
    "configured": {"1", "2", "3", "6"},
    "large": {"3", "5"},
    "discovery": {"4", "5"},
    "replicas": {"7"},
    "slow_clients": {"8"},
    "status": {"9"},
    "workspace": {"10"},
    "insight": {"11"},
}


@dataclass(frozen=True)
class Sizes:
    workflows: int = 10
    small_per_workflow: int = 100  # rows 1, 2, 3, 6: 1,000 configured runs
    large_per_workflow: int = 1000  # rows 3, 5: 10,000 configured runs
    discovered: int = 100_000  # rows 4, 5
    page_size: int = 100
    warm_small: int = 200  # samples for p99
    warm_large: int = 50
    naive_warm_small: int = 3
    storm: int = 50
    bound_new_runs: int = 2_000  # row 5: runs added past the cap
    replica_refresh: float = 10.0  # row 7: refresh_interval_seconds, real time
    replica_intervals: int = 3  # row 7: refresh intervals the steady calls are counted over
    slow_clients: int = 3000  # row 8: at the default --web.max-connections (512)
    workspace_workflows: int = 1000  # row 10
    workspace_seconds: float = 600.0  # row 10: real time, both modes at once
    insight_finished: int = 2_000  # row 11: runs finished while watched (after `discovered`)

    @property
    def small(self) -> int:
        return self.workflows * self.small_per_workflow

    @property
    def large(self) -> int:
        return self.workflows * self.large_per_workflow


FULL = Sizes()
QUICK = Sizes(
    small_per_workflow=20,
    large_per_workflow=200,
    discovered=10_000,
    warm_small=50,
    warm_large=20,
    naive_warm_small=1,
    bound_new_runs=300,
    replica_refresh=5.0,
    replica_intervals=2,
    slow_clients=600,
    workspace_workflows=100,
    workspace_seconds=120.0,
    insight_finished=300,
)


@dataclass
class Line:
    row: str
    measure: str
    exporter: str
    limit: str
    naive: str
    target: str
    met: bool | None = None


@dataclass
class Report:
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.lines.append(Line(*args, **kwargs))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", file=sys.stderr, flush=True)


def secs(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def num(n: float) -> str:
    return f"{n:,.0f}"


def mb(value: float) -> str:
    return f"{value:.1f} MB"


def p50_p99(values: list[float]) -> str:
    return f"p50 {secs(percentile(values, 50))} / p99 {secs(percentile(values, 99))}"


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Bench:
    """Starts the servers each row needs (every one in its own process, on a free port
    of its own) and fills the report."""

    def __init__(self, procs: Processes, workdir: Path, sizes: Sizes, latency: float):
        self.procs = procs
        self.workdir = workdir
        self.sizes = sizes
        self.latency = latency
        self.report = Report()

    # --- servers -------------------------------------------------------------------

    def bulk_simulator(
        self, name: str, per_workflow: int, active_fraction: float, latency: float
    ) -> tuple[Child, SimClient, list[dict[str, Any]]]:
        """`exporter simulate --scenario bulk` with --write-config."""
        port = free_port()
        config = self.workdir / f"{name}.yaml"
        child = self.procs.start(
            name,
            [
                "-m", "exporter", "--log.level", "warn", "simulate", "--scenario", "bulk",
                "--workflows", str(self.sizes.workflows),
                "--runs-per-workflow", str(per_workflow),
                "--active-fraction", str(active_fraction),
                "--latency", str(latency),
                "--listen", f"127.0.0.1:{port}",
                "--write-config", str(config),
            ],
        )  # fmt: skip
        sim = SimClient(f"http://127.0.0.1:{port}")
        wait_until_answers(f"{sim.root}/_sim/stats", child)
        expected = self.sizes.workflows * per_workflow
        deadline = time.monotonic() + 60
        while True:  # the config is written once the server listens
            try:
                workflows = workflows_of(config)
                if sum(len(w["runs"]) for w in workflows) == expected:
                    return child, sim, workflows
            except (OSError, TypeError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no complete config:\n{child.log_tail()}")
            time.sleep(0.05)

    def discovery_simulator(
        self, name: str, runs: int, latency: float
    ) -> tuple[Child, SimClient, dict]:
        port = free_port()
        info_path = self.workdir / f"{name}.json"
        child = self.procs.start(
            name,
            [
                "-m", "benchmarks.simworld", "--listen", f"127.0.0.1:{port}",
                "--runs", str(runs), "--latency", str(latency), "--write-info", str(info_path),
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not info_path.exists():
            if not child.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{child.log_tail()}")
            time.sleep(0.1)
        sim = SimClient(f"http://127.0.0.1:{port}")
        wait_until_answers(f"{sim.root}/_sim/stats", child)
        return child, sim, json.loads(info_path.read_text(encoding="utf-8"))

    def _server(
        self,
        name: str,
        module: list[str],
        document: dict[str, Any],
        env: dict[str, str] | None = None,
    ) -> tuple[Child, int]:
        config = write_yaml(self.workdir / f"{name}.yaml", document)
        port = free_port()
        child = self.procs.start(
            name,
            [
                *module,
                "--config.file", str(config),
                "--web.listen-address", f"127.0.0.1:{port}",
            ],
            env={"COPYAI_API_KEY": API_KEY, **(env or {})},
        )  # fmt: skip
        wait_until_answers(f"http://127.0.0.1:{port}/-/healthy", child)
        return child, port

    def exporter(
        self, name: str, document: dict[str, Any], env: dict[str, str] | None = None
    ) -> tuple[Child, int]:
        """`python -m exporter --config.file ...`, the exporter as deployed."""
        return self._server(name, ["-m", "exporter"], document, env)

    def naive(self, name: str, document: dict[str, Any]) -> tuple[Child, int]:
        return self._server(name, ["-m", "benchmarks.naive"], document)

    def static(self, name: str, body: str) -> tuple[Child, int]:
        path = self.workdir / f"{name}.txt"
        path.write_text(body, encoding="utf-8")
        port = free_port()
        child = self.procs.start(
            name,
            [
                "-m",
                "benchmarks.static",
                "--body",
                str(path),
                "--web.listen-address",
                f"127.0.0.1:{port}",
            ],
        )
        wait_until_answers(f"http://127.0.0.1:{port}/", child)
        return child, port

    def settle(self, child: Child, port: int, scrapes: int = 3) -> float:
        """A few scrapes after the first complete refresh, then VmHWM in MB."""
        for _ in range(scrapes):
            scrape("127.0.0.1", port, timeout_header=SCRAPE_TIMEOUT, timeout=600)
        return proc_status(child.pid, "VmHWM")

    # --- phases --------------------------------------------------------------------

    def configured_runs(self) -> None:
        """Rows 1, 2, 3 (1,000 runs) and 6, against one bulk simulator."""
        s, latency, report = self.sizes, self.latency, self.report
        n = s.small
        progress(f"simulator: {n:,} runs (10% active), {secs(latency)} latency")
        sim_child, sim, workflows = self.bulk_simulator(
            "sim-configured", s.small_per_workflow, 0.1, latency
        )
        # all cached means nothing due: no refresh of active runs, no up check
        warm_doc = exporter_document(
            sim.base_url,
            workflows,
            api={"max_concurrency": CONCURRENCY},
            collector={"refresh_interval_seconds": 3600, "up_check_interval_seconds": 0},
        )

        progress("row 1: cold refresh, exporter")
        child, port = self.exporter("exporter-cold", warm_doc)
        sim.reset()
        cpu = (cpu_seconds(child.pid), cpu_seconds(sim_child.pid))
        cold_seconds, cold_scrapes = rows.cold_refresh("127.0.0.1", port, n, SCRAPE_TIMEOUT)
        cold_calls = api_calls(sim.requests())
        report.note(
            f"row 1: CPU during the cold refresh: {cpu_seconds(child.pid) - cpu[0]:.2f} s "
            f"in the exporter, {cpu_seconds(sim_child.pid) - cpu[1]:.2f} s in the simulator"
        )
        if cold_scrapes > 1:
            report.note(f"row 1: the exporter needed {cold_scrapes} scrapes to be complete")

        progress(f"row 3: warm scrapes of {n:,} runs, exporter and static floor")
        warm = self.warm_pair(port, s.warm_small)
        body = scrape("127.0.0.1", port, gzip_ok=False, timeout_header=SCRAPE_TIMEOUT).text
        self.procs.stop(child)
        static, static_port = self.static("static-small", body)
        floor = self.warm_pair(static_port, s.warm_small)
        self.procs.stop(static)

        progress("row 6: scrape storm, exporter")
        child, port = self.exporter("exporter-storm", warm_doc)
        cpu = (cpu_seconds(child.pid), cpu_seconds(sim_child.pid))
        storm = rows.storm(
            sim, "127.0.0.1", port, scrapers=s.storm, timeout=SCRAPE_TIMEOUT, expected_runs=n
        )
        report.note(
            f"row 6: CPU during the storm: {cpu_seconds(child.pid) - cpu[0]:.2f} s in the "
            f"exporter ({s.storm} renders and gzips of {num(n)} runs after one refresh), "
            f"{cpu_seconds(sim_child.pid) - cpu[1]:.2f} s in the simulator"
        )
        self.procs.stop(child)

        progress(f"row 1: cold refresh, naive baseline ({n:,} sequential fetches)")
        naive, naive_port = self.naive("naive-cold", warm_doc)
        sim.reset()
        naive_cold, _ = rows.cold_refresh("127.0.0.1", naive_port, n, SCRAPE_TIMEOUT)
        naive_cold_calls = api_calls(sim.requests())
        progress("row 6: scrape storm, naive baseline")
        naive_storm = rows.storm(
            sim, "127.0.0.1", naive_port, scrapers=s.storm, timeout=SCRAPE_TIMEOUT, expected_runs=n
        )
        self.procs.stop(naive)  # its scrapes go on after the clients gave up

        progress("row 3: naive baseline scrapes at 0 ms latency")
        sim.faults(latency_seconds=0.0)
        naive, naive_port = self.naive("naive-warm", warm_doc)
        naive_warm = self.warm_pair(naive_port, s.naive_warm_small)

        progress("row 2: steady state, exporter (simulated clock) and naive baseline")
        steady_doc = exporter_document(
            sim.base_url,
            workflows,
            api={"max_concurrency": CONCURRENCY},
            collector={"refresh_interval_seconds": 30, "up_check_interval_seconds": 60},
        )
        steady = rows.steady_state(sim, steady_doc, scrapers=2, scrape_interval=15, intervals=10)
        per_interval = round(30 / 15) * steady.scrapers  # scrapes per refresh interval
        naive_calls = rows.calls_for_scrapes(sim, "127.0.0.1", naive_port, per_interval)
        self.procs.stop(naive)

        progress("row 2: every run finished: the up check")
        _, done_sim, done_workflows = self.bulk_simulator(
            "sim-finished", s.small_per_workflow, 0.0, 0.0
        )
        done_doc = exporter_document(
            done_sim.base_url,
            done_workflows,
            api={"max_concurrency": CONCURRENCY},
            collector={"refresh_interval_seconds": 30, "up_check_interval_seconds": 60},
        )
        finished = rows.steady_state(
            done_sim, done_doc, scrapers=2, scrape_interval=15, intervals=10
        )

        # --- the lines ---
        limit = rows.cold_limit(n, CONCURRENCY, latency)
        report.add(
            "1",
            f"Cold refresh: {num(n)} runs, {secs(latency)} latency, max_concurrency "
            f"{CONCURRENCY}: time to the first complete /metrics (API calls)",
            f"{secs(cold_seconds)} ({num(cold_calls)} calls)",
            f"{secs(limit)} ({num(n)} calls)",
            f"{secs(naive_cold)} ({num(naive_cold_calls)} calls)",
            f"≤ 1.3 x limit = {secs(1.3 * limit)}",
            cold_seconds <= 1.3 * limit,
        )
        self.steady_lines(steady, finished, naive_calls, per_interval)
        for label, key in (("gzip", True), ("identity", False)):
            report.add(
                "3",
                f"Warm scrape, {num(n)} runs cached, {label} "
                f"({num(warm[key].wire_bytes)} bytes on the wire)",
                p50_p99(warm[key].seconds),
                p50_p99(floor[key].seconds) + " (static body)",
                f"{secs(percentile(naive_warm[key].seconds, 50))} at 0 ms latency "
                f"(n={len(naive_warm[key].seconds)}); {secs(naive_cold)} at {secs(latency)}",
                "p99 ≤ 50 ms",
                percentile(warm[key].seconds, 99) <= 0.050,
            )
        report.note(
            f"row 3: {len(warm[True].seconds)} samples each "
            f"({rank_note(len(warm[True].seconds))}); {num(n)} runs render to "
            f"{num(warm[False].body_bytes)} bytes, {num(warm[True].wire_bytes)} gzipped"
        )
        needed = s.storm * n
        report.add(
            "6",
            f"Scrape storm: {s.storm} concurrent scrapes, cold cache, {num(n)} runs, "
            f"{secs(latency)} latency, scrape timeout {SCRAPE_TIMEOUT:g} s: API calls; "
            "answered; slowest answer",
            f"{num(api_calls(storm.calls))} calls; {storm.answered}/{storm.scrapers} answered "
            f"({storm.complete} complete); max {secs(storm.max_seconds)}",
            f"{num(n)} calls; {secs(limit)}",
            f"{num(api_calls(naive_storm.calls))} calls in {SCRAPE_TIMEOUT:g} s of the "
            f"{num(needed)} needed; {naive_storm.answered}/{naive_storm.scrapers} answered",
            f"calls = {num(n)}; every answer < {SCRAPE_TIMEOUT:g} s",
            api_calls(storm.calls) == n
            and storm.answered == storm.scrapers
            and storm.max_seconds < SCRAPE_TIMEOUT,
        )

    def warm_pair(self, port: int, count: int) -> dict[bool, rows.Timings]:
        return {
            gz: rows.timed_scrapes("127.0.0.1", port, count, gzip_ok=gz) for gz in (True, False)
        }

    def steady_lines(
        self,
        steady: rows.SteadyState,
        finished: rows.SteadyState,
        naive_calls: dict[str, int],
        per_interval: int,
    ) -> None:
        report = self.report
        iv = steady.intervals
        n, a = steady.runs, steady.active
        terminal = n - a
        where = (
            f"{num(n)} runs, {a} active, S={steady.scrapers} scrapers every 15 s, refresh "
            f"30 s; {iv} intervals of simulated time ({steady.scrapes} scrapes)"
        )
        naive_total = api_calls(naive_calls)
        naive_per_run = naive_total / n if n else 0
        report.add(
            "2",
            f"Steady state, {where}: API calls per refresh interval for the {num(terminal)} "
            "finished runs",
            num(steady.terminal_calls / iv),
            "0",
            f"{num(naive_per_run * terminal)} ({per_interval} scrapes x {num(terminal)})",
            "0",
            steady.terminal_calls == 0,
        )
        report.add(
            "2",
            f"… for the {a} active runs (most calls to one run in one interval)",
            f"{num(steady.active_calls / iv)} (max {steady.max_calls_per_active_run} per run)",
            f"{a} (1 per run)",
            f"{num(naive_per_run * a)} ({per_interval} per run)",
            "≤ 1 per active run, whatever S",
            steady.max_calls_per_active_run <= 1 and steady.active_calls <= a * iv,
        )
        report.add(
            "2",
            "… all runs together (naive: N x S per scrape interval, N x S x 2 per refresh "
            "interval)",
            num((steady.terminal_calls + steady.active_calls + steady.list_calls) / iv),
            num(a),
            num(naive_total),
            "",
            None,
        )
        per_check = 60 / finished.refresh_interval
        checks = finished.list_calls / finished.intervals * per_check
        report.add(
            "2",
            f"Every run finished ({num(finished.runs)} runs, same scrapers): light API checks "
            "per up_check_interval_seconds (60 s), per exporter, not per run",
            f"{checks:g} (get_run: {finished.terminal_calls + finished.active_calls})",
            "1",
            f"{num(finished.runs * per_interval * per_check)} get_run",
            "1 per 60 s",
            finished.terminal_calls == 0 and finished.active_calls == 0 and checks <= 1,
        )

    def large_configured(self) -> None:
        """Rows 3 and 5 with 10,000 configured runs, and the memory floor."""
        s, report = self.sizes, self.report
        n = s.large
        progress(f"simulator: {n:,} runs (10% active), 0 ms latency")
        sim_child, sim, workflows = self.bulk_simulator("sim-large", s.large_per_workflow, 0.1, 0.0)
        doc = exporter_document(
            sim.base_url,
            workflows,
            api={"max_concurrency": CONCURRENCY},
            collector={"refresh_interval_seconds": 3600, "up_check_interval_seconds": 0},
        )
        progress(f"rows 3 and 5: exporter with {n:,} configured runs")
        child, port = self.exporter("exporter-large", doc)
        cpu = (cpu_seconds(child.pid), cpu_seconds(sim_child.pid))
        fill, _ = rows.cold_refresh("127.0.0.1", port, n, timeout_header=600)
        fill_cpu = (cpu_seconds(child.pid) - cpu[0], cpu_seconds(sim_child.pid) - cpu[1])
        hwm = self.settle(child, port)
        warm = self.warm_pair(port, s.warm_large)
        hwm_after = proc_status(child.pid, "VmHWM")
        body = scrape("127.0.0.1", port, gzip_ok=False).text
        sparse_doc = {**doc, "collector": {**doc["collector"], "sparse_status": True}}
        self.procs.stop(child)
        progress("row 3: static floor")
        static, static_port = self.static("static-large", body)
        floor = self.warm_pair(static_port, s.warm_large)
        self.procs.stop(static)
        progress("row 3: sparse status on (for comparison)")
        child, port = self.exporter("exporter-large-sparse", sparse_doc)
        rows.cold_refresh("127.0.0.1", port, n, timeout_header=600)
        sparse = rows.timed_scrapes("127.0.0.1", port, s.warm_large, gzip_ok=True)
        self.procs.stop(child)

        progress(f"rows 3 and 5: naive baseline, {n:,} sequential fetches per scrape")
        naive, naive_port = self.naive("naive-large", doc)
        naive_scrape = rows.timed_scrapes("127.0.0.1", naive_port, 1, gzip_ok=True)
        naive_hwm = proc_status(naive.pid, "VmHWM")
        self.procs.stop(naive)

        progress("row 5: memory floor (the exporter watching no run)")
        empty_doc = exporter_document(
            sim.base_url,
            [{"id": workflows[0]["id"]}],
            collector={"up_check_interval_seconds": 0},
        )
        child, port = self.exporter("exporter-empty", empty_doc)
        floor_hwm = self.settle(child, port)
        self.procs.stop(child)

        for label, key in (("gzip", True), ("identity", False)):
            report.add(
                "3",
                f"Warm scrape, {num(n)} runs cached, sparse status off, {label} "
                f"({num(warm[key].wire_bytes)} bytes on the wire)",
                p50_p99(warm[key].seconds),
                p50_p99(floor[key].seconds) + " (static body)",
                f"{secs(naive_scrape.seconds[0])} at 0 ms latency (n=1, gzip)",
                "p99 ≤ 500 ms",
                percentile(warm[key].seconds, 99) <= 0.5,
            )
        report.add(
            "3",
            f"… the same with sparse status on, gzip ({num(sparse.wire_bytes)} bytes)",
            p50_p99(sparse.seconds),
            "",
            "",
            "",
            None,
        )
        report.note(
            f"row 3: {len(warm[True].seconds)} samples each "
            f"({rank_note(len(warm[True].seconds))}); "
            f"{num(n)} runs render to {num(warm[False].body_bytes)} bytes; "
            f"the exporter's cold fill of {num(n)} runs at 0 ms latency took {secs(fill)} "
            f"({fill_cpu[0]:.1f} s CPU in the exporter, {fill_cpu[1]:.1f} s in the simulator)"
        )
        report.add(
            "5",
            f"Peak RSS (VmHWM), {num(n)} configured runs, after the first complete refresh "
            "and 3 scrapes",
            mb(hwm),
            f"{mb(floor_hwm)} (exporter watching no run)",
            mb(naive_hwm),
            "≤ 80 MB",
            hwm <= 80,
        )
        report.note(
            f"row 5: after the {2 * s.warm_large} scrapes of row 3 as well, VmHWM of the "
            f"{num(n)}-run exporter was {mb(hwm_after)}"
        )

    def discovered_runs(self) -> None:
        """Rows 4 and 5 with one workflow of many runs."""
        s, latency, report = self.sizes, self.latency, self.report
        total = s.discovered
        progress(f"simulator: one workflow of {total:,} runs, {secs(latency)} latency")
        sim_child, sim, info = self.discovery_simulator("sim-discovery", total, latency)
        workflow_id = info["workflow_id"]
        positions = info["active_positions"]
        config = {
            "page_size": s.page_size,
            "max_tracked_runs": total,
            "window_seconds": 30 * 86400,
            "max_pages_per_refresh": 1000,
        }
        steps = [("next refresh, nothing new", 0), ("5 new runs", 5), ("150 new runs", 150)]
        progress("row 4: discovery, exporter (simulated clock)")
        found = rows.discovery(
            sim,
            workflow_id,
            discovery_config=config,
            concurrency=CONCURRENCY,
            steps=steps,
            sim_pid=sim_child.pid,
        )
        doc = exporter_document(
            sim.base_url,
            [{"id": workflow_id, "discover": True, "discovery": config}],
            api={"max_concurrency": CONCURRENCY},
            collector={"refresh_interval_seconds": 5, "up_check_interval_seconds": 0},
        )
        progress(f"rows 4 and 5: naive baseline, every page of {total:,} runs per scrape")
        naive, naive_port = self.naive("naive-discovery", doc)
        sim.reset()
        naive_seconds = rows.timed_scrapes("127.0.0.1", naive_port, 1, gzip_ok=True).seconds[0]
        naive_calls = api_calls(sim.requests())
        naive_hwm = proc_status(naive.pid, "VmHWM")
        self.procs.stop(naive)

        progress("row 5: exporter process following the workflow (0 ms latency)")
        sim.faults(latency_seconds=0.0)
        child, port = self.exporter("exporter-discovery", doc)
        hwm = self.settle_discovery(child, port, total)
        progress(f"row 5: {s.bound_new_runs:,} runs more than max_tracked_runs")
        for _ in range(s.bound_new_runs):
            sim.add_run(workflow_id, [["COMPLETE", None]], credits=1)
        time.sleep(5.5)  # one refresh interval
        after = scrape("127.0.0.1", port, timeout_header=600, timeout=700)
        tracked_after = tracked_runs(after.text)
        for _ in range(3):
            scrape("127.0.0.1", port, timeout_header=SCRAPE_TIMEOUT)
        hwm_after = proc_status(child.pid, "VmHWM")
        self.procs.stop(child)

        pages = math.ceil(total / s.page_size)
        first = found.first
        report.add(
            "4",
            f"Discovery of {num(total)} runs ({len(positions)} active), page size "
            f"{s.page_size}, {secs(latency)} latency, max_concurrency {CONCURRENCY}: time and "
            f"API calls to the first complete picture ({num(first.tracked)} runs tracked)",
            f"{secs(first.seconds)} ({call_mix(first.calls)})",
            f"{secs(math.ceil(pages / CONCURRENCY) * latency)} ({num(pages)} list calls)",
            f"{secs(naive_seconds)} ({num(naive_calls)} list calls), on every scrape",
            f"{num(pages)} calls (each page once)",
            api_calls(first.calls) == pages and first.tracked == total,
        )
        added = 0  # runs added by earlier steps, already known: they push the active back
        for step in found.later:
            pushed = [p + added for p in positions]
            limit = rows.discovery_limit(step.new_runs, pushed, s.page_size)
            added += step.new_runs
            report.add(
                "4",
                f"… then a refresh: {step.label} ({num(step.tracked)} tracked)",
                f"{num(api_calls(step.calls))} ({call_mix(step.calls)})",
                num(limit),
                f"{num(math.ceil((total + added) / s.page_size))} list calls",
                "only what changed",
                api_calls(step.calls) <= limit,
            )
        report.note(
            f"row 4: active runs at positions {positions} from the newest; the naive "
            "baseline was measured after the exporter's steps had added their runs"
        )
        report.note(
            f"row 4: CPU during the first complete picture ({secs(first.seconds)}): "
            f"{first.cpu_seconds:.2f} s in the exporter (in-process, with its client), "
            f"{first.sim_cpu_seconds or 0:.2f} s in the simulator, on {machine()['cores']} cores"
        )
        report.add(
            "5",
            f"Peak RSS (VmHWM), {num(total)} discovered runs, after the first complete "
            "picture and 3 scrapes",
            mb(hwm),
            "",
            mb(naive_hwm),
            "≤ 250 MB",
            hwm <= 250,
        )
        report.add(
            "5",
            f"… after {num(s.bound_new_runs)} more runs than max_tracked_runs={num(total)} "
            "(state bounded)",
            f"{mb(hwm_after)}, {num(tracked_after)} runs tracked",
            f"{num(total)} tracked",
            "",
            f"≤ 250 MB, ≤ {num(total)} tracked",
            hwm_after <= 250 and tracked_after <= total,
        )

    def settle_discovery(self, child: Child, port: int, total: int) -> float:
        deadline = time.monotonic() + 600
        while True:
            answer = scrape("127.0.0.1", port, timeout_header=600, timeout=700)
            if tracked_runs(answer.text) >= total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the exporter never tracked every run")
        return self.settle(child, port)

    def replicas(self) -> None:
        """Row 7: 1, 2 and 3 replicas sharing one Redis, against one simulator."""
        s, latency, report = self.sizes, self.latency, self.report
        n = s.small
        try:
            redis = RedisServer(self.workdir)
        except FileNotFoundError as exc:
            report.note(f"row 7: not measured: {exc}")
            return
        with redis:
            progress(f"simulator: {n:,} runs (10% active), {secs(latency)} latency")
            _, sim, workflows = self.bulk_simulator(
                "sim-replicas", s.small_per_workflow, 0.1, latency
            )
            results: list[rows.Replicated] = []
            for count in (1, 2, 3):
                progress(f"row 7: {count} replica(s) sharing Redis")
                doc = exporter_document(
                    sim.base_url,
                    workflows,
                    api={"max_concurrency": CONCURRENCY},
                    collector={
                        "refresh_interval_seconds": s.replica_refresh,
                        "up_check_interval_seconds": 60,
                    },
                )
                doc["state"] = {
                    "backend": "redis",
                    "redis": {"url": redis.url, "key_prefix": f"bench-{count}:"},
                }
                children = [self.exporter(f"replica-{count}-{i}", doc) for i in range(count)]
                results.append(
                    rows.replicated(
                        sim,
                        [port for _, port in children],
                        expected_runs=n,
                        refresh_interval=s.replica_refresh,
                        intervals=s.replica_intervals,
                        timeout_header=SCRAPE_TIMEOUT,
                    )
                )
                for child, _ in children:
                    self.procs.stop(child)
        self.replica_lines(results, n, latency)

    def slow_clients(self) -> None:
        """Row 8: slow clients against `--demo` (issue 17), at the default connection cap."""
        s, report = self.sizes, self.report
        port = free_port()
        child = self.procs.start(
            "exporter-demo",
            ["-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{port}"],
        )
        wait_until_answers(f"http://127.0.0.1:{port}/-/healthy", child)
        for _ in range(5):  # warm: every pool and thread the demo keeps exists
            scrape("127.0.0.1", port, timeout_header=SCRAPE_TIMEOUT)
        progress(f"row 8: {s.slow_clients:,} slow clients against the demo")
        attack = rows.slow_attack("127.0.0.1", port, child.pid, clients=s.slow_clients)
        after = thread_count(child.pid), proc_status(child.pid, "VmHWM")
        self.procs.stop(child)

        cap = DEFAULT_MAX_CONNECTIONS
        waves = math.ceil(attack.clients / cap)
        limit = waves * BUSY_DEADLINE_SECONDS
        answered = attack.scrape_seconds
        slowest = max(answered, default=math.inf)
        report.add(
            "8",
            f"Slow clients (issue 17): {num(attack.clients)} connections at once, each sending "
            "the start of a request line, then a byte a second, against `--demo` at the "
            f"default cap ({cap}): peak threads; peak RSS (idle); a scrape started every "
            f"0.25 s until every slow client was closed, p50 / max (answered); time until "
            "the last slow client was closed",
            f"{attack.peak_threads} threads; {mb(attack.peak_rss_mb)} ({mb(attack.idle_rss_mb)} "
            f"idle); p50 {secs(percentile(answered, 50)) if answered else '-'} / max "
            f"{secs(slowest)} ({len(answered)}/{len(answered) + attack.failed_scrapes}); "
            f"all {num(attack.cut)} closed in {secs(attack.cleared_seconds)}",
            f"{cap} + {attack.idle_threads} threads (cap + idle); a scrape queued behind "
            f"all of them: {waves} x {BUSY_DEADLINE_SECONDS:g} s = {secs(limit)}",
            f"before: {num(BEFORE_THREADS)} threads; {BEFORE_PEAK_MB} MB ({BEFORE_IDLE_MB} MB "
            f"idle); scrapes delayed up to {BEFORE_SCRAPE_SECONDS:g} s; slow clients never "
            "closed",
            f"threads ≤ {cap} + idle + {CONCURRENCY_DEMO} (refresh pool); every scrape "
            f"answered, max < {HEADER_DEADLINE_SECONDS:g} s (header deadline)",
            attack.peak_threads <= cap + attack.idle_threads + CONCURRENCY_DEMO
            and attack.failed_scrapes == 0
            and attack.cut == attack.clients
            and slowest < HEADER_DEADLINE_SECONDS,
        )
        report.note(
            f"row 8: {attack.idle_threads} threads before the attack (main, the demo's "
            "simulator, acceptors, deadline watchdogs, the refresh pool so far), "
            f"{after[0]} after; VmHWM {mb(after[1])} at the end. Slow clients accepted once "
            f"no one else waited had the {HEADER_DEADLINE_SECONDS:g} s header deadline, not "
            f"the {BUSY_DEADLINE_SECONDS:g} s one: that is most of the time to close them all"
        )

    def workspace(self) -> None:
        """Row 10: 1,000 discovered workflows at the default API budget, polling only
        and webhook-first, side by side (benchmarks/workspace.py)."""
        s = self.sizes
        progress(
            f"row 10: {s.workspace_workflows:,} workflows, polling only and webhook-first, "
            f"{s.workspace_seconds / 60:.0f} min"
        )
        modes = workspace.measure(self, s.workspace_workflows, s.workspace_seconds)
        for line in workspace.lines(modes, s.workspace_workflows, s.workspace_seconds):
            self.report.add("10", **line)
        self.report.note(workspace.note(modes))

    def insight(self) -> None:
        """Row 11: the cost of issue 14's features at 100,000 discovered runs, with and
        without them, side by side (benchmarks/insight.py)."""
        s = self.sizes
        progress(
            f"row 11: {s.discovered:,} discovered runs, with and without budgets and attribution"
        )
        result = insight.measure(self, s.discovered, s.insight_finished)
        for line in insight.lines(result):
            self.report.add("11", **line)
        self.report.note(
            f"row 11: both exporters counted {result.on.finished:,} and {result.off.finished:,} "
            f"finished runs; row 5 (re-measured in the same run) is the peak RSS at "
            f"{s.discovered:,} runs to compare with the figure before issue 14"
        )

    def status_page(self) -> None:
        """Row 9: the status page and /status.json of an exporter with 10,000 configured
        runs, before any run is fetched (every run a problem to sort and explain) and
        after the cold refresh."""
        s, report = self.sizes, self.report
        n = s.large
        progress(f"row 9: simulator with {n:,} runs, exporter watching them")
        _, sim, workflows = self.bulk_simulator("sim-status", s.large_per_workflow, 0.1, 0.0)
        doc = exporter_document(
            sim.base_url,
            workflows,
            api={"max_concurrency": CONCURRENCY},
            collector={"refresh_interval_seconds": 3600, "up_check_interval_seconds": 0},
        )
        child, port = self.exporter("exporter-status", doc)
        host, count = "127.0.0.1", s.warm_large
        floor = rows.timed_pages(host, port, "/-/healthy", count)
        timings: dict[tuple[str, str], rows.Timings] = {}
        for path in ("/", "/status.json"):
            timings[("cold", path)] = rows.timed_pages(host, port, path, count)
        progress(f"row 9: cold refresh of {n:,} runs, then the pages again")
        rows.cold_refresh(host, port, n, timeout_header=600)
        for path in ("/", "/status.json"):
            timings[("warm", path)] = rows.timed_pages(host, port, path, count)
        self.procs.stop(child)
        states = {
            "cold": f"before the first scrape (all {num(n)} never fetched: every run a problem)",
            "warm": f"after the cold refresh (all {num(n)} fetched)",
        }
        for (state, path), timing in timings.items():
            p99 = percentile(timing.seconds, 99)
            report.add(
                "9",
                f"Status page `{path}`, {num(n)} configured runs in {s.workflows} workflows, "
                f"{states[state]}: time to the whole answer ({num(timing.body_bytes)} bytes)",
                p50_p99(timing.seconds),
                p50_p99(floor.seconds) + " (`/-/healthy`, same exporter)",
                "",
                f"p99 < {secs(STATUS_TARGET_SECONDS)}",
                p99 < STATUS_TARGET_SECONDS,
            )
        report.note(
            f"row 9: {count} GETs of each page on a new connection each (p99 is "
            f"{rank_note(count).removeprefix('p99 is ')}); a page shows {MAX_RUNS_SHOWN} runs "
            "(problems first, then the newest) and counts the rest"
        )

    def replica_lines(self, results: list[rows.Replicated], n: int, latency: float) -> None:
        s, report = self.sizes, self.report
        one = results[0]
        one_cold, one_steady = api_calls(one.cold_calls), api_calls(one.steady_calls)
        for result in results:
            r = result.replicas
            cold, steady = api_calls(result.cold_calls), api_calls(result.steady_calls)
            within = cold <= 1.1 * one_cold and steady <= 1.1 * one_steady
            report.add(
                "7",
                f"{r} replica{'s' if r > 1 else ''} sharing one Redis, {num(n)} runs (10 % "
                f"active), {secs(latency)} latency, max_concurrency {CONCURRENCY} each: cold "
                "refresh (until every replica answers with every run fetched) and its calls; "
                f"then API calls per refresh interval ({s.replica_refresh:g} s, "
                f"{s.replica_intervals} intervals of real time, each replica scraped twice "
                "per interval)",
                f"cold {secs(result.cold_seconds)}, {num(cold)} calls; then "
                f"{num(steady / s.replica_intervals)} per interval "
                f"({call_mix(result.steady_calls)} in all; {result.active_runs} runs fetched, "
                f"at most {result.most_calls_to_one_run} times each)",
                f"cold {secs(rows.cold_limit(n, CONCURRENCY * r, latency))}, {num(n)} calls; "
                f"then {num(n // 10)} per interval",
                f"{num(n * r)} calls per scrape round (every replica fetches every run)",
                "calls within 10 % of 1 replica's" if r > 1 else "",
                within if r > 1 else None,
            )
        report.note(
            "row 7: the cold limit assumes the replicas' fetch pools add up, which 2 cores "
            "shared with the simulator and the replicas cannot give; a replica also shows "
            "the runs another replica fetched only after the leader has committed them"
        )


def rank_note(samples: int) -> str:
    """Which sample the nearest-rank p99 is."""
    from_top = samples - math.ceil(0.99 * samples) + 1
    if from_top == 1:
        return "p99 is the slowest"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(from_top % 10 if from_top > 20 else from_top, "th")
    return f"p99 is the {from_top}{suffix} slowest"


def call_mix(calls: dict[str, int]) -> str:
    parts = [f"{num(calls[e])} {e}" for e in ("list_runs", "get_run") if calls.get(e)]
    return ", ".join(parts) or "0 calls"


# --- output --------------------------------------------------------------------------


def exporter_version() -> str:
    """The commit measured, and whether exporter/ had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "exporter"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "unknown"
    if not commit:
        return "unknown"
    return f"{commit}, exporter/ with uncommitted changes" if dirty else commit


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def table_line(line: Line) -> str:
    met = {True: "yes", False: "**no**", None: ""}[line.met]
    cells = [line.row, line.measure, line.exporter, line.limit, line.naive, line.target, met]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def markdown(report: Report, quick: bool, seconds: float, load_before: str) -> str:
    m = machine()
    out = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `python -m benchmarks"
        f"{' --quick' if quick else ''}` in {seconds:.0f} s, exporter at {exporter_version()}.",
        "",
        f"Machine: {m['cores']} cores (`os.cpu_count()`), {m['cpu']} (`/proc/cpuinfo`), "
        f"{m['memory']} RAM, {m['python']}, {m['os']}. Load average (1/5/15 min) "
        f"{load_before} before the run, {load_average()} after: the simulator and the "
        "exporter share these cores, and anything else running adds noise to the timings.",
        "",
        "| # | Measure | Exporter | Limit | Naive baseline | Target | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    for line in sorted(report.lines, key=lambda line: int(line.row)):  # stable: in row order
        out.append(table_line(line))
    if report.notes:
        out += ["", "Notes from this run:", ""]
        by_row = sorted(report.notes, key=lambda note: note.split(":", 1)[0])
        out += [f"- {note}" for note in by_row]
    if quick:
        out += ["", "_Quick run: sizes reduced, not the figures of record._"]
    return "\n".join(out) + "\n"


_BLOCK = re.compile(re.escape(MARK_START) + "\n?(.*?)" + re.escape(MARK_END), re.DOTALL)
_TABLE_ROW = re.compile(r"^\| (\d+) \|")
_NOTE_ROW = re.compile(r"^- row (\d+):")


def update_file(path: Path, table: str) -> None:
    text = path.read_text(encoding="utf-8")
    if not _BLOCK.search(text):
        raise SystemExit(f"{path} has no {MARK_START} ... {MARK_END} block")
    path.write_text(
        _BLOCK.sub(lambda _: f"{MARK_START}\n{table}{MARK_END}", text), encoding="utf-8"
    )


def merge_rows(recorded: str, report: Report, measured: set[str], provenance: str) -> str:
    """The recorded results with the rows in `measured`, and their notes, replaced by
    this run's (for phases run on their own); the other rows stay as recorded."""
    lines = recorded.splitlines()
    table = [i for i, line in enumerate(lines) if _TABLE_ROW.match(line)]
    if not table:
        raise SystemExit("the recorded results have no table to merge into")
    kept = [lines[i] for i in table if _TABLE_ROW.match(lines[i]).group(1) not in measured]
    new = [table_line(line) for line in report.lines]
    rows_in_order = sorted(kept + new, key=lambda line: int(_TABLE_ROW.match(line).group(1)))
    notes = [
        line
        for line in lines
        if _NOTE_ROW.match(line) and _NOTE_ROW.match(line).group(1) not in measured
    ]
    notes += [f"- {note}" for note in [*report.notes, provenance]]
    notes.sort(key=lambda note: int(_NOTE_ROW.match(note).group(1)))  # stable
    before = lines[: table[0]]
    after = [line for line in lines[table[-1] + 1 :] if not _NOTE_ROW.match(line)]
    if "Notes from this run:" not in after:
        after += ["", "Notes from this run:", ""]
    at = after.index("Notes from this run:") + 2
    merged = before + rows_in_order + after[:at] + notes + after[at:]
    return "\n".join(merged).rstrip("\n") + "\n"


def merge_file(path: Path, report: Report, measured: set[str], provenance: str) -> None:
    text = path.read_text(encoding="utf-8")
    match = _BLOCK.search(text)
    if not match:
        raise SystemExit(f"{path} has no {MARK_START} ... {MARK_END} block")
    block = merge_rows(match.group(1), report, measured, provenance)
    path.write_text(
        text[: match.start()] + f"{MARK_START}\n{block}{MARK_END}" + text[match.end() :]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--latency", type=float, default=0.05, help="simulated API latency, s")
    parser.add_argument(
        "--only",
        default=",".join(PHASE_ROWS),
        help="phases to run (comma-separated): configured (rows 1, 2, 3, 6), large (rows 3 "
        "and 5 at 10,000 runs), discovery (rows 4 and 5), replicas (row 7, needs "
        "redis-server), slow_clients (row 8), status (row 9), workspace (row 10: 1,000 "
        "workflows at the default budget, 10 minutes), insight (row 11: budgets and "
        "attribution at 100,000 discovered runs)",
    )
    parser.add_argument(
        "--update",
        metavar="FILE",
        help="write the results into FILE's block; with --only, replace only the rows "
        "of those phases",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",")]
    unknown = [name for name in chosen if name not in PHASE_ROWS]
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASE_ROWS)}")
    measured = set().union(*(PHASE_ROWS[name] for name in chosen))
    partial = set(chosen) != set(PHASE_ROWS)
    if args.update and partial:
        shared = measured & set().union(
            *(rows_ for name, rows_ in PHASE_ROWS.items() if name not in chosen)
        )
        if shared:
            parser.error(
                "--update with --only replaces whole rows: add the other phases that write "
                f"row(s) {', '.join(sorted(shared))}"
            )
        if args.quick:
            parser.error("--update with --only takes full-size results, not --quick ones")
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    load_before = load_average()
    if os.getloadavg()[0] > 0.5:
        progress(f"note: the machine is busy (load average {load_before}); timings will be noisy")
    with tempfile.TemporaryDirectory(prefix="copyai-bench-") as tmp, Processes(Path(tmp)) as procs:
        bench = Bench(procs, Path(tmp), sizes, args.latency)
        phases = {
            "configured": bench.configured_runs,
            "large": bench.large_configured,
            "discovery": bench.discovered_runs,
            "replicas": bench.replicas,
            "slow_clients": bench.slow_clients,
            "status": bench.status_page,
            "workspace": bench.workspace,
            "insight": bench.insight,
        }
        try:
            for name in chosen:
                phases[name]()
                procs.stop_all()  # each phase's simulators
        except Exception:
            print(procs.log_tails(), file=sys.stderr)
            raise
    seconds = time.monotonic() - started
    table = markdown(bench.report, args.quick, seconds, load_before)
    print(table)
    if args.update and partial:
        rows_text = ", ".join(sorted(measured, key=int))
        provenance = (
            f"row {rows_text}: measured on its own by `python -m benchmarks --only "
            f"{','.join(chosen)}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s, "
            f"exporter at {exporter_version()}, same machine; load average {load_before} "
            f"before, {load_average()} after"
        )
        merge_file(Path(args.update), bench.report, measured, provenance)
    elif args.update:
        update_file(Path(args.update), table)
    failed = [line for line in bench.report.lines if line.met is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
