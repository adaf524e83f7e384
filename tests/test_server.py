"""The exporter over real HTTP on loopback against the real simulator: routes, scrape
deadlines, single-flight refreshes, reload, and the whole output checked by promtool."""

from __future__ import annotations

import gzip
import subprocess
import threading
import time

import pytest
import requests

from exporter.web.app import WebOptions, _gzipped
from tests.support.exporters import API_KEY, make_config, sim_stats
from tests.support.samples import names, parse_samples, sample
from tests.support.tools import require_tool


def sim_config(sim, refresh: float = 30.0, **api):
    world = sim.world
    return make_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0, **api},
            "collector": {"refresh_interval_seconds": refresh},
            "workflows": [
                {"id": wid, "name": name, "runs": list(world.runs[wid])}
                for wid, name in world.workflows.items()
            ],
        }
    )


def add_runs(world, count: int, steps, workflow: str = "WCFG-test") -> list[str]:
    world.add_workflow("test-workflow", workflow)
    return [world.add_run(workflow, steps, credits=i).run_id for i in range(count)]


def test_routes_status_codes_and_landing_page(sim, world, start_exporter):
    add_runs(world, 1, [("COMPLETE", None)])
    running = start_exporter(sim_config(sim))
    url = running.url
    assert requests.get(f"{url}/-/healthy", timeout=5).status_code == 200
    assert requests.get(f"{url}/-/ready", timeout=5).status_code == 200
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404
    wrong = requests.post(f"{url}/metrics", timeout=5)
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, HEAD"
    assert requests.get(f"{url}/-/reload", timeout=5).status_code == 405
    # lifecycle endpoints are off unless enabled, as in Prometheus
    assert requests.post(f"{url}/-/reload", timeout=5).status_code == 403
    landing = requests.get(url, timeout=5)
    assert landing.status_code == 200
    assert 'href="/metrics"' in landing.text
    assert API_KEY not in landing.text


def test_metrics_served_gzip_and_always_as_classic_text(sim, world, start_exporter):
    add_runs(world, 2, [("PROCESSING", None)])
    running = start_exporter(sim_config(sim))
    raw = requests.get(
        f"{running.url}/metrics", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10
    )
    assert raw.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(raw.raw.read()).decode()
    assert "copyai_workflow_run_status" in text
    om = requests.get(
        f"{running.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=10,
    )
    # OpenMetrics would merge copyai_workflow_run_credits (gauge) and its _total
    # counter into one family name; the classic format keeps them apart
    assert om.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE copyai_workflow_run_credits gauge" in om.text
    assert "# TYPE copyai_workflow_run_credits_total counter" in om.text


def test_concurrent_scrapes_share_one_refresh(sim, world, start_exporter):
    runs = add_runs(world, 6, [("PROCESSING", None)])
    world.faults.latency_seconds = 0.4
    running = start_exporter(sim_config(sim, refresh=30, max_concurrency=8))
    results: list[dict] = []
    barrier = threading.Barrier(5)

    def scrape() -> None:
        barrier.wait()
        results.append(running.scrape())

    threads = [threading.Thread(target=scrape) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 5
    assert sim_stats(sim)["get_run"] == len(runs)  # one call per run, not one per scrape
    for samples in results:
        assert len(names(samples, "copyai_workflow_run_fetch_success")) == len(runs)


@pytest.mark.slow
def test_scrape_answers_within_its_timeout_against_a_slow_api(sim, world, start_exporter):
    runs = add_runs(world, 3, [("PROCESSING", None)])
    world.faults.latency_seconds = 5.0
    running = start_exporter(sim_config(sim, refresh=0, timeout_seconds=20))
    started = time.monotonic()
    response = requests.get(
        f"{running.url}/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"}, timeout=10
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 2.0, f"answered after {elapsed:.2f}s, past the 2 s scrape timeout"
    samples = parse_samples(response.text)
    assert names(samples, "copyai_workflow_run_status") == []  # nothing known yet
    assert sample(samples, "copyai_up") == 0
    # the fetches were not abandoned: once they land, the next scrape has them
    world.faults.latency_seconds = 0.0

    def all_known():
        got = running.scrape(headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"})
        return len(names(got, "copyai_workflow_run_status")) == 7 * len(runs) and got

    samples = wait_for_samples(all_known)
    assert sample(samples, "copyai_up") == 1


def wait_for_samples(predicate, timeout: float = 20.0):
    from tests.support.polling import wait_for

    return wait_for(predicate, timeout=timeout, interval=0.1)


def test_default_scrape_budget_applies_without_header(sim, world, start_exporter):
    add_runs(world, 1, [("PROCESSING", None)])
    world.faults.latency_seconds = 5.0
    options = WebOptions(default_scrape_timeout=1.0, scrape_timeout_offset=0.2)
    running = start_exporter(sim_config(sim, timeout_seconds=20), options=options)
    started = time.monotonic()
    response = requests.get(f"{running.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert time.monotonic() - started < 1.0


def test_api_down_keeps_metrics_up_with_up_zero(sim, world, start_exporter):
    add_runs(world, 2, [("PROCESSING", None)])
    config = sim_config(sim, refresh=0, max_retries=0)
    sim.stop()  # connection refused from here on
    running = start_exporter(config)
    samples = running.scrape()
    assert sample(samples, "copyai_up") == 0
    assert sample(samples, "copyai_api_errors_total", endpoint="get_run", kind="unreachable") == 2


def test_reload_endpoint_applies_a_new_config_and_refuses_a_broken_one(
    sim, world, start_exporter, tmp_path
):
    runs = add_runs(world, 2, [("COMPLETE", None)])
    path = tmp_path / "config.yaml"

    def write(run_ids):
        path.write_text(
            f"api:\n  base_url: {sim.base_url}\n"
            f"workflows:\n  - id: WCFG-test\n    runs: [{', '.join(run_ids)}]\n"
        )

    from exporter.config import load_config_file

    write(runs)
    env = {"COPYAI_API_KEY": API_KEY}
    running = start_exporter(
        load_config_file(path, env=env),
        options=WebOptions(enable_lifecycle=True),
        config_file=path,
    )
    assert {
        s["run_id"] for s in names(running.scrape(), "copyai_workflow_run_fetch_success")
    } == set(runs)
    write(runs[:1])
    assert requests.post(f"{running.url}/-/reload", timeout=5).status_code == 200
    samples = running.scrape()
    assert {s["run_id"] for s in names(samples, "copyai_workflow_run_fetch_success")} == {runs[0]}
    assert sample(samples, "copyai_config_last_reload_successful") == 1

    path.write_text("workflows: [ {id: 'bad id'} ]\n")
    answer = requests.post(f"{running.url}/-/reload", timeout=5)
    assert answer.status_code == 500
    assert "workflows[0].id" in answer.text
    samples = running.scrape()
    assert sample(samples, "copyai_config_last_reload_successful") == 0
    # the old config keeps running
    assert {s["run_id"] for s in names(samples, "copyai_workflow_run_fetch_success")} == {runs[0]}


def test_full_output_passes_promtool_check_metrics(sim, world, start_exporter):
    promtool = require_tool("promtool")
    add_runs(world, 3, [("PROCESSING", 1), ("COMPLETE", None)])
    add_runs(world, 2, [("RETRYING", None)], workflow="WCFG-other")
    world.add_run("WCFG-other", [("PAUSED", None)], credits=1, credits_as_string=True)
    world.faults.not_found.append(world.add_run("WCFG-other", [("NEW", None)]).run_id)
    running = start_exporter(sim_config(sim))
    text = requests.get(f"{running.url}/metrics", timeout=10).text
    samples = parse_samples(text)
    assert sample(samples, "copyai_up") == 1
    assert len(names(samples, "copyai_workflow_run_status")) == 7 * 6
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_streamed_gzip_of_many_chunks_is_one_valid_gzip_answer():
    chunks = [(f"metric_{i} {i}\n" * 20_000).encode() for i in range(5)]  # ~1.3 MB
    compressed = list(_gzipped(iter(chunks)))
    assert len(compressed) > 1  # sent as it is compressed, not held whole
    assert gzip.decompress(b"".join(compressed)) == b"".join(chunks)
