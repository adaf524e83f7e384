"""Load: a storm of concurrent scrapes, a long run under flapping faults, and a thousand
config reloads, checking that API calls stay single-flight and that threads, file
descriptors and memory do not grow.

SOAK_SECONDS sets the length of the flapping run (.ci/run uses 120, the two minutes the
hardening issue asks for; 45 by default so a local run stays quick)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import requests

from exporter.config import load_config_file
from tests.support.exporters import API_KEY, make_config, sim_stats
from tests.support.polling import wait_for
from tests.support.samples import names, parse_samples, sample

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "45"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def config_for(sim, runs, refresh=1.0, **api):
    return make_config(
        {
            "api": {
                "base_url": sim.base_url,
                "max_requests_per_second": 0,
                "max_concurrency": 8,
                "timeout_seconds": 2,
                **api,
            },
            "collector": {"refresh_interval_seconds": refresh},
            "workflows": [{"id": "WCFG-soak", "runs": runs}],
        }
    )


def active_runs(world, count: int) -> list[str]:
    world.add_workflow("soak", "WCFG-soak")
    return [
        world.add_run("WCFG-soak", [("PROCESSING", None)], credits=i).run_id for i in range(count)
    ]


def test_a_storm_of_concurrent_scrapes_costs_one_set_of_api_calls(sim, world, start_exporter):
    runs = active_runs(world, 40)
    world.faults.latency_seconds = 0.3
    running = start_exporter(config_for(sim, runs, refresh=60))
    barrier = threading.Barrier(50)
    answers: list[tuple[int, float, dict]] = []
    lock = threading.Lock()

    def scrape() -> None:
        barrier.wait()
        started = time.monotonic()
        response = requests.get(
            f"{running.url}/metrics",
            headers={"X-Prometheus-Scrape-Timeout-Seconds": "5"},
            timeout=30,
        )
        with lock:
            answers.append(
                (response.status_code, time.monotonic() - started, parse_samples(response.text))
            )

    threads = [threading.Thread(target=scrape) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 50
    assert all(code == 200 for code, _, _ in answers)
    # every scrape answered within its 5 s timeout header, and the API saw each run once
    assert max(elapsed for _, elapsed, _ in answers) < 5.0
    assert sim_stats(sim)["get_run"] == len(runs)
    complete = [
        s for _, _, s in answers if len(names(s, "copyai_workflow_run_fetch_success")) == 40
    ]
    assert complete, "no scrape saw the finished refresh"


def test_flapping_faults_for_a_long_run_leak_nothing(sim, world, start_exporter):
    runs = active_runs(world, 30)
    running = start_exporter(config_for(sim, runs, refresh=1.0, max_retries=1))
    stop = threading.Event()
    errors: list[str] = []
    scrapes = [0]

    def scraper() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.get(
                    f"{running.url}/metrics",
                    headers={"X-Prometheus-Scrape-Timeout-Seconds": "3"},
                    timeout=10,
                )
                if response.status_code != 200:
                    errors.append(f"status {response.status_code}")
                scrapes[0] += 1
            except requests.RequestException as exc:
                errors.append(repr(exc))
            stop.wait(0.1)
        session.close()

    phases = [
        {"error_rate": 0.5, "error_status": 502, "error_html": True},
        {"error_rate": 0.0, "latency_seconds": 0.5},
        {"latency_seconds": 0.0, "drop_connections": True},
        {"drop_connections": False, "error_rate": 0.3, "error_status": 503, "error_html": False},
        {"error_rate": 0.0},
    ]

    def flapper() -> None:
        i = 0
        while not stop.wait(2.0):
            world.faults.update(phases[i % len(phases)])
            i += 1

    workers = [threading.Thread(target=scraper) for _ in range(5)] + [
        threading.Thread(target=flapper)
    ]
    for worker in workers:
        worker.start()
    started = time.monotonic()
    baseline: tuple[int, int, int] | None = None
    try:
        while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
            if baseline is None and elapsed > min(15.0, SOAK_SECONDS / 3):
                # warmed up: pools, connections and caches exist; from here nothing may grow
                baseline = (threading.active_count(), open_fds(), rss_bytes())
            stop.wait(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert baseline is not None
    world.faults.update({"error_rate": 0.0, "latency_seconds": 0.0, "drop_connections": False})
    assert errors == [], errors[:5]
    assert scrapes[0] > SOAK_SECONDS * 10  # five scrapers kept going the whole time

    # it recovers by itself, and then the process is no bigger than when warm
    def recovered():
        samples = running.scrape()
        ok = [
            s
            for s in names(samples, "copyai_workflow_run_fetch_success")
            if sample(samples, "copyai_workflow_run_fetch_success", **s) == 1
        ]
        return sample(samples, "copyai_up") == 1 and len(ok) == len(runs)

    wait_for(recovered, timeout=20, interval=0.2)
    threads, fds, rss = threading.active_count(), open_fds(), rss_bytes()
    assert threads <= baseline[0] + 2, (baseline, threads)
    assert fds <= baseline[1] + 8, (baseline, fds)
    assert rss <= baseline[2] + 20 * 1024 * 1024, (baseline, rss)
    # single-flight: however many scrapes, each run was fetched at most once per refresh
    # interval (plus one retry): 5 scrapers at ~10/s each would be 50 per second
    per_run = sim_stats(sim)["get_run"] / len(runs)
    assert per_run <= (SOAK_SECONDS + 25) * 2 + 5, per_run


def test_a_thousand_reloads_leak_nothing(sim, world, start_exporter, tmp_path):
    runs = active_runs(world, 6)
    path = tmp_path / "config.yaml"

    def write(count: int) -> None:
        path.write_text(
            f"api: {{base_url: '{sim.base_url}', max_requests_per_second: 0}}\n"
            "collector: {refresh_interval_seconds: 0.5}\n"
            f"workflows: [{{id: WCFG-soak, runs: [{', '.join(runs[:count])}]}}]\n"
        )

    env = {"COPYAI_API_KEY": API_KEY}
    write(6)
    from exporter.web.app import WebOptions

    running = start_exporter(
        load_config_file(path, env=env),
        options=WebOptions(enable_lifecycle=True),
        config_file=path,
    )
    session = requests.Session()

    def cycle(n: int) -> None:
        for i in range(n):
            write(3 + i % 4)
            assert session.post(f"{running.url}/-/reload", timeout=10).status_code == 200
            if i % 50 == 0:
                running.scrape()

    cycle(100)  # warm up
    baseline = (threading.active_count(), open_fds(), rss_bytes())
    cycle(1000)
    # retired refreshers finish in the background: wait for their threads to end
    wait_for(lambda: threading.active_count() <= baseline[0] + 2, timeout=30, interval=0.1)
    assert open_fds() <= baseline[1] + 8
    assert rss_bytes() <= baseline[2] + 20 * 1024 * 1024
    samples = running.scrape()
    assert len(names(samples, "copyai_workflow_run_fetch_success")) == 3 + 999 % 4
    assert sample(samples, "copyai_config_last_reload_successful") == 1
    session.close()
