"""The API key never leaves the process: a canary key is used by the real CLI through
faults, reloads and failures, then searched for in everything the process wrote and
served. Also: logged tracebacks are redacted, and a rotated key file is picked up by a
SIGHUP without a restart."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from exporter.config import build_config
from exporter.logs import REDACTED, REDACTOR, setup_logging
from exporter.runtime import Exporter
from tests.support.exporters import sim_stats
from tests.support.samples import parse_samples, sample

CANARY = "cpy-canary-K8sV2qLx7Rm4Tz9WpB3n"
ROTATED = "cpy-rotated-Hc5Jw1Ne6Ua0Gy3Sd8f"
LISTENING = re.compile(r"listening url=(http://\S+?)/metrics")


def fragments(secret: str) -> list[str]:
    """The key and every 8-character piece of its random part: a truncated or sliced
    key ('K8sV2qLx...') is as much a leak as the whole."""
    tail = secret.rsplit("-", maxsplit=1)[-1]
    return [secret, *(tail[i : i + 8] for i in range(len(tail) - 7))]


def assert_no_key(text: str, where: str, *secrets: str) -> None:
    for secret in secrets or (CANARY,):
        for piece in fragments(secret):
            assert piece not in text, f"{where} shows the key (found {piece!r})"


def clean_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}
    return {**base, **extra}


def write_config(path: Path, base_url: str, runs: list[str], key_file: Path | None) -> None:
    api: dict = {
        "base_url": base_url,
        "max_requests_per_second": 0,
        "max_retries": 1,
        "timeout_seconds": 2,
    }
    if key_file is not None:
        api["api_key_file"] = str(key_file)
    document = {
        "api": api,
        "collector": {"refresh_interval_seconds": 0},
        "workflows": [
            {"id": "WCFG-secret", "name": "secret", "runs": runs},
            {"id": "WCFG-secret-disc", "discover": True},
        ],
    }
    path.write_text(yaml.safe_dump(document))


def populate(world) -> list[str]:
    world.add_workflow("secret", "WCFG-secret")
    active = world.add_run("WCFG-secret", [("PROCESSING", None)], credits=4).run_id
    done = world.add_run("WCFG-secret", [("COMPLETE", None)], credits=2).run_id
    world.add_workflow("discovered", "WCFG-secret-disc")
    for _ in range(3):
        world.add_run("WCFG-secret-disc", [("NEW", 1), ("PROCESSING", None)])
    return [active, done]


def control_url(sim) -> str:
    host, port = sim.server.server_address[:2]
    return f"http://{host}:{port}/_sim"


class Served:
    """Everything the exporter answered over HTTP, headers included."""

    def __init__(self, url: str):
        self.url = url
        self.texts: list[tuple[str, str]] = []

    def request(self, method: str, path: str, expect: int) -> requests.Response:
        response = requests.request(method, f"{self.url}{path}", timeout=30)
        assert response.status_code == expect, (method, path, response.text)
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.texts.append((f"{method} {path}", f"{headers}\n\n{response.text}"))
        return response

    def up(self) -> float | None:
        return sample(parse_samples(self.request("GET", "/metrics", 200).text), "copyai_up")


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
@pytest.mark.parametrize("key_source", ["env", "key_file"])
def test_the_key_never_leaves_the_process(world, sim, spawn, tmp_path, key_source, log_format):
    world.api_key = CANARY
    runs = populate(world)
    key_file = None
    env = clean_env()
    if key_source == "env":
        env["COPYAI_API_KEY"] = CANARY
    else:
        key_file = tmp_path / "copyai_api_key"
        key_file.write_text(CANARY + "\n")
    config = tmp_path / "config.yaml"
    write_config(config, sim.base_url, runs, key_file)
    cli = spawn(
        *[
            "--config.file",
            str(config),
            "--web.listen-address",
            "127.0.0.1:0",
            "--web.enable-lifecycle",
            "--log.level=debug",
            f"--log.format={log_format}",
        ],
        env=env,
        clean_env=True,
    )
    served = Served(cli.wait_for_line(LISTENING).group(1))
    assert served.up() == 1
    for path in ("/", "/-/healthy", "/-/ready"):
        served.request("GET", path, 200)

    # faults switched on and off while it runs: each one ends up in the debug log
    faults = [
        ({"error_rate": 1.0, "error_html": True}, 0),  # HTML 502s from a proxy
        ({"error_rate": 0.0, "refuse_key": True}, 0),  # 401: the key is refused
        ({"refuse_key": False, "drop_connections": True}, 0),  # no answer at all
        ({"drop_connections": False}, 1),
    ]
    for change, expected_up in faults:
        answer = requests.post(f"{control_url(sim)}/faults", json=change, timeout=5)
        assert answer.status_code == 200
        assert served.up() == expected_up, change

    # a reload that fails, answered over HTTP (the key file, if any, is read again)
    key_line = f"  api_key_file: {key_file}\n" if key_file else ""
    config.write_text(f"api:\n  bogus: 1\n{key_line}workflows: 12\n")
    failed = served.request("POST", "/-/reload", 500)
    assert "workflows: must be a list" in failed.text
    assert served.up() == 1  # the running config is kept
    for path in ("/metrics", "/", "/-/healthy", "/-/ready"):
        served.request("GET", path, 200)

    assert cli.stop() == 0
    log = cli.output()
    for where, text in served.texts:
        assert_no_key(text, where)
    assert_no_key(log, "the process output")
    # the paths above really ran and were logged
    for expected in ("server error 502", "refused the key (401)", "no answer", "reload failed"):
        assert expected in log, expected
    if log_format == "json":
        for line in cli.stderr:
            assert set(json.loads(line)) >= {"ts", "level", "logger", "msg"}


INVALID_CONFIGS = {
    "wrong_values": "api:\n  max_concurrency: 0\n  bogus: 1\nworkflows:\n  - id: 'a b'\n",
    "yaml_syntax": "api: [\nworkflows:\n",
    # the key pasted into the key file field by mistake: the message must not repeat it
    "key_pasted_as_key_file": f"api:\n  api_key_file: {CANARY}\nworkflows:\n  - id: WCFG-1\n",
    "key_file_with_a_space": "api:\n  api_key_file: spaced_key\nworkflows:\n  - id: WCFG-1\n",
    "key_file_too_large": "api:\n  api_key_file: big_key\nworkflows:\n  - id: WCFG-1\n",
    "key_in_env_with_a_newline": "workflows:\n  - id: WCFG-1\n",
    "key_in_an_unknown_field": f"api:\n  api_key: {CANARY}\nworkflows:\n  - id: WCFG-1\n",
    "key_in_base_url_credentials": (
        f"api:\n  base_url: https://user:{CANARY}@api.copy.ai/api\nworkflows:\n  - id: W-1\n"
    ),
    "key_in_base_url_query": (
        f"api:\n  base_url: https://api.copy.ai/api?key={CANARY}\nworkflows:\n  - id: W-1\n"
    ),
}


@pytest.mark.parametrize("name", INVALID_CONFIGS)
def test_check_config_never_prints_the_key(tmp_path, name):
    (tmp_path / "spaced_key").write_text(f"{CANARY} {CANARY}\n")
    (tmp_path / "big_key").write_text(CANARY * 200)
    path = tmp_path / "config.yaml"
    path.write_text(INVALID_CONFIGS[name])
    key = CANARY + "\nx" if name == "key_in_env_with_a_newline" else CANARY
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(path), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=clean_env(COPYAI_API_KEY=key),
    )
    assert result.returncode == 2, result.stderr
    assert "invalid configuration" in result.stderr
    assert "Traceback" not in result.stderr
    assert_no_key(result.stdout + result.stderr, f"--check-config ({name})")


def test_a_rotated_key_file_is_used_after_sighup(world, sim, spawn, tmp_path):
    world.api_key = CANARY
    runs = populate(world)
    key_file = tmp_path / "copyai_api_key"
    key_file.write_text(CANARY + "\n")
    config = tmp_path / "config.yaml"
    write_config(config, sim.base_url, runs, key_file)
    cli = spawn(
        *["--config.file", str(config), "--web.listen-address", "127.0.0.1:0", "--log.level=debug"],
        env=clean_env(),
        clean_env=True,
    )
    served = Served(cli.wait_for_line(LISTENING, consume=True).group(1))
    assert served.up() == 1

    world.api_key = ROTATED  # the old key is revoked
    assert served.up() == 0

    key_file.write_text(ROTATED + "\n")
    cli.proc.send_signal(signal.SIGHUP)
    cli.wait_for_line(re.compile("configuration applied"), consume=True)
    requests.post(f"{control_url(sim)}/stats/reset", timeout=5).raise_for_status()
    samples = parse_samples(served.request("GET", "/metrics", 200).text)
    assert sample(samples, "copyai_up") == 1
    fetched = sample(
        samples, "copyai_workflow_run_fetch_success", workflow_id="WCFG-secret", run_id=runs[0]
    )
    assert fetched == 1  # the simulator takes nothing but the new key
    assert sim_stats(sim).get("get_run", 0) >= 1
    assert cli.proc.poll() is None  # the same process: no restart

    assert cli.stop() == 0
    assert_no_key(cli.output(), "the process output", CANARY, ROTATED)
    for where, text in served.texts:
        assert_no_key(text, where, CANARY, ROTATED)


# --- tracebacks ----------------------------------------------------------------------


@contextlib.contextmanager
def logging_into_buffer(log_format: str, level: str = "debug") -> Iterator[io.StringIO]:
    """Root logging set up as the CLI does it, into a buffer; put back afterwards."""
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    stream = io.StringIO()
    setup_logging(level, log_format, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_a_logged_exception_carrying_the_key_is_redacted(log_format):
    secret = "cpy-traceback-Vb7Xe2Qa9Lk4Rw1Mz6"
    REDACTOR.add(secret)
    with logging_into_buffer(log_format) as stream:
        try:
            try:
                raise KeyError(f"header x-copy-ai-api-key={secret}")
            except KeyError as cause:
                raise RuntimeError(f"request with {secret!r} failed") from cause
        except RuntimeError:
            logging.getLogger("exporter.test").exception("call failed key=%s", secret)
    text = stream.getvalue()
    assert "Traceback" in text and "RuntimeError" in text and "KeyError" in text
    assert text.count(REDACTED) >= 3
    assert_no_key(text, "the log", secret)


class _LeakySession(requests.Session):
    """A transport with a bug that puts the request headers in its error message."""

    def send(self, request, **kwargs):
        raise RuntimeError(f"adapter bug while sending {request.method} headers={request.headers}")


def test_an_unexpected_error_while_fetching_is_logged_redacted():
    key = "cpy-fetch-Nq3Ws8Ej5Yp0Tc7Lh2"
    config = build_config(
        {
            "api": {"base_url": "http://127.0.0.1:1/api", "max_retries": 0},
            "workflows": [{"id": "WCFG-leak", "runs": ["WRUN-leak"]}],
        },
        env={"COPYAI_API_KEY": key},
    )
    REDACTOR.add(config.api.api_key.reveal())  # as the CLI does for every loaded config
    with logging_into_buffer("logfmt", "info") as stream:
        exporter = Exporter(config, session_factory=_LeakySession, process_metrics=False)
        try:
            assert exporter.refresh(time.monotonic() + 10).completed
            samples = parse_samples(exporter.render().decode())
        finally:
            exporter.close()
    text = stream.getvalue()
    assert "internal error while refreshing" in text and "Traceback" in text
    assert REDACTED in text
    assert_no_key(text, "the log", key)
    fetched = sample(
        samples, "copyai_workflow_run_fetch_success", workflow_id="WCFG-leak", run_id="WRUN-leak"
    )
    assert fetched == 0


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_a_key_with_a_quote_or_backslash_is_redacted_too(log_format):
    secret = 'cpy-"quoted"\\canary-Zt4Kd9'
    REDACTOR.add(secret)
    with logging_into_buffer(log_format) as stream:
        logging.getLogger("exporter.test").error("sent key=%s", secret)
    text = stream.getvalue()
    escaped = secret.replace("\\", "\\\\").replace('"', '\\"')
    assert REDACTED in text
    assert secret not in text
    assert escaped not in text
