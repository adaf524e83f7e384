"""Bad input to the exporter's own HTTP server: unknown paths, wrong methods, oversized
request lines and headers, slow clients (more in test_hostile_clients.py), HEAD, and
clients that vanish mid-answer. Each test checks the answer and that the server goes on
serving everyone else."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from exporter.api.records import Run, RunStatus
from exporter.web.connections import HEADER_DEADLINE_SECONDS
from tests.support.exporters import RunningExporter, make_config
from tests.support.polling import wait_for
from tests.support.samples import parse_samples, sample

STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ")


@pytest.fixture
def exporter(sim, world, start_exporter) -> RunningExporter:
    world.add_workflow("surface", "WCFG-surface")
    runs = [world.add_run("WCFG-surface", [("PROCESSING", None)], credits=1).run_id]
    runs += [world.add_run("WCFG-surface", [("COMPLETE", None)], credits=i).run_id for i in (2, 3)]
    config = make_config(
        {
            "api": {"base_url": sim.base_url, "max_requests_per_second": 0},
            "collector": {"refresh_interval_seconds": 0},
            "workflows": [{"id": "WCFG-surface", "runs": runs}],
        }
    )
    return start_exporter(config)


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1" and parts.port is not None
    return parts.hostname, parts.port


def exchange(url: str, payload: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes; a reset ends the reading too."""
    received: list[bytes] = []
    with socket.create_connection(address(url), timeout=timeout) as conn:
        # the server may stop reading (and close) before all of it is sent
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.sendall(payload)
        try:
            while chunk := conn.recv(65536):
                received.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(received)


def status_of(answer: bytes) -> int | None:
    match = STATUS_LINE.match(answer)
    return int(match.group(1)) if match else None


def headers_of(answer: bytes) -> dict[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}


def assert_serving(running: RunningExporter) -> None:
    response = requests.get(f"{running.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert sample(parse_samples(response.text), "copyai_up") == 1


# --- routes ----------------------------------------------------------------------------


def test_unknown_paths_are_404(exporter):
    for method in ("GET", "HEAD", "POST", "DELETE"):
        for path in ("/nope", "/metrics/", "/metricsx", "/METRICS", "/-/", "/-/healthy/", "/a/b"):
            response = requests.request(method, f"{exporter.url}{path}", timeout=10)
            assert response.status_code == 404, (method, path)
            assert response.content == (b"" if method == "HEAD" else b"Not Found\n")
    assert_serving(exporter)


WRONG_METHODS = [
    ("POST", "/metrics", {"GET", "HEAD"}),
    ("PUT", "/metrics", {"GET", "HEAD"}),
    ("DELETE", "/metrics", {"GET", "HEAD"}),
    ("PATCH", "/metrics", {"GET", "HEAD"}),
    ("OPTIONS", "/metrics", {"GET", "HEAD"}),
    ("POST", "/", {"GET", "HEAD"}),
    ("POST", "/-/healthy", {"GET", "HEAD"}),
    ("DELETE", "/-/ready", {"GET", "HEAD"}),
    ("GET", "/-/reload", {"POST", "PUT"}),
    ("HEAD", "/-/reload", {"POST", "PUT"}),
    ("DELETE", "/-/reload", {"POST", "PUT"}),
]


def test_wrong_methods_are_405_with_an_allow_header(exporter):
    for method, path, allowed in WRONG_METHODS:
        response = requests.request(method, f"{exporter.url}{path}", timeout=10)
        assert response.status_code == 405, (method, path)
        assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
    answer = exchange(exporter.url, b"BREW /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 405  # a method no one has heard of
    assert headers_of(answer)["allow"] == "GET, HEAD"
    assert_serving(exporter)


# --- oversized requests ----------------------------------------------------------------


def test_an_oversized_request_line_is_refused(exporter):
    line = b"GET /" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = exchange(exporter.url, line)
    # 414, or the connection closed without an answer; never a 200
    assert status_of(answer) == 414 or answer == b"", answer[:80]
    assert_serving(exporter)


def test_an_oversized_header_line_is_refused(exporter):
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    answer = exchange(exporter.url, request)
    assert status_of(answer) == 431 or answer == b"", answer[:80]
    assert_serving(exporter)


def _with_headers(count: int) -> bytes:
    lines = [b"Host: x", *(b"X-Header-%d: %d" % (i, i) for i in range(count - 1))]
    return b"GET /metrics HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"


def test_more_than_100_headers_are_refused(exporter):
    # http.client counts the blank line ending the headers: 99 headers is the most
    assert status_of(exchange(exporter.url, _with_headers(99))) == 200
    for count in (101, 500):
        answer = exchange(exporter.url, _with_headers(count))
        assert status_of(answer) == 431 or answer == b"", (count, answer[:80])
        assert_serving(exporter)


# --- slow clients ------------------------------------------------------------------------


class Trickler(threading.Thread):
    """Opens a connection and sends a request one byte per second until the server
    closes it or the test stops it; `closed_after` is when the server closed it."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.conn = socket.create_connection(address(url), timeout=10)
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.sent = 0
        self.closed_after: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000
        try:
            for byte in request:
                self.conn.sendall(bytes([byte]))
                self.sent += 1
                # the trickle under test, in its own thread: a byte a second, unless
                # the server closes the connection (end of file) meanwhile
                if select.select([self.conn], [], [], 1.0)[0]:
                    if self.conn.recv(1024) == b"":
                        self.closed_after = time.monotonic() - self.started
                    return
                if self.stop.is_set():
                    return
        except OSError as exc:
            self.error = exc

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=10)
        self.conn.close()


@pytest.fixture
def slow_clients(exporter) -> Iterator[tuple[Trickler, list[socket.socket]]]:
    trickler = Trickler(exporter.url)
    silent = [socket.create_connection(address(exporter.url), timeout=10) for _ in range(5)]
    trickler.start()
    yield trickler, silent
    trickler.close()
    for conn in silent:
        conn.close()


@pytest.mark.slow
def test_slow_clients_do_not_hold_up_scrapes_and_are_cut_at_the_header_deadline(
    exporter, slow_clients
):
    trickler, silent = slow_clients
    wait_for(lambda: trickler.sent >= 1)
    durations = []
    for _ in range(20):
        started = time.monotonic()
        response = requests.get(f"{exporter.url}/metrics", timeout=5)
        durations.append(time.monotonic() - started)
        assert response.status_code == 200
        assert sample(parse_samples(response.text), "copyai_up") == 1
    assert max(durations) < 5, durations  # each finished: correctness, not speed
    # the request line and headers must arrive within the header deadline, all of
    # them: a byte a second does not keep the connection, nor does silence
    wait_for(lambda: not trickler.is_alive(), timeout=HEADER_DEADLINE_SECONDS + 3)
    assert trickler.error is None and trickler.closed_after is not None
    assert HEADER_DEADLINE_SECONDS - 0.5 < trickler.closed_after < HEADER_DEADLINE_SECONDS + 1.5
    assert 3 <= trickler.sent <= HEADER_DEADLINE_SECONDS + 2  # it trickled until cut
    for conn in silent:
        assert conn.recv(1024) == b""  # closed by the server, unanswered
    assert_serving(exporter)


# --- HEAD ---------------------------------------------------------------------------------


def test_head_answers_without_a_body(exporter):
    for path in ("/metrics", "/", "/-/healthy", "/-/ready"):
        answer = exchange(exporter.url, f"HEAD {path} HTTP/1.0\r\n\r\n".encode())
        assert status_of(answer) == 200, path
        _, separator, body = answer.partition(b"\r\n\r\n")
        assert separator and body == b"", path
        assert headers_of(answer)["content-type"].startswith("text/")
        assert requests.head(f"{exporter.url}{path}", timeout=10).content == b""
        got = requests.get(f"{exporter.url}{path}", timeout=10)
        # the same headers as GET: /metrics streams, so neither has a length
        assert headers_of(answer).get("content-length") == got.headers.get("Content-Length")


# --- vanishing clients ---------------------------------------------------------------------


@pytest.fixture
def big_exporter(start_exporter) -> RunningExporter:
    """An exporter whose /metrics answer is several MB: far more than socket buffers
    hold, so a client that goes away leaves the server in the middle of writing."""
    runs = [f"WRUN-big-{i:05d}" for i in range(8000)]
    config = make_config(
        {
            "api": {"base_url": "http://127.0.0.1:1/api"},  # nothing is fetched: see below
            "collector": {"up_check_interval_seconds": 0},
            "workflows": [{"id": "WCFG-big", "runs": runs}],
        }
    )
    running = start_exporter(config)
    for i, run_id in enumerate(runs):  # finished runs known from history: never fetched
        run = Run(run_id, RunStatus.COMPLETE, 1_700_000_000.0 + i, float(i), "COMPLETE")
        running.exporter.store.seed(("WCFG-big", run_id), run)
    return running


def _leave_mid_answer(url: str, read: int) -> None:
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.settimeout(10)
    try:
        conn.connect(address(url))
        conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        got = b""
        while len(got) < read:
            chunk = conn.recv(read - len(got))
            assert chunk, "closed before the answer started"
            got += chunk
        if read:
            assert status_of(got) == 200
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        conn.close()  # with SO_LINGER 0: a reset, as a crashed client or a killed curl


def test_a_client_that_disconnects_mid_response_does_not_hurt_the_server(big_exporter):
    full = requests.get(f"{big_exporter.url}/metrics", timeout=30)
    assert full.status_code == 200 and len(full.content) > 6 * 1024 * 1024
    for read in (0, 1024, 200_000, 1024):
        _leave_mid_answer(big_exporter.url, read)
    assert big_exporter.server.thread.is_alive()
    again = requests.get(f"{big_exporter.url}/metrics", timeout=30)
    assert again.status_code == 200
    complete = [
        labels
        for (name, labels), value in parse_samples(again.text).items()
        if name == "copyai_workflow_run_status" and ("status", "COMPLETE") in labels and value
    ]
    assert len(complete) == 8000  # the whole answer, every run in it
