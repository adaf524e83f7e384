"""Row 11 (issue 14): what queue wait, wasted credits, budgets and attribution cost at
100,000 discovered runs. Two exporters follow the same 100,000-run workflow of row 4
side by side: one with a credit budget over it and two attribution keys, one without
(the histograms of queue wait, processing and credits are always on, so the "without"
process carries them too; row 5 re-measured is the figure from before issue 14). Once
both have the first complete picture, runs finish while they watch, with 500 customers
and 7 teams in their metadata and input (more values than max_values_per_key admits),
until both have counted every one. Then both are scraped in turn, and their peak RSS,
scrape time and series are set side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.harness import Child, percentile, proc_status, samples, scrape, tracked_runs

if TYPE_CHECKING:
    from benchmarks.run import Bench

KEYS = ["metadata.customer", "input.team"]
MAX_VALUES = 20
CUSTOMERS, TEAMS = 500, 7
SCRAPES = 200  # per exporter, alternating
SCRAPE_TARGET = 0.050  # p99, as row 3's warm scrapes
TARGET_RATIO = 1.10  # at most 10 % more memory than without the features


@dataclass(frozen=True)
class Measured:
    hwm_mb: float  # VmHWM after the first picture, the finished runs and the scrapes
    p50: float
    p99: float
    wire_bytes: int
    series: int  # samples in one scrape
    feature_series: int  # of those, the budget and by-attribute ones
    finished: int  # runs counted as finished


@dataclass(frozen=True)
class Result:
    runs: int
    finished_runs: int
    on: Measured
    off: Measured


def measure(bench: Bench, runs: int, finished_runs: int) -> Result:
    """Both exporters against one simulator of `runs` runs (0 ms latency), then
    `finished_runs` runs that finish while they watch."""
    sim_child, sim, info = bench.discovery_simulator("sim-insight", runs, 0.0)
    workflow_id = info["workflow_id"]
    base = {
        "discover": True,
        "discovery": {
            "page_size": 100,
            "max_tracked_runs": runs + finished_runs,
            "window_seconds": 30 * 86400,
            "max_pages_per_refresh": 1000,
        },
    }
    document = {
        "api": {"base_url": sim.base_url, "max_concurrency": 32, "max_requests_per_second": 0},
        "collector": {"refresh_interval_seconds": 5, "up_check_interval_seconds": 0},
        "workflows": [{"id": workflow_id, **base}],
    }
    with_features = {
        **document,
        "budgets": [{"name": "all", "credits": 1_000_000, "period": "month", "workflows": "*"}],
        "attribution": {"keys": KEYS, "max_values_per_key": MAX_VALUES},
    }
    off = bench.exporter("exporter-insight-off", document)
    on = bench.exporter("exporter-insight-on", with_features)
    for _, port in (off, on):
        _wait(lambda p=port: tracked_runs(_text(p)) >= runs, "the first complete picture")
    for i in range(finished_runs):
        sim.add_run(
            workflow_id,
            [["NEW", 0.5], ["PROCESSING", 1], ["FAILED" if i % 10 == 0 else "COMPLETE", None]],
            credits=1 + i % 40,
            metadata={"customer": f"customer-{i % CUSTOMERS}"},
            input={"team": f"team-{i % TEAMS}"},
        )
    for _, port in (off, on):
        _wait(lambda p=port: _finished(_text(p)) >= finished_runs, "every new run counted")
    seconds: dict[int, list[float]] = {off[1]: [], on[1]: []}
    last = {}
    for _ in range(SCRAPES):
        for _, port in (off, on):
            answer = scrape("127.0.0.1", port, gzip_ok=True, timeout_header=10, timeout=120)
            seconds[port].append(answer.seconds)
            last[port] = answer
    result = Result(
        runs,
        finished_runs,
        on=_measured(on, seconds[on[1]], last[on[1]]),
        off=_measured(off, seconds[off[1]], last[off[1]]),
    )
    for child, _ in (off, on):
        bench.procs.stop(child)
    bench.procs.stop(sim_child)
    return result


def _text(port: int) -> str:
    return scrape("127.0.0.1", port, timeout_header=600, timeout=700).text


def _finished(text: str) -> int:
    return round(sum(v for _, v in samples(text, "copyai_workflow_runs_finished_total")))


def _wait(done, what: str, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"row 11: no {what} within {timeout:.0f} s")
        time.sleep(1.0)  # between whole scrapes of a 100,000-run exporter


FEATURE_PREFIXES = (
    "copyai_credit_budget_",
    "copyai_workflow_run_credits_by_attribute",
    "copyai_workflow_runs_finished_by_attribute",
)


def _measured(process: tuple[Child, int], times: list[float], last) -> Measured:
    child, _ = process
    lines = [line for line in last.text.splitlines() if line and not line.startswith("#")]
    return Measured(
        hwm_mb=proc_status(child.pid, "VmHWM"),
        p50=percentile(times, 50),
        p99=percentile(times, 99),
        wire_bytes=last.wire_bytes,
        series=len(lines),
        feature_series=sum(1 for line in lines if line.startswith(FEATURE_PREFIXES)),
        finished=_finished(last.text),
    )


def bound(workflows: int = 1) -> int:
    """Series the features may add at most: per workflow and key, max_values + 2 values
    (__none__, __other__), each one credits series and two finished series (COMPLETE,
    FAILED); per budget, four gauges."""
    return workflows * len(KEYS) * (MAX_VALUES + 2) * 3 + 4


def lines(result: Result) -> list[dict[str, object]]:
    on, off = result.on, result.off
    setting = (
        f"{result.runs:,} discovered runs and {result.finished_runs:,} more finished while "
        f"watched ({CUSTOMERS} customers, {TEAMS} teams), one budget, attribution by "
        f"{len(KEYS)} keys (max_values_per_key {MAX_VALUES})"
    )
    return [
        dict(
            measure=f"Queue, waste, budgets, attribution (issue 14): {setting}: warm scrape, "
            f"gzip, p50 / p99 (n={SCRAPES}), with the features vs without",
            exporter=f"p50 {_ms(on.p50)} / p99 {_ms(on.p99)} ({on.wire_bytes:,} bytes): "
            f"{_ms(on.p50 - off.p50)} more at p50",
            limit=f"p50 {_ms(off.p50)} / p99 {_ms(off.p99)} ({off.wire_bytes:,} bytes), without",
            naive="",
            target=f"p99 ≤ {_ms(SCRAPE_TARGET)} (row 3's target)",
            met=on.p99 <= SCRAPE_TARGET,
        ),
        dict(
            measure="… peak RSS (VmHWM) with the features vs without",
            exporter=f"{on.hwm_mb:.1f} MB",
            limit=f"{off.hwm_mb:.1f} MB, without",
            naive="",
            target=f"≤ {TARGET_RATIO:.1f} x without",
            met=on.hwm_mb <= off.hwm_mb * TARGET_RATIO,
        ),
        dict(
            measure="… series in one scrape, and those of budgets and attribution",
            exporter=f"{on.series:,} ({on.feature_series} of the features)",
            limit=f"{off.series:,} without; at most {bound()} of the features",
            naive="",
            target="bounded whatever the values",
            met=on.feature_series <= bound() and on.finished == off.finished,
        ),
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
