"""The exporter's own metrics: API requests, their latency and failures, build info,
config reload status, and the connections of its HTTP listeners. These are long-lived
metric objects on purpose: their label values are bounded (endpoint, HTTP code, error
kind, listener) and they describe this process, not data from the API.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from exporter import __version__
from exporter.api.errors import ErrorKind
from exporter.config import WEBHOOK_EVENT_TYPES

# the label values of the listeners' and the webhook receiver's own metrics
CLIENT_ERROR_REASONS = ("timeout", "reset", "bad_request")
REJECT_REASONS = (
    "unauthorized",
    "too_large",
    "length_required",
    "bad_json",
    "bad_payload",
    "unknown_event",
    "unknown_workflow",
    "method_not_allowed",
    "not_found",
)
ENDPOINTS = ("get_run", "list_runs")  # the ones every exporter uses; pre-set to zero
API_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


BUDGET_WINDOW_SECONDS = 60  # copyai_api_budget_utilization_ratio looks this far back


class RecentCount:
    """Events in the last `seconds` (per-second buckets: bounded, a few µs an event)."""

    def __init__(self, seconds: int, clock: Callable[[], float] = time.monotonic):
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets = [0] * seconds
        self._stamps = [-1] * seconds  # which second each bucket counts

    def add(self) -> None:
        second = int(self._clock())
        slot = second % self._seconds
        with self._lock:
            if self._stamps[slot] != second:
                self._stamps[slot], self._buckets[slot] = second, 0
            self._buckets[slot] += 1

    def total(self) -> int:
        now = int(self._clock())
        with self._lock:
            return sum(
                count
                for count, stamp in zip(self._buckets, self._stamps, strict=True)
                if now - stamp < self._seconds
            )


class Telemetry:
    """Implements `client.RequestObserver` and `server.ConnectionObserver`."""

    def __init__(self, registry: CollectorRegistry):
        # `_created` series double the counters' output and Prometheus ignores them in
        # the classic text format; counters here start at zero with the process.
        disable_created_metrics()
        self.recent_requests = RecentCount(BUDGET_WINDOW_SECONDS)
        self.api_requests = Counter(
            "copyai_api_requests_total",
            "HTTP requests made to the Copy.ai API, by endpoint and HTTP status code "
            '(code="error" when no answer came: refused, reset, timed out). '
            "Every retry counts.",
            ["endpoint", "code"],
            registry=registry,
        )
        self.api_duration = Histogram(
            "copyai_api_request_duration_seconds",
            "Time from sending a request to the Copy.ai API to having read its body.",
            ["endpoint"],
            buckets=API_LATENCY_BUCKETS,
            registry=registry,
        )
        self.api_errors = Counter(
            "copyai_api_errors_total",
            "Copy.ai API operations that failed after retries, by endpoint and kind "
            "(unreachable, unauthorized, rate_limited, not_found, client_error, "
            "server_error, bad_response, too_large).",
            ["endpoint", "kind"],
            registry=registry,
        )
        for endpoint in ENDPOINTS:
            self.api_duration.labels(endpoint)
            for kind in ErrorKind.ALL:
                self.api_errors.labels(endpoint, kind)
        build = Gauge(
            "copyai_exporter_build_info",
            "Always 1; labels carry the exporter and Python versions.",
            ["version", "python_version"],
            registry=registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
        self.reload_ok = Gauge(
            "copyai_config_last_reload_successful",
            "1 if the last configuration load (at start, SIGHUP or /-/reload) succeeded.",
            registry=registry,
        )
        self.reload_time = Gauge(
            "copyai_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            registry=registry,
        )

        self.webhook_events = Counter(
            "copyai_webhook_events_total",
            "Webhook deliveries accepted and applied, by event type.",
            ["event_type"],
            registry=registry,
        )
        self.webhook_rejected = Counter(
            "copyai_webhook_requests_rejected_total",
            "Requests to the webhook listener refused, by reason (unauthorized, too_large, "
            "length_required, bad_json, bad_payload, unknown_event, unknown_workflow, "
            "method_not_allowed, not_found).",
            ["reason"],
            registry=registry,
        )
        for event_type in WEBHOOK_EVENT_TYPES:
            self.webhook_events.labels(event_type)
        for reason in REJECT_REASONS:
            self.webhook_rejected.labels(reason)

        self.http_open = Gauge(
            "copyai_http_connections_open",
            "Client connections open on each HTTP listener (metrics, webhook): receiving a "
            "request or being answered.",
            ["listener"],
            registry=registry,
        )
        self.http_max = Gauge(
            "copyai_http_connections_max",
            "The most client connections each HTTP listener serves at once "
            "(--web.max-connections); more wait to be accepted.",
            ["listener"],
            registry=registry,
        )
        self.http_accepted = Counter(
            "copyai_http_connections_total",
            "Client connections accepted by each HTTP listener.",
            ["listener"],
            registry=registry,
        )
        self.http_limit_waits = Counter(
            "copyai_http_connection_limit_waits_total",
            "Times an HTTP listener had every connection slot taken and a client had to wait "
            "to be accepted.",
            ["listener"],
            registry=registry,
        )
        self.http_client_errors = Counter(
            "copyai_http_client_errors_total",
            "Client connections of each HTTP listener that ended without a complete request "
            "or answer, by reason (timeout: the request did not arrive within its deadline; "
            "reset: the client went away; bad_request: malformed request or TLS handshake).",
            ["listener", "reason"],
            registry=registry,
        )

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        self.api_requests.labels(endpoint, code).inc()
        self.api_duration.labels(endpoint).observe(seconds)
        self.recent_requests.add()

    def observe_error(self, endpoint: str, kind: str) -> None:
        self.api_errors.labels(endpoint, kind).inc()

    def config_loaded(self, ok: bool, now: float | None = None) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_time.set(time.time() if now is None else now)

    def http_listener_started(self, listener: str, max_connections: int) -> None:
        self.http_max.labels(listener).set(max_connections)
        self.http_open.labels(listener)
        self.http_accepted.labels(listener)
        self.http_limit_waits.labels(listener)
        for reason in CLIENT_ERROR_REASONS:
            self.http_client_errors.labels(listener, reason)

    def http_connection_opened(self, listener: str) -> None:
        self.http_open.labels(listener).inc()
        self.http_accepted.labels(listener).inc()

    def http_connection_closed(self, listener: str) -> None:
        self.http_open.labels(listener).dec()

    def http_connection_limit_waited(self, listener: str) -> None:
        self.http_limit_waits.labels(listener).inc()

    def http_client_failed(self, listener: str, reason: str) -> None:
        self.http_client_errors.labels(listener, reason).inc()
