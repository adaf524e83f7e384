"""A threading WSGI server for both listeners (metrics and webhooks): at most
`max_connections` clients at once, deadlines for requests to arrive, TLS and basic
auth from the web config, and one structured log line per broken client."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from exporter.web.connections import (
    BODY_DEADLINE_SECONDS,
    DEFAULT_MAX_CONNECTIONS,
    HEADER_DEADLINE_SECONDS,
    LISTENERS,
    MAX_REQUEST_LINE,
    WRITE_TIMEOUT_SECONDS,
    Connection,
    ConnectionObserver,
    FailureSummary,
    Slots,
    client_error_reason,
)
from exporter.web.webconfig import HANDSHAKE_TIMEOUT_SECONDS, WebGuard, WebState, peer_allowed

if TYPE_CHECKING:  # the server itself never needs the runtime
    pass


log = logging.getLogger(__name__)


_WEBHOOK_TOKEN_IN_PATH = re.compile(r"/webhook/[^\s?\"]+")


class _RequestBody(io.RawIOBase):
    """wsgi.input: at most Content-Length bytes, and a TimeoutError instead of a short
    read when the deadline cut the body off."""

    def __init__(self, rfile: Any, connection: Connection, length: int):
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

    connection: Connection
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
        self, request: Any, client_address: Any, server: _ThreadingServer, connection: Connection
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
        self.failures = FailureSummary(listener)
        self._slots = Slots(max_connections)
        self._lock = threading.Lock()
        self._open: set[Connection] = set()
        self._unhurried: set[Connection] = set()
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
        connection = Connection(request, client_address[0])
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

    def _serve(self, request: Any, client_address: Any, connection: Connection) -> None:
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
        self, request: socket.socket, client_address: Any, connection: Connection
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

    def _closed(self, connection: Connection) -> None:
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
