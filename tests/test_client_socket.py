"""CopyaiClient against raw sockets on 127.0.0.1: the timeouts that a mocked transport
cannot show (a body that trickles in, a server that never answers, a closed port).

The elapsed-time bounds are correctness bounds (the client gave up instead of waiting
for the whole trickle), not benchmarks; they are far from the values they guard.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from exporter.api.client import CopyaiClient
from exporter.api.errors import ApiError, ErrorKind
from exporter.config import ApiConfig, Secret

API_KEY = "canary-key-123"
TIMEOUT_SECONDS = 1.0
TRICKLE_INTERVAL_SECONDS = 0.2
RUN_BODY = json.dumps({"status": "success", "data": {"id": "WRUN-1", "status": "COMPLETE"}})

Handler = Callable[[socket.socket, threading.Event], None]


class RawServer:
    """A TCP server on 127.0.0.1 (port 0) that reads each request head and hands the
    connection to `handle`; `close` stops it and joins every thread it started."""

    def __init__(self, handle: Handler):
        self._handle = handle
        self.stop = threading.Event()
        self.connections = 0
        self.request_heads: list[bytes] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # lets the accept loop notice `stop`
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self.connections += 1
                self._sockets.append(conn)
                self._threads.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                head = read_request_head(conn)
                with self._lock:
                    self.request_heads.append(head)
                self._handle(conn, self.stop)
        except OSError:
            pass  # the client hung up, which is what most tests here provoke

    def close(self) -> None:
        self.stop.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for conn in sockets:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for worker in threads:
            worker.join(timeout=5)
        assert not self._acceptor.is_alive()
        assert not any(worker.is_alive() for worker in threads)


def read_request_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


@pytest.fixture
def raw_server() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def start(handle: Handler) -> RawServer:
        server = RawServer(handle)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def make_client(base_url: str, sleeps: list[float]) -> CopyaiClient:
    api = ApiConfig(
        base_url=base_url,
        api_key=Secret(API_KEY),
        timeout_seconds=TIMEOUT_SECONDS,
        max_retries=0,
        max_requests_per_second=0,
    )
    return CopyaiClient(api, sleep=sleeps.append)


def fetch_error(base_url: str) -> tuple[ApiError, float]:
    """get_run against base_url; the ApiError it raised and how long that took."""
    sleeps: list[float] = []
    client = make_client(base_url, sleeps)
    started = time.monotonic()
    try:
        with pytest.raises(ApiError) as info:
            client.get_run("WCFG-1", "WRUN-1")
    finally:
        elapsed = time.monotonic() - started
        client.close()
    assert sleeps == []
    assert API_KEY not in str(info.value)
    return info.value, elapsed


def test_body_trickling_in_is_abandoned_at_the_timeout(
    raw_server: Callable[[Handler], RawServer],
) -> None:
    body = RUN_BODY.encode() + b" " * 100  # valid JSON: waiting it out would succeed
    sent: list[int] = []

    def trickle_body(conn: socket.socket, stop: threading.Event) -> None:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        conn.sendall(head.encode())
        for byte in body:
            conn.sendall(bytes([byte]))
            sent.append(byte)
            if stop.wait(TRICKLE_INTERVAL_SECONDS):
                return

    server = raw_server(trickle_body)
    whole_body_seconds = len(body) * TRICKLE_INTERVAL_SECONDS
    assert whole_body_seconds > 20

    error, elapsed = fetch_error(server.base_url)

    assert error.kind == ErrorKind.UNREACHABLE
    assert str(error) == "body not received within the timeout"
    assert TIMEOUT_SECONDS <= elapsed < 5
    assert len(sent) < len(body)
    assert server.connections == 1


def test_server_that_never_answers_is_unreachable_after_the_timeout(
    raw_server: Callable[[Handler], RawServer],
) -> None:
    def never_answer(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(30)

    server = raw_server(never_answer)

    error, elapsed = fetch_error(server.base_url)

    assert error.kind == ErrorKind.UNREACHABLE
    assert error.status is None
    assert str(error) == "no answer: timed out"
    assert 0.9 <= elapsed < 5
    assert server.connections == 1


def test_closed_port_is_unreachable() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    error, elapsed = fetch_error(f"http://127.0.0.1:{port}/api")

    assert error.kind == ErrorKind.UNREACHABLE
    assert error.status is None
    assert str(error) == "no answer: connection refused"
    assert elapsed < 5


def test_status_line_and_headers_trickling_in_are_abandoned_at_the_timeout(
    raw_server: Callable[[Handler], RawServer],
) -> None:
    # Each byte arrives well within the socket read timeout, so only an overall
    # deadline stops this; the trickle ends by itself after about 8 s so that a
    # client without one fails this test instead of hanging it.
    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 15 + b"\r\n"
    rest = f"Content-Length: {len(RUN_BODY)}\r\n\r\n{RUN_BODY}".encode()

    def trickle_head(conn: socket.socket, stop: threading.Event) -> None:
        for byte in head:
            conn.sendall(bytes([byte]))
            if stop.wait(TRICKLE_INTERVAL_SECONDS):
                return
        conn.sendall(rest)

    server = raw_server(trickle_head)
    assert len(head) * TRICKLE_INTERVAL_SECONDS >= 8

    error, elapsed = fetch_error(server.base_url)

    assert error.kind == ErrorKind.UNREACHABLE
    assert elapsed < 5


def test_redirect_to_another_origin_never_carries_the_key_there(
    raw_server: Callable[[Handler], RawServer],
) -> None:
    # Python's urlsplit reads "host-a\@host-b" as user "host-a\" at host-b, while
    # requests/urllib3 (like browsers) end the authority at the backslash: host-a.
    # The client must judge the redirect by the host it would really connect to.
    def not_found(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    other = raw_server(not_found)

    def redirect(conn: socket.socket, stop: threading.Event) -> None:
        location = f"http://127.0.0.1:{other.port}\\@127.0.0.1:{api.port}/api/elsewhere"
        conn.sendall(
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )

    api = raw_server(redirect)

    error, _ = fetch_error(api.base_url)

    assert api.connections == 1
    assert other.request_heads == []
    assert other.connections == 0
    assert error.kind == ErrorKind.BAD_RESPONSE
