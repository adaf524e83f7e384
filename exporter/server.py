"""HTTP surface: /metrics (refresh within the scrape's deadline, then render), a landing
page, /-/healthy, /-/ready and /-/reload, as a WSGI app on a threading server that
caps its connections, gives clients deadlines to send their requests, and logs broken
clients as one structured line each."""

from __future__ import annotations

import contextlib
import errno
import html
import io
import logging
import math
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from exporter import __version__
from exporter.transport import Watchdog
from exporter.webconfig import HANDSHAKE_TIMEOUT_SECONDS, WebGuard, WebState, peer_allowed

if TYPE_CHECKING:  # the server itself never needs the runtime
    from exporter.runtime import Exporter

log = logging.getLogger(__name__)

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
_WEBHOOK_TOKEN_IN_PATH = re.compile(r"/webhook/[^\s?\"]+")
SCRAPE_TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"
# Fetches are given at least this share of the budget even when the offset is larger.
MIN_REFRESH_SHARE = 0.5
StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class WebOptions:
    telemetry_path: str = "/metrics"
    enable_lifecycle: bool = False
    default_scrape_timeout: float = 10.0  # when Prometheus sends no timeout header
    scrape_timeout_offset: float = 0.5  # kept back from the deadline for rendering


class ExporterApp:
    """The WSGI application. `reload` re-reads the config and returns (ok, message)."""

    def __init__(
        self,
        exporter: Exporter,
        options: WebOptions,
        reload: Callable[[], tuple[bool, str]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._exporter = exporter
        self._options = options
        self._reload = reload
        self._clock = clock
        self.shutting_down = False
        self._routes: dict[str, tuple[tuple[str, ...], Callable[..., Iterable[bytes]]]] = {
            "/": (("GET", "HEAD"), self._landing),
            options.telemetry_path: (("GET", "HEAD"), self._metrics),
            "/-/healthy": (("GET", "HEAD"), self._healthy),
            "/-/ready": (("GET", "HEAD"), self._ready),
            "/-/reload": (("POST", "PUT"), self._reload_endpoint),
        }

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        route = self._routes.get(path)
        if route is None:
            return _text(start_response, "404 Not Found", "Not Found\n")
        methods, handler = route
        if method not in methods:
            return _text(
                start_response,
                "405 Method Not Allowed",
                "Method Not Allowed\n",
                [("Allow", ", ".join(methods))],
            )
        body = handler(environ, start_response)
        if method == "HEAD":
            # one empty write sends the GET's headers as they are; an empty list would
            # make wsgiref add "Content-Length: 0" to /metrics, whose GET has no length
            return iter([b""])
        return body

    # --- routes ----------------------------------------------------------------------

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = self._clock()
        budget = self._scrape_budget(environ.get(SCRAPE_TIMEOUT_HEADER))
        offset = min(self._options.scrape_timeout_offset, budget * (1 - MIN_REFRESH_SHARE))
        try:
            self._exporter.refresh(deadline=started + budget - offset)
        except Exception:  # never let a refresh bug take /metrics down
            log.exception("refresh failed; answering with what is known")
        # Always the classic text format, even when OpenMetrics is offered: the fixed
        # names copyai_workflow_run_credits (gauge) and ..._credits_total (counter) are
        # two families there, but one family name in OpenMetrics, which would fail the
        # whole scrape.
        # Streamed in chunks (and compressed chunk by chunk): the answer for 10,000 runs
        # is 17 MB, and holding it whole, twice, was most of the exporter's peak memory.
        # The response is HTTP/1.0 without a length; the connection's end ends it.
        chunks = self._exporter.render_chunks()
        headers = [("Content-Type", TEXT_FORMAT)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            chunks = _gzipped(chunks)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return chunks

    def _scrape_budget(self, header: str | None) -> float:
        if header:
            try:
                value = float(header)
            except ValueError:
                value = 0.0
            if 0 < value < 3600:
                return value
        return self._options.default_scrape_timeout

    def _landing(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        view = self._exporter.view()
        path = html.escape(self._options.telemetry_path)
        runs = len(view.store)
        page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Copy.ai exporter</title></head>
<body>
<h1>Copy.ai exporter</h1>
<p>Prometheus exporter for Copy.ai workflow runs, version {html.escape(__version__)}.</p>
<ul>
<li><a href="{path}">Metrics</a></li>
<li><a href="/-/healthy">Health</a> and <a href="/-/ready">readiness</a></li>
</ul>
<p>Watching {len(view.config.workflows)} workflow(s) and {runs} configured run(s)
at {html.escape(view.config.api.base_url)}.</p>
</body></html>
"""
        return _text(start_response, "200 OK", page, content_type="text/html; charset=utf-8")

    def _healthy(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return _text(start_response, "200 OK", "Healthy\n")

    def _ready(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.shutting_down:
            return _text(start_response, "503 Service Unavailable", "Shutting down\n")
        return _text(start_response, "200 OK", "Ready\n")

    def _reload_endpoint(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        if not self._options.enable_lifecycle:
            return _text(
                start_response,
                "403 Forbidden",
                "Lifecycle API is not enabled (start with --web.enable-lifecycle).\n",
            )
        ok, message = self._reload()
        status = "200 OK" if ok else "500 Internal Server Error"
        return _text(start_response, status, message.rstrip("\n") + "\n")


def _gzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    compressor = zlib.compressobj(3, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def _text(
    start_response: StartResponse,
    status: str,
    body: str,
    headers: list[tuple[str, str]] | None = None,
    content_type: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    payload = body.encode("utf-8")
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(payload))), *(headers or [])],
    )
    return [payload]


# --- serving -------------------------------------------------------------------------

LISTENERS = ("metrics", "webhook")
DEFAULT_MAX_CONNECTIONS = 512  # per listener (--web.max-connections)
# Deadlines for the whole of each phase, not for each read: a client that trickles a
# byte a second never trips a per-read timeout. The request line and headers must have
# arrived this long after the connection was accepted (or after its TLS handshake,
# which has HANDSHAKE_TIMEOUT_SECONDS of its own)...
HEADER_DEADLINE_SECONDS = 5.0
# ...and a request body (webhook deliveries) this long after its headers.
BODY_DEADLINE_SECONDS = 10.0
# While every connection slot is taken and another client waits to be accepted, a
# connection whose request has not all arrived this long after it was accepted is
# closed to make room: a cap full of slow clients frees itself in this time, not in
# HEADER_DEADLINE_SECONDS. A scraper's request is complete as soon as it is accepted
# (it was sent while the connection waited), so only slow clients are cut. A client
# waits for the queue ahead of it: even a full accept queue (4096) at the default cap
# drains in 8 x 0.5 s, well within Prometheus' default scrape timeout of 10 s.
BUSY_DEADLINE_SECONDS = 0.5
# A write to a client that has stopped reading fails after this long.
WRITE_TIMEOUT_SECONDS = 30.0
CLIENT_ERROR_REASONS = ("timeout", "reset", "bad_request")
# Each slow or broken client is one debug line; a warning sums them up at most this often.
CLIENT_ERROR_SUMMARY_SECONDS = 60.0
MAX_REQUEST_LINE = 65536  # longer is refused with 414, as the standard library does
_GONE = {errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT, errno.ECONNABORTED}
_DEADLINES = Watchdog("copyai-http-deadline")  # one thread for every listener's clients


class ConnectionObserver:
    """Where a listener reports its connections; this one ignores them. The exporter's
    telemetry (exporter.telemetry.Telemetry) turns them into copyai_http_* metrics."""

    def http_listener_started(self, listener: str, max_connections: int) -> None: ...

    def http_connection_opened(self, listener: str) -> None: ...

    def http_connection_closed(self, listener: str) -> None: ...

    def http_connection_limit_waited(self, listener: str) -> None: ...

    def http_client_failed(self, listener: str, reason: str) -> None: ...


def client_error_reason(exc: BaseException, expired: bool = False) -> str | None:
    """timeout, reset or bad_request when `exc` is a client's doing; None for a bug."""
    if expired or isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "reset"
    if isinstance(exc, ssl.SSLError):  # not TLS at all, or a certificate refused
        return "bad_request"
    if isinstance(exc, ConnectionError) or (isinstance(exc, OSError) and exc.errno in _GONE):
        return "reset"
    return None


class _Slots:
    """The connection cap of one listener, as Prometheus' netutil.LimitListener: the
    acceptor takes a slot before it accepts, so clients past the cap wait in the
    kernel's accept queue, not in a thread each."""

    def __init__(self, limit: int):
        self._cond = threading.Condition()
        self._free = limit
        self._closed = False

    def take_now(self) -> bool:
        with self._cond:
            if self._free and not self._closed:
                self._free -= 1
                return True
            return False

    def take(self) -> bool:
        """Wait for a free slot; False once closed (the server is shutting down)."""
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Connection:
    """One accepted connection while its request arrives: the deadline it must arrive
    by, and the socket the watchdog shuts down when that passes, so that the read
    blocked in the connection's thread returns at once."""

    def __init__(self, sock: socket.socket, client: str):
        self.client = client
        self.accepted = time.monotonic()
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = sock
        self._receiving = True
        self._hurried = False
        self._when = math.inf
        self._handle: int | None = None

    def deadline(self, seconds: float) -> None:
        """What is still to come of the request must arrive within `seconds`."""
        with self._lock:
            if self._receiving:
                when = time.monotonic() + seconds
                if self._hurried:
                    when = min(when, self.accepted + BUSY_DEADLINE_SECONDS)
                self._arm(when)

    def hurry(self) -> None:
        """Another client waits for this one's slot: BUSY_DEADLINE_SECONDS from accept."""
        with self._lock:
            if self._receiving and not self._hurried:
                self._hurried = True
                when = self.accepted + BUSY_DEADLINE_SECONDS
                if when < self._when:
                    self._arm(when)

    def received(self) -> None:
        """The request is in, or being answered: no deadline any more."""
        with self._lock:
            self._receiving = False
            self._disarm()

    def bind(self, sock: socket.socket) -> None:
        """The TLS socket that now wraps the accepted one."""
        with self._lock:
            self._sock = sock

    def close(self) -> None:
        """Before the socket is closed, so the watchdog never touches a reused fd."""
        with self._lock:
            self._sock = None
            self._receiving = False
            self._disarm()

    def expire(self) -> None:
        with self._lock:
            # (a later deadline may have been set since the watchdog took this one)
            if not self._receiving or self._sock is None or time.monotonic() < self._when:
                return
            self.expired = True
            # socket.socket's shutdown, not SSLSocket's, which would drop the TLS
            # state under the thread that is reading
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)

    def cut(self) -> None:
        """Now, if the request is still arriving."""
        with self._lock:
            self._when = time.monotonic()
        self.expire()

    def _arm(self, when: float) -> None:
        self._disarm()
        self._when = when
        self._handle = _DEADLINES.arm(when, self)

    def _disarm(self) -> None:
        if self._handle is not None:
            _DEADLINES.disarm(self._handle)
            self._handle = None
        self._when = math.inf


class _FailureSummary:
    """Slow or broken clients of one listener, summed up in one warning at most once per
    CLIENT_ERROR_SUMMARY_SECONDS: each is logged at debug level only."""

    def __init__(self, listener: str):
        self._listener = listener
        self._lock = threading.Lock()
        self._count = 0
        self._handle: int | None = None

    def add(self) -> None:
        with self._lock:
            self._count += 1
            if self._handle is None:
                when = time.monotonic() + CLIENT_ERROR_SUMMARY_SECONDS
                self._handle = _DEADLINES.arm(when, self)

    def expire(self) -> None:
        with self._lock:
            count, self._count, self._handle = self._count, 0, None
        if count:
            log.warning(
                "slow or broken client connections in the last minute listener=%s count=%d",
                self._listener,
                count,
            )

    def flush(self) -> None:
        """At shutdown: what has not been summed up yet."""
        with self._lock:
            if self._handle is not None:
                _DEADLINES.disarm(self._handle)
        self.expire()


class _RequestBody(io.RawIOBase):
    """wsgi.input: at most Content-Length bytes, and a TimeoutError instead of a short
    read when the deadline cut the body off."""

    def __init__(self, rfile: Any, connection: _Connection, length: int):
        super().__init__()
        self._rfile = rfile
        self._connection = connection
        self._remaining = length

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = self._remaining if size is None or size < 0 else min(size, self._remaining)
        return self._took(self._rfile.read(want) if want else b"")

    def readline(self, size: int | None = -1) -> bytes:
        want = self._remaining if size is None or size < 0 else min(size, self._remaining)
        return self._took(self._rfile.readline(want) if want else b"")

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _took(self, data: bytes) -> bytes:
        if self._connection.expired:
            raise TimeoutError("request body not received within its deadline")
        self._remaining -= len(data)
        if not self._remaining:
            self._connection.received()
        return data


class _ErrorLog(io.TextIOBase):
    """wsgi.errors and wsgiref's stderr: what is written there becomes log records."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text.strip():
            log.error("wsgi.errors: %s", text.rstrip("\n"))
        return len(text)


_ERRORS = _ErrorLog()


def _body_length(headers: Any) -> int:
    text = (headers.get("Content-Length") or "").strip()
    return int(text) if text.isascii() and text.isdigit() else 0


def _masked(path: str) -> str:
    """The webhook token travels in the path: never into a log line."""
    return _WEBHOOK_TOKEN_IN_PATH.sub("/webhook/<token>", path)


class _ServerHandler(ServerHandler):
    """wsgiref's per-request handler, with its errors told apart: a client that went
    away or ran out of time is re-raised for _Handler to report in one line; a bug in
    the app is one log record (never a traceback on stderr) and a 500."""

    connection: _Connection
    request_handler: _Handler

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        self.connection.received()  # answering: an unread body is not waited for
        return super().start_response(status, headers, exc_info)

    def run(self, application: Callable[..., Iterable[bytes]]) -> None:
        try:
            self.setup_environ()
            self.result = application(self.environ, self.start_response)
            self.finish_response()
        except Exception as exc:
            if client_error_reason(exc, self.connection.expired) is not None:
                raise
            try:
                self.handle_error()
            except Exception:
                self.close()
                raise

    def log_exception(self, exc_info: Any) -> None:
        handler = self.request_handler
        log.error(
            "error answering a request listener=%s method=%s path=%s",
            handler.server.listener,
            handler.command,
            _masked(handler.path),
            exc_info=exc_info,
        )

    def get_stderr(self) -> io.TextIOBase:
        return _ERRORS


class _Handler(WSGIRequestHandler):
    timeout = WRITE_TIMEOUT_SECONDS  # reads have the deadlines above, shorter than this
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: _ThreadingServer

    def __init__(
        self, request: Any, client_address: Any, server: _ThreadingServer, connection: _Connection
    ):
        self.connection_state = connection
        self._refusal: str | None = None  # what send_error told a malformed request
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        try:
            failure = self._handle_one()
        except Exception as exc:
            reason = client_error_reason(exc, self.connection_state.expired)
            if reason is None:
                raise  # a bug: _ThreadingServer.handle_error logs it
            failure = (reason, str(exc) or type(exc).__name__)
        if failure is not None:
            self.server.client_failed(self.connection_state.client, *failure)

    def _handle_one(self) -> tuple[str, str] | None:
        """Read and answer one request; (reason, error) when the client failed."""
        connection = self.connection_state
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if connection.expired:
            return "timeout", "request line not received within its deadline"
        if not self.raw_requestline:
            return None  # connected and closed without a word: a port check
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return "bad_request", self._refusal or "request line too long"
        if not self.raw_requestline.endswith(b"\n"):
            return "reset", "closed in the middle of the request line"
        parsed = self.parse_request()
        if connection.expired:
            return "timeout", "request headers not received within their deadline"
        if not parsed:
            return "bad_request", self._refusal or "empty request line"
        length = _body_length(self.headers)
        if length:
            connection.deadline(BODY_DEADLINE_SECONDS)
        else:
            connection.received()
        handler = _ServerHandler(
            _RequestBody(self.rfile, connection, length),
            self.wfile,
            _ERRORS,
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self
        handler.connection = connection
        handler.run(self.server.get_app())
        return None

    def get_stderr(self) -> io.TextIOBase:
        return _ERRORS

    def log_error(self, format: str, *args: Any) -> None:
        self._refusal = format % args  # reported with the client's failure, in one line

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        if self._refusal is None:  # a refused request is logged once, as a client error
            super().log_request(code, size)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), _masked(format % args))


class _ThreadingServer(WSGIServer):
    """A WSGI server with a thread per connection, at most `max_connections` at once."""

    allow_reuse_address = True
    # Clients past the cap wait in the kernel's accept queue: as long a queue as the
    # kernel allows (Linux caps it at net.core.somaxconn), as Go servers ask for.
    request_queue_size = 4096

    def __init__(
        self,
        address: tuple[str, int],
        *,
        listener: str,
        max_connections: int,
        observer: ConnectionObserver,
        web: WebState | None,
    ):
        self.listener = listener
        self.observer = observer
        self.web = web
        self.failures = _FailureSummary(listener)
        self._slots = _Slots(max_connections)
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._unhurried: set[_Connection] = set()
        super().__init__(address, _Handler)
        observer.http_listener_started(listener, max_connections)

    # the acceptor's thread

    def get_request(self) -> tuple[socket.socket, Any]:
        if not self._slots.take_now():
            self.observer.http_connection_limit_waited(self.listener)
            with self._lock:
                waiting, self._unhurried = self._unhurried, set()
            for connection in waiting:
                connection.hurry()
            if not self._slots.take():
                raise OSError("the listener is shutting down")
        try:
            return self.socket.accept()
        except BaseException:
            self._slots.give()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        connection = _Connection(request, client_address[0])
        with self._lock:
            self._open.add(connection)
            self._unhurried.add(connection)
        self.observer.http_connection_opened(self.listener)
        try:
            threading.Thread(
                target=self._serve,
                args=(request, client_address, connection),
                name=f"copyai-http-{self.listener}",
                daemon=True,
            ).start()
        except BaseException:
            self._closed(connection)
            raise

    def shutdown(self) -> None:
        self._slots.close()  # an acceptor waiting for a slot stops waiting
        super().shutdown()

    # each connection's thread

    def _serve(self, request: Any, client_address: Any, connection: _Connection) -> None:
        try:
            self._serve_connection(request, client_address, connection)
        except Exception as exc:
            reason = client_error_reason(exc, connection.expired)
            if reason is None:
                self.handle_error(request, client_address)
            else:  # gone before its handler could even start, say
                self.client_failed(connection.client, reason, str(exc) or type(exc).__name__)
        finally:
            connection.close()
            self.shutdown_request(request)
            self._closed(connection)

    def _serve_connection(
        self, request: socket.socket, client_address: Any, connection: _Connection
    ) -> None:
        tls = self.web.current.tls if self.web is not None else None
        if tls is None:
            connection.deadline(HEADER_DEADLINE_SECONDS)
            _Handler(request, client_address, self, connection)
            return
        # the handshake runs in the connection's own thread, so a slow one holds up no one
        connection.deadline(HANDSHAKE_TIMEOUT_SECONDS)
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        secure = tls.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        connection.bind(secure)  # from now on the deadline shuts this one down
        try:
            try:
                secure.do_handshake()
            except OSError as exc:  # plain HTTP, a bad or missing client certificate, gone
                reason = client_error_reason(exc, connection.expired) or "bad_request"
                self.client_failed(connection.client, reason, f"TLS handshake: {exc}")
                return
            if not peer_allowed(secure, tls.allowed_sans):
                log.debug(
                    "client certificate not in client_allowed_sans client=%s", connection.client
                )
                return
            connection.deadline(HEADER_DEADLINE_SECONDS)
            _Handler(secure, client_address, self, connection)
        finally:
            connection.close()
            with contextlib.suppress(OSError):
                secure.close()

    def _closed(self, connection: _Connection) -> None:
        with self._lock:
            self._open.discard(connection)
            self._unhurried.discard(connection)
        self._slots.give()
        self.observer.http_connection_closed(self.listener)

    def client_failed(self, client: str, reason: str, error: str) -> None:
        log.debug(
            "client connection failed listener=%s client=%s reason=%s error=%r",
            self.listener,
            client,
            reason,
            error,
        )
        self.observer.http_client_failed(self.listener, reason)
        self.failures.add()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # instead of socketserver's traceback on stderr: one record, via logging
        log.exception(
            "unexpected error serving a client listener=%s client=%s",
            self.listener,
            client_address[0],
        )

    def cut_unfinished_requests(self) -> None:
        """At shutdown: connections still sending their request are closed now."""
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            connection.cut()


def parse_listen_address(address: str) -> tuple[str, int]:
    """`:10117`, `0.0.0.0:10117`, `[::1]:10117`, `localhost:0` → (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {address!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class HttpServer:
    """Serves a WSGI app in a background thread; with a web config, behind its TLS,
    basic auth, headers and rate limit. `listener` ("metrics" or "webhook") names it in
    logs and in what it reports to `observer`; at most `max_connections` clients are
    served at once, more wait to be accepted."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        address: str,
        web: WebState | None = None,
        *,
        listener: str = "metrics",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        observer: ConnectionObserver | None = None,
    ):
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if listener not in LISTENERS:
            raise ValueError(f"listener must be one of {', '.join(LISTENERS)}")
        host, port = parse_listen_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(_ThreadingServer):
            address_family = family

        bind_host = host or ("::" if family == socket.AF_INET6 else "")
        self.server = Server(
            (bind_host, port),
            listener=listener,
            max_connections=max_connections,
            observer=observer or ConnectionObserver(),
            web=web,
        )
        self.tls = web is not None and web.current.tls is not None
        if web is not None:
            app = WebGuard(app, lambda: web.current)
        self.server.set_app(app)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name=f"copyai-http-{listener}-accept", daemon=True
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        host = self.server.server_address[0]
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1" if host != "::" else "[::1]"
        elif ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> HttpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.server.cut_unfinished_requests()
        self.thread.join(timeout=10)
        self.server.failures.flush()
