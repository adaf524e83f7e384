"""Property-based fuzzing of everything that reads outside input: the config loader, the
API payload parsers, the webhook parser, and whole scrapes against an API answering with
generated bodies and status codes.

Deterministic: derandomize=True and no example database, so CI runs the same examples
every time. Inputs that once crashed a parser are also kept as explicit regression cases
(test_config_crashers and the discovery tests), next to the properties that now cover them.
"""

from __future__ import annotations

import copy
import gzip
import io
import itertools
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.api.deliveries import WebhookError, WebhookEvent, parse_event
from exporter.api.records import (
    ID_PATTERN,
    PayloadError,
    Run,
    RunPage,
    RunStatus,
    Webhook,
    error_code,
    parse_credits,
    parse_run,
    parse_run_page,
    parse_timestamp,
    parse_webhook_page,
    unwrap_success,
)
from exporter.config import (
    WEBHOOK_EVENT_TYPES,
    Config,
    ConfigError,
    Secret,
    WebhookConfig,
    build_config,
    parse_config,
)
from exporter.metrics.telemetry import REJECT_REASONS
from exporter.runtime import Exporter
from exporter.web.webhooks import WebhookApp
from tests.support import api_examples
from tests.support.exporters import make_config
from tests.support.polling import wait_for
from tests.support.processes import LISTENING, Process

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

API_KEY_CANARY = "fz-apikey-canary-Q7v2Lm9X"
TOKEN_CANARY = "fz-whtoken-canary-R4k8Pn3Z"  # a valid webhook token: 16+ of [A-Za-z0-9._~-]
FILE_KEY_CANARY = "fz-keyfile-canary-W3j6Ts1B"
BAD_FILE_KEY_CANARY = "fz-badkey-canary-H5n0Yc2D"
SECRETS = (API_KEY_CANARY, TOKEN_CANARY, FILE_KEY_CANARY, BAD_FILE_KEY_CANARY)


def _paths(node: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _get(node: Any, path: tuple) -> Any:
    for step in path:
        node = node[step]
    return node


def mutations(
    examples: list[Any], values: st.SearchStrategy, keys: st.SearchStrategy
) -> st.SearchStrategy:
    """A documented example with one to three edits: a value replaced, a key or item
    removed, or a key or item added, anywhere in it."""

    @st.composite
    def mutate(draw: st.DrawFn) -> Any:
        doc = copy.deepcopy(draw(st.sampled_from(examples)))
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(list(_paths(doc))))
            operation = draw(st.sampled_from(["replace", "delete", "add"]))
            if not path:
                if operation == "replace":
                    doc = draw(values)
                continue
            parent = _get(doc, path[:-1])
            if operation == "replace":
                parent[path[-1]] = draw(values)
            elif operation == "delete":
                del parent[path[-1]]
            else:
                target = _get(doc, path)
                if isinstance(target, dict):
                    target[draw(keys)] = draw(values)
                elif isinstance(target, list):
                    target.append(draw(values))
                else:
                    parent[path[-1]] = [target, draw(values)]
        return doc

    return mutate()


# ===================================================================================
# The config loader
# ===================================================================================


# Any text: "~user", NUL and lone surrogates once crashed the path handling
# (test_config_crashers keeps those as regression cases).
SAFE_TEXT = st.text(max_size=24)

REAL_KEYS = (
    "api",
    "collector",
    "workflows",
    "state",
    "webhooks",
    "base_url",
    "api_key_file",
    "timeout_seconds",
    "max_concurrency",
    "max_retries",
    "max_requests_per_second",
    "max_response_bytes",
    "refresh_interval_seconds",
    "sparse_status",
    "up_check_interval_seconds",
    "duration_buckets_seconds",
    "id",
    "name",
    "runs",
    "discover",
    "discovery",
    "window_seconds",
    "max_tracked_runs",
    "page_size",
    "max_pages_per_refresh",
    "run_series",
    "max_run_series",
    "path",
    "listen_address",
    "token_file",
    "max_body_bytes",
    "accept_unknown_workflows",
    "register",
    "public_url",
    "event_types",
    "per_workflow",
)

# What a YAML document can hold: scalars (dates and bytes too: YAML has them), lists,
# mappings with keys of any plain type, integers far beyond a float's range included.
YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**400), 10**400),
    st.integers(-3, 300),
    st.floats(),
    SAFE_TEXT,
    st.sampled_from(REAL_KEYS),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=8),
)
YAML_KEYS = st.one_of(
    st.sampled_from(REAL_KEYS), SAFE_TEXT, st.integers(-5, 5), st.none(), st.booleans()
)
ANY_YAML = st.recursive(
    YAML_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(YAML_KEYS, children, max_size=4),
    ),
    max_leaves=16,
)


def _or_anything(*plausible: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(*plausible, ANY_YAML)


NUMBERS = st.one_of(
    st.sampled_from(
        [
            *(0, 1, -1, 0.1, 0.09, 0.001, 2, 8, 10, 60, 100, 101, 256, 257, 300, 300.5),
            *(1023, 1024, 65536, 86_400, 86_401, 31_536_000, 2**63, 1e308, math.inf),
            *(-math.inf, math.nan, True, False, "10", "1e3", None),
        ]
    ),
    st.integers(-(10**6), 10**7),
    st.floats(),
)
IDS = st.one_of(
    st.sampled_from(["WCFG-1", "WCFG-2", "WRUN-1", "WRUN-1", "a b", "", "x" * 129, "é", "a/b"]),
    st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
)
URLS = st.sampled_from(
    [
        "http://127.0.0.1:1/api",
        "https://api.copy.ai/api/",
        "ftp://example.com/",
        "http://",
        "http://user:pw@host/",
        "http://host/?q=1",
        "http://host/#f",
        "http://[::1",
        "http://host:99999/",
        "http://host:-1/",
        "http://[::1]:80/api",
        "not a url",
        "",
    ]
)
KEY_FILES = st.sampled_from(
    ["key.txt", "badkey.txt", "empty.txt", "big.txt", "missing.txt", ".", "/dev/null", "sub/"]
)


def _section(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    return _or_anything(st.fixed_dictionaries({}, optional=fields))


DISCOVERY = _section(
    {
        "window_seconds": NUMBERS,
        "max_tracked_runs": NUMBERS,
        "page_size": NUMBERS,
        "max_pages_per_refresh": NUMBERS,
        "run_series": _or_anything(st.booleans()),
        "max_run_series": NUMBERS,
    }
)
WORKFLOW = _section(
    {
        "id": _or_anything(IDS),
        "name": _or_anything(SAFE_TEXT, st.just("   "), st.just("n" * 201)),
        "runs": _or_anything(st.lists(_or_anything(IDS), max_size=4)),
        "discover": _or_anything(st.booleans()),
        "discovery": DISCOVERY,
    }
)
CONFIG_DOCUMENTS = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "api": _section(
                {
                    "base_url": _or_anything(URLS),
                    "api_key_file": _or_anything(KEY_FILES),
                    "timeout_seconds": NUMBERS,
                    "max_concurrency": NUMBERS,
                    "max_retries": NUMBERS,
                    "max_requests_per_second": NUMBERS,
                    "max_response_bytes": NUMBERS,
                }
            ),
            "collector": _section(
                {
                    "refresh_interval_seconds": NUMBERS,
                    "sparse_status": _or_anything(st.booleans()),
                    "up_check_interval_seconds": NUMBERS,
                    "duration_buckets_seconds": _or_anything(st.lists(NUMBERS, max_size=5)),
                }
            ),
            "workflows": _or_anything(st.lists(WORKFLOW, max_size=3)),
            "state": _section({"path": _or_anything(st.sampled_from(["s.db", ".", "no/s.db"]))}),
            "webhooks": _section(
                {
                    "listen_address": _or_anything(
                        st.sampled_from(["127.0.0.1:10118", ":1", "[::1]:1", "nope", "h:123456"])
                    ),
                    "token_file": _or_anything(st.sampled_from(["token.txt", "key.txt", "none"])),
                    "max_body_bytes": NUMBERS,
                    "accept_unknown_workflows": _or_anything(st.booleans()),
                    "register": _section(
                        {
                            "public_url": _or_anything(URLS),
                            "event_types": _or_anything(
                                st.lists(st.sampled_from([*WEBHOOK_EVENT_TYPES, "x"]), max_size=5)
                            ),
                            "per_workflow": _or_anything(st.booleans()),
                        }
                    ),
                }
            ),
        },
    ),
    ANY_YAML,
)
# Complete, valid documents (every key set) with a few edits each: most edits keep the
# document loadable, so the properties of a loaded Config get exercised too.
VALID_DOCUMENTS = [
    {
        "api": {
            "base_url": "http://127.0.0.1:1/api",
            "timeout_seconds": 5,
            "max_concurrency": 4,
            "max_retries": 1,
            "max_requests_per_second": 2.5,
            "max_response_bytes": 65536,
        },
        "collector": {
            "refresh_interval_seconds": 0,
            "sparse_status": True,
            "up_check_interval_seconds": 60,
            "duration_buckets_seconds": [1, 10, 100],
        },
        "workflows": [
            {"id": "WCFG-1", "name": "one", "runs": ["WRUN-1", "WRUN-2"]},
            {
                "id": "WCFG-2",
                "discover": True,
                "discovery": {
                    "window_seconds": 3600,
                    "max_tracked_runs": 100,
                    "page_size": 50,
                    "max_pages_per_refresh": 5,
                    "run_series": True,
                    "max_run_series": 10,
                },
            },
        ],
        "state": {"path": "s.db"},
    },
    {
        "api": {"api_key_file": "key.txt"},
        "workflows": [{"id": "WCFG-1"}],
        "webhooks": {
            "listen_address": "127.0.0.1:10118",
            "token_file": "token.txt",
            "max_body_bytes": 4096,
            "accept_unknown_workflows": True,
            "register": {
                "public_url": "https://hooks.example/webhook",
                "event_types": list(WEBHOOK_EVENT_TYPES[:2]),
                "per_workflow": False,
            },
        },
    },
]
EDITED_DOCUMENTS = mutations(
    VALID_DOCUMENTS,
    st.one_of(NUMBERS, IDS, URLS, KEY_FILES, st.booleans(), ANY_YAML),
    YAML_KEYS,
)
CONFIG_DOCUMENTS = st.one_of(CONFIG_DOCUMENTS, EDITED_DOCUMENTS, EDITED_DOCUMENTS)
ENVIRONMENTS = st.one_of(
    st.just({"COPYAI_API_KEY": API_KEY_CANARY, "COPYAI_WEBHOOK_TOKEN": TOKEN_CANARY}),
    st.fixed_dictionaries(
        {},
        optional={
            # the canary, sometimes with whitespace or control characters glued on, which
            # the loader must refuse without repeating the key
            "COPYAI_API_KEY": st.one_of(
                st.just(API_KEY_CANARY),
                st.builds(lambda tail: API_KEY_CANARY + tail, st.text(max_size=4)),
            ),
            "COPYAI_WEBHOOK_TOKEN": st.one_of(
                st.just(TOKEN_CANARY),
                st.builds(lambda tail: TOKEN_CANARY + tail, st.text(max_size=4)),
            ),
        },
    ),
)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """Files the generated documents may name, next to where they are 'loaded from'."""
    (tmp_path / "key.txt").write_text(FILE_KEY_CANARY + "\n")
    (tmp_path / "badkey.txt").write_text(f"{BAD_FILE_KEY_CANARY} with spaces\n")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "big.txt").write_text("k" * 5000)
    (tmp_path / "token.txt").write_text(TOKEN_CANARY)
    (tmp_path / "sub").mkdir()
    return tmp_path


def _check_config_outcome(
    load: Callable[[], Config], document: Callable[[], Any], require_key: bool = True
) -> None:
    """The loader either returns a Config that honours the documented limits, or raises
    ConfigError; no secret shows up in either."""
    try:
        config = load()
    except ConfigError as exc:
        text = f"{exc}\n{exc.render()}\n{exc.problems!r}"
        assert exc.problems, "a ConfigError must list at least one problem"
        assert all(isinstance(p, str) and p for p in exc.problems)
        for secret in SECRETS:
            assert secret not in text
        return
    assert isinstance(config, Config)
    assert config.workflows, "a config with no workflow must not load"
    ids = [w.id for w in config.workflows]
    assert len(set(ids)) == len(ids)
    runs = [r for w in config.workflows for r in w.runs]
    assert len(set(runs)) == len(runs)
    assert all(ID_PATTERN.fullmatch(i) for i in ids + runs)
    api = config.api
    assert api.base_url.lower().startswith(("http://", "https://"))
    assert 0.1 <= api.timeout_seconds <= 300
    assert 1 <= api.max_concurrency <= 256
    assert 0 <= api.max_retries <= 10
    key = api.api_key.reveal()
    assert all(0x21 <= ord(c) <= 0x7E for c in key)
    assert key or not require_key
    buckets = config.collector.duration_buckets_seconds
    assert all(a < b for a, b in itertools.pairwise(buckets))
    assert 0 <= config.collector.refresh_interval_seconds <= 86_400
    for workflow in config.workflows:
        assert 1 <= workflow.discovery.page_size <= 100
    shown = f"{config!r} {config.api} {config.webhooks}"
    for secret in SECRETS:
        assert secret not in shown


def test_build_config_raises_only_config_error_and_never_shows_a_secret(config_dir):
    @settings(FUZZ, max_examples=400)
    @given(document=CONFIG_DOCUMENTS, env=ENVIRONMENTS, require_key=st.booleans())
    def check(document: Any, env: dict[str, str], require_key: bool) -> None:
        _check_config_outcome(
            lambda: build_config(
                document,
                source="fuzz.yaml",
                env=env,
                require_key=require_key,
                base_dir=config_dir,
            ),
            lambda: document,
            require_key,
        )

    check()


# YAML-looking text: fragments of the real syntax (indicators, anchors, tags, block
# scalars) glued together, scalar tags included (`!!bool maybe` once crashed the loader).
YAML_FRAGMENTS = st.sampled_from(
    [
        "api:", "collector:", "workflows:", "state:", "webhooks:", "- id: ", "runs:",
        "discover: ", "base_url: ", "api_key_file: ", "timeout_seconds: ", "name: ",
        "\n", "\n  ", "\n    ", "  ", " ", "- ", ": ", ":", ",", "[", "]", "{", "}", "?",
        "'", '"', "#", "|", ">", "&a ", "*a", "<<: ", "---\n", "...\n", "%YAML 1.1\n",
        "%TAG ! tag:x,2000:\n", "!!str ", "!!seq ", "!!map ", "!!null ", "!!binary ",
        "!!set ", "!!omap ", "!!pairs ", "!custom ", "!!python/object:os.system ",
        "!!int ", "!!float ", "!!bool ", "!!timestamp ",
        "!<tag:yaml.org,2002:str> ", "WCFG-1", "WRUN-1", "1", "0", "-1", "0x1F", "0o17",
        "1_000", "1.5e3", ".inf", ".nan", "1:30", "2001-12-14", "yes", "no", "~", "null",
        "true", "a b", "\t", "\\", "\x85", "\ufeff", "é", "\x00", "\x07",
    ]
)  # fmt: skip
YAML_TEXT = st.one_of(
    st.text(max_size=80),
    EDITED_DOCUMENTS.map(yaml.safe_dump),
    st.lists(YAML_FRAGMENTS, max_size=30).map("".join),
    # valid YAML of a generated document, cut anywhere
    st.builds(
        lambda document, cut: yaml.safe_dump(document)[:cut],
        CONFIG_DOCUMENTS,
        st.integers(0, 400),
    ),
)


def test_parse_config_of_any_text_raises_only_config_error(config_dir):
    @settings(FUZZ, max_examples=500)
    @given(text=YAML_TEXT, env=ENVIRONMENTS)
    def check(text: str, env: dict[str, str]) -> None:
        _check_config_outcome(
            lambda: parse_config(text, source="fuzz.yaml", env=env, base_dir=config_dir),
            lambda: yaml.safe_load(text),
        )

    check()


def test_deeply_nested_yaml_is_a_config_error(config_dir):
    for text in ("{a: " * 1500, "- " * 1500, "[" * 600 + "]" * 600):
        with pytest.raises(ConfigError):
            parse_config(text, env={"COPYAI_API_KEY": API_KEY_CANARY}, base_dir=config_dir)


WORKFLOWS_YAML = "workflows:\n  - id: WCFG-1\n"
HUGE = "1" + "0" * 400
PARSE_CRASH = "config.py:220-225 parse_config catches only YAMLError, ValueError and "
PARSE_CRASH += "RecursionError; PyYAML's SafeConstructor raises "


def crasher(text: str, reason: str, name: str):
    # each of these crashed the loader once (reason); they must now be ConfigErrors
    return pytest.param(text + WORKFLOWS_YAML, id=name)


CONFIG_CRASHERS = [
    crasher(
        f"collector:\n  duration_buckets_seconds: [{HUGE}]\n",
        "config.py:415 _buckets: math.isfinite() of an integer over ~1.8e308 raises "
        "OverflowError instead of recording a range problem",
        "bucket-integer-too-large-for-a-float",
    ),
    crasher(
        "collector:\n  sparse_status: !!bool maybe\n",
        PARSE_CRASH + "KeyError for '!!bool maybe'",
        "bool-tag",
    ),
    crasher(
        "collector:\n  refresh_interval_seconds: !!int ''\n",
        PARSE_CRASH + "IndexError for !!int ''",
        "int-tag-empty",
    ),
    crasher(
        "collector:\n  refresh_interval_seconds: !!float ''\n",
        PARSE_CRASH + "IndexError for !!float ''",
        "float-tag-empty",
    ),
    crasher(
        "state:\n  path: !!timestamp soon\n",
        PARSE_CRASH + "AttributeError for !!timestamp with a non-date value",
        "timestamp-tag",
    ),
    crasher(
        'api:\n  api_key_file: "key\\0.txt"\n',
        "config.py:337 _read_secret: stat() of a path with NUL raises ValueError, which is "
        "not caught (only FileNotFoundError, OSError, UnicodeDecodeError)",
        "key-file-nul",
    ),
    crasher(
        'api:\n  api_key_file: "key\\uD800.txt"\n',
        "config.py:337 _read_secret: stat() of a path with a lone surrogate raises "
        "UnicodeEncodeError, which is not caught",
        "key-file-surrogate",
    ),
    crasher(
        "api:\n  api_key_file: ~no-such-user-zq/key\n",
        "config.py:333 _read_secret: Path.expanduser() raises RuntimeError for an unknown user",
        "key-file-unknown-user",
    ),
    crasher(
        "state:\n  path: ~no-such-user-zq/state.db\n",
        "config.py:456 _state: Path.expanduser() raises RuntimeError for an unknown user",
        "state-path-unknown-user",
    ),
    crasher(
        'state:\n  path: "state\\0.db"\n',
        "config.py:451-463 _state accepts a path with NUL (is_dir() swallows the "
        "ValueError); the exporter then dies at start in persistence.py:63, where "
        "sqlite3.connect() raises ValueError and only sqlite3.Error is caught",
        "state-path-nul",
    ),
]


@pytest.mark.parametrize("text", CONFIG_CRASHERS)
def test_config_crashers(text, config_dir):
    """Inputs the fuzzer found: each must be a ConfigError, like every other bad config."""
    with pytest.raises(ConfigError):
        parse_config(text, env={"COPYAI_API_KEY": API_KEY_CANARY}, base_dir=config_dir)


def test_a_workflows_list_of_nulls_is_refused(config_dir):
    with pytest.raises(ConfigError, match="workflows"):
        parse_config(
            "workflows:\n  -\n",
            env={"COPYAI_API_KEY": API_KEY_CANARY},
            base_dir=config_dir,
        )


def test_build_config_with_an_integer_over_the_digit_limit_is_a_config_error(config_dir):
    with pytest.raises(ConfigError):
        build_config(
            {"api": {"max_concurrency": 10**5000}, "workflows": [{"id": "WCFG-1"}]},
            env={"COPYAI_API_KEY": API_KEY_CANARY},
            base_dir=config_dir,
        )


def _env(**extra: str) -> dict[str, str]:
    """This process' environment without any COPYAI_* variable, plus `extra`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("COPYAI_")}
    return {**base, **extra}


def test_check_config_of_a_crashing_yaml_tag_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("collector:\n  sparse_status: !!bool maybe\n" + WORKFLOWS_YAML)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(path), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=_env(COPYAI_API_KEY=API_KEY_CANARY),
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2


def test_sighup_with_a_config_that_crashes_the_yaml_loader_keeps_serving(tmp_path):
    path = tmp_path / "config.yaml"
    good = "api:\n  base_url: http://127.0.0.1:1/api\n" + WORKFLOWS_YAML
    path.write_text(good)
    process = Process(
        ["--config.file", str(path), "--web.listen-address", "127.0.0.1:0"],
        env=_env(COPYAI_API_KEY=API_KEY_CANARY),
    )
    try:
        url = process.wait_for_line(LISTENING).group(1)
        path.write_text(good + "collector:\n  sparse_status: !!bool maybe\n")
        process.proc.send_signal(signal.SIGHUP)

        def reload_failure_visible() -> bool:
            assert process.proc.poll() is None, f"exited {process.proc.returncode}"
            body = requests.get(f"{url}/metrics", timeout=5).text
            return "copyai_config_last_reload_successful 0.0" in body

        wait_for(reload_failure_visible, timeout=10)
    finally:
        process.stop()


# ===================================================================================
# The API payload parsers
# ===================================================================================

JSON_KEYS = st.one_of(
    st.sampled_from(
        [
            *("id", "workflowRunId", "workflowId", "status", "data", "total", "createdAt"),
            *("credits", "metadata", "type", "errorCode", "url", "eventType", "result"),
        ]
    ),
    st.text(max_size=8),
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities too: Python's json reads them
    st.text(max_size=24),
    st.sampled_from(["success", "error", "COMPLETE", "FAILED", "WRUN-1", "9001", " 7 "]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(JSON_KEYS, children, max_size=5)
    ),
    max_leaves=24,
)

RUN_ID = "WRUN-dc46baf3-cb19-4424-be04-95ba630409bf"
# the documentation's own bodies (tests/fixtures/api), which the mutations start from
RUN_EXAMPLES = [
    api_examples.body("get_run_complete.json"),
    api_examples.body("get_run_without_status.json"),
]
LIST_EXAMPLE = api_examples.body("list_runs.json")
LISTED_RUN = api_examples.run_id_for("list_runs.json")
WEBHOOK_LIST_EXAMPLE = {
    "total": 2,
    "data": [
        {"id": "WHK-1", "url": "https://h/webhook/t", "eventType": "workflowRun.completed"},
        {
            "id": "WHK-2",
            "url": "https://h/webhook/t",
            "eventType": "workflowRun.failed",
            "workflowId": "WCFG-1",
        },
    ],
}
ERROR_EXAMPLE = {"status": "error", "errorCode": "NOT_FOUND"}
WEBHOOK_EXAMPLES = [
    {
        "type": "workflowRun.completed",
        "workflowRunId": "WRUN-1",
        "workflowId": "WCFG-1",
        "result": {"Output 1": "..."},
        "metadata": {},
        "credits": 2,
    },
    {
        "type": "workflowRun.completed",
        "workflowRunId": "WRUN-2",
        "workflowId": "WCFG-1",
        "result": {"output": "<result of workflow>"},
    },
    {**RUN_EXAMPLES[1]["data"], "status": "COMPLETE", "type": "workflowRun.failed"},
    {"type": "workflowRun.started", "workflowRunId": "WRUN-3", "status": "PROCESSING"},
    {"type": "workflowCreditLimit.reached", "workflowId": "WCFG-1"},
]


PAYLOADS = st.one_of(
    JSON_VALUES,
    mutations(
        [*RUN_EXAMPLES, LIST_EXAMPLE, WEBHOOK_LIST_EXAMPLE, ERROR_EXAMPLE], JSON_VALUES, JSON_KEYS
    ),
    # what the client hands the parsers is json.loads of the body: round-trip it
    mutations([*RUN_EXAMPLES, LIST_EXAMPLE], JSON_VALUES, JSON_KEYS).map(
        lambda doc: json.loads(json.dumps(doc))
    ),
)


def _parsed(parse: Callable[[Any], Any], value: Any) -> Any:
    """parse(value), or None if it raised PayloadError; anything else fails the test."""
    try:
        return parse(value)
    except PayloadError:
        return None


def _check_run(run: Run) -> None:
    assert isinstance(run, Run)
    assert ID_PATTERN.fullmatch(run.run_id)
    assert isinstance(run.status, RunStatus)
    assert run.credits is None or (math.isfinite(run.credits) and run.credits >= 0)
    assert run.created_at is None or math.isfinite(run.created_at)
    assert run.raw_status is None or isinstance(run.raw_status, str)


def test_payload_parsers_raise_only_payload_error():
    @settings(FUZZ, max_examples=350)
    @given(value=PAYLOADS)
    def check(value: Any) -> None:
        data = _parsed(unwrap_success, value)
        for candidate in (value, data):
            for expected in (None, RUN_ID, LISTED_RUN):
                run = _parsed(lambda v, e=expected: parse_run(v, expected_run_id=e), candidate)
                if run is not None:
                    _check_run(run)
                    assert expected is None or run.run_id == expected
            page = _parsed(parse_run_page, candidate)
            if page is not None:
                assert isinstance(page, RunPage)
                assert isinstance(page.total, int) and page.total >= 0
                assert not isinstance(page.total, bool)
                items = candidate["data"]
                assert len(page.runs) + page.invalid_items == len(items)
                for run in page.runs:
                    _check_run(run)
            hooks = _parsed(parse_webhook_page, candidate)
            if hooks is not None:
                total, webhooks = hooks
                assert isinstance(total, int) and not isinstance(total, bool)
                assert all(isinstance(h, Webhook) for h in webhooks)
            code = error_code(candidate)
            assert code is None or ID_PATTERN.fullmatch(code)
        for field in ("credits", "createdAt", "total", "status"):
            inner = value.get(field) if isinstance(value, dict) else value
            credits = _parsed(parse_credits, inner)
            assert credits is None or (math.isfinite(credits) and credits >= 0)
            created = _parsed(parse_timestamp, inner)
            assert created is None or math.isfinite(created)

    check()


OFFSETS = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+14:00", "-23:59", "+24:00", "", "Zz"])


def test_timestamps_and_credits_parse_right_or_raise_payload_error():
    @settings(FUZZ, max_examples=400)
    @given(
        when=st.datetimes(),
        offset=OFFSETS,
        text=st.text(max_size=40),
        number=st.one_of(st.integers(), st.floats()),
        pad=st.sampled_from(["", " ", "\t", "\n"]),
    )
    def check(when: datetime, offset: str, text: str, number: float, pad: str) -> None:
        # every ISO-8601 text of a datetime that says UTC means exactly that instant
        expected_utc = when.replace(tzinfo=UTC).timestamp()
        for iso in (when.isoformat(), when.isoformat(timespec="seconds")):
            stamp = iso + offset
            got = _parsed(parse_timestamp, pad + stamp + pad)
            if offset in ("Z", "z", "+00:00", "-00:00", ""):
                exact = when if "." in iso else when.replace(microsecond=0)
                assert got == exact.replace(tzinfo=UTC).timestamp()
            else:
                assert got is None or math.isfinite(got)
        assert math.isfinite(expected_utc)
        got_text = _parsed(parse_timestamp, text)
        assert got_text is None or math.isfinite(got_text)
        # credits: a finite non-negative number, as a JSON number or as text, is itself;
        # anything else is refused
        try:
            usable = math.isfinite(float(number)) and number >= 0
        except OverflowError:
            usable = False
        for value in (number, str(number), pad + str(number) + pad):
            try:
                credits: float | str | None = parse_credits(value)
            except PayloadError:
                credits = "refused"
            assert credits == (float(number) if usable else "refused"), value
        credits_text = _parsed(parse_credits, text)
        assert credits_text is None or (math.isfinite(credits_text) and credits_text >= 0)

    check()


# ===================================================================================
# The webhook parser and receiver
# ===================================================================================

WEBHOOK_BODIES = st.one_of(
    st.binary(max_size=64),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    mutations(WEBHOOK_EXAMPLES, JSON_VALUES, JSON_KEYS).map(lambda v: json.dumps(v).encode()),
    # other encodings json.loads guesses from the first bytes
    mutations(WEBHOOK_EXAMPLES, JSON_VALUES, JSON_KEYS).map(
        lambda v: json.dumps(v).encode("utf-16")
    ),
    st.sampled_from([b"", b"{", b"\xff\xfe", b"[" * 100_000, b"\xef\xbb\xbf{}", b"NaN"]),
)


def _check_event(event: WebhookEvent) -> None:
    assert event.event_type in WEBHOOK_EVENT_TYPES
    if event.event_type == "workflowCreditLimit.reached":
        assert event.run_id is None
    else:
        assert event.run_id is not None and ID_PATTERN.fullmatch(event.run_id)
    assert event.workflow_id is None or ID_PATTERN.fullmatch(event.workflow_id)
    assert event.credits is None or (math.isfinite(event.credits) and event.credits >= 0)
    assert event.created_at is None or math.isfinite(event.created_at)
    if event.event_type == "workflowRun.completed":
        assert event.status is RunStatus.COMPLETE
    if event.event_type == "workflowRun.failed":
        assert event.status is RunStatus.FAILED


def test_parse_event_raises_only_webhook_error_with_a_known_reason():
    @settings(FUZZ, max_examples=300)
    @given(body=WEBHOOK_BODIES)
    def check(body: bytes) -> None:
        try:
            event = parse_event(body)
        except WebhookError as exc:
            assert exc.reason in REJECT_REASONS
            assert str(exc)
            return
        _check_event(event)

    check()


class _Sink:
    """The receiver's WebhookSink, recording what it is told."""

    def __init__(self) -> None:
        self.rejected: list[str] = []
        self.accepted: list[str] = []
        self.applied: list[WebhookEvent] = []

    def known_workflow(self, workflow_id: str) -> bool:
        return workflow_id in ("WCFG-1", "WCFG-84e56597-ebaf-4b49-a98c-75cacd4aecaa")

    def workflow_of_run(self, run_id: str) -> str | None:
        return "WCFG-1" if run_id == "WRUN-3" else None

    def adopt_workflow(self, workflow_id: str) -> bool:
        return False

    def apply_webhook(self, event: WebhookEvent) -> None:
        self.applied.append(event)

    def webhook_rejected(self, reason: str) -> None:
        self.rejected.append(reason)

    def webhook_accepted(self, event_type: str) -> None:
        self.accepted.append(event_type)


LATIN1 = st.text(alphabet=st.characters(max_codepoint=255), max_size=40)


def test_webhook_receiver_answers_every_request_with_a_known_outcome():
    config = WebhookConfig(listen_address="127.0.0.1:0", token=Secret(TOKEN_CANARY))

    @settings(FUZZ, max_examples=250)
    @given(
        body=WEBHOOK_BODIES,
        method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "HEAD", "BREW"]),
        path=st.one_of(
            st.sampled_from(
                [f"/webhook/{TOKEN_CANARY}", "/webhook", "/webhook/", "/webhook/wrong", "/"]
            ),
            LATIN1,
        ),
        authorization=st.one_of(st.none(), st.just(f"Bearer {TOKEN_CANARY}"), LATIN1),
        length=st.one_of(st.none(), st.just("x"), st.just("99999999999"), LATIN1),
    )
    def check(body, method, path, authorization, length) -> None:
        sink = _Sink()
        app = WebhookApp(lambda: config, sink)
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "CONTENT_LENGTH": str(len(body)) if length is None else length,
            "wsgi.input": io.BytesIO(body),
        }
        if authorization is not None:
            environ["HTTP_AUTHORIZATION"] = authorization
        answered: list[str] = []
        chunks = app(environ, lambda status, headers: answered.append(status))
        payload = json.loads(b"".join(chunks))
        assert len(answered) == 1
        code = int(answered[0].split()[0])
        if path in ("/-/healthy", "/-/ready") and method in ("GET", "HEAD"):
            assert code == 200
            return
        assert len(sink.rejected) + len(sink.accepted) == 1
        if sink.accepted:
            assert code == 202 and payload["status"] == "accepted"
            assert len(sink.applied) == 1
            _check_event(sink.applied[0])
        else:
            assert code in (400, 401, 404, 405, 411, 413, 422)
            assert sink.rejected[0] in REJECT_REASONS
            assert payload == {"status": "rejected", "reason": sink.rejected[0]}
            assert not sink.applied
        assert TOKEN_CANARY not in json.dumps(payload)

    check()


# ===================================================================================
# Whole scrapes against an API answering anything
# ===================================================================================


class ScriptedApi:
    """A stand-in for the Copy.ai API on loopback: every GET gets the current answer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answer: tuple[int, bytes, dict[str, str]] = (200, b"{}", {})
        self.paths: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real API

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with api.lock:
                    status, body, headers = api.answer
                    api.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def set(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.answer = (status, body, headers or {})
            self.paths = []

    def requests_made(self) -> list[str]:
        with self.lock:
            return list(self.paths)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def scripted_api() -> Iterator[ScriptedApi]:
    api = ScriptedApi()
    yield api
    api.stop()


POLLED_RUN = "WRUN-fz-1"
# No 1xx, 204 or 304: they have no body by definition, and sending one anyway would
# desynchronise the keep-alive connection (a harness artifact, not an API behaviour).
STATUSES = [200] * 8 + [201, 203, 300, 301, 302, 307, 400, 401, 403, 404, 409, 410, 418]
STATUSES += [422, 429, 451, 500, 501, 502, 503, 504, 599]
RUN_IDS = st.sampled_from([POLLED_RUN, "WRUN-fz-2", "WRUN-fz-3", "WRUN-fz-4", "bad id", ""])
STAMPS = st.one_of(
    st.sampled_from(
        [
            *("2023-04-06T22:34:46.704Z", "2023-09-27T18:24:47Z", "0001-01-01T00:00:00+14:00"),
            *("9999-12-31T23:59:59-14:00", "soon", "", "2023-02-30T00:00:00Z"),
        ]
    ),
    st.datetimes(min_value=datetime(2000, 1, 1)).map(lambda d: d.isoformat() + "Z"),
    st.floats(min_value=-5e4, max_value=5e4).map(
        lambda ago: datetime.fromtimestamp(time.time() - ago, UTC).isoformat()
    ),
)
# numbers in the scrape bodies include huge ones: a jump in a list `total` once made
# one refresh fetch every page (the discovery tests below keep that case)
SMALL_TEXT = st.text(max_size=12)
SMALL_JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-3, 300), st.integers(), st.floats(), SMALL_TEXT
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(JSON_KEYS, children, max_size=4)
    ),
    max_leaves=12,
)
RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(RUN_IDS, SMALL_JSON),
        "workflowRunId": RUN_IDS,
        "status": st.one_of(
            st.sampled_from([s.value for s in RunStatus] + ["complete ", "DONE"]), SMALL_JSON
        ),
        "createdAt": st.one_of(STAMPS, SMALL_JSON),
        "credits": st.one_of(
            st.integers(0, 10**6),
            st.sampled_from([10**400, 1e308, "9001", " 22 ", "-1", "1e999", "NaN", "", True]),
            SMALL_JSON,
        ),
        "metadata": SMALL_JSON,
        "output": SMALL_JSON,
    },
)
TOTALS = st.one_of(
    st.integers(-2, 300), st.sampled_from(["3", " 42 ", "-1", "x", "", 2.0, None, True])
)
RUN_BODIES = st.builds(lambda r: {"status": "success", "data": r}, RECORDS)
LIST_BODIES = st.builds(
    lambda total, items: {"status": "success", "data": {"total": total, "data": items}},
    TOTALS,
    st.lists(st.one_of(RECORDS, SMALL_JSON), max_size=4),
)
KEEP_TOTAL_SMALL = st.one_of(SMALL_JSON, RECORDS)


def _json_body(document: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(document).encode(), {"Content-Type": "application/json"}


ANSWER_BODIES = st.one_of(
    RUN_BODIES.map(_json_body),
    LIST_BODIES.map(_json_body),
    mutations(
        [
            {"status": "success", "data": {**RUN_EXAMPLES[0]["data"], "id": POLLED_RUN}},
            {"status": "success", "data": {"total": "2", "data": LIST_EXAMPLE["data"]["data"]}},
            ERROR_EXAMPLE,
        ],
        KEEP_TOTAL_SMALL,
        JSON_KEYS,
    ).map(_json_body),
    SMALL_JSON.map(_json_body),
    st.sampled_from(
        [
            (b"<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}),
            (b'{"status": "success", "data": ', {"Content-Type": "application/json"}),
            (b"\xff\xfe\x00garbage", {}),
            (b"[" * 50_000, {}),
            (b"[" + b"1," * 40_000 + b"1]", {}),  # over the 64 KiB cap set below
            (b"not gzip at all", {"Content-Encoding": "gzip"}),
            (b"{}", {"Content-Encoding": "br"}),
            (gzip.compress(b"[" + b"0," * 200_000 + b"0]"), {"Content-Encoding": "gzip"}),
        ]
    ),
    RUN_BODIES.map(
        lambda doc: (gzip.compress(json.dumps(doc).encode()), {"Content-Encoding": "gzip"})
    ),
)


def test_no_api_answer_breaks_a_scrape(scripted_api, start_exporter):
    config = make_config(
        {
            "api": {
                "base_url": scripted_api.base_url,
                "max_retries": 0,  # one request per answer: no backoff sleeps
                "max_requests_per_second": 0,
                "timeout_seconds": 5,
                "max_response_bytes": 65536,
            },
            "collector": {"refresh_interval_seconds": 0, "up_check_interval_seconds": 0},
            "workflows": [
                {"id": "WCFG-fz-poll", "runs": [POLLED_RUN]},
                {
                    "id": "WCFG-fz-disc",
                    "discover": True,
                    "discovery": {"max_pages_per_refresh": 3, "run_series": True},
                },
            ],
        }
    )
    running = start_exporter(config)

    @settings(FUZZ, max_examples=60)
    @given(status=st.sampled_from(STATUSES), answer=ANSWER_BODIES)
    def scrape_after(status: int, answer: tuple[bytes, dict[str, str]]) -> None:
        body, headers = answer
        if status == 429:
            headers = {**headers, "Retry-After": "0"}  # a longer one would mute the API
        scripted_api.set(status, body, headers)
        response = requests.get(f"{running.url}/metrics", timeout=30)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples
        }
        assert scripted_api.requests_made(), "the scrape asked the API nothing"
        up = samples[("copyai_up", ())]
        fetched = samples[
            (
                "copyai_workflow_run_fetch_success",
                (("run_id", POLLED_RUN), ("workflow_id", "WCFG-fz-poll")),
            )
        ]
        assert fetched in (0.0, 1.0)
        if status in (401, 403) or status >= 500:
            assert up == 0, "a refused key or only 5xx answers must set copyai_up 0"
        else:
            assert up == 1, "any other answer shows the API is there"
        assert samples[("copyai_config_last_reload_successful", ())] == 1

    scrape_after()


# --- discovery with a `total` the API should never send ---------------------------


def _list_answer(total: int | str) -> bytes:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    items = [{"id": f"WRUN-d{i}", "status": "COMPLETE", "createdAt": now} for i in range(3)]
    return json.dumps({"status": "success", "data": {"total": total, "data": items}}).encode()


@pytest.fixture
def discovering(scripted_api) -> Iterator[Exporter]:
    config = make_config(
        {
            "api": {
                "base_url": scripted_api.base_url,
                "max_retries": 0,
                "max_requests_per_second": 0,
            },
            "collector": {"refresh_interval_seconds": 0},
            "workflows": [
                {"id": "WCFG-d", "discover": True, "discovery": {"max_pages_per_refresh": 3}}
            ],
        }
    )
    exporter = Exporter(config, process_metrics=False)
    yield exporter
    exporter.close()


def test_discovery_keeps_to_max_pages_per_refresh_when_total_jumps(scripted_api, discovering):
    scripted_api.set(200, _list_answer(3))
    assert discovering.refresh(time.monotonic() + 10).completed
    scripted_api.set(200, _list_answer(5000))
    assert discovering.refresh(time.monotonic() + 10).completed
    assert len(scripted_api.requests_made()) <= 3


def test_a_list_total_too_large_for_a_float_is_a_bad_response(scripted_api, discovering, caplog):
    caplog.set_level(logging.INFO, logger="exporter")
    scripted_api.set(200, _list_answer(10**400))
    discovering.refresh(time.monotonic() + 10)
    crashes = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not crashes
