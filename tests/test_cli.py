"""The real command line in subprocesses: --version, --check-config, --demo, signals,
exit codes, and that the API key never reaches the logs."""

from __future__ import annotations

import os
import re
import signal
import socket

import requests

from exporter import __version__
from tests.support.exporters import API_KEY
from tests.support.processes import LISTENING, run_cli
from tests.support.samples import names, parse_samples, sample


def write_config(path, base_url: str, runs: list[str], workflow: str = "WCFG-test") -> None:
    path.write_text(
        f"api:\n  base_url: {base_url}\n  max_requests_per_second: 0\n"
        f"collector:\n  refresh_interval_seconds: 0\n"
        f"workflows:\n  - id: {workflow}\n    name: cli-test\n    runs: [{', '.join(runs)}]\n"
    )


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"copyai-exporter {__version__} ")


def test_check_config_valid_and_invalid(tmp_path):
    good = tmp_path / "good.yaml"
    write_config(good, "http://127.0.0.1:1/api", ["WRUN-1", "WRUN-2"])
    result = run_cli("--config.file", str(good), "--check-config", env={"COPYAI_API_KEY": API_KEY})
    assert result.returncode == 0, result.stderr
    assert "valid (1 workflow(s), 2 run(s))" in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("api:\n  max_concurrency: 0\n  bogus: 1\nworkflows:\n  - id: 'a b'\n")
    result = run_cli("--config.file", str(bad), "--check-config", env={"COPYAI_API_KEY": API_KEY})
    assert result.returncode == 2
    for expected in ("api.max_concurrency", "api.bogus", "workflows[0].id"):
        assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_exits_2():
    result = run_cli("--web.listen-address", "nonsense")
    assert result.returncode == 2
    assert "invalid listen address" in result.stderr


def test_demo_serves_live_metrics_without_a_key(spawn):
    env = {k: v for k, v in os.environ.items() if k != "COPYAI_API_KEY"}
    process = spawn("--demo", "--web.listen-address", "127.0.0.1:0", env=env)
    url = process.wait_for_line(LISTENING).group(1)
    samples = parse_samples(requests.get(f"{url}/metrics", timeout=15).text)
    assert sample(samples, "copyai_up") == 1
    workflows = {s["workflow_name"] for s in names(samples, "copyai_workflow_info")}
    assert workflows == {"blog-writer", "seo-meta-descriptions", "lead-enrichment"}
    statuses = {
        dict(labels)["status"]
        for (name, labels), value in samples.items()
        if name == "copyai_workflow_run_status" and value == 1
    }
    assert {"COMPLETE", "PROCESSING", "FAILED"} <= statuses
    assert process.stop() == 0


def test_serves_reloads_on_sighup_and_stops_cleanly_on_sigterm(sim, world, spawn, tmp_path):
    world.add_workflow("cli", "WCFG-test")
    runs = [world.add_run("WCFG-test", [("PROCESSING", None)]).run_id for _ in range(2)]
    path = tmp_path / "config.yaml"
    write_config(path, sim.base_url, runs)
    process = spawn(
        "--config.file",
        str(path),
        "--web.listen-address",
        "127.0.0.1:0",
        "--log.level",
        "debug",
        env={"COPYAI_API_KEY": API_KEY},
    )
    url = process.wait_for_line(LISTENING).group(1)
    samples = parse_samples(requests.get(f"{url}/metrics", timeout=15).text)
    assert {s["run_id"] for s in names(samples, "copyai_workflow_run_fetch_success")} == set(runs)

    write_config(path, sim.base_url, runs[:1])
    process.proc.send_signal(signal.SIGHUP)
    process.wait_for_line(re.compile("configuration applied workflows=1 runs=1"))
    samples = parse_samples(requests.get(f"{url}/metrics", timeout=15).text)
    assert {s["run_id"] for s in names(samples, "copyai_workflow_run_fetch_success")} == {runs[0]}

    path.write_text("workflows: 12\n")
    process.proc.send_signal(signal.SIGHUP)
    process.wait_for_line(re.compile("reload failed"))
    samples = parse_samples(requests.get(f"{url}/metrics", timeout=15).text)
    assert sample(samples, "copyai_config_last_reload_successful") == 0
    assert {s["run_id"] for s in names(samples, "copyai_workflow_run_fetch_success")} == {runs[0]}
    config = requests.get(f"{url}/status.json", timeout=15).json()["config"]
    assert config["file"] == str(path)  # the status page says which file, and what failed
    assert config["last_reload"]["ok"] is False
    assert any("workflows" in problem for problem in config["last_reload"]["problems"])

    assert process.stop() == 0
    log = process.log_text()
    assert "shutting down" in log
    assert "Traceback" not in log
    assert API_KEY not in log  # not even at debug level


def test_port_in_use_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "config.yaml"
        write_config(path, "http://127.0.0.1:1/api", ["WRUN-1"])
        result = run_cli(
            "--config.file",
            str(path),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            env={"COPYAI_API_KEY": API_KEY},
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_command_serves_the_api_and_writes_a_config(spawn, tmp_path):
    with socket.socket() as probe:  # find a free port for the simulator's fixed address
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "sim.yaml"
    process = spawn(
        "simulate",
        "--listen",
        f"127.0.0.1:{port}",
        "--write-config",
        str(out),
        "--scenario",
        "bulk",
        "--workflows",
        "2",
        "--runs-per-workflow",
        "5",
    )
    process.wait_for_line(re.compile("simulator listening"))
    text = out.read_text()
    assert f"http://127.0.0.1:{port}/api" in text
    result = run_cli(
        "--config.file", str(out), "--check-config", env={"COPYAI_API_KEY": "demo-key"}
    )
    assert result.returncode == 0, result.stderr
    assert "2 workflow(s), 10 run(s)" in result.stdout
    answer = requests.get(f"http://127.0.0.1:{port}/_sim/stats", timeout=5)
    assert answer.json() == {"requests": {}, "runs": {}}
    assert process.stop() == 0
