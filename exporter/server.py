"""HTTP surface: /metrics (refresh within the scrape's deadline, then render), a landing
page, /-/healthy, /-/ready and /-/reload, as a WSGI app on a threading server."""

from __future__ import annotations

import contextlib
import html
import logging
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from exporter import __version__
from exporter.runtime import Exporter
from exporter.webconfig import HANDSHAKE_TIMEOUT_SECONDS, WebGuard, WebState, peer_allowed

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


class _Handler(WSGIRequestHandler):
    # A client that connects and sends nothing is dropped after this many seconds,
    # so it holds one thread for a while but never blocks other scrapes.
    timeout = 30
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: Any) -> None:
        # the webhook token travels in the path: never into the access log
        line = _WEBHOOK_TOKEN_IN_PATH.sub("/webhook/<token>", format % args)
        log.debug("http %s %s", self.address_string(), line)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    web: WebState | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's own thread, so a slow TLS handshake holds up no one."""
        tls = self.web.current.tls if self.web is not None else None
        if tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            secure = tls.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # plain HTTP, bad or missing client cert
            log.debug("TLS handshake refused client=%s: %s", client_address[0], exc)
            return
        try:
            if not peer_allowed(secure, tls.allowed_sans):
                log.debug(
                    "client certificate not in client_allowed_sans client=%s", client_address[0]
                )
                return
            secure.settimeout(None)
            super().finish_request(secure, client_address)
        finally:
            with contextlib.suppress(OSError):
                secure.close()


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
    basic auth, headers and rate limit."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], address: str, web: WebState | None = None
    ):
        host, port = parse_listen_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(_ThreadingServer):
            address_family = family

        bind_host = host or ("::" if family == socket.AF_INET6 else "")
        self.server = Server((bind_host, port), _Handler)
        self.server.web = web
        self.tls = web is not None and web.current.tls is not None
        if web is not None:
            app = WebGuard(app, lambda: web.current)
        self.server.set_app(app)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="copyai-http", daemon=True
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
        self.thread.join(timeout=10)
