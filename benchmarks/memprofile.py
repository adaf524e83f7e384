"""Where the memory of row 5 goes: `python -m benchmarks.memprofile [--runs 10000]`.

1. The exporter as deployed (its own process), VmRSS/VmHWM after start, after the first
   complete refresh and render, and over further scrapes; again with glibc's
   allocator pinned (MALLOC_MMAP_THRESHOLD_, MALLOC_ARENA_MAX) to tell the exporter's
   own peak from the allocator keeping freed memory of per-request threads.
2. The exporter in this process under tracemalloc: Python heap retained and peak per
   phase, attributed to the innermost exporter/ line of each allocation.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

import exporter.tracking.refresh
from benchmarks import rows
from benchmarks.harness import API_KEY, Processes, exporter_document, proc_status, scrape
from benchmarks.run import CONCURRENCY, FULL, Bench
from exporter.config import build_config
from exporter.runtime import Exporter
from exporter.tracking.persistence import MemoryStore
from exporter.web.app import ExporterApp, WebOptions

ALLOCATOR_SETTINGS = {
    "glibc defaults": {},
    "MALLOC_MMAP_THRESHOLD_=131072": {"MALLOC_MMAP_THRESHOLD_": "131072"},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
}


def by_line(snapshot: tracemalloc.Snapshot, base: tracemalloc.Snapshot | None, top: int) -> None:
    stats = snapshot.compare_to(base, "traceback") if base else snapshot.statistics("traceback")
    sizes: collections.Counter[str] = collections.Counter()
    for stat in stats:
        where = "(no exporter/ frame)"
        for frame in reversed(stat.traceback):  # innermost first
            if "/exporter/" in frame.filename:
                where = f"exporter/{frame.filename.rsplit('/exporter/', 1)[1]}:{frame.lineno}"
                break
        sizes[where] += stat.size_diff if base else stat.size
    for where, size in sizes.most_common(top):
        print(f"    {size / 1e6:7.2f} MB  {where}")


def processes(bench: Bench, document: dict, runs: int) -> None:
    print(f"\n1. The exporter process, {runs:,} configured runs (VmRSS / VmHWM, MB)")
    shown_labels: list[str] = []
    for label, env in ALLOCATOR_SETTINGS.items():
        child, port = bench.exporter(f"exporter-{len(shown_labels)}", document, env)
        shown_labels.append(label)

        def mark(what: str, pid: int = child.pid) -> str:
            rss, hwm = proc_status(pid, "VmRSS"), proc_status(pid, "VmHWM")
            return f"{what} {rss:.0f}/{hwm:.0f}"

        shown = [mark("started")]
        rows.cold_refresh("127.0.0.1", port, runs, timeout_header=600)
        shown.append(mark("first refresh + render"))
        for what, scrapes in (("+3 scrapes", 3), ("+30 scrapes", 27)):
            for i in range(scrapes):
                scrape("127.0.0.1", port, gzip_ok=i % 2 == 0, timeout=600)
            shown.append(mark(what))
        print(f"  {label:32s} " + ", ".join(shown))
        bench.procs.stop(child)


def heap(document: dict) -> None:
    print("\n2. Python heap (tracemalloc), the exporter in this process")
    config = build_config(document, source="memprofile", env={"COPYAI_API_KEY": API_KEY})
    tracemalloc.start(40)
    exp = Exporter(config, state_store=MemoryStore(), process_metrics=False)
    app = ExporterApp(exp, WebOptions(), lambda: (True, ""))
    gc.collect()
    base = tracemalloc.take_snapshot()
    built, _ = tracemalloc.get_traced_memory()
    print(f"  exporter built: {built / 1e6:.1f} MB")

    real_wait = concurrent.futures.wait
    seen: dict[str, tracemalloc.Snapshot] = {}

    def spy(fs, timeout=None, **kwargs):  # the refresh waiting for its fetches
        if "refresh" not in seen and len(fs) > 100:
            seen["refresh"] = tracemalloc.take_snapshot()
        return real_wait(fs, timeout=timeout, **kwargs)

    exporter.tracking.refresh.concurrent.futures.wait = spy  # type: ignore[attr-defined]
    tracemalloc.reset_peak()
    try:
        exp.refresh(time.monotonic() + 600)
    finally:
        exporter.tracking.refresh.concurrent.futures.wait = real_wait  # type: ignore[attr-defined]
    current, peak = tracemalloc.get_traced_memory()
    print(f"  cold refresh: peak {peak / 1e6:.1f} MB, then {current / 1e6:.1f} MB retained")
    if "refresh" in seen:
        print("  growth while the refresh waits for its fetches (all submitted at once):")
        by_line(seen["refresh"], base, 5)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS": "10",
    }
    for encoding in ("gzip", ""):
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        body = app({**environ, "HTTP_ACCEPT_ENCODING": encoding}, lambda *a, **k: None)
        _, peak = tracemalloc.get_traced_memory()
        size = sum(map(len, body))
        print(
            f"  /metrics ({encoding or 'identity'}, {size / 1e6:.1f} MB answer): "
            f"{before / 1e6:.1f} MB before, peak {peak / 1e6:.1f} MB (+{(peak - before) / 1e6:.1f})"
        )
        del body
    gc.collect()
    retained, _ = tracemalloc.get_traced_memory()
    print(f"  retained between scrapes: {retained / 1e6:.1f} MB, by line:")
    by_line(tracemalloc.take_snapshot(), None, 12)
    tracemalloc.stop()
    exp.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-per-workflow", type=int, default=1000, help="10 workflows")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="copyai-memprofile-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        bench = Bench(procs, Path(tmp), FULL, 0.0)
        _, sim, workflows = bench.bulk_simulator("sim", args.runs_per_workflow, 0.1, 0.0)
        document = exporter_document(
            sim.base_url,
            workflows,
            api={"max_concurrency": CONCURRENCY},
            collector={"refresh_interval_seconds": 3600, "up_check_interval_seconds": 0},
        )
        runs = sum(len(w["runs"]) for w in workflows)
        processes(bench, document, runs)
        heap(document)


if __name__ == "__main__":
    main()
