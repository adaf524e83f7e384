"""Tolerant parsing of Copy.ai run payloads (examples from /work/shared/COPYAI_API.md)."""

from __future__ import annotations

import json

import pytest

from exporter.api.records import (
    ALL_STATUSES,
    TERMINAL_STATUSES,
    PayloadError,
    Run,
    RunStatus,
    error_code,
    parse_credits,
    parse_run,
    parse_timestamp,
    unwrap_success,
)
from tests.support import api_examples

# The two documented answers of GET /workflow/{workflow_id}/run/{run_id}
# (tests/fixtures/api, each naming its page).
FIRST_EXAMPLE = json.dumps(api_examples.body("get_run_complete.json"))
SECOND_EXAMPLE = json.dumps(api_examples.body("get_run_without_status.json"))

RUN_ID = "WRUN-dc46baf3-cb19-4424-be04-95ba630409bf"


def record(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "status": "COMPLETE",
        "createdAt": "2023-04-29T15:08:01.326Z",
        "id": RUN_ID,
        "credits": 2,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


# --- the documented examples --------------------------------------------------------


def test_first_documented_example():
    run = parse_run(unwrap_success(json.loads(FIRST_EXAMPLE)))
    assert run == Run(
        run_id=api_examples.run_id_for("get_run_complete.json"),
        status=RunStatus.COMPLETE,
        created_at=1680820486.704,
        credits=2.0,
        raw_status="COMPLETE",
    )
    assert run.terminal is True


def test_second_documented_example_string_credits_and_no_status():
    run = parse_run(unwrap_success(json.loads(SECOND_EXAMPLE)), expected_run_id=RUN_ID)
    assert run == Run(
        run_id=RUN_ID,
        status=RunStatus.UNKNOWN,
        created_at=1695839653.091,
        credits=9001.0,
        raw_status=None,
    )
    assert run.terminal is False


def test_documented_list_items_parse():
    items = [
        {
            "status": "COMPLETE",
            "createdAt": "2023-04-29T15:08:01.326Z",
            "id": "WRUN-a",
            "credits": 2,
            "metadata": None,
            "input": {},
            "output": {},
        },
        {"status": "COMPLETE", "createdAt": "2023-04-29T15:08:01.326Z", "id": "WRUN-b"},
    ]
    runs = [parse_run(item) for item in items]
    assert [r.run_id for r in runs] == ["WRUN-a", "WRUN-b"]
    assert [r.created_at for r in runs] == [1682780881.326, 1682780881.326]
    assert [r.credits for r in runs] == [2.0, None]


# --- timestamps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unix"),
    [
        ("2023-04-06T22:34:46.704Z", 1680820486.704),
        ("2023-09-27T18:34:13.091Z", 1695839653.091),
        ("2023-09-27T18:24:47Z", 1695839087.0),  # without milliseconds
        ("2023-09-27T18:24:47+00:00", 1695839087.0),
        ("2023-09-27T20:24:47+02:00", 1695839087.0),
        ("2023-09-27T18:24:47z", 1695839087.0),
        ("2023-09-27T18:24:47", 1695839087.0),  # naive means UTC, as documented
        ("1970-01-01T00:00:00Z", 0.0),
    ],
)
def test_timestamps(text, unix):
    assert parse_timestamp(text) == unix
    assert parse_run(record(createdAt=text)).created_at == unix


def test_missing_or_null_created_at_is_none():
    assert parse_run(record(createdAt=...)).created_at is None
    assert parse_run(record(createdAt=None)).created_at is None


@pytest.mark.parametrize(
    "value",
    [1680820486, 1680820486.704, [], {}, True, "garbage", "", "2023-13-45T00:00:00Z", "yesterday"],
)
def test_bad_created_at_raises_payload_error(value):
    with pytest.raises(PayloadError, match="createdAt"):
        parse_run(record(createdAt=value))


# --- credits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2, 2.0), (0, 0.0), (2.5, 2.5), ("9001", 9001.0), ("22", 22.0), (" 3 ", 3.0), ("1.5", 1.5)],
)
def test_credits_variants(value, expected):
    assert parse_credits(value) == expected
    assert parse_run(record(credits=value)).credits == expected


def test_missing_or_null_credits_is_none():
    assert parse_run(record(credits=...)).credits is None
    assert parse_run(record(credits=None)).credits is None


@pytest.mark.parametrize(
    "value",
    [[2], {"n": 2}, True, False, -1, -0.5, "-3", "abc", "nan", "inf", float("inf"), float("nan")],
)
def test_bad_credits_raise_payload_error(value):
    with pytest.raises(PayloadError, match="credits"):
        parse_run(record(credits=value))


def test_credits_integer_too_large_for_a_float_raises_payload_error():
    # json.loads turns a 400-digit number into an int; float() of it raises OverflowError.
    huge = json.loads("1" + "0" * 400)
    with pytest.raises(PayloadError):
        parse_credits(huge)


# --- status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", ["NEW", "WAITING", "PROCESSING", "COMPLETE", "RETRYING", "FAILED"]
)
def test_documented_statuses(status):
    run = parse_run(record(status=status))
    assert run.status is RunStatus(status)
    assert run.raw_status == status


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("complete", RunStatus.COMPLETE),
        (" failed ", RunStatus.FAILED),
        ("Processing", RunStatus.PROCESSING),
    ],
)
def test_status_case_and_whitespace_are_ignored(raw, expected):
    run = parse_run(record(status=raw))
    assert run.status == expected
    assert run.raw_status == raw


@pytest.mark.parametrize("raw", ["PAUSED", "CANCELLED", "unknown"])
def test_undocumented_status_is_unknown(raw):
    run = parse_run(record(status=raw))
    assert run.status is RunStatus.UNKNOWN
    assert run.raw_status == raw
    assert run.terminal is False


@pytest.mark.parametrize("raw", [None, "", "  ", 3, ["COMPLETE"], {"s": "COMPLETE"}, True])
def test_missing_or_non_string_status_is_unknown(raw):
    run = parse_run(record(status=raw))
    assert run.status is RunStatus.UNKNOWN
    assert run.raw_status is None
    assert parse_run(record(status=...)).status is RunStatus.UNKNOWN


def test_terminal_statuses():
    assert {s for s in ALL_STATUSES if s.terminal} == {RunStatus.COMPLETE, RunStatus.FAILED}
    assert frozenset({RunStatus.COMPLETE, RunStatus.FAILED}) == TERMINAL_STATUSES
    for status in (RunStatus.NEW, RunStatus.WAITING, RunStatus.PROCESSING, RunStatus.RETRYING):
        assert status.terminal is False
    assert RunStatus.UNKNOWN.terminal is False
    assert len(ALL_STATUSES) == 7


# --- metadata, input, output --------------------------------------------------------


@pytest.mark.parametrize("metadata", [None, ..., {}, {"api": True}, "odd", [1]])
def test_metadata_is_never_a_problem(metadata):
    run = parse_run(record(metadata=metadata, input=..., output=...))
    assert run.run_id == RUN_ID
    assert run.status is RunStatus.COMPLETE


# --- ids and record shape -----------------------------------------------------------


def test_workflow_run_id_is_used_when_id_is_missing():
    assert parse_run(record(id=..., workflowRunId=RUN_ID)).run_id == RUN_ID


def test_missing_id_raises_payload_error():
    with pytest.raises(PayloadError, match="no usable id"):
        parse_run(record(id=...))


@pytest.mark.parametrize("value", [None, 123, "", "../etc", "a/b", "WRUN 1", "x" * 129, ["WRUN-1"]])
def test_unusable_id_raises_payload_error(value):
    with pytest.raises(PayloadError, match="no usable id"):
        parse_run(record(id=value))


def test_id_mismatching_expected_run_id_raises_payload_error():
    with pytest.raises(PayloadError, match="another run id"):
        parse_run(record(id="WRUN-other"), expected_run_id=RUN_ID)


def test_id_matching_expected_run_id_is_accepted():
    assert parse_run(record(), expected_run_id=RUN_ID).run_id == RUN_ID


@pytest.mark.parametrize("value", [None, [], [record()], "run", 42, True])
def test_record_that_is_not_an_object_raises_payload_error(value):
    with pytest.raises(PayloadError, match="not an object"):
        parse_run(value)


def test_payload_error_is_a_value_error():
    assert issubclass(PayloadError, ValueError)


# --- envelopes ----------------------------------------------------------------------


def test_unwrap_success_returns_data():
    assert unwrap_success({"status": "success", "data": {"id": "x"}}) == {"id": "x"}
    assert unwrap_success({"status": "success", "data": [1, 2]}) == [1, 2]
    assert unwrap_success({"status": "success", "data": None}) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"status": "error", "errorCode": "NOT_FOUND"}, "not 'success'"),
        ({"data": {"id": "x"}}, "not 'success'"),
        ({"status": "SUCCESS", "data": {}}, "not 'success'"),
        ({"total": 2, "data": []}, "not 'success'"),  # the webhook list shape
        ({"status": "success"}, "no data"),
        ([{"status": "success", "data": {}}], "not a JSON object"),
        ("<html>502 Bad Gateway</html>", "not a JSON object"),
        (None, "not a JSON object"),
    ],
)
def test_unwrap_success_refuses_everything_else(body, message):
    with pytest.raises(PayloadError, match=message):
        unwrap_success(body)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"status": "error", "errorCode": "NOT_FOUND"}, "NOT_FOUND"),
        (
            {"status": "error", "errorCode": "WORKFLOW_CREDIT_LIMIT_REACHED"},
            "WORKFLOW_CREDIT_LIMIT_REACHED",
        ),
        ({"status": "error"}, None),
        ({"status": "error", "errorCode": None}, None),
        ({"status": "error", "errorCode": 404}, None),
        ({"status": "error", "errorCode": ""}, None),
        ({"status": "error", "errorCode": "NOT FOUND"}, None),
        ({"status": "error", "errorCode": "<script>alert(1)</script>"}, None),
        ({"status": "error", "errorCode": "E" * 129}, None),
        ("<html>NOT_FOUND</html>", None),
        (["NOT_FOUND"], None),
        (None, None),
    ],
)
def test_error_code(body, code):
    assert error_code(body) == code
