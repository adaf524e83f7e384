"""The SQLite state store for real: round trips, kill -9 in the middle of writes, files
that are not databases, and restarts of the real command line that continue counters
without replaying history."""

from __future__ import annotations

import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from exporter.api.records import RunStatus
from exporter.tracking.book import HistoryBook
from exporter.tracking.persistence import MemoryStore, SqliteStore, StateError
from tests.support.exporters import API_KEY, make_config
from tests.support.polling import wait_for
from tests.support.processes import LISTENING, Process, run_cli
from tests.support.samples import Samples, parse_samples, sample

REPO = Path(__file__).resolve().parents[1]
WF = "WCFG-persist"


def meta(n: int, **extra) -> dict:
    return {"n": n, "watch_start": 1_000.0, **extra}


def run(run_id: str, **extra) -> dict:
    return {"run_id": run_id, "status": "COMPLETE", **extra}


# --- SqliteStore -----------------------------------------------------------------------


def test_sqlite_round_trip_and_removed_runs_are_deleted(tmp_path):
    path = str(tmp_path / "state.db")
    store = SqliteStore(path)
    try:
        assert store.load() == {}
        store.save(
            [
                (WF, meta(1), [run("r1"), run("r2", credits=2.5), run("r3")], []),
                ("WCFG-other", meta(2, nested={"a": [1, None]}), [run("o1")], []),
            ]
        )
        loaded = store.load()
        assert set(loaded) == {WF, "WCFG-other"}
        assert loaded[WF][0] == meta(1)
        assert sorted(loaded[WF][1], key=lambda r: r["run_id"]) == [
            run("r1"),
            run("r2", credits=2.5),
            run("r3"),
        ]
        assert loaded["WCFG-other"] == (meta(2, nested={"a": [1, None]}), [run("o1")])

        # meta None keeps the stored meta; changed runs replace; removed ones go
        store.save([(WF, None, [run("r1", status="FAILED")], ["r2", "never-stored"])])
        loaded = store.load()
        assert loaded[WF][0] == meta(1)
        assert sorted(r["run_id"] for r in loaded[WF][1]) == ["r1", "r3"]
        assert next(r for r in loaded[WF][1] if r["run_id"] == "r1")["status"] == "FAILED"
        # a removal names its workflow: the other workflow's runs are untouched
        store.save([("WCFG-other", None, [], ["r1", "r3"])])
        assert sorted(r["run_id"] for r in store.load()[WF][1]) == ["r1", "r3"]

        # a second store on the same file, while the first is open, sees the same data
        second = SqliteStore(path)
        try:
            assert second.load() == store.load()
            second.save([(WF, meta(3), [], ["r3"])])
        finally:
            second.close()
        loaded = store.load()
        assert loaded[WF] == (meta(3), [run("r1", status="FAILED")])

        store.delete_workflows(["WCFG-other", "WCFG-unknown"])
        assert set(store.load()) == {WF}
        store.save([])  # nothing to write is fine
    finally:
        store.close()

    reopened = SqliteStore(path)
    try:
        assert reopened.load() == {WF: (meta(3), [run("r1", status="FAILED")])}
    finally:
        reopened.close()


def test_runs_without_a_workflow_row_are_not_loaded(tmp_path):
    path = str(tmp_path / "state.db")
    store = SqliteStore(path)
    try:
        store.save([(WF, None, [run("orphan")], [])])
        assert store.load() == {}
    finally:
        store.close()


def test_history_book_persists_and_restores_through_sqlite(tmp_path):
    path = str(tmp_path / "state.db")
    config = make_config(
        {
            "api": {"base_url": "http://127.0.0.1:1/api"},
            "workflows": [{"id": WF, "discover": True}],
        }
    )
    book = HistoryBook(SqliteStore(path), wall_clock=lambda: 1_000.0)
    book.configure(config)
    h = book.get(WF)
    assert h is not None
    h.observe("a", when=1_010.0, status=RunStatus.PROCESSING, created_at=1_001.0)
    h.observe("a", when=1_040.0, status=RunStatus.COMPLETE, credits=3.0)
    h.observe("b", when=1_040.0, status=RunStatus.RETRYING, created_at=1_030.0)
    h.observe("old", when=1_040.0, status=RunStatus.COMPLETE, created_at=900.0)
    book.flush()
    h.drop("old")
    book.close()

    later = HistoryBook(SqliteStore(path), wall_clock=lambda: 5_000.0)
    try:
        later.configure(config)
        restored = later.get(WF)
        assert restored is not None
        assert restored.watch_start == 1_000.0
        assert set(restored.runs) == {"a", "b"}
        assert restored.snapshot() == h.snapshot()
        restored.observe("a", when=5_000.0, status=RunStatus.COMPLETE, credits=3.0)
        assert restored.values["finished"] == 1
        assert restored.values["credits"] == 3.0
    finally:
        later.close()


# --- kill -9 while writing -------------------------------------------------------------

WRITER = """
import sys
from exporter.tracking.persistence import SqliteStore

MAX_RUNS = 400
store = SqliteStore(sys.argv[1])
pad = "x" * 400
k = 0
while True:
    k = k % MAX_RUNS + 1
    runs = [{"run_id": f"r{i}", "k": k, "pad": pad} for i in range(k)]
    stale = [f"r{i}" for i in range(k, MAX_RUNS)]
    store.save([("WCFG-kill", {"n": k}, runs, stale)])
    print(f"wrote {k}", flush=True)
"""


class Writer:
    """The writer script in a subprocess; its stdout lines are collected as they come."""

    def __init__(self, script: Path, db: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(db)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.commits = 0
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def committed(self, at_least: int) -> bool:
        while not self.lines.empty():
            if self.lines.get().startswith("wrote "):
                self.commits += 1
        if self.proc.poll() is not None and self.lines.empty():
            assert self.proc.stderr is not None
            pytest.fail(f"writer exited {self.proc.returncode}: {self.proc.stderr.read()}")
        return self.commits >= at_least

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.pump.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.kill()


def test_kill_9_during_writes_leaves_the_last_complete_transaction(tmp_path, writers):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = tmp_path / "state.db"
    seen_n: set[int] = set()
    for commits in (1, 3, 8, 20, 45):
        writer = Writer(script, db)
        writers.append(writer)
        wait_for(lambda w=writer, c=commits: w.committed(c), timeout=20, interval=0.001)
        writer.kill()
        assert writer.proc.returncode == -signal.SIGKILL

        store = SqliteStore(str(db))
        try:
            loaded = store.load()
        finally:
            store.close()
        assert set(loaded) == {"WCFG-kill"}
        meta_record, runs = loaded["WCFG-kill"]
        n = meta_record["n"]
        assert n >= 1
        assert len(runs) == n, f"meta says {n} runs, {len(runs)} stored"
        assert sorted(r["run_id"] for r in runs) == sorted(f"r{i}" for i in range(n))
        assert {r["k"] for r in runs} == {n}  # every row from that same transaction
        seen_n.add(n)

    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    assert len(seen_n) > 1  # the kills landed at different points


# --- files that cannot be used -----------------------------------------------------------


def test_a_file_that_is_not_sqlite_raises_state_error(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(StateError, match=re.escape(str(path))):
        SqliteStore(str(path))
    assert path.read_bytes() == bytes(range(256)) * 64  # left as it was


def test_a_state_file_of_another_schema_version_raises_state_error(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    db.close()
    with pytest.raises(StateError, match="schema version 2"):
        SqliteStore(str(path))


def write_config(path: Path, base_url: str, workflow: str, state: Path | None) -> None:
    text = (
        f"api:\n  base_url: {base_url}\n  max_requests_per_second: 0\n"
        f"collector:\n  refresh_interval_seconds: 0\n"
        f"workflows:\n  - id: {workflow}\n    name: persistence-test\n    discover: true\n"
    )
    if state is not None:
        text += f"state:\n  path: {state}\n"
    path.write_text(text)


def test_cli_exits_1_when_the_state_file_is_not_a_database(tmp_path):
    state = tmp_path / "state.db"
    state.write_bytes(b"\x00garbage, not SQLite\xff" * 300)
    config = tmp_path / "config.yaml"
    write_config(config, "http://127.0.0.1:1/api", WF, state)
    result = run_cli(
        "--config.file",
        str(config),
        "--web.listen-address",
        "127.0.0.1:0",
        env={"COPYAI_API_KEY": API_KEY},
    )
    assert result.returncode == 1, result.stderr
    assert f"cannot use state file {state}" in result.stderr
    assert "move the file away" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stderr


# --- restarts of the real command line ---------------------------------------------------


@pytest.fixture
def spawn() -> Iterator:
    started: list[Process] = []

    def start(config: Path) -> Process:
        process = Process(
            ["--config.file", str(config), "--web.listen-address", "127.0.0.1:0"],
            {"COPYAI_API_KEY": API_KEY},
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
        for stream in (process.proc.stdout, process.proc.stderr):
            if stream is not None:
                stream.close()


def scrape(url: str) -> Samples:
    response = requests.get(f"{url}/metrics", timeout=15)
    response.raise_for_status()
    return parse_samples(response.text)


COUNTERS = (
    "copyai_workflow_runs_created_total",
    "copyai_workflow_runs_finished_total",
    "copyai_workflow_runs_failed_total",
    "copyai_workflow_runs_retried_total",
    "copyai_workflow_run_credits_total",
    "copyai_workflow_run_duration_seconds_count",
    "copyai_workflow_run_duration_seconds_sum",
    "copyai_workflow_last_success_timestamp_seconds",
    "copyai_workflow_last_failure_timestamp_seconds",
)


def counters(samples: Samples) -> dict[str, float | None]:
    return {name: sample(samples, name, workflow_id=WF) for name in COUNTERS}


def status_count(samples: Samples, status: str) -> float | None:
    return sample(samples, "copyai_workflow_runs", workflow_id=WF, status=status)


def test_restart_continues_counters_without_replaying_history(sim, world, spawn, tmp_path):
    world.add_workflow("persistence", WF)
    baseline_ok = [
        world.add_run(WF, [("COMPLETE", None)], age_seconds=age, credits=5)
        for age in (3_600, 1_800, 600)
    ]
    baseline_failed = world.add_run(WF, [("FAILED", None)], age_seconds=300, credits=1)
    config = tmp_path / "config.yaml"
    write_config(config, sim.base_url, WF, tmp_path / "state.db")

    first = spawn(config)
    url = first.wait_for_line(LISTENING).group(1)
    samples = wait_for(
        lambda: (s := scrape(url)) and status_count(s, "COMPLETE") == 3 and s, timeout=15
    )
    assert status_count(samples, "FAILED") == 1
    values = counters(samples)
    for name in COUNTERS[:6]:
        assert values[name] == 0, name  # baseline: nothing is an event
    # baseline runs set the last success and failure to their createdAt (ms precision)
    assert values["copyai_workflow_last_success_timestamp_seconds"] == pytest.approx(
        baseline_ok[-1].created_at, abs=0.001
    )
    assert values["copyai_workflow_last_failure_timestamp_seconds"] == pytest.approx(
        baseline_failed.created_at, abs=0.001
    )

    for steps, credits in (
        ([("PROCESSING", 0.5), ("COMPLETE", None)], 3),
        ([("NEW", 0.2), ("PROCESSING", 0.4), ("COMPLETE", None)], 4),
        ([("PROCESSING", 0.3), ("FAILED", None)], 2),
    ):
        world.add_run(WF, steps, credits=credits)
    samples = wait_for(
        lambda: (
            (s := scrape(url))
            and sample(s, "copyai_workflow_runs_finished_total", workflow_id=WF) == 3
            and s
        ),
        timeout=15,
    )
    recorded = counters(samples)
    assert recorded["copyai_workflow_runs_created_total"] == 3
    assert recorded["copyai_workflow_runs_failed_total"] == 1
    assert recorded["copyai_workflow_run_credits_total"] == 9
    assert recorded["copyai_workflow_run_duration_seconds_count"] == 3
    assert recorded["copyai_workflow_run_duration_seconds_sum"] >= 0.3 + 0.5 + 0.6 - 0.01
    assert status_count(samples, "COMPLETE") == 5
    assert status_count(samples, "FAILED") == 2
    assert sample(samples, "copyai_state_backend_up") == 1
    assert first.stop() == 0
    assert "Traceback" not in first.log_text()

    second = spawn(config)
    url = second.wait_for_line(LISTENING).group(1)
    assert "restored history workflow_id=WCFG-persist runs=7" in second.log_text()
    for _ in range(3):  # several refreshes: nothing replayed, nothing lost
        samples = scrape(url)
        assert counters(samples) == recorded
        assert sample(samples, "copyai_state_backend_up") == 1
        assert status_count(samples, "COMPLETE") == 5
        assert status_count(samples, "FAILED") == 2

    world.add_run(WF, [("PROCESSING", 0.3), ("COMPLETE", None)], credits=6)
    samples = wait_for(
        lambda: (
            (s := scrape(url))
            and sample(s, "copyai_workflow_runs_finished_total", workflow_id=WF) == 4
            and s
        ),
        timeout=15,
    )
    after = counters(samples)
    assert after["copyai_workflow_runs_created_total"] == 4
    assert after["copyai_workflow_runs_failed_total"] == 1
    assert after["copyai_workflow_runs_retried_total"] == 0
    assert after["copyai_workflow_run_credits_total"] == 9 + 6
    assert after["copyai_workflow_run_duration_seconds_count"] == 4
    assert (
        after["copyai_workflow_last_failure_timestamp_seconds"]
        == (recorded["copyai_workflow_last_failure_timestamp_seconds"])
    )
    assert (
        after["copyai_workflow_last_success_timestamp_seconds"]
        > (recorded["copyai_workflow_last_success_timestamp_seconds"])
    )
    assert second.stop() == 0
    assert "Traceback" not in second.log_text()


def test_without_state_path_history_is_kept_in_memory(sim, world, spawn, tmp_path):
    world.add_workflow("persistence", WF)
    config = tmp_path / "config.yaml"
    write_config(config, sim.base_url, WF, None)
    process = spawn(config)
    url = process.wait_for_line(LISTENING).group(1)
    assert "kept in memory" in process.log_text()
    assert "no state.path configured" in process.log_text()
    assert sample(scrape(url), "copyai_state_backend_up") == 1
    assert process.stop() == 0
    assert not list(tmp_path.glob("*.db"))


def test_memory_store_keeps_nothing():
    store = MemoryStore()
    store.save([(WF, meta(1), [run("r1")], [])])
    assert store.load() == {}
