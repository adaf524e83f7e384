"""What each row measures. Every function here takes servers that are already running
(host and port of an exporter, a SimClient), so the same code measures child processes
in `python -m benchmarks` and in-process servers in tests/test_benchmarks.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import (
    API_KEY,
    Scrape,
    SimClient,
    SlowClients,
    cpu_seconds,
    exporter_document,
    fetched_runs,
    free_port,
    proc_status,
    scrape,
    thread_count,
    tracked_runs,
)
from exporter.config import build_config
from exporter.runtime import Exporter
from exporter.tracking.persistence import MemoryStore
from exporter.web.app import ExporterApp, WebOptions
from exporter.web.http import HttpServer
from tests.support.clocks import FakeClock


class LocalExporter:
    """The exporter in this process, served over real HTTP by its own HttpServer, with
    an optional settable clock (rows 2 and 4 step through minutes of simulated time)."""

    def __init__(self, document: dict[str, Any], clock: FakeClock | None = None):
        config = build_config(document, source="benchmark", env={"COPYAI_API_KEY": API_KEY})
        clocks: dict[str, Callable[[], float]] = {}
        if clock is not None:
            clocks = {"clock": clock, "wall_clock": clock.wall}
        self.exporter = Exporter(config, process_metrics=False, state_store=MemoryStore(), **clocks)
        app = ExporterApp(
            self.exporter,
            WebOptions(),
            lambda: (True, "fixed configuration"),
            clock=clocks.get("clock", time.monotonic),
        )
        self.host = "127.0.0.1"
        self.server = HttpServer(app, f"{self.host}:{free_port()}").start()
        self.port = self.server.port

    def close(self) -> None:
        self.server.stop()
        self.exporter.close()

    def __enter__(self) -> LocalExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- row 1: cold refresh -------------------------------------------------------------


def cold_refresh(
    host: str, port: int, expected_runs: int, timeout_header: float = 10.0
) -> tuple[float, int]:
    """Seconds from the first scrape to the end of the first answer in which every
    configured run has been fetched, and how many scrapes that took. (The client waits
    as long as it takes: the naive baseline ignores the timeout header.)"""
    started = time.perf_counter()
    for scrapes in range(1, 1000):
        answer = scrape(host, port, timeout_header=timeout_header, timeout=3600)
        if fetched_runs(answer.text) >= expected_runs:
            return time.perf_counter() - started, scrapes
    raise RuntimeError("the exporter never answered with every run fetched")


def cold_limit(runs: int, concurrency: int, latency: float) -> float:
    return math.ceil(runs / concurrency) * latency


# --- row 2: API calls in steady state ------------------------------------------------


@dataclass
class SteadyState:
    runs: int
    active: int
    scrapers: int
    intervals: int  # refresh intervals of simulated time after the cold refresh
    scrapes: int
    refresh_interval: float
    terminal_calls: int  # get_run calls to runs that were finished
    active_calls: int  # get_run calls to runs that were active
    max_calls_per_active_run: int  # most calls to one active run in one interval
    list_calls: int  # list_runs: the up check when nothing else is due
    other_calls: int


def scrape_times(scrapers: int, every: float, phase: float, horizon: float) -> list[float]:
    """When an HA set of `scrapers` Prometheus servers, `phase` seconds apart, scrape in
    (0, horizon]: the cold scrape at 0 is made before."""
    times = []
    for k in range(scrapers):
        t = k * phase
        while t <= horizon:
            if t > 0:
                times.append(t)
            t += every
    return sorted(times)


def steady_state(
    sim: SimClient,
    document: dict[str, Any],
    *,
    scrapers: int = 2,
    scrape_interval: float = 15.0,
    intervals: int = 10,
    phase: float = 5.0,
) -> SteadyState:
    """Drive the exporter's clocks through `intervals` refresh intervals of scrapes by
    `scrapers` servers (after one cold scrape) and count the API calls exactly."""
    refresh = float(document["collector"]["refresh_interval_seconds"])
    clock = FakeClock(wall_start=time.time())
    with LocalExporter(document, clock) as local:
        runs = len(local.exporter.store)
        first = scrape(local.host, local.port, timeout_header=60)
        if fetched_runs(first.text) != runs:
            raise RuntimeError("the cold refresh did not fetch every run")
        active = {
            s.run_id
            for s in local.exporter.store.snapshot()
            if s.run is not None and not s.run.terminal
        }
        sim.reset()
        times = scrape_times(scrapers, scrape_interval, phase, intervals * refresh)
        per_run: Counter[str] = Counter()
        requests: Counter[str] = Counter()
        most_in_one_interval = 0
        elapsed = 0.0
        for interval in range(1, intervals + 1):
            # the scrapes in ((interval - 1) * refresh, interval * refresh]
            for t in (t for t in times if (interval - 1) * refresh < t <= interval * refresh):
                clock.advance(t - elapsed)
                elapsed = t
                scrape(local.host, local.port, timeout_header=10)
            stats = sim.stats()
            sim.reset()
            per_run.update(stats["runs"])
            requests.update(stats["requests"])
            most_in_one_interval = max(
                [most_in_one_interval, *(stats["runs"].get(r, 0) for r in active)]
            )
    active_counts = [per_run.get(run_id, 0) for run_id in active]
    return SteadyState(
        runs=runs,
        active=len(active),
        scrapers=scrapers,
        intervals=intervals,
        scrapes=len(times),
        refresh_interval=refresh,
        terminal_calls=sum(n for run_id, n in per_run.items() if run_id not in active),
        active_calls=sum(active_counts),
        max_calls_per_active_run=most_in_one_interval,
        list_calls=requests.get("list_runs", 0),
        other_calls=sum(
            n
            for endpoint, n in requests.items()
            if endpoint not in ("get_run", "list_runs") and not endpoint.startswith("webhook_")
        ),
    )


def calls_for_scrapes(sim: SimClient, host: str, port: int, scrapes: int) -> dict[str, int]:
    """API calls made by `scrapes` scrapes one after the other (for the naive baseline,
    whose every scrape costs the same)."""
    sim.reset()
    for _ in range(scrapes):
        scrape(host, port, timeout_header=None, timeout=3600)
    return sim.requests()


# --- row 3: warm scrapes -------------------------------------------------------------


@dataclass
class Timings:
    seconds: list[float]
    wire_bytes: int
    body_bytes: int


def timed_scrapes(host: str, port: int, count: int, *, gzip_ok: bool) -> Timings:
    seconds: list[float] = []
    last: Scrape | None = None
    for _ in range(count):
        last = scrape(host, port, gzip_ok=gzip_ok, timeout_header=10, timeout=3600)
        if last.status != 200:
            raise RuntimeError(f"scrape answered {last.status}")
        seconds.append(last.seconds)
    assert last is not None
    return Timings(seconds, last.wire_bytes, len(last.text.encode()))


# --- row 9: the status page ------------------------------------------------------------


def timed_pages(host: str, port: int, path: str, count: int) -> Timings:
    """`count` GETs of a page (/, /status.json), each on a new connection, as a browser
    or a script asks for it: no gzip, no scrape timeout."""
    seconds: list[float] = []
    last: Scrape | None = None
    for _ in range(count):
        last = scrape(host, port, gzip_ok=False, timeout_header=None, timeout=120, path=path)
        if last.status != 200:
            raise RuntimeError(f"{path} answered {last.status}")
        seconds.append(last.seconds)
    assert last is not None
    return Timings(seconds, last.wire_bytes, len(last.text.encode()))


# --- row 4: discovery ----------------------------------------------------------------


@dataclass
class DiscoveryStep:
    label: str
    new_runs: int
    calls: dict[str, int]
    tracked: int
    seconds: float
    cpu_seconds: float  # of this process (the in-process exporter and its client)
    sim_cpu_seconds: float | None  # of the simulator, if its pid was given


@dataclass
class Discovery:
    first: DiscoveryStep
    later: list[DiscoveryStep] = field(default_factory=list)


def discovery(
    sim: SimClient,
    workflow_id: str,
    *,
    discovery_config: dict[str, Any],
    concurrency: int,
    refresh_interval: float = 30.0,
    steps: Sequence[tuple[str, int]] = (),
    sim_pid: int | None = None,
) -> Discovery:
    """The first complete picture of a `discover: true` workflow, then one refresh per
    step (simulated time moves one refresh interval), after adding that many new
    (finished) runs to the simulator."""
    clock = FakeClock(wall_start=time.time())
    document = exporter_document(
        sim.base_url,
        [{"id": workflow_id, "discover": True, "discovery": discovery_config}],
        api={"max_concurrency": concurrency},
        collector={"refresh_interval_seconds": refresh_interval},
    )
    with LocalExporter(document, clock) as local:

        def step(label: str, new_runs: int) -> DiscoveryStep:
            sim.reset()
            sim_cpu = cpu_seconds(sim_pid) if sim_pid else 0.0
            cpu, started = time.process_time(), time.perf_counter()
            answer = scrape(local.host, local.port, timeout_header=3000, timeout=3600)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            return DiscoveryStep(
                label,
                new_runs,
                sim.requests(),
                tracked_runs(answer.text),
                seconds,
                cpu,
                cpu_seconds(sim_pid) - sim_cpu if sim_pid else None,
            )

        result = Discovery(step("first complete picture", 0))
        for label, new_runs in steps:
            for _ in range(new_runs):
                sim.add_run(workflow_id, [["COMPLETE", None]], credits=1)
            clock.advance(refresh_interval)
            result.later.append(step(label, new_runs))
    return result


def discovery_limit(new_runs: int, active_positions: Iterable[int], page_size: int) -> int:
    """Fewest calls that see every new run and refresh every active run: list the k
    newest pages (at least those holding the new runs; one to learn there are none),
    fetch the active runs beyond them one by one."""
    positions = [p + new_runs for p in active_positions]  # new runs push them back
    least_pages = max(1, math.ceil(new_runs / page_size))
    deepest = max(positions, default=0) // page_size + 1
    return min(
        pages + sum(1 for p in positions if p >= pages * page_size)
        for pages in range(least_pages, max(least_pages, deepest) + 1)
    )


# --- row 6: scrape storm -------------------------------------------------------------


@dataclass
class Storm:
    scrapers: int
    answered: int  # answered at all before the client gave up (the scrape timeout)
    complete: int  # answers in which every run had been fetched
    max_seconds: float  # slowest answer (the timeout if some never came)
    calls: dict[str, int]


def storm(
    sim: SimClient,
    host: str,
    port: int,
    *,
    scrapers: int = 50,
    timeout: float = 10.0,
    expected_runs: int,
) -> Storm:
    """`scrapers` scrapes released at once against a cold cache, each giving up after
    `timeout` seconds as Prometheus does."""
    sim.reset()
    barrier = threading.Barrier(scrapers)
    answers: list[Scrape | None] = [None] * scrapers

    def one(i: int) -> None:
        barrier.wait()
        try:
            answers[i] = scrape(host, port, timeout_header=timeout, timeout=timeout)
        except OSError:  # timed out, or refused
            answers[i] = None

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 30)
    calls = sim.requests()
    got = [a for a in answers if a is not None and a.status == 200]
    return Storm(
        scrapers=scrapers,
        answered=len(got),
        complete=sum(1 for a in got if fetched_runs(a.text) >= expected_runs),
        max_seconds=max((a.seconds for a in got), default=timeout)
        if len(got) == scrapers
        else timeout,
        calls=calls,
    )


# --- row 7: replicas sharing state through Redis -------------------------------------


@dataclass
class Replicated:
    replicas: int
    cold_seconds: float  # until every replica answered with every run fetched
    cold_calls: dict[str, int]
    steady_seconds: float  # the window of real time the steady calls were counted in
    steady_calls: dict[str, int]
    active_runs: int  # runs fetched in the steady window
    most_calls_to_one_run: int


def replicated(
    sim: SimClient,
    ports: Sequence[int],
    *,
    expected_runs: int,
    refresh_interval: float,
    intervals: int,
    host: str = "127.0.0.1",
    timeout_header: float = 10.0,
) -> Replicated:
    """Replicas that share one Redis, scraped in real time: the cold refresh (every
    replica scraped at once until each answers with every run fetched), then `intervals`
    refresh intervals in which each replica is scraped twice per interval, as an HA pair
    of Prometheus servers would, and the API calls counted exactly."""
    sim.reset()
    failures: list[BaseException] = []

    def cold(port: int) -> None:
        try:
            cold_refresh(host, port, expected_runs, timeout_header)
        except (OSError, RuntimeError) as exc:
            failures.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=cold, args=(port,), daemon=True) for port in ports]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    cold_seconds = time.perf_counter() - started
    if failures or any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"a replica never answered with every run fetched: {failures}")
    cold_calls = sim.requests()

    sim.reset()
    # each replica twice per interval, staggered, the last scrape at the window's end: a
    # run fetched during the cold refresh falls due once per interval inside the window
    every = refresh_interval / 2 / len(ports)
    steps = round(intervals * refresh_interval / every)
    window_started = time.monotonic()
    for step in range(1, steps + 1):
        time.sleep(max(0.0, window_started + step * every - time.monotonic()))
        scrape(host, ports[step % len(ports)], timeout_header=timeout_header)
    stats = sim.stats()
    per_run = stats["runs"]
    return Replicated(
        replicas=len(ports),
        cold_seconds=cold_seconds,
        cold_calls=cold_calls,
        steady_seconds=time.monotonic() - window_started,
        steady_calls=dict(stats["requests"]),
        active_runs=sum(1 for n in per_run.values() if n),
        most_calls_to_one_run=max(per_run.values(), default=0),
    )


# --- row 8: slow clients -------------------------------------------------------------


@dataclass
class SlowAttack:
    clients: int
    cut: int  # slow clients the exporter closed
    refused: int  # could not even connect
    cleared_seconds: float  # from the attack's start until the last one was closed
    idle_threads: int
    idle_rss_mb: float
    peak_threads: int
    peak_rss_mb: float  # VmRSS sampled every 50 ms, or VmHWM at the end if higher
    scrape_seconds: list[float]  # scrapes started every `scrape_every` s during the attack
    failed_scrapes: int


def slow_attack(
    host: str,
    port: int,
    pid: int,
    *,
    clients: int,
    scrape_every: float = 0.25,
    timeout: float = 120.0,
) -> SlowAttack:
    """`clients` slow clients at once (each sends the start of a request line, then a
    byte a second: harness.SlowClients) against the exporter at host:port, process
    `pid`. Until the exporter has closed every one: its threads and RSS are sampled,
    and a scrape starts every `scrape_every` seconds, each on a new connection that
    queues behind the slow clients, as Prometheus' would."""
    idle_threads, idle_rss = thread_count(pid), proc_status(pid, "VmRSS")
    lock = threading.Lock()
    seconds: list[float] = []
    failed = 0

    def one_scrape() -> None:
        nonlocal failed
        try:
            answer = scrape(host, port, timeout_header=10, timeout=60)
        except OSError:
            answer = None
        with lock:
            if answer is not None and answer.status == 200:
                seconds.append(answer.seconds)
            else:
                failed += 1

    scrapers: list[threading.Thread] = []
    peak_threads, peak_rss = idle_threads, idle_rss
    with SlowClients([(host, port)], clients) as slow:
        started = time.monotonic()
        next_scrape = started
        while slow.cut() + slow.refused < clients and time.monotonic() - started < timeout:
            if time.monotonic() >= next_scrape:
                scraper = threading.Thread(target=one_scrape, daemon=True)
                scraper.start()
                scrapers.append(scraper)
                next_scrape += scrape_every
            peak_threads = max(peak_threads, thread_count(pid))
            peak_rss = max(peak_rss, proc_status(pid, "VmRSS"))
            time.sleep(0.05)
        cut, refused = slow.cut(), slow.refused
        cleared = time.monotonic() - started
    for scraper in scrapers:
        scraper.join(70)
    peak_rss = max(peak_rss, proc_status(pid, "VmHWM"))  # between the samples too
    return SlowAttack(
        clients=clients,
        cut=cut,
        refused=refused,
        cleared_seconds=cleared,
        idle_threads=idle_threads,
        idle_rss_mb=idle_rss,
        peak_threads=peak_threads,
        peak_rss_mb=peak_rss,
        scrape_seconds=seconds,
        failed_scrapes=failed,
    )
