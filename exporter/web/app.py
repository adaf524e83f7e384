"""The exporter's WSGI application: /metrics (refresh within the scrape's deadline, then
render), the status page (/ and /status.json), /-/healthy, /-/ready and /-/reload."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from exporter.web import status, status_page

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
        wall_clock: Callable[[], float] = time.time,
    ):
        """`clock` is the exporter's monotonic clock (scrape deadlines, fetch times)."""
        self._exporter = exporter
        self._options = options
        self._reload = reload
        self._clock = clock
        self._wall_clock = wall_clock
        self.shutting_down = False
        self._routes: dict[str, tuple[tuple[str, ...], Callable[..., Iterable[bytes]]]] = {
            "/": (("GET", "HEAD"), self._status_page),
            "/status.json": (("GET", "HEAD"), self._status_json),
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

    # --- the status page: what the exporter sees, for people (/) and scripts -------------

    def _status_facts(self, environ: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        query = _query(environ)
        exporter = self._exporter
        sources = status.StatusSources(
            view=exporter.view(),
            journal=exporter.journal,
            recent=exporter.telemetry.recent,
            now=self._wall_clock(),
            monotonic=self._clock(),
        )
        return status.gather(sources, query.get("run")), query

    def _status_page(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        facts, query = self._status_facts(environ)
        page = status_page.render(
            facts,
            telemetry_path=self._options.telemetry_path,
            refresh=status_page.refresh_seconds(query.get("refresh")),
        )
        return _unsized(start_response, page.encode(), "text/html; charset=utf-8")

    def _status_json(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        facts, _ = self._status_facts(environ)
        text = json.dumps(facts, indent=1, allow_nan=False)
        # never markup, even to a client that sniffs: <, > and & as JSON escapes
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return _unsized(start_response, text.encode() + b"\n", "application/json")

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


def _query(environ: dict[str, Any]) -> dict[str, str]:
    """The first value of each query parameter (a malformed query reads as none)."""
    try:
        parsed = parse_qs(environ.get("QUERY_STRING", ""), max_num_fields=20)
    except ValueError:
        return {}
    return {name: values[0] for name, values in parsed.items() if values}


def _unsized(start_response: StartResponse, payload: bytes, content_type: str) -> Iterator[bytes]:
    """A page sent without a Content-Length (as /metrics): its GET and HEAD answers have
    the same headers, though the text of two renders differs (ages, times). Sent with a
    strict Content-Security-Policy: no script, no image, the one inline style by hash."""
    start_response("200 OK", [("Content-Type", content_type), *status_page.PAGE_HEADERS])
    return iter([payload])


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
