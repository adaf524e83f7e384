"""The Copy.ai API over HTTP: one pooled session, timeouts, retries, a client-side rate
limit, bounded response bodies, and redirects that never carry the key off-host.

Nothing here knows about Prometheus: request outcomes are reported to a
`RequestObserver`, failures are raised as `ApiError` with a `kind` the collector maps
onto metrics.

Longer than 500 lines because one request's whole life is here (limiter, retries,
redirects kept on origin, bounded and decompressed body, error kinds): split, the rules
that keep the key on its host and the memory bounded would be read in pieces.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode, urljoin

import requests
import urllib3.exceptions
from urllib3.util import parse_url

from exporter import __version__
from exporter.api.errors import ApiError, ErrorKind
from exporter.api.records import (
    _DIGITS,
    PayloadError,
    Run,
    RunPage,
    Webhook,
    error_code,
    parse_run,
    parse_run_page,
    parse_webhook,
    parse_webhook_page,
    unwrap_success,
)
from exporter.api.transport import deadline as watched
from exporter.api.transport import make_session
from exporter.config import ApiConfig

log = logging.getLogger(__name__)


_T = TypeVar("_T")


API_KEY_HEADER = "x-copy-ai-api-key"


MAX_REDIRECTS = 3


BACKOFF_BASE_SECONDS = 0.5


BACKOFF_CAP_SECONDS = 10.0


# A Retry-After longer than this is not waited out inside one fetch: the limiter keeps
# every request back until then and fetches fail fast as rate limited.
MAX_INLINE_RETRY_AFTER_SECONDS = 30.0


MAX_RETRY_AFTER_SECONDS = 3600.0


READ_CHUNK_BYTES = 16 * 1024


class RequestObserver(Protocol):
    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        """One HTTP request finished: code is the HTTP status, or "error" for no answer."""

    def observe_error(self, endpoint: str, kind: str) -> None:
        """One operation (a request and its retries) failed with this ErrorKind."""


class _NullObserver:
    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        pass

    def observe_error(self, endpoint: str, kind: str) -> None:
        pass


class RateLimiter:
    """Spaces requests to `rate` per second (bursts up to one second's worth) and holds
    every request back while the API has asked us to (429 Retry-After)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._burst = max(1, math.floor(rate)) if rate > 0 else 1
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free = -math.inf
        self._paused_until = -math.inf

    def acquire(self, max_wait: float) -> bool:
        """Wait for a slot; False (and nothing reserved) if that would take over max_wait."""
        with self._lock:
            now = self._clock()
            base = max(self._next_free, now - (self._burst - 1) * self._interval)
            ready = max(base, self._paused_until)
            slot = max(ready, now)
            wait = slot - now
            if wait > max_wait:
                return False
            self._next_free = ready + self._interval
        if wait > 0:
            self._sleep(wait)
        return True

    def pause_for(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - self._clock())


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None if absent or unusable."""
    if not value:
        return None
    text = value.strip()
    if re.fullmatch(r"[0-9]+", text):  # ASCII digits only: str.isdigit() accepts '²'
        return min(float(text), MAX_RETRY_AFTER_SECONDS)  # float() of a huge one is inf
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return min(max(0.0, when.timestamp() - now_wall), MAX_RETRY_AFTER_SECONDS)


class CopyaiClient:
    """Typed access to the endpoints the exporter uses."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        session: requests.Session | None = None,
        observer: RequestObserver | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self._base_url = api.base_url.rstrip("/")
        self._origin = _origin(self._base_url)
        self._timeout = api.timeout_seconds
        self._max_retries = api.max_retries
        self._max_bytes = api.max_response_bytes
        self._session = session or make_session(api.max_concurrency, self._base_url)
        self._headers = {
            API_KEY_HEADER: api.api_key.reveal(),
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": f"copyai-exporter/{__version__}",
        }
        # GETs to URLs built here skip requests' per-call merging and URL parsing: the
        # request is this template with its URL set (a third of each fetch's CPU)
        self._get_template = self._session.prepare_request(
            requests.Request("GET", self._base_url, headers=self._headers)
        )
        self._observer = observer or _NullObserver()
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._limiter = limiter or RateLimiter(api.max_requests_per_second, clock, sleep)
        # the hard bound on requests in flight, whichever thread makes them
        self._slots = threading.BoundedSemaphore(api.max_concurrency)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    @property
    def base_url(self) -> str:
        return self._base_url

    def close(self) -> None:
        self._session.close()

    # --- endpoints -------------------------------------------------------------------

    def get_run(self, workflow_id: str, run_id: str, attributes: tuple[str, ...] = ()) -> Run:
        """One run, with the values of the attribution keys `attributes`."""
        path = f"/workflow/{quote(workflow_id, safe='')}/run/{quote(run_id, safe='')}"
        return self._call(
            "get_run",
            path,
            None,
            lambda data: parse_run(data, expected_run_id=run_id, attributes=attributes),
        )

    def list_runs(
        self, workflow_id: str, page: int = 1, size: int = 100, attributes: tuple[str, ...] = ()
    ) -> RunPage:
        path = f"/workflow/{quote(workflow_id, safe='')}/run"
        return self._call(
            "list_runs",
            path,
            {"size": str(size), "page": str(page)},
            lambda data: parse_run_page(data, attributes=attributes),
        )

    def list_webhooks(self, page: int = 0, size: int = 100) -> tuple[int, list[Webhook]]:
        """One page of webhook registrations (pages start at 0 here, unlike runs)."""
        return self._call(
            "list_webhooks",
            "/webhook",
            {"size": str(size), "page": str(page)},
            parse_webhook_page,
            envelope=False,  # the docs show {"total", "data"} without status/data around it
        )

    def register_webhook(self, url: str, event_type: str, workflow_id: str | None) -> Webhook:
        body: dict[str, str] = {"url": url, "eventType": event_type}
        if workflow_id is not None:
            body["workflowId"] = workflow_id
        return self._call(
            "register_webhook", "/webhook", None, parse_webhook, method="POST", body=body
        )

    def delete_webhook(self, webhook_id: str) -> None:
        path = f"/webhook/{quote(webhook_id, safe='')}"
        self._call("delete_webhook", path, None, lambda _: None, method="DELETE", envelope=False)

    # --- plumbing --------------------------------------------------------------------

    def _call(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str] | None,
        parse: Callable[[Any], _T],
        *,
        method: str = "GET",
        body: Any = None,
        envelope: bool = True,
    ) -> _T:
        """One API operation: request (with retries), unwrap, parse; failures reported."""
        try:
            answer = self._request(endpoint, path, params, method, body)
            try:
                return parse(unwrap_success(answer) if envelope else answer)
            except PayloadError as exc:
                raise ApiError(ErrorKind.BAD_RESPONSE, f"unusable payload: {exc}", 200) from None
        except ApiError as exc:
            self._observer.observe_error(endpoint, exc.kind)
            raise

    def _request(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str] | None = None,
        method: str = "GET",
        body: Any = None,
    ) -> Any:
        last_error: ApiError | None = None
        retries = 0 if method == "POST" else self._max_retries  # a POST may have landed
        for attempt in range(retries + 1):
            if not self._limiter.acquire(max_wait=max(self._timeout, 1.0)):
                raise ApiError(
                    ErrorKind.RATE_LIMITED,
                    f"held back: the API asked us to wait {self._limiter.paused_for():.0f}s",
                    429,
                )
            retry_after: float | None = None
            try:
                with self._slots:
                    return self._attempt(endpoint, path, params, method, body)
            except _RetryableError as exc:
                last_error = exc.error
                retry_after = exc.retry_after
            if attempt == retries:
                break
            if retry_after is not None and retry_after > MAX_INLINE_RETRY_AFTER_SECONDS:
                break
            self._sleep(self._backoff(attempt, retry_after))
        assert last_error is not None
        raise last_error

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential backoff; never less than what Retry-After asked for."""
        jittered = self._rng.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))
        if retry_after is not None:
            # spread the retries of concurrent workers over 10% past the requested time
            return retry_after + self._rng.uniform(0, max(0.05, retry_after * 0.1))
        return jittered

    def _attempt(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str] | None,
        method: str = "GET",
        body: Any = None,
    ) -> Any:
        """One request (following same-origin redirects) with its body, within the timeout."""
        started = self._clock()
        deadline = started + self._timeout
        url = self._base_url + path
        code = "error"
        try:
            with watched(self._timeout) as guard:
                for hop in range(MAX_REDIRECTS + 1):
                    try:
                        response = self._send(method, url, params, body, built_here=hop == 0)
                    except requests.RequestException as exc:
                        reason = "timed out" if guard.expired else _describe(exc)
                        raise _RetryableError(
                            ApiError(ErrorKind.UNREACHABLE, f"no answer: {reason}")
                        ) from None
                    with response:
                        code = str(response.status_code)
                        if response.is_redirect:
                            if method != "GET":
                                raise ApiError(ErrorKind.BAD_RESPONSE, "unexpected redirect", 300)
                            url = self._follow(url, response.headers.get("Location"))
                            params = None  # the Location carries its own query
                            continue
                        return self._interpret(response, deadline)
                raise ApiError(ErrorKind.BAD_RESPONSE, "too many redirects", 300)
        finally:
            self._observer.observe_request(endpoint, code, self._clock() - started)

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        body: Any,
        *,
        built_here: bool,
    ) -> requests.Response:
        session = self._session
        if method == "GET" and body is None and built_here:
            prepared = self._get_template.copy()
            prepared.url = url + ("?" + urlencode(params) if params else "")
        else:  # a redirect's Location is the server's text: requests normalises it
            prepared = session.prepare_request(
                requests.Request(method, url, params=params, json=body, headers=self._headers)
            )
        return session.send(
            prepared,
            timeout=(self._timeout, self._timeout),
            allow_redirects=False,
            stream=True,
            proxies=session.proxies,
            verify=session.verify,
            cert=session.cert,
        )

    def _follow(self, url: str, location: str | None) -> str:
        if not location:
            raise ApiError(ErrorKind.BAD_RESPONSE, "redirect without a Location", 300)
        target = urljoin(url, location.strip())
        # Following would send the API key along, so the target must be base_url's own
        # origin, judged by the parser that decides where the connection goes (urllib3's;
        # urlsplit reads "https://evil\\@api/" as host "api", urllib3 as "evil").
        origin = _origin(target) if "\\" not in target else None
        if origin != self._origin:
            raise ApiError(
                ErrorKind.BAD_RESPONSE,
                "refused a redirect to another origin",
                300,
            )
        return target

    def _interpret(self, response: requests.Response, deadline: float) -> Any:
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())
            self._limiter.pause_for(retry_after if retry_after is not None else 1.0)
            raise _RetryableError(
                ApiError(ErrorKind.RATE_LIMITED, "rate limited by the API (429)", 429),
                retry_after,
            )
        if status >= 500:
            raise _RetryableError(
                ApiError(ErrorKind.SERVER_ERROR, f"server error {status}", status)
            )
        if status in (401, 403):
            raise ApiError(ErrorKind.UNAUTHORIZED, f"the API refused the key ({status})", status)
        body_bytes = self._read_body(response, deadline)
        if 200 <= status < 300:
            if not body_bytes.strip():
                return None  # 204, or a 202 with an empty body (DELETE /webhook/{id})
            try:
                return json.loads(body_bytes)
            except (ValueError, RecursionError):
                raise ApiError(
                    ErrorKind.BAD_RESPONSE, "response is not valid JSON", status
                ) from None
        try:
            code = error_code(json.loads(body_bytes))
        except (ValueError, RecursionError):
            code = None
        detail = f" {code}" if code else ""
        if status == 404:
            raise ApiError(ErrorKind.NOT_FOUND, f"not found (404{detail})", status)
        raise ApiError(ErrorKind.CLIENT_ERROR, f"request refused ({status}{detail})", status)

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        """Read at most max_response_bytes of decoded body, within the request timeout.

        Decompression is done here with an output limit, so a gzip bomb costs no more
        memory than an honest body of the cap's size.
        """
        status = response.status_code
        length = response.headers.get("Content-Length", "")
        if _DIGITS.fullmatch(length) and int(length) > self._max_bytes:
            raise ApiError(ErrorKind.TOO_LARGE, f"body of {length} bytes is over the cap", status)
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            decompressor = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, auto
        elif encoding in ("", "identity"):
            decompressor = None
        else:
            raise ApiError(
                ErrorKind.BAD_RESPONSE, f"unsupported Content-Encoding {encoding}", status
            )
        limit = self._max_bytes
        parts: list[bytes] = []
        size = 0
        raw = response.raw
        try:
            while True:
                # read1 returns after one socket read, so a body that trickles in a
                # byte at a time still meets the deadline check below.
                chunk = raw.read1(READ_CHUNK_BYTES, decode_content=False)
                if not chunk:
                    break
                if decompressor is None:
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(parts, "body is over the cap", status)
                    parts.append(chunk)
                else:
                    # inflate in small steps: one call asked for the whole cap at once
                    # and cost twice the cap in memory while CPython assembled it
                    pending = chunk
                    while pending:
                        piece = decompressor.decompress(pending, READ_CHUNK_BYTES)
                        pending = decompressor.unconsumed_tail
                        size += len(piece)
                        if size > limit:
                            raise _too_large(parts, "decoded body is over the cap", status)
                        parts.append(piece)
                if self._clock() > deadline:
                    raise _RetryableError(
                        ApiError(ErrorKind.UNREACHABLE, "body not received within the timeout")
                    )
        except zlib.error:
            raise ApiError(ErrorKind.BAD_RESPONSE, "body does not decompress", status) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # past the deadline, the request watchdog has cut the connection
            reason = "within the timeout" if self._clock() >= deadline else f": {_describe(exc)}"
            raise _RetryableError(
                ApiError(ErrorKind.UNREACHABLE, f"body not received {reason}".replace(" :", ":"))
            ) from None
        return b"".join(parts)


def _too_large(parts: list[bytes], message: str, status: int) -> ApiError:
    """The error for an answer over the cap, with what was read already let go: the
    exception's traceback keeps this frame alive until the error is dropped."""
    parts.clear()
    return ApiError(ErrorKind.TOO_LARGE, message, status)


class _RetryableError(Exception):
    def __init__(self, error: ApiError, retry_after: float | None = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with default ports filled in; None if it does not parse."""
    try:
        parts = parse_url(url)
    except (ValueError, urllib3.exceptions.LocationParseError):
        return None
    scheme = (parts.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or not parts.host:
        return None
    return (scheme, parts.host.lower(), parts.port or _DEFAULT_PORTS[scheme])


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _describe(exc: BaseException) -> str:
    """A short reason without URLs or headers (nothing that could carry a secret)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        for marker in (
            "Connection refused",
            "Name or service not known",
            "reset by peer",
            "RemoteDisconnected",
            "timed out",
            "No route to host",
        ):
            if marker in text:
                return marker.lower()
        return "connection failed"
    return type(exc).__name__
