"""The real exporter against the simulator misbehaving in every way an API can: refused
connections, a server that accepts and hangs, a body that trickles in, flapping 5xx,
429 with Retry-After (seconds and HTTP date), HTML error pages, truncated JSON, the
wrong shape, the wrong types, a 50 MB body, a gzip bomb, a redirect to another host.

Each test checks, for its fault: /metrics keeps answering 200; the runs' last known
values (status, credits, created) do not move; copyai_workflow_run_fetch_success is 0
and copyai_up follows its settled meaning (0 for no answer or only 5xx, 1 when the API
answered at all); one "run fetch failed" log line per run and change of error, however
many scrapes; and once the fault is cleared, recovery by itself within a few scrapes
with one "recovered" line per run.

Settings: refresh_interval_seconds 0 (every scrape fetches every run), timeout_seconds 1,
max_retries 0 unless a test says otherwise, no client-side rate limit, and the default
max_response_bytes (4 MiB).
"""

from __future__ import annotations

import collections
import email.utils
import gc
import json
import logging
import math
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from exporter.sim.faults import gzip_bomb
from exporter.sim.http import RunningSimulator
from exporter.sim.world import World
from tests.support.exporters import API_KEY, RunningExporter, make_config
from tests.support.polling import wait_for
from tests.support.samples import Samples, parse_samples, sample

WORKFLOW = "WCFG-faults"
SCRAPES_DURING_FAULT = 3
MAX_SCRAPES_TO_RECOVER = 3
SCRAPE_BUDGET_SECONDS = 10.0  # WebOptions' default: these scrapes send no timeout header
MAX_RESPONSE_BYTES = 4 * 1024 * 1024  # the api.max_response_bytes default
RUN_VALUE_FAMILIES = (
    "copyai_workflow_run_status",
    "copyai_workflow_run_credits",
    "copyai_workflow_run_created_timestamp_seconds",
)
FAILED = "run fetch failed"
RECOVERED = "run fetch recovered"

Values = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Harness:
    """The simulator, an exporter watching `runs` of WORKFLOW, and the captured log."""

    sim: RunningSimulator
    world: World
    running: RunningExporter
    runs: list[str]
    caplog: pytest.LogCaptureFixture
    baseline: Values
    baseline_samples: Samples

    def scrape(self) -> Samples:
        """One scrape, as Prometheus makes it: (a) it answers 200 within the budget."""
        started = time.monotonic()
        response = requests.get(f"{self.running.url}/metrics", timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert elapsed < SCRAPE_BUDGET_SECONDS, f"scrape took {elapsed:.2f}s"
        return parse_samples(response.text)

    def values(self, samples: Samples) -> Values:
        """The runs' status, credits and created series (not age: it moves with the clock)."""
        return {
            key: value
            for key, value in samples.items()
            if key[0] in RUN_VALUE_FAMILIES and dict(key[1]).get("run_id") in self.runs
        }

    def fetch_success(self, samples: Samples) -> dict[str, float | None]:
        return {
            run_id: sample(
                samples, "copyai_workflow_run_fetch_success", workflow_id=WORKFLOW, run_id=run_id
            )
            for run_id in self.runs
        }

    def log_counts(self, text: str) -> collections.Counter[str]:
        """Captured log records containing `text`, per run."""
        counts: collections.Counter[str] = collections.Counter()
        for record in self.caplog.records:
            message = record.getMessage()
            assert API_KEY not in message
            if text in message:
                for run_id in self.runs:
                    if f"run_id={run_id} " in message or message.endswith(f"run_id={run_id}"):
                        counts[run_id] += 1
        return counts

    def log_kinds(self) -> set[str]:
        return {
            part.removeprefix("kind=")
            for record in self.caplog.records
            if FAILED in record.getMessage()
            for part in record.getMessage().split()
            if part.startswith("kind=")
        }


def counter(samples: Samples, name: str, **labels: str) -> float:
    return sample(samples, name, **labels) or 0.0


def errors(samples: Samples, kind: str) -> float:
    return counter(samples, "copyai_api_errors_total", endpoint="get_run", kind=kind)


def requests_with_code(samples: Samples, code: str) -> float:
    return counter(samples, "copyai_api_requests_total", endpoint="get_run", code=code)


@pytest.fixture
def harness(
    sim: RunningSimulator,
    world: World,
    start_exporter: Callable[..., RunningExporter],
    caplog: pytest.LogCaptureFixture,
) -> Callable[..., Harness]:
    def start(run_count: int = 3, **api: Any) -> Harness:
        caplog.set_level(logging.INFO, logger="exporter")
        world.add_workflow("faults", WORKFLOW)
        # PROCESSING forever; older than a second, so their credits no longer grow
        runs = [
            world.add_run(
                WORKFLOW, [("PROCESSING", None)], credits=10 + i, age_seconds=120 + i
            ).run_id
            for i in range(run_count)
        ]
        config = make_config(
            {
                "api": {
                    "base_url": sim.base_url,
                    "timeout_seconds": 1,
                    "max_retries": 0,
                    "max_requests_per_second": 0,
                    **api,
                },
                "collector": {"refresh_interval_seconds": 0},
                "workflows": [{"id": WORKFLOW, "name": "faults", "runs": runs}],
            }
        )
        running = start_exporter(config)
        h = Harness(sim, world, running, runs, caplog, {}, {})
        samples = h.scrape()
        assert h.fetch_success(samples) == dict.fromkeys(runs, 1.0)
        assert sample(samples, "copyai_up") == 1
        h.baseline = h.values(samples)
        h.baseline_samples = samples
        for i, run_id in enumerate(runs):  # everything is known before the fault
            labels = {"workflow_id": WORKFLOW, "run_id": run_id}
            status = sample(samples, "copyai_workflow_run_status", **labels, status="PROCESSING")
            assert status == 1
            assert sample(samples, "copyai_workflow_run_credits", **labels) == 10 + i
            assert sample(samples, "copyai_workflow_run_created_timestamp_seconds", **labels)
        assert len(h.baseline) == run_count * (7 + 2)
        caplog.clear()
        return h

    return start


def scrape_during_fault(
    h: Harness, expect_up: int, kind: str, scrapes: int = SCRAPES_DURING_FAULT
) -> Samples:
    """(a)-(d) over several scrapes of a steady fault affecting every run."""
    samples = h.baseline_samples
    for _ in range(scrapes):
        samples = h.scrape()
        assert h.values(samples) == h.baseline  # (b) last known values, exactly
        assert h.fetch_success(samples) == dict.fromkeys(h.runs, 0.0)  # (c)
        assert sample(samples, "copyai_up") == expect_up
    # every fetch of every scrape failed once, with the expected kind
    failed = errors(samples, kind) - errors(h.baseline_samples, kind)
    assert failed == len(h.runs) * scrapes
    # (d) one line per run for the whole fault, not one per scrape
    assert h.log_counts(FAILED) == dict.fromkeys(h.runs, 1)
    assert h.log_kinds() == {kind}
    assert h.log_counts(RECOVERED) == {}
    return samples


def recovers(h: Harness) -> Samples:
    """(e) with the fault cleared: fetch_success 1 and copyai_up 1 within a few scrapes,
    one "recovered" line per run, the same values as before the fault."""
    scrapes = 0

    def recovered() -> Samples | None:
        nonlocal scrapes
        scrapes += 1
        samples = h.scrape()
        ok = h.fetch_success(samples) == dict.fromkeys(h.runs, 1.0)
        return samples if ok and sample(samples, "copyai_up") == 1 else None

    samples = wait_for(recovered, timeout=10, interval=0.05)
    assert scrapes <= MAX_SCRAPES_TO_RECOVER
    assert h.values(samples) == h.baseline
    assert h.log_counts(RECOVERED) == dict.fromkeys(h.runs, 1)
    assert h.log_counts(FAILED) == dict.fromkeys(h.runs, 1)  # nothing new on the way back
    return samples


# --- steady faults: every request fails the same way ------------------------------------


def set_mode(mode: str) -> Callable[[Harness], None]:
    return lambda h: h.world.faults.update({"mode": mode})


def html_error_pages(h: Harness) -> None:
    h.world.faults.update({"error_rate": 1.0, "error_html": True, "error_status": 502})


def clear_faults(h: Harness) -> None:
    h.world.faults.update({"mode": "", "error_rate": 0.0})


STEADY_FAULTS = [
    # id, apply, clear, copyai_up during the fault, error kind, the requests' code label
    # (a body that never finishes still came with a status line: its code is counted)
    (
        "connection_refused",
        lambda h: h.sim.pause(),
        lambda h: h.sim.resume(),
        0,
        "unreachable",
        "error",
    ),
    ("accept_then_hang", set_mode("hang"), clear_faults, 0, "unreachable", "error"),
    ("very_slow_body", set_mode("slow_body"), clear_faults, 0, "unreachable", "200"),
    ("html_error_pages", html_error_pages, clear_faults, 0, "server_error", "502"),
    ("truncated_json", set_mode("truncated_json"), clear_faults, 1, "bad_response", "200"),
    ("wrong_shape", set_mode("wrong_shape"), clear_faults, 1, "bad_response", "200"),
    ("wrong_field_types", set_mode("wrong_types"), clear_faults, 1, "bad_response", "200"),
]


@pytest.mark.parametrize(
    ("apply", "clear", "expect_up", "kind", "code"),
    [pytest.param(*fault[1:], id=fault[0]) for fault in STEADY_FAULTS],
)
def test_steady_fault_keeps_last_values_and_recovers(
    harness: Callable[..., Harness],
    apply: Callable[[Harness], None],
    clear: Callable[[Harness], None],
    expect_up: int,
    kind: str,
    code: str,
) -> None:
    h = harness()
    apply(h)
    try:
        samples = scrape_during_fault(h, expect_up, kind)
    finally:
        clear(h)
    made = requests_with_code(samples, code) - requests_with_code(h.baseline_samples, code)
    assert made == len(h.runs) * SCRAPES_DURING_FAULT  # one request per fetch: no retries
    recovers(h)


# --- flapping 5xx ---------------------------------------------------------------------


def test_flapping_5xx_fails_only_the_runs_that_got_one(harness: Callable[..., Harness]) -> None:
    """Every other request gets 500, 502, 503 in turn. With one request at a time the
    simulator's arrival order is the order of its answers, so the test knows which run
    got which answer on each scrape and what the log must say."""
    statuses = [500, 502, 503]
    h = harness(max_concurrency=1)
    scrapes = 6
    started = time.monotonic()
    h.world.faults.update({"mode": "flap", "flap_statuses": statuses})
    answers: dict[str, list[int | None]] = {run_id: [] for run_id in h.runs}  # per scrape
    try:
        turn = 0
        for _ in range(scrapes):
            before = time.monotonic()
            samples = h.scrape()
            arrived = h.world.arrivals(since=before)
            assert sorted(a.run_id for a in arrived) == sorted(h.runs)  # one fetch per run
            got: dict[str, int | None] = {}
            for arrival in arrived:
                assert arrival.run_id is not None
                got[arrival.run_id] = (
                    statuses[(turn // 2) % len(statuses)] if turn % 2 == 0 else None
                )
                turn += 1
            for run_id in h.runs:
                answers[run_id].append(got[run_id])
            assert h.values(samples) == h.baseline  # (b)
            # (c) fetch_success 0 exactly for the runs that got a 5xx; the API answered
            # the others, so copyai_up stays 1
            assert h.fetch_success(samples) == {
                run_id: 0.0 if got[run_id] else 1.0 for run_id in h.runs
            }
            assert 0.0 in h.fetch_success(samples).values()
            assert sample(samples, "copyai_up") == 1
        assert len(h.world.arrivals(since=started)) == scrapes * len(h.runs)  # no retries
    finally:
        h.world.faults.update({"mode": ""})
    for status in statuses:
        assert requests_with_code(samples, str(status)) > 0
    # (d) a line when a run starts failing or its error changes, one when it recovers;
    # nothing while a run's error stays the same
    expected_failed: collections.Counter[str] = collections.Counter()
    expected_recovered: collections.Counter[str] = collections.Counter()
    for run_id, seen in answers.items():
        previous: int | None = None
        for status in seen:
            if status is not None and status != previous:
                expected_failed[run_id] += 1
            if status is None and previous is not None:
                expected_recovered[run_id] += 1
            previous = status
        assert expected_failed[run_id] < scrapes  # not a line per scrape
    assert h.log_counts(FAILED) == expected_failed
    assert h.log_counts(RECOVERED) == expected_recovered
    assert h.log_kinds() == {"server_error"}
    # (e) the runs whose last answer was a 5xx recover at the next scrape
    samples = h.scrape()
    assert h.fetch_success(samples) == dict.fromkeys(h.runs, 1.0)
    assert sample(samples, "copyai_up") == 1
    assert h.values(samples) == h.baseline
    for run_id, seen in answers.items():
        expected_recovered[run_id] += seen[-1] is not None
    assert h.log_counts(RECOVERED) == expected_recovered


# --- 429 and Retry-After ----------------------------------------------------------------

RATE_LIMIT_CONCURRENCY = 2  # below the run count: a third fetch cannot slip in


def rate_limit_everything(h: Harness, retry_after: str) -> None:
    # a bucket smaller than one token never has one: every API request is answered 429
    h.world.faults.update({"rate_limit_per_second": 1e-6, "retry_after": retry_after})


def scrape_rate_limited(h: Harness, until: float) -> tuple[Samples, list[float]]:
    """Scrape (asserting (a)-(c) each time) at least SCRAPES_DURING_FAULT times and until
    `until` (monotonic); the time each scrape ended, when all its fetches were done."""
    ends: list[float] = []
    samples = h.baseline_samples

    def one_scrape() -> bool:
        nonlocal samples
        samples = h.scrape()
        ends.append(time.monotonic())
        assert h.values(samples) == h.baseline
        assert h.fetch_success(samples) == dict.fromkeys(h.runs, 0.0)
        assert sample(samples, "copyai_up") == 1  # a 429 is an answer
        return len(ends) >= SCRAPES_DURING_FAULT and ends[-1] > until

    wait_for(one_scrape, timeout=20, interval=0.1)
    return samples, ends


def check_rate_limited_counts(
    h: Harness, samples: Samples, fault_started: float, scrapes: int
) -> None:
    arrived = h.world.arrivals(since=fault_started)
    # every request the API saw got a 429, and the exporter counted each one
    added_429 = requests_with_code(samples, "429") - requests_with_code(h.baseline_samples, "429")
    assert added_429 == len(arrived) > 0
    # every fetch failed as rate_limited: a 429, or held back by the client until the
    # API's Retry-After has passed
    fetches = errors(samples, "rate_limited") - errors(h.baseline_samples, "rate_limited")
    assert fetches == len(h.runs) * scrapes
    assert h.log_counts(FAILED) == dict.fromkeys(h.runs, 1)
    assert h.log_kinds() == {"rate_limited"}


@pytest.mark.slow
def test_429_with_retry_after_seconds_paces_every_request(
    harness: Callable[..., Harness],
) -> None:
    retry_after = 1.0
    h = harness(max_concurrency=RATE_LIMIT_CONCURRENCY)
    fault_started = time.monotonic()
    rate_limit_everything(h, str(int(retry_after)))
    try:
        samples, ends = scrape_rate_limited(h, until=fault_started + 2.5 * retry_after)
        fault_ended = time.monotonic()
    finally:
        h.world.faults.update({"rate_limit_per_second": 0.0})
    check_rate_limited_counts(h, samples, fault_started, len(ends))
    times = [a.at for a in h.world.arrivals(since=fault_started) if a.at <= fault_ended]
    # Every request gets a 429 that holds back every request for Retry-After from when
    # its answer arrived, so from any 429 onwards only the requests already in flight
    # (at most max_concurrency) arrive within Retry-After. Checked greedily over windows
    # opened by a 429, the first one first.
    windows = 0
    index = 0
    while index < len(times):
        opened = times[index]
        inside = [t for t in times[index:] if t < opened + retry_after]
        assert len(inside) <= RATE_LIMIT_CONCURRENCY, (
            f"{len(inside)} requests within {retry_after}s of a 429"
        )
        index += len(inside)
        windows += 1
    # no retry storm: whatever the scrape rate, at most max_concurrency requests per
    # Retry-After, over the fault's duration
    duration = fault_ended - fault_started
    assert len(times) <= RATE_LIMIT_CONCURRENCY * (math.ceil(duration / retry_after) + 1)
    assert windows >= 2  # the pause was re-armed by later 429s, not a one-off
    recovers(h)


@pytest.mark.slow
def test_429_with_retry_after_http_date_holds_back_until_then(
    harness: Callable[..., Harness],
) -> None:
    h = harness(max_concurrency=RATE_LIMIT_CONCURRENCY)
    retry_at = math.ceil(time.time()) + 2  # an HTTP date has whole seconds: 2-3 s ahead
    window_end = retry_at - (time.time() - time.monotonic())  # on the monotonic clock
    fault_started = time.monotonic()
    rate_limit_everything(h, email.utils.formatdate(retry_at, usegmt=True))
    try:
        samples, ends = scrape_rate_limited(h, until=window_end + 0.5)
        fault_ended = time.monotonic()
    finally:
        h.world.faults.update({"rate_limit_per_second": 0.0})
    check_rate_limited_counts(h, samples, fault_started, len(ends))
    times = [a.at for a in h.world.arrivals(since=fault_started) if a.at <= fault_ended]
    first_429 = times[0]
    # until the date, only the requests in flight when the first 429 came back
    in_window = [t for t in times if first_429 <= t < window_end - 0.05]
    assert 0 < len(in_window) <= RATE_LIMIT_CONCURRENCY
    # no storm: after the date (later 429s name it again, now past: no wait), one
    # request per run per scrape at most. Before it, a fetch facing more than 1 s of
    # pause fails at once ("held back") and one facing less waits it out, so only
    # scrapes that ended within 1 s of the date or later can have made requests.
    late_scrapes = sum(1 for end in ends if end >= window_end - 1.0)
    assert len(times) <= RATE_LIMIT_CONCURRENCY + len(h.runs) * late_scrapes
    assert len(ends) > late_scrapes  # scrapes inside the window made no requests
    recovers(h)


# --- huge bodies ----------------------------------------------------------------------

HUGE_MODES = ["huge_body", "gzip_bomb"]
HUGE_RUNS = 2  # fetched concurrently (max_concurrency 2)
# README: "a huge answer or a gzip bomb costs no more memory than the cap": at most the
# cap per fetch in flight, plus room for the rest of the process's allocations
MEMORY_PEAK_LIMIT = HUGE_RUNS * MAX_RESPONSE_BYTES + 4 * 1024 * 1024  # 12 MiB
# Regressions these guard: a failed fetch's ApiError kept its traceback (and the body
# read so far) alive until the cyclic GC ran; zlib was asked for the whole cap in one
# call, which cost twice the cap while CPython assembled the output.


@pytest.mark.parametrize("mode", HUGE_MODES)
def test_huge_answer_is_too_large_for_that_run_only_and_recovers(
    harness: Callable[..., Harness], mode: str
) -> None:
    """50 MB streamed without a length, or ~50 KB of gzip inflating to 50 MB: each fetch
    stops at the 4 MiB cap and fails as too_large; the API did answer (copyai_up 1)."""
    h = harness(run_count=HUGE_RUNS, max_concurrency=HUGE_RUNS)
    h.world.faults.update({"mode": mode})
    try:
        samples = scrape_during_fault(h, expect_up=1, kind="too_large")
    finally:
        h.world.faults.update({"mode": ""})
    made = requests_with_code(samples, "200") - requests_with_code(h.baseline_samples, "200")
    assert made == len(h.runs) * SCRAPES_DURING_FAULT
    recovers(h)


@pytest.mark.parametrize(
    "mode",
    [
        "huge_body",
        "gzip_bomb",
    ],
)
def test_huge_answer_costs_no_more_memory_than_the_cap(
    harness: Callable[..., Harness], mode: str
) -> None:
    """tracemalloc's peak over the fault's scrapes (the simulator runs in this process
    too, but streams its 50 MB in 64 KB chunks and builds its bomb beforehand). The
    cyclic GC is off while measuring: memory must be released when the fetch is over,
    not whenever a collection happens to run, or it is not flat, only sometimes low."""
    assert len(gzip_bomb()) < 100_000  # built (and cached) before measuring
    h = harness(run_count=HUGE_RUNS, max_concurrency=HUGE_RUNS)
    h.world.faults.update({"mode": mode})
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(SCRAPES_DURING_FAULT):
            samples = h.scrape()
            assert h.fetch_success(samples) == dict.fromkeys(h.runs, 0.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
        h.world.faults.update({"mode": ""})
    assert errors(samples, "too_large") == len(h.runs) * SCRAPES_DURING_FAULT
    assert peak < MEMORY_PEAK_LIMIT, f"peak {peak / 2**20:.1f} MiB"


# --- a redirect to another host -------------------------------------------------------


class Recorder:
    """An HTTP server on loopback that records every request's headers and answers each
    with a record of the run its path names, COMPLETE: an exporter that followed the
    redirect here would succeed, and show the run finished."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                recorder.requests.append({k.lower(): v for k, v in self.headers.items()})
                run_id = self.path.rstrip("/").rsplit("/", 1)[-1]
                record = {"id": run_id, "status": "COMPLETE", "credits": 999}
                body = json.dumps({"status": "success", "data": record}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.stop()


def test_redirect_to_another_host_is_refused_and_never_gets_the_key(
    harness: Callable[..., Harness], recorder: Recorder
) -> None:
    h = harness()
    # each request is sent to the same path on the recorder, which would answer it
    h.world.faults.update({"mode": "redirect", "redirect_to": recorder.url + "{path}"})
    path = f"/api/workflow/{WORKFLOW}/run/{h.runs[0]}"
    probe = requests.get(f"{h.sim.base_url}/workflow/{WORKFLOW}/run/{h.runs[0]}", timeout=5)
    assert [r.status_code for r in probe.history] == [302]
    assert probe.url == recorder.url + path
    assert probe.json()["data"]["id"] == h.runs[0]
    recorder.requests.clear()
    try:
        samples = scrape_during_fault(h, expect_up=1, kind="bad_response")
    finally:
        h.world.faults.update({"mode": ""})
    assert requests_with_code(samples, "302") == len(h.runs) * SCRAPES_DURING_FAULT
    recovers(h)
    assert not any("x-copy-ai-api-key" in headers for headers in recorder.requests)
    assert recorder.requests == []
