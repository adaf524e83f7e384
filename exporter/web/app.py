"""The exporter's WSGI application: /metrics (refresh within the scrape's deadline, then
render), the landing page, /-/healthy, /-/ready and /-/reload."""

from __future__ import annotations

import html
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter import __version__

if TYPE_CHECKING:  # the server itself never needs the runtime
    from exporter.runtime import Exporter


log = logging.getLogger(__name__)


TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


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
