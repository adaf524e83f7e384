"""Hostile and broken clients against the HTTP listeners (issue 17): the connection cap
(--web.max-connections), the deadlines for a request to arrive, one structured log line
per broken client and never a traceback, and the copyai_http_* metrics. In-process
servers for the mechanics; the real CLI under a few hundred slow clients for the
whole picture (threads, memory, scrape latency, every stderr line)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from benchmarks.harness import SlowClients
from exporter.metrics.telemetry import CLIENT_ERROR_REASONS
from exporter.web.connections import (
    BODY_DEADLINE_SECONDS,
    BUSY_DEADLINE_SECONDS,
    HEADER_DEADLINE_SECONDS,
    ConnectionObserver,
)
from exporter.web.http import HttpServer
from exporter.web.webconfig import WebState
from tests.support.exporters import API_KEY
from tests.support.pki import tls_config, web_file
from tests.support.polling import wait_for
from tests.support.processes import LISTENING, Process
from tests.support.samples import parse_samples, sample

pytestmark = pytest.mark.slow

TOKEN = "hostile-test-token-0123456789"
WEBHOOK_LISTENING = re.compile(r"webhook receiver listening url=(http://\S+?)/webhook/")
MARGIN = 1.5  # scheduling slack around a deadline on a loaded 2-core machine


# --- in-process servers ---------------------------------------------------------------


class Recorder(ConnectionObserver):
    """What a listener reports, kept for assertions (and the most open at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.max_connections = 0
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.waits = 0
        self.errors: Counter[str] = Counter()

    def http_listener_started(self, listener: str, max_connections: int) -> None:
        self.max_connections = max_connections

    def http_connection_opened(self, listener: str) -> None:
        with self.lock:
            self.open += 1
            self.accepted += 1
            self.most_open = max(self.most_open, self.open)

    def http_connection_closed(self, listener: str) -> None:
        with self.lock:
            self.open -= 1

    def http_connection_limit_waited(self, listener: str) -> None:
        with self.lock:
            self.waits += 1

    def http_client_failed(self, listener: str, reason: str) -> None:
        with self.lock:
            self.errors[reason] += 1


class App:
    """/hold waits until released (one request per release), /boom is a bug, a POST
    reads its body; anything else answers at once."""

    def __init__(self) -> None:
        self.releases = threading.Semaphore(0)
        self.bodies: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        path = environ["PATH_INFO"]
        if path == "/hold":
            self.releases.acquire(timeout=30)
        elif path == "/boom":
            raise RuntimeError("a bug in the app")
        if environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            self.bodies.append(environ["wsgi.input"].read(length))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[HttpServer, App, Recorder]]]:
    started: list[tuple[HttpServer, App]] = []

    def start(max_connections: int = 512) -> tuple[HttpServer, App, Recorder]:
        app, recorder = App(), Recorder()
        server = HttpServer(
            app, "127.0.0.1:0", max_connections=max_connections, observer=recorder
        ).start()
        started.append((server, app))
        return server, app, recorder

    yield start
    for server, app in started:
        app.releases.release(100)  # whatever is still held
        server.stop()


def connect(server: HttpServer, payload: bytes = b"") -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if payload:
        conn.sendall(payload)
    return conn


def read_all(conn: socket.socket) -> bytes:
    received = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(65536):
            received.append(chunk)
    return b"".join(received)


def get(server: HttpServer, path: str = "/") -> bytes:
    with connect(server, f"GET {path} HTTP/1.0\r\n\r\n".encode()) as conn:
        return read_all(conn)


def closed_by_server(conn: socket.socket, within: float) -> bool:
    """True once the server has closed `conn` (EOF or reset), False after `within`."""
    readable, _, _ = select.select([conn], [], [], within)
    if not readable:
        return False
    try:
        return read_all(conn) is not None
    except OSError:
        return True


def server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("exporter.web")]


# --- the cap -----------------------------------------------------------------------------


def test_a_connection_past_the_cap_waits_until_one_of_the_first_finishes(serve):
    server, app, recorder = serve(max_connections=2)
    held = [connect(server, b"GET /hold HTTP/1.0\r\n\r\n") for _ in range(2)]
    wait_for(lambda: recorder.open == 2)
    third = connect(server, b"GET / HTTP/1.0\r\n\r\n")
    wait_for(lambda: recorder.waits == 1)  # the acceptor found both slots taken
    # it is not accepted, let alone answered, while both slots are taken
    assert select.select([third], [], [], 0.5)[0] == []
    assert (recorder.open, recorder.accepted) == (2, 2)

    app.releases.release()  # one of the first two finishes...
    answers = [read_all(third)]  # ...and the third is served
    assert answers[0].startswith(b"HTTP/1.0 200 OK")
    app.releases.release()
    answers += [read_all(conn) for conn in held]
    assert all(a.startswith(b"HTTP/1.0 200 OK") for a in answers)
    wait_for(lambda: recorder.open == 0)
    assert (recorder.accepted, recorder.most_open, recorder.max_connections) == (3, 2, 2)
    assert recorder.errors == Counter()
    for conn in [third, *held]:
        conn.close()


def test_shutdown_works_while_the_acceptor_waits_for_a_slot(serve):
    server, app, recorder = serve(max_connections=1)
    held = connect(server, b"GET /hold HTTP/1.0\r\n\r\n")
    waiting = connect(server, b"GET / HTTP/1.0\r\n\r\n")
    wait_for(lambda: recorder.waits == 1)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive() and not server.thread.is_alive()
    assert closed_by_server(waiting, within=5)  # refused, never served
    app.releases.release()
    assert read_all(held).startswith(b"HTTP/1.0 200 OK")  # the one in progress finishes
    held.close()
    waiting.close()


def test_a_full_cap_of_slow_clients_is_cleared_within_the_busy_deadline(serve):
    server, _, recorder = serve(max_connections=2)
    slow = [connect(server, b"GET /metri") for _ in range(2)]
    wait_for(lambda: recorder.open == 2)
    started = time.monotonic()
    answer = get(server, "/")  # waits for a slot: the slow ones are hurried out
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.0 200 OK")
    assert waited < BUSY_DEADLINE_SECONDS + MARGIN < HEADER_DEADLINE_SECONDS
    for conn in slow:
        assert closed_by_server(conn, within=MARGIN)
        conn.close()
    wait_for(lambda: recorder.errors["timeout"] == 2)
    assert recorder.waits >= 1


def test_a_request_being_answered_is_never_hurried(serve):
    server, app, recorder = serve(max_connections=1)
    held = connect(server, b"GET /hold HTTP/1.0\r\n\r\n")
    wait_for(lambda: recorder.open == 1)
    waiting = connect(server, b"GET / HTTP/1.0\r\n\r\n")
    wait_for(lambda: recorder.waits == 1)
    # past the busy deadline, the request being answered is still open
    assert select.select([held], [], [], BUSY_DEADLINE_SECONDS + 0.5)[0] == []
    app.releases.release()
    assert read_all(held).startswith(b"HTTP/1.0 200 OK")
    assert read_all(waiting).startswith(b"HTTP/1.0 200 OK")
    assert recorder.errors == Counter()
    held.close()
    waiting.close()


def test_a_client_silent_in_its_tls_handshake_is_cut_when_another_waits(pki, tmp_path):
    web = WebState(web_file(tmp_path, tls_config(pki)))
    recorder = Recorder()
    server = HttpServer(App(), "127.0.0.1:0", web, max_connections=1, observer=recorder).start()
    silent = connect(server)  # never sends its ClientHello
    try:
        wait_for(lambda: recorder.open == 1)
        started = time.monotonic()
        answer = requests.get(f"{server.url}/", verify=pki / "ca.crt", timeout=10)
        waited = time.monotonic() - started
        assert answer.status_code == 200 and answer.text == "ok\n"
        assert waited < BUSY_DEADLINE_SECONDS + MARGIN
        assert closed_by_server(silent, within=MARGIN)
        wait_for(lambda: recorder.errors == Counter(timeout=1))
    finally:
        silent.close()
        server.stop()


# --- deadlines ---------------------------------------------------------------------------


def test_a_client_trickling_its_headers_is_cut_at_the_header_deadline(serve, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="exporter.web")
    server, _, recorder = serve()
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000
    started = time.monotonic()
    slow = connect(server, request[:5])
    sent, served, closed_after = 5, 0, None
    while closed_after is None and time.monotonic() - started < HEADER_DEADLINE_SECONDS + 5:
        # a normal request is answered at once meanwhile
        assert get(server, "/").startswith(b"HTTP/1.0 200 OK")
        served += 1
        if closed_by_server(slow, within=1.0):  # one byte a second, as the attack does
            closed_after = time.monotonic() - started
            break
        try:
            slow.sendall(request[sent : sent + 1])
            sent += 1
        except OSError:
            closed_after = time.monotonic() - started
    slow.close()
    assert closed_after is not None, "the slow client was never cut"
    assert HEADER_DEADLINE_SECONDS - 0.5 < closed_after < HEADER_DEADLINE_SECONDS + MARGIN
    assert served >= 4 and sent >= 8  # the trickle went on; so did everyone else
    wait_for(lambda: recorder.errors == Counter(timeout=1))
    failures = [r for r in server_records(caplog) if "client connection failed" in r.message]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG and failures[0].exc_info is None
    assert "listener=metrics client=127.0.0.1 reason=timeout" in failures[0].getMessage()
    assert capfd.readouterr().err == ""  # nothing printed past logging


def test_a_webhook_body_trickled_in_is_cut_at_the_body_deadline(serve):
    server, app, recorder = serve()
    body = b'{"type": "workflowRun.completed"}' + b" " * 100
    head = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    started = time.monotonic()
    slow = connect(server, head)
    sent, closed_after = 0, None
    while time.monotonic() - started < BODY_DEADLINE_SECONDS + 5:
        if closed_by_server(slow, within=1.0):
            closed_after = time.monotonic() - started
            break
        try:
            slow.sendall(body[sent : sent + 1])
            sent += 1
        except OSError:
            closed_after = time.monotonic() - started
            break
    slow.close()
    assert closed_after is not None, "the slow body was never cut"
    assert BODY_DEADLINE_SECONDS - 0.5 < closed_after < BODY_DEADLINE_SECONDS + MARGIN
    wait_for(lambda: recorder.errors == Counter(timeout=1))
    assert app.bodies == []  # the app never saw a truncated body as if it were whole
    # a body sent at once is read whole
    with connect(server, head + body) as conn:
        assert read_all(conn).startswith(b"HTTP/1.0 200 OK")
    assert app.bodies == [body]


# --- logging -----------------------------------------------------------------------------


def test_each_broken_client_is_one_debug_line_and_a_bug_one_error_record(serve, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="exporter.web")
    server, _, recorder = serve()
    assert get(server, "/").startswith(b"HTTP/1.0 200 OK")
    caplog.clear()

    with connect(server, b"GARBAGE IN HERE\r\n\r\n") as conn:  # malformed: a 400
        assert b"Error code explanation: 400" in read_all(conn)  # (as HTTP/0.9: no head)
    with connect(server, b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n") as conn:
        assert read_all(conn).startswith(b"HTTP/1.0 414")
    conn = connect(server, b"GET /metri")  # closes mid request line
    conn.shutdown(socket.SHUT_WR)
    assert closed_by_server(conn, within=5)
    conn.close()
    with connect(server):  # a port check: connects, says nothing, leaves
        pass
    wait_for(lambda: sum(recorder.errors.values()) == 3)
    assert recorder.errors == Counter(bad_request=2, reset=1)

    answer = get(server, "/boom")  # a bug in the app
    assert answer.startswith(b"HTTP/1.0 500")
    wait_for(lambda: recorder.open == 0)
    assert sum(recorder.errors.values()) == 3  # a bug is not the client's fault

    records = server_records(caplog)
    failures = [r for r in records if "client connection failed" in r.message]
    assert len(failures) == 3 and all(r.levelno == logging.DEBUG for r in failures)
    assert sorted(re.search(r"reason=(\w+)", r.getMessage()).group(1) for r in failures) == [
        "bad_request",
        "bad_request",
        "reset",
    ]
    assert "code 400" in failures[0].getMessage()
    # a refused request is that one line, not also an access log line
    assert not [r for r in records if r.getMessage().startswith("http ") and " 400 " in r.message]
    bugs = [r for r in records if r.levelno >= logging.ERROR]
    assert len(bugs) == 1 and bugs[0].exc_info is not None
    assert "listener=metrics method=GET path=/boom" in bugs[0].getMessage()
    assert capfd.readouterr().err == ""


def test_broken_clients_are_summed_up_in_one_warning(serve, caplog):
    caplog.set_level(logging.WARNING, logger="exporter.web")
    server, _, recorder = serve()
    for _ in range(3):
        with connect(server, b"\x16\x03\x01 not http\r\n\r\n") as conn:
            read_all(conn)
    wait_for(lambda: recorder.errors["bad_request"] == 3)
    assert server_records(caplog) == []  # at most once a minute: not yet
    server.stop()  # what is pending is written at shutdown
    warnings = [r.getMessage() for r in server_records(caplog)]
    assert warnings == [
        "slow or broken client connections in the last minute listener=metrics count=3"
    ]


# --- the real command line under attack --------------------------------------------------

LOGFMT_PAIR = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s="]+)')
LOGFMT_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}
REQUIRED_FIELDS = {"ts", "level", "logger", "msg"}


def parse_logfmt(line: str) -> dict[str, str]:
    """A strict logfmt parser: key=value pairs separated by one space, values bare (no
    space, quote or =) or quoted with only \\\\, \\", \\n and \\t escapes."""
    fields: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = LOGFMT_PAIR.match(line, position)
        assert match, f"not logfmt at column {position}: {line!r}"
        key, raw = match.groups()
        if raw.startswith('"'):
            value, escaped = [], False
            for char in raw[1:-1]:
                if escaped:
                    assert char in LOGFMT_ESCAPES, f"unknown escape \\{char}: {line!r}"
                    value.append(LOGFMT_ESCAPES[char])
                    escaped = False
                elif char == "\\":
                    escaped = True
                else:
                    value.append(char)
            raw = "".join(value)
        assert key not in fields, f"{key} twice: {line!r}"
        fields[key] = raw
        position = match.end()
        if position < len(line):
            assert line[position] == " ", f"no space after a pair: {line!r}"
            position += 1
    assert fields.keys() >= REQUIRED_FIELDS, line
    return fields


def parse_json_line(line: str) -> dict[str, str]:
    fields = json.loads(line)
    assert isinstance(fields, dict) and fields.keys() >= REQUIRED_FIELDS, line
    return fields


def proc_status(pid: int) -> dict[str, int]:
    """Threads and VmRSS (kB) of a process, from /proc/<pid>/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Threads", "VmRSS"):
            values[name] = int(value.split()[0])
    return values


def stderr_lines(process: Process) -> list[str]:
    return process.log_text().splitlines()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def scrape(url: str) -> tuple[float, str]:
    started = time.monotonic()
    answer = requests.get(f"{url}/metrics", timeout=60)
    answer.raise_for_status()
    return time.monotonic() - started, answer.text


@pytest.fixture
def cli_processes() -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Process:
        process = Process(list(args), env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


CAP = 50
SLOW_PER_LISTENER = 300
MAX_CONCURRENCY = 4


def test_the_cli_under_slow_clients_on_both_listeners(sim, world, tmp_path, cli_processes):
    world.add_workflow("hostile", "WCFG-hostile")
    runs = [world.add_run("WCFG-hostile", [("PROCESSING", None)]).run_id for _ in range(3)]
    config = tmp_path / "config.yaml"
    config.write_text(
        f"api: {{base_url: '{sim.base_url}', max_concurrency: {MAX_CONCURRENCY}}}\n"
        "webhooks: {listen_address: '127.0.0.1:0'}\n"
        f"workflows: [{{id: WCFG-hostile, runs: [{', '.join(runs)}]}}]\n"
    )
    process = cli_processes(
        "--config.file",
        str(config),
        "--web.listen-address",
        "127.0.0.1:0",
        f"--web.max-connections={CAP}",
        "--log.level=debug",
        env={"COPYAI_API_KEY": API_KEY, "COPYAI_WEBHOOK_TOKEN": TOKEN},
    )
    url = process.wait_for_line(LISTENING).group(1)
    hooks = process.wait_for_line(WEBHOOK_LISTENING).group(1)
    pid = process.proc.pid
    for _ in range(3):  # warm: the refresh pool and the deadline thread exist
        scrape(url)
        requests.get(f"{hooks}/-/healthy", timeout=10).raise_for_status()
    idle = proc_status(pid)

    # Every thread the process may have: the idle ones (main, two acceptors, the
    # deadline watchdogs, ...), the refresh pool (max_concurrency, may still grow), one
    # per connection up to the cap on each listener. Not one per slow client.
    thread_bound = idle["Threads"] + MAX_CONCURRENCY + 2 * CAP
    peak = dict(idle)
    latencies: list[float] = []
    most_open = {"metrics": 0.0, "webhook": 0.0}
    targets = [address(url), address(hooks)]
    with SlowClients(targets, SLOW_PER_LISTENER) as slow:
        pause = threading.Event()
        deadline = time.monotonic() + 120
        while slow.cut() < slow.total and time.monotonic() < deadline:
            seconds, text = scrape(url)
            latencies.append(seconds)
            samples = parse_samples(text)
            for listener, most in most_open.items():
                value = sample(samples, "copyai_http_connections_open", listener=listener)
                most_open[listener] = max(most, value or 0)
            status = proc_status(pid)
            peak = {k: max(peak[k], status[k]) for k in peak}
            pause.wait(0.2)
        cut, total, refused = slow.cut(), slow.total, slow.refused
    assert (cut, refused) == (total, 0), "every slow client was cut by the server"

    assert peak["Threads"] <= thread_bound, (peak, idle)
    assert peak["VmRSS"] - idle["VmRSS"] < 20 * 1024, (peak, idle)  # kB
    assert len(latencies) >= 3
    assert max(latencies) < HEADER_DEADLINE_SECONDS + 3, latencies
    assert most_open["metrics"] <= CAP and most_open["webhook"] <= CAP, most_open
    _, text = scrape(url)
    samples = parse_samples(text)
    for listener in ("metrics", "webhook"):
        labels = {"listener": listener}
        assert sample(samples, "copyai_http_connections_max", **labels) == CAP
        timeouts = sample(samples, "copyai_http_client_errors_total", reason="timeout", **labels)
        assert timeouts >= SLOW_PER_LISTENER
        assert sample(samples, "copyai_http_connection_limit_waits_total", **labels) >= 1
        accepted = sample(samples, "copyai_http_connections_total", **labels)
        assert accepted >= SLOW_PER_LISTENER
        for reason in CLIENT_ERROR_REASONS:  # pre-set, so rate() works from the start
            errors = sample(samples, "copyai_http_client_errors_total", reason=reason, **labels)
            assert errors is not None
    if shutil.which("promtool"):
        check = subprocess.run(
            ["promtool", "check", "metrics"],
            check=False,
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stdout + check.stderr

    assert process.stop() == 0
    lines = stderr_lines(process)
    records = [parse_logfmt(line) for line in lines]
    assert not [line for line in lines if "Traceback" in line]
    failures = [r for r in records if r["msg"].startswith("client connection failed")]
    assert len(failures) >= 2 * SLOW_PER_LISTENER
    assert {r["level"] for r in failures} == {"debug"}
    summaries = [r for r in records if r["msg"].startswith("slow or broken client connections")]
    assert {r["level"] for r in summaries} == {"warn"}
    counted = Counter()
    for record in summaries:
        fields = dict(pair.split("=") for pair in record["msg"].split(" ") if "=" in pair)
        counted[fields["listener"]] += int(fields["count"])
    assert counted["metrics"] >= SLOW_PER_LISTENER and counted["webhook"] >= SLOW_PER_LISTENER


def test_the_demo_logs_only_json_lines_under_slow_clients(cli_processes):
    process = cli_processes(
        "--demo",
        "--web.listen-address",
        "127.0.0.1:0",
        "--web.max-connections=20",
        "--log.format=json",
        "--log.level=debug",
    )
    url = json.loads(process.wait_for_line(re.compile(r"listening url=")).string)["msg"]
    url = re.search(r"url=(http://\S+?)/metrics", url).group(1)
    with SlowClients([address(url)], 100) as slow:
        wait_for(lambda: slow.cut() == slow.total, timeout=60, interval=0.2)
        seconds, _ = scrape(url)
    assert seconds < HEADER_DEADLINE_SECONDS + 3
    assert process.stop() == 0
    lines = stderr_lines(process)
    records = [parse_json_line(line) for line in lines]
    assert not [line for line in lines if "Traceback" in line]
    assert len([r for r in records if r["msg"].startswith("client connection failed")]) >= 100
    summaries = [r for r in records if r["msg"].startswith("slow or broken client")]
    assert len(summaries) == 1 and summaries[0]["level"] == "warn"
    assert "listener=metrics count=" in summaries[0]["msg"]


def test_max_connections_must_be_at_least_one():
    for bad in ("0", "-3", "many"):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", f"--web.max-connections={bad}", "--demo"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2, bad
        assert "--web.max-connections" in result.stderr
    with pytest.raises(ValueError):
        HttpServer(lambda environ, start_response: [], "127.0.0.1:0", max_connections=0)
