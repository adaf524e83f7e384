"""The exporter's own metrics: API requests, their latency and failures, build info,
config reload status, and the connections of its HTTP listeners. These are long-lived
metric objects on purpose: their label values are bounded (endpoint, HTTP code, error
kind, listener) and they describe this process, not data from the API.

The same observations also feed `RecentRequests`, the last hour of requests in
per-minute buckets that the status page shows.
"""

from __future__ import annotations

import platform
import threading
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

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


def budget_ratio(requests_last_minute: int, max_requests_per_second: float) -> float | None:
    """Requests of the last minute against what the client-side limit allows in one
    (None when unlimited): copyai_api_budget_utilization_ratio and the status page."""
    allowed = max_requests_per_second * BUDGET_WINDOW_SECONDS
    return requests_last_minute / allowed if allowed > 0 else None


@dataclass(frozen=True)
class RecentSummary:
    """API requests of this process over the last hour and the last minute."""

    requests: int  # requests sent in the last hour, retries included
    requests_by_code: dict[str, int]  # by HTTP status code ("error": no answer)
    errors: int  # operations failed after retries, in the last hour
    errors_by_kind: dict[str, int]
    requests_last_minute: int  # requests sent in the last 60 seconds


class RecentRequests:
    """The last hour of API requests in per-minute buckets (requests by code, failed
    operations by kind), and the last minute in per-second slots: a few KB whatever the
    traffic. Its lock is a leaf."""

    MINUTES = 60

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        # (minute number, requests by code, errors by kind), oldest first
        self._minutes: deque[tuple[int, Tally[str], Tally[str]]] = deque(maxlen=self.MINUTES)
        self._seconds = [[-1, 0] for _ in range(60)]  # [second number, requests]

    def _bucket(self, now: float) -> tuple[int, Tally[str], Tally[str]]:
        minute = int(now // 60)
        if not self._minutes or self._minutes[-1][0] != minute:
            self._minutes.append((minute, Tally(), Tally()))
        return self._minutes[-1]

    def request(self, code: str) -> None:
        now = self._clock()
        second = int(now)
        with self._lock:
            self._bucket(now)[1][code] += 1
            slot = self._seconds[second % 60]
            if slot[0] != second:
                slot[0], slot[1] = second, 0
            slot[1] += 1

    def error(self, kind: str) -> None:
        now = self._clock()
        with self._lock:
            self._bucket(now)[2][kind] += 1

    def summary(self) -> RecentSummary:
        now = self._clock()
        since_minute = int(now // 60) - self.MINUTES + 1
        since_second = int(now) - 59
        codes: Tally[str] = Tally()
        kinds: Tally[str] = Tally()
        with self._lock:
            for minute, by_code, by_kind in self._minutes:
                if minute >= since_minute:
                    codes.update(by_code)
                    kinds.update(by_kind)
            last_minute = sum(n for second, n in self._seconds if second >= since_second)
        return RecentSummary(
            requests=sum(codes.values()),
            requests_by_code=dict(sorted(codes.items())),
            errors=sum(kinds.values()),
            errors_by_kind=dict(sorted(kinds.items())),
            requests_last_minute=last_minute,
        )


class Telemetry:
    """Implements `client.RequestObserver` and `server.ConnectionObserver`."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic):
        self.recent = RecentRequests(clock)
        # `_created` series double the counters' output and Prometheus ignores them in
        # the classic text format; counters here start at zero with the process.
        disable_created_metrics()
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
        self.recent.request(code)

    def observe_error(self, endpoint: str, kind: str) -> None:
        self.api_errors.labels(endpoint, kind).inc()
        self.recent.error(kind)

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
