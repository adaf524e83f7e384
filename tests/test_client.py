"""CopyaiClient against a mocked transport (`responses`): parsing of the documented
payloads, retries and backoff, Retry-After and the rate limiter, bounded and gzip
bodies, redirects that must not carry the key off-origin, and the error kinds.

Time is fake everywhere: one `FakeTime` is the client's and the limiter's clock and
sleep, so every wait the client asks for is recorded instead of slept.
"""

from __future__ import annotations

import email.utils
import gzip
import io
import json
import random
import re
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from exporter.api.client import (
    API_KEY_HEADER,
    MAX_INLINE_RETRY_AFTER_SECONDS,
    MAX_REDIRECTS,
    MAX_RETRY_AFTER_SECONDS,
    CopyaiClient,
    RateLimiter,
    parse_retry_after,
)
from exporter.api.errors import ApiError, ErrorKind
from exporter.api.records import Run, RunStatus
from exporter.config import ApiConfig, Secret
from tests.support import api_examples

API_KEY = "canary-key-123"
BASE_URL = "https://api.test/api"
RUN_PATH = "/api/workflow/WCFG-1/run/WRUN-1"
RUN_URL = "https://api.test" + RUN_PATH
LIST_URL = f"{BASE_URL}/workflow/WCFG-1/run"
WALL_NOW = 1_700_000_000.0
CAP_BYTES = 2048

RUN_RECORD = {
    "status": "COMPLETE",
    "input": {"Input 1": "..."},
    "output": {"Output 1": "..."},
    "metadata": {"api": True},
    "createdAt": "2023-04-06T22:34:46.704Z",
    "id": "WRUN-1",
    "credits": 2,
}
RUN_BODY = {"status": "success", "data": RUN_RECORD}
EXPECTED_RUN = Run(
    run_id="WRUN-1",
    status=RunStatus.COMPLETE,
    created_at=datetime(2023, 4, 6, 22, 34, 46, 704000, tzinfo=UTC).timestamp(),
    credits=2.0,
    raw_status="COMPLETE",
)


class FakeTime:
    """A monotonic clock that only moves when something sleeps or the test advances it."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingObserver:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, float]] = []
        self.errors: list[tuple[str, str]] = []

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.append((endpoint, code, seconds))

    def observe_error(self, endpoint: str, kind: str) -> None:
        self.errors.append((endpoint, kind))

    @property
    def codes(self) -> list[str]:
        return [code for _, code, _ in self.requests]


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def make_client(
    fake_time: FakeTime, observer: RecordingObserver
) -> Iterator[Callable[..., CopyaiClient]]:
    clients: list[CopyaiClient] = []

    def make(**api_settings: object) -> CopyaiClient:
        settings: dict[str, object] = {
            "base_url": BASE_URL,
            "api_key": Secret(API_KEY),
            "max_retries": 2,
            "max_requests_per_second": 0,
            "timeout_seconds": 10.0,
            "max_response_bytes": CAP_BYTES,
        }
        settings.update(api_settings)
        client = CopyaiClient(
            ApiConfig(**settings),  # type: ignore[arg-type]
            observer=observer,
            clock=fake_time.clock,
            wall_clock=lambda: WALL_NOW,
            sleep=fake_time.sleep,
            rng=random.Random(0),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., CopyaiClient]) -> CopyaiClient:
    return make_client()


def expect_api_error(call: Callable[[], object]) -> ApiError:
    """Run `call`, require an ApiError, and require that it does not show the key."""
    with pytest.raises(ApiError) as info:
        call()
    error = info.value
    assert error.kind in ErrorKind.ALL
    for text in (str(error), repr(error), error.signature, repr(error.args)):
        assert API_KEY not in text
    return error


def get_run_1(client: CopyaiClient) -> Callable[[], Run]:
    return lambda: client.get_run("WCFG-1", "WRUN-1")


def json_body_of_size(size: int) -> bytes:
    """A valid run envelope padded with whitespace to exactly `size` bytes."""
    body = json.dumps(RUN_BODY).encode()
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


# --- successful fetches ----------------------------------------------------------------

SECOND_EXAMPLE_RUN_ID = "WRUN-dc46baf3-cb19-4424-be04-95ba630409bf"
SECOND_EXAMPLE_WORKFLOW_ID = "WCFG-84e56597-ebaf-4b49-a98c-75cacd4aecaa"


@pytest.mark.parametrize(
    ("workflow_id", "run_id", "body", "expected"),
    [
        pytest.param("WCFG-1", "WRUN-1", RUN_BODY, EXPECTED_RUN, id="int-credits"),
        pytest.param(
            SECOND_EXAMPLE_WORKFLOW_ID,
            SECOND_EXAMPLE_RUN_ID,
            api_examples.body("get_run_without_status.json"),
            Run(
                run_id=SECOND_EXAMPLE_RUN_ID,
                status=RunStatus.UNKNOWN,
                created_at=datetime(2023, 9, 27, 18, 34, 13, 91000, tzinfo=UTC).timestamp(),
                credits=9001.0,
                raw_status=None,
            ),
            id="string-credits-no-status",
        ),
    ],
)
def test_get_run_parses_documented_examples(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
    *,
    workflow_id: str,
    run_id: str,
    body: dict[str, object],
    expected: Run,
) -> None:
    path = f"/api/workflow/{workflow_id}/run/{run_id}"
    rsps.get("https://api.test" + path, json=body)

    assert client.get_run(workflow_id, run_id) == expected

    assert len(rsps.calls) == 1
    request = rsps.calls[0].request
    assert request.method == "GET"
    assert urlsplit(request.url).path == path
    assert urlsplit(request.url).query == ""
    assert request.headers[API_KEY_HEADER] == API_KEY
    assert observer.requests == [("get_run", "200", 0.0)]
    assert observer.errors == []
    assert fake_time.sleeps == []


def test_run_ids_are_quoted_into_the_path(
    rsps: responses.RequestsMock, client: CopyaiClient
) -> None:
    rsps.get(re.compile(r"https://api\.test/.*"), status=404)

    expect_api_error(lambda: client.get_run("W/../x", "R?a=1"))

    assert urlsplit(rsps.calls[0].request.url).path == "/api/workflow/W%2F..%2Fx/run/R%3Fa%3D1"


@pytest.mark.parametrize(
    ("status", "expected"),
    [("ARCHIVED", RunStatus.UNKNOWN), (7, RunStatus.UNKNOWN), (" failed ", RunStatus.FAILED)],
)
def test_undocumented_or_odd_status_is_not_an_error(
    rsps: responses.RequestsMock, client: CopyaiClient, status: object, expected: RunStatus
) -> None:
    rsps.get(RUN_URL, json={"status": "success", "data": {"id": "WRUN-1", "status": status}})

    run = client.get_run("WCFG-1", "WRUN-1")

    assert run.status is expected
    assert run.raw_status == (status if isinstance(status, str) else None)


def test_observer_gets_the_request_duration_from_the_clock(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
) -> None:
    def slow_answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        fake_time.advance(0.25)
        return 200, {}, json.dumps(RUN_BODY)

    rsps.add_callback(responses.GET, RUN_URL, callback=slow_answer)

    client.get_run("WCFG-1", "WRUN-1")

    assert observer.requests == [("get_run", "200", 0.25)]


# --- HTTP errors -----------------------------------------------------------------------


def test_not_found_is_not_retried_and_names_the_error_code(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
) -> None:
    rsps.get(RUN_URL, status=404, json={"status": "error", "errorCode": "NOT_FOUND"})

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.NOT_FOUND
    assert error.status == 404
    assert "NOT_FOUND" in str(error)
    assert error.api_answered
    assert len(rsps.calls) == 1
    assert fake_time.sleeps == []
    assert observer.codes == ["404"]
    assert observer.errors == [("get_run", "not_found")]


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "body", ["", '{"status":"error","errorCode":"UNAUTHORIZED"}', "<html>denied</html>"]
)
def test_refused_key_is_unauthorized_and_not_retried(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
    *,
    status: int,
    body: str,
) -> None:
    rsps.get(RUN_URL, status=status, body=body)

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.UNAUTHORIZED
    assert error.status == status
    assert not error.api_answered
    assert len(rsps.calls) == 1
    assert fake_time.sleeps == []
    assert observer.codes == [str(status)]
    assert observer.errors == [("get_run", "unauthorized")]


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (400, '{"status":"error","errorCode":"WORKFLOW_CREDIT_LIMIT_REACHED"}', "400 WORKFLOW"),
        (422, '{"status":"error","errorCode":"VALIDATION"}', "422 VALIDATION"),
        (400, "<html>bad</html>", "400)"),
        (418, '{"status":"error","errorCode":"has spaces, not a token"}', "418)"),
    ],
)
def test_other_client_errors_are_not_retried(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    fake_time: FakeTime,
    *,
    status: int,
    body: str,
    detail: str,
) -> None:
    rsps.get(RUN_URL, status=status, body=body)

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.CLIENT_ERROR
    assert error.status == status
    assert detail in str(error)
    assert len(rsps.calls) == 1
    assert fake_time.sleeps == []


def test_html_bad_gateway_then_success_is_retried_once(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
) -> None:
    rsps.get(
        RUN_URL,
        status=502,
        body="<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
        content_type="text/html",
    )
    rsps.get(RUN_URL, json=RUN_BODY)

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN

    assert len(rsps.calls) == 2
    assert observer.codes == ["502", "200"]
    assert observer.errors == []
    assert len(fake_time.sleeps) == 1
    assert 0 <= fake_time.sleeps[0] <= 0.5  # full jitter over the first backoff step


def test_server_error_every_time_gives_up_after_max_retries(
    rsps: responses.RequestsMock,
    make_client: Callable[..., CopyaiClient],
    observer: RecordingObserver,
    fake_time: FakeTime,
) -> None:
    client = make_client(max_retries=2)
    rsps.get(RUN_URL, status=503, body="Service Unavailable")

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.SERVER_ERROR
    assert error.status == 503
    assert not error.api_answered
    assert len(rsps.calls) == 3
    assert observer.codes == ["503", "503", "503"]
    assert observer.errors == [("get_run", "server_error")]
    assert len(fake_time.sleeps) == 2
    assert 0 <= fake_time.sleeps[0] <= 0.5
    assert 0 <= fake_time.sleeps[1] <= 1.0


def test_connection_error_is_unreachable_and_retried(
    rsps: responses.RequestsMock,
    make_client: Callable[..., CopyaiClient],
    observer: RecordingObserver,
    fake_time: FakeTime,
) -> None:
    client = make_client(max_retries=2)
    rsps.get(
        RUN_URL,
        body=requests.ConnectionError(f"cannot reach {RUN_URL} with {API_KEY_HEADER}: {API_KEY}"),
    )

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.UNREACHABLE
    assert error.status is None
    assert not error.api_answered
    assert str(error) == "no answer: connection failed"
    assert len(rsps.calls) == 3
    assert observer.codes == ["error", "error", "error"]
    assert observer.errors == [("get_run", "unreachable")]
    assert len(fake_time.sleeps) == 2


def test_timeout_is_unreachable(
    rsps: responses.RequestsMock, make_client: Callable[..., CopyaiClient]
) -> None:
    client = make_client(max_retries=0)
    rsps.get(RUN_URL, body=requests.ReadTimeout("read timed out"))

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.UNREACHABLE
    assert str(error) == "no answer: timed out"
    assert len(rsps.calls) == 1


# --- 429 and Retry-After ---------------------------------------------------------------


def test_retry_after_seconds_is_waited_out_then_retried(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
) -> None:
    rsps.get(RUN_URL, status=429, headers={"Retry-After": "3"})
    rsps.get(RUN_URL, json=RUN_BODY)

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN

    assert len(rsps.calls) == 2
    assert observer.codes == ["429", "200"]
    assert len(fake_time.sleeps) == 1
    assert 3 <= fake_time.sleeps[0] < 3.5


def test_retry_after_http_date_is_waited_out_then_retried(
    rsps: responses.RequestsMock, client: CopyaiClient, fake_time: FakeTime
) -> None:
    when = email.utils.formatdate(WALL_NOW + 5, usegmt=True)
    rsps.get(RUN_URL, status=429, headers={"Retry-After": when})
    rsps.get(RUN_URL, json=RUN_BODY)

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN

    assert len(rsps.calls) == 2
    assert len(fake_time.sleeps) == 1
    assert 5 <= fake_time.sleeps[0] < 5.5


def test_long_retry_after_pauses_every_request_until_it_has_passed(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
) -> None:
    assert MAX_INLINE_RETRY_AFTER_SECONDS < 120
    rsps.get(RUN_URL, status=429, headers={"Retry-After": "120"})
    rsps.get(RUN_URL, json=RUN_BODY)

    first = expect_api_error(get_run_1(client))
    assert first.kind == ErrorKind.RATE_LIMITED
    assert first.status == 429
    assert len(rsps.calls) == 1  # not waited out inline
    assert fake_time.sleeps == []

    fake_time.advance(1)
    held_back = expect_api_error(get_run_1(client))
    assert held_back.kind == ErrorKind.RATE_LIMITED
    assert "119s" in str(held_back)
    assert len(rsps.calls) == 1  # failed fast: no request while the limiter is paused
    assert fake_time.sleeps == []
    assert observer.codes == ["429"]
    assert observer.errors == [("get_run", "rate_limited"), ("get_run", "rate_limited")]

    # Once the rest of the pause fits in one timeout, a request waits it out.
    fake_time.advance(114)
    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN
    assert fake_time.sleeps == [5.0]
    assert len(rsps.calls) == 2


def test_retry_after_with_a_non_ascii_digit_is_ignored(
    rsps: responses.RequestsMock, client: CopyaiClient
) -> None:
    # A header byte 0xB2 decodes (latin-1) to "²", which str.isdigit() accepts.
    rsps.get(RUN_URL, status=429, headers={"Retry-After": "\u00b2"})
    rsps.get(RUN_URL, json=RUN_BODY)

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("3", 3.0, id="seconds"),
        pytest.param(" 7 ", 7.0, id="padded-seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(email.utils.formatdate(WALL_NOW + 5, usegmt=True), 5.0, id="imf-date"),
        pytest.param(email.utils.formatdate(WALL_NOW + 90, usegmt=True), 90.0, id="date-90s"),
        pytest.param(email.utils.formatdate(WALL_NOW - 60, usegmt=True), 0.0, id="past-date"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", 0.0, id="rfc850-past"),
        pytest.param("999999", MAX_RETRY_AFTER_SECONDS, id="huge-seconds"),
        pytest.param("9" * 19, MAX_RETRY_AFTER_SECONDS, id="seconds-past-int64"),
        pytest.param("9" * 400, MAX_RETRY_AFTER_SECONDS, id="absurd-seconds"),
        pytest.param(
            email.utils.formatdate(WALL_NOW + 10 * 86400, usegmt=True),
            MAX_RETRY_AFTER_SECONDS,
            id="far-date",
        ),
        pytest.param(None, None, id="absent"),
        pytest.param("", None, id="empty"),
        pytest.param("soon", None, id="word"),
        pytest.param("-5", None, id="negative"),
        pytest.param("Mon, 31 Feb 2024 00:00:00 GMT", None, id="impossible-date"),
        pytest.param("\u00b2", None, id="superscript-two"),
        pytest.param("Mon, 01 Jan 99999999999999999999 00:00:00 GMT", None, id="absurd-year"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, WALL_NOW) == expected


# --- unusable 200 answers --------------------------------------------------------------

WRONG_TYPES_RECORD = {
    "id": 12345,
    "status": ["COMPLETE"],
    "createdAt": 1680820486,
    "credits": {"amount": 2},
    "metadata": "none",
    "input": 5,
    "output": True,
}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"this is not json", id="not-json"),
        pytest.param(b"<!DOCTYPE html><html><body>Welcome</body></html>", id="html"),
        pytest.param(b'{"status":"success","data":{"id":"WRUN-1","cred', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage", id="binary"),
        pytest.param(b"[" * 1020 + b"]" * 1020, id="deeply-nested"),
        pytest.param(b'{"status":"success","data":[]}', id="data-is-list"),
        pytest.param(b'{"status":"error"}', id="status-error"),
        pytest.param(b'{"status":"success"}', id="no-data"),
        pytest.param(b'[{"status":"success","data":{"id":"WRUN-1"}}]', id="top-level-list"),
        pytest.param(b'"success"', id="top-level-string"),
        pytest.param(b"null", id="null"),
        pytest.param(
            json.dumps({"status": "success", "data": WRONG_TYPES_RECORD}).encode(),
            id="every-field-wrong-type",
        ),
        pytest.param(b'{"status":"success","data":{"id":"WRUN-2"}}', id="other-run-id"),
        pytest.param(b'{"status":"success","data":{"id":"WRUN 1!"}}', id="id-not-a-token"),
        pytest.param(b'{"status":"success","data":{"id":null}}', id="id-null"),
        pytest.param(
            b'{"status":"success","data":{"id":"WRUN-1","createdAt":"yesterday"}}',
            id="createdAt-not-iso",
        ),
        pytest.param(
            b'{"status":"success","data":{"id":"WRUN-1","createdAt":1680820486}}',
            id="createdAt-number",
        ),
        pytest.param(
            b'{"status":"success","data":{"id":"WRUN-1","credits":"lots"}}', id="credits-word"
        ),
        pytest.param(
            b'{"status":"success","data":{"id":"WRUN-1","credits":true}}', id="credits-bool"
        ),
        pytest.param(b'{"status":"success","data":{"id":"WRUN-1","credits":-1}}', id="credits-neg"),
        pytest.param(
            b'{"status":"success","data":{"id":"WRUN-1","credits":NaN}}', id="credits-nan"
        ),
        pytest.param(
            b'{"status":"success","data":{"id":"WRUN-1","credits":1' + b"0" * 400 + b"}}",
            id="credits-huge-integer",
        ),
    ],
)
def test_unusable_success_body_is_bad_response_without_retry(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
    body: bytes,
) -> None:
    rsps.get(RUN_URL, body=body, content_type="application/json")

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.BAD_RESPONSE
    assert error.status == 200
    assert error.api_answered
    assert len(rsps.calls) == 1
    assert fake_time.sleeps == []
    assert observer.codes == ["200"]
    assert observer.errors == [("get_run", "bad_response")]


# --- body size and encoding ------------------------------------------------------------


def test_body_at_the_cap_is_accepted(rsps: responses.RequestsMock, client: CopyaiClient) -> None:
    rsps.get(RUN_URL, body=json_body_of_size(CAP_BYTES), auto_calculate_content_length=True)
    rsps.get(RUN_URL, body=json_body_of_size(CAP_BYTES))

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN
    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN


@pytest.mark.parametrize("size", [CAP_BYTES + 1, 4 * CAP_BYTES])
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "no-length"])
def test_body_over_the_cap_is_too_large(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
    *,
    size: int,
    with_length: bool,
) -> None:
    rsps.get(RUN_URL, body=json_body_of_size(size), auto_calculate_content_length=with_length)

    error = expect_api_error(get_run_1(client))

    assert ("Content-Length" in rsps.calls[0].response.headers) is with_length
    assert error.kind == ErrorKind.TOO_LARGE
    assert error.status == 200
    if with_length:
        assert f"{size} bytes" in str(error)
    assert len(rsps.calls) == 1
    assert fake_time.sleeps == []
    assert observer.errors == [("get_run", "too_large")]


@pytest.mark.parametrize("length", ["\u00b2", "lots", "0x10"])
def test_unusable_content_length_is_ignored(
    rsps: responses.RequestsMock, client: CopyaiClient, length: str
) -> None:
    rsps.get(RUN_URL, json=RUN_BODY, headers={"Content-Length": length})

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN


class EndlessBody(io.RawIOBase):
    """A body stream with no end (up to a safety limit); counts what was read from it."""

    def __init__(self, prefix: bytes, limit: int = 64 * 1024 * 1024):
        self._prefix = prefix
        self._limit = limit
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self._limit - self.served)
        for index in range(count):
            position = self.served + index
            buffer[index] = self._prefix[position] if position < len(self._prefix) else 0x20
        self.served += count
        return count


def test_streamed_body_without_length_stops_being_read_at_the_cap(
    rsps: responses.RequestsMock, client: CopyaiClient
) -> None:
    stream = EndlessBody(b'{"status":"success","data":{"id":"WRUN-1"')
    rsps.get(RUN_URL, body=io.BufferedReader(stream))

    error = expect_api_error(get_run_1(client))

    assert "Content-Length" not in rsps.calls[0].response.headers
    assert error.kind == ErrorKind.TOO_LARGE
    assert CAP_BYTES < stream.served < 64 * 1024


def gzip_of_zeros(size: int) -> bytes:
    """gzip of `size` zero bytes, built without holding `size` bytes at once."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = []
    for start in range(0, size, len(block)):
        parts.append(compressor.compress(block[: min(len(block), size - start)]))
    parts.append(compressor.flush())
    return b"".join(parts)


def decoded_size(compressed: bytes) -> int:
    decompressor = zlib.decompressobj(47)
    total = 0
    data = compressed
    while data:
        total += len(decompressor.decompress(data, 1024 * 1024))
        data = decompressor.unconsumed_tail
    return total + len(decompressor.flush())


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    bomb = gzip_of_zeros(50_000_000)
    assert len(bomb) < 100 * 1024
    assert decoded_size(bomb) == 50_000_000
    return bomb


@pytest.mark.parametrize("cap", [CAP_BYTES, 1024 * 1024])
def test_gzip_bomb_is_too_large_without_inflating_it(
    rsps: responses.RequestsMock,
    make_client: Callable[..., CopyaiClient],
    gzip_bomb: bytes,
    cap: int,
) -> None:
    client = make_client(max_response_bytes=cap)
    headers = {"Content-Encoding": "gzip"}
    if len(gzip_bomb) <= cap:
        headers["Content-Length"] = str(len(gzip_bomb))  # honest about the compressed size
    rsps.get(RUN_URL, body=gzip_bomb, headers=headers, content_type="application/json")

    tracemalloc.start()
    try:
        error = expect_api_error(get_run_1(client))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert error.kind == ErrorKind.TOO_LARGE
    assert "decoded" in str(error)
    assert peak < 10 * 1024 * 1024


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        (" GZIP ", gzip.compress),
    ],
)
def test_compressed_json_is_decoded(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    encoding: str,
    compress: Callable[[bytes], bytes],
) -> None:
    body = compress(json.dumps(RUN_BODY).encode())
    rsps.get(RUN_URL, body=body, headers={"Content-Encoding": encoding})

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN
    assert rsps.calls[0].request.headers["Accept-Encoding"] == "gzip, deflate"


def test_compressed_body_is_measured_after_decoding(
    rsps: responses.RequestsMock, client: CopyaiClient
) -> None:
    body = gzip.compress(json_body_of_size(CAP_BYTES + 1))
    assert len(body) < CAP_BYTES
    rsps.get(RUN_URL, body=body, headers={"Content-Encoding": "gzip"})

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.TOO_LARGE


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"\x1f\x8b\x08\x00 this is not deflate data"),
        ("gzip", json.dumps(RUN_BODY).encode()),
        ("br", json.dumps(RUN_BODY).encode()),
    ],
    ids=["corrupt-gzip", "plain-labelled-gzip", "unsupported-encoding"],
)
def test_undecodable_body_is_bad_response(
    rsps: responses.RequestsMock, client: CopyaiClient, encoding: str, body: bytes
) -> None:
    rsps.get(RUN_URL, body=body, headers={"Content-Encoding": encoding})

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.BAD_RESPONSE
    assert len(rsps.calls) == 1


# --- redirects -------------------------------------------------------------------------


def register_catch_alls(rsps: responses.RequestsMock) -> None:
    """Answer with a valid run on every origin a redirect might lead to."""
    for pattern in (
        r"https://evil\.test[/:?#].*",
        r"http://api\.test[/:].*",
        r"https://api\.test:\d+/.*",
    ):
        rsps.get(re.compile(pattern), json=RUN_BODY)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    "location",
    [
        pytest.param("https://evil.test/api/workflow/WCFG-1/run/WRUN-1", id="other-host"),
        pytest.param("//evil.test/api/workflow/WCFG-1/run/WRUN-1", id="scheme-relative"),
        pytest.param("http://api.test/api/workflow/WCFG-1/run/WRUN-1", id="plain-http"),
        pytest.param("https://api.test:8443/api/workflow/WCFG-1/run/WRUN-1", id="other-port"),
        pytest.param("https://api.test@evil.test/api/workflow/WCFG-1/run/WRUN-1", id="userinfo"),
        pytest.param(
            "https://evil.test\\@api.test/api/workflow/WCFG-1/run/WRUN-1",
            id="backslash-before-at",
        ),
    ],
)
def test_redirect_off_origin_is_refused_and_never_followed(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    fake_time: FakeTime,
    *,
    status: int,
    location: str,
) -> None:
    register_catch_alls(rsps)
    rsps.get(RUN_URL, status=status, headers={"Location": location})

    error = expect_api_error(get_run_1(client))

    origins = [
        (parts.scheme, parts.hostname, parts.port)
        for parts in (urlsplit(call.request.url) for call in rsps.calls)
    ]
    assert origins == [("https", "api.test", None)]
    assert error.kind == ErrorKind.BAD_RESPONSE
    assert fake_time.sleeps == []
    assert observer.codes == [str(status)]
    assert observer.errors == [("get_run", "bad_response")]


@pytest.mark.parametrize(
    "location",
    [
        "https://api.test/api/v2/workflow/WCFG-1/run/WRUN-1?via=redirect",
        "/api/v2/workflow/WCFG-1/run/WRUN-1?via=redirect",
        "v2/WRUN-1?via=redirect",
    ],
    ids=["absolute", "root-relative", "relative"],
)
def test_redirect_within_the_origin_is_followed(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    location: str,
) -> None:
    rsps.get(RUN_URL, status=302, headers={"Location": location})
    rsps.get(
        re.compile(r"https://api\.test/api/(v2/workflow|workflow/WCFG-1/run/v2)/.*"), json=RUN_BODY
    )

    assert client.get_run("WCFG-1", "WRUN-1") == EXPECTED_RUN

    assert len(rsps.calls) == 2
    followed = rsps.calls[1].request
    assert followed.url.startswith("https://api.test/api/")
    assert followed.url.endswith("WRUN-1?via=redirect")
    assert followed.headers[API_KEY_HEADER] == API_KEY
    assert observer.codes == ["200"]


def test_redirect_loop_is_bad_response(
    rsps: responses.RequestsMock, client: CopyaiClient, fake_time: FakeTime
) -> None:
    rsps.get(RUN_URL, status=302, headers={"Location": RUN_PATH})

    error = expect_api_error(get_run_1(client))

    assert error.kind == ErrorKind.BAD_RESPONSE
    assert "too many redirects" in str(error)
    assert len(rsps.calls) == MAX_REDIRECTS + 1
    assert fake_time.sleeps == []


# --- list_runs -------------------------------------------------------------------------


def test_list_runs_documented_example(
    rsps: responses.RequestsMock, client: CopyaiClient, observer: RecordingObserver
) -> None:
    item = {"status": "COMPLETE", "createdAt": "2023-04-29T15:08:01.326Z", "credits": 2}
    rsps.get(
        LIST_URL,
        json={
            "status": "success",
            "data": {
                "total": 2,
                "data": [
                    {**item, "id": "WRUN-a", "metadata": None, "input": {}, "output": {}},
                    {**item, "id": "WRUN-b"},
                ],
            },
        },
    )

    page = client.list_runs("WCFG-1")

    created = datetime(2023, 4, 29, 15, 8, 1, 326000, tzinfo=UTC).timestamp()
    assert page.total == 2
    assert page.invalid_items == 0
    assert page.runs == (
        Run("WRUN-a", RunStatus.COMPLETE, created, 2.0, "COMPLETE"),
        Run("WRUN-b", RunStatus.COMPLETE, created, 2.0, "COMPLETE"),
    )
    request = rsps.calls[0].request
    assert urlsplit(request.url).path == "/api/workflow/WCFG-1/run"
    assert parse_qs(urlsplit(request.url).query) == {"size": ["100"], "page": ["1"]}
    assert request.headers[API_KEY_HEADER] == API_KEY
    assert observer.requests == [("list_runs", "200", 0.0)]


def test_list_runs_string_total_unknown_status_and_invalid_items(
    rsps: responses.RequestsMock, client: CopyaiClient
) -> None:
    rsps.get(
        LIST_URL,
        json={
            "status": "success",
            "data": {
                "total": "3",
                "data": [
                    {"id": "WRUN-a", "createdAt": "2023-09-27T18:24:47Z", "credits": "22"},
                    {"id": "WRUN-b", "status": "PROCESSING"},
                    {"id": "WRUN-c", "credits": "lots"},
                    "not a run",
                ],
            },
        },
    )

    page = client.list_runs("WCFG-1", page=2, size=25)

    assert page.total == 3
    assert page.invalid_items == 2
    assert page.runs == (
        Run(
            "WRUN-a",
            RunStatus.UNKNOWN,
            datetime(2023, 9, 27, 18, 24, 47, tzinfo=UTC).timestamp(),
            22.0,
            None,
        ),
        Run("WRUN-b", RunStatus.PROCESSING, None, None, "PROCESSING"),
    )
    query = urlsplit(rsps.calls[0].request.url).query
    assert parse_qs(query) == {"size": ["25"], "page": ["2"]}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"data": []}, id="no-total"),
        pytest.param({"total": -1, "data": []}, id="negative-total"),
        pytest.param({"total": "three", "data": []}, id="word-total"),
        pytest.param({"total": True, "data": []}, id="bool-total"),
        pytest.param({"total": 2.5, "data": []}, id="float-total"),
        pytest.param({"total": "\u00b2", "data": []}, id="superscript-total"),
        pytest.param({"total": 2}, id="no-items"),
        pytest.param({"total": 2, "data": {"0": {}}}, id="items-not-list"),
        pytest.param([], id="data-is-list"),
    ],
)
def test_list_runs_wrong_shape_is_bad_response(
    rsps: responses.RequestsMock,
    client: CopyaiClient,
    observer: RecordingObserver,
    data: object,
) -> None:
    rsps.get(LIST_URL, json={"status": "success", "data": data})

    error = expect_api_error(lambda: client.list_runs("WCFG-1"))

    assert error.kind == ErrorKind.BAD_RESPONSE
    assert len(rsps.calls) == 1
    assert observer.errors == [("list_runs", "bad_response")]


# --- RateLimiter -----------------------------------------------------------------------


def test_rate_limiter_allows_a_burst_then_spaces_requests(fake_time: FakeTime) -> None:
    limiter = RateLimiter(2, clock=fake_time.clock, sleep=fake_time.sleep)
    start = fake_time.now

    granted_at = []
    for _ in range(5):
        assert limiter.acquire(max_wait=10)
        granted_at.append(fake_time.now - start)

    assert granted_at == [0.0, 0.0, 0.5, 1.0, 1.5]
    assert fake_time.sleeps == [0.5, 0.5, 0.5]

    # After an idle spell the burst is available again, and only the burst.
    fake_time.advance(10)
    fake_time.sleeps.clear()
    for _ in range(3):
        assert limiter.acquire(max_wait=10)
    assert fake_time.sleeps == [0.5]


def test_rate_limiter_without_a_rate_never_waits(fake_time: FakeTime) -> None:
    limiter = RateLimiter(0, clock=fake_time.clock, sleep=fake_time.sleep)

    for _ in range(100):
        assert limiter.acquire(max_wait=0)

    assert fake_time.sleeps == []


def test_pause_holds_back_acquire(fake_time: FakeTime) -> None:
    limiter = RateLimiter(0, clock=fake_time.clock, sleep=fake_time.sleep)
    limiter.pause_for(3)
    assert limiter.paused_for() == 3.0

    assert limiter.acquire(max_wait=10)

    assert fake_time.sleeps == [3.0]
    assert limiter.paused_for() == 0.0
    assert limiter.acquire(max_wait=0)
    assert fake_time.sleeps == [3.0]


def test_pause_never_shortens_an_earlier_pause(fake_time: FakeTime) -> None:
    limiter = RateLimiter(0, clock=fake_time.clock, sleep=fake_time.sleep)
    limiter.pause_for(60)
    limiter.pause_for(5)

    assert limiter.paused_for() == 60.0


def test_acquire_that_would_wait_too_long_reserves_nothing(fake_time: FakeTime) -> None:
    limiter = RateLimiter(1, clock=fake_time.clock, sleep=fake_time.sleep)
    assert limiter.acquire(max_wait=0)

    assert not limiter.acquire(max_wait=0.5)
    assert not limiter.acquire(max_wait=0.5)
    assert fake_time.sleeps == []

    assert limiter.acquire(max_wait=10)
    assert fake_time.sleeps == [1.0]  # not 3.0: the refused calls took no slots


def test_acquire_refused_while_paused(fake_time: FakeTime) -> None:
    limiter = RateLimiter(0, clock=fake_time.clock, sleep=fake_time.sleep)
    limiter.pause_for(30)

    assert not limiter.acquire(max_wait=10)
    assert fake_time.sleeps == []
    fake_time.advance(25)
    assert limiter.acquire(max_wait=10)
    assert fake_time.sleeps == [5.0]
