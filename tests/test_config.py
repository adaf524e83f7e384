"""Config validation, driven through the real CLI (`--check-config`) where it matters."""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import (
    API_KEY_ENV,
    DEFAULT_BASE_URL,
    ApiConfig,
    CollectorConfig,
    ConfigError,
    Secret,
    WorkflowConfig,
    load_config_file,
    parse_config,
)

CONFIGS = Path(__file__).parent / "configs"
REPO_ROOT = Path(__file__).parent.parent
CANARY_KEY = "sk-CANARY-7f3a9c2e51d04b8e"
MINIMAL = "workflows:\n  - id: WCFG-1\n"

# fixture file -> fragments that must all appear in stderr (path first, then the message)
INVALID_CASES: dict[str, tuple[str, ...]] = {
    "unknown_key.yaml": ("api.base_ur:", "unknown key", "known keys here: api_key_file"),
    "wrong_type_number.yaml": ("api.timeout_seconds:", "must be a number, got a string"),
    "bool_for_int.yaml": ("api.max_concurrency:", "must be an integer, got a boolean"),
    "out_of_range.yaml": ("api.max_concurrency:", "must be between 1 and 256, got 1000"),
    "negative_refresh.yaml": (
        "collector.refresh_interval_seconds:",
        "must be between 0 and 86400, got -5",
    ),
    "duplicate_workflow_id.yaml": (
        "workflows[1].id:",
        "duplicate workflow id WCFG-1 (also workflows[0])",
    ),
    "duplicate_run_id.yaml": (
        "workflows[0].runs[1]:",
        "duplicate run id WRUN-1 (also workflows[0].runs[0])",
    ),
    "duplicate_run_across_workflows.yaml": (
        "workflows[1].runs[0]:",
        "duplicate run id WRUN-1 (also workflows[0].runs[0])",
    ),
    "run_id_not_token.yaml": (
        "workflows[0].runs[1]: '../etc' is not a plain id",
        "workflows[0].runs[2]: 'a/b' is not a plain id",
    ),
    "workflow_id_not_token.yaml": ("workflows[1].id:", "'a/b' is not a plain id"),
    "missing_workflow_id.yaml": ("workflows[0].id:", "is required"),
    "no_workflows.yaml": ("workflows:", "at least one workflow is required"),
    "workflows_not_list.yaml": ("workflows:", "must be a list, got a mapping"),
    "runs_not_list.yaml": ("workflows[0].runs:", "must be a list of run ids, got a string"),
    "duplicate_yaml_key.yaml": (
        "YAML syntax error at line 3",
        "duplicate key 'timeout_seconds' (first at line 2)",
    ),
    "yaml_syntax_error.yaml": ("YAML syntax error at line", "expected ',' or ']'"),
    "top_level_not_mapping.yaml": ("(top level):", "must be a mapping, got a list"),
    "bad_base_url.yaml": ("api.base_url:", "must be an http:// or https:// URL with a host"),
    "base_url_with_query.yaml": (
        "api.base_url:",
        "must not carry a query, fragment or credentials",
    ),
    "key_file_missing.yaml": (
        "api.api_key_file:",
        "file does not exist",
    ),
    "empty_name.yaml": ("workflows[0].name:", "must not be empty"),
    "several_problems.yaml": (
        "(4 problems)",
        "api.colour: unknown key",
        "api.max_retries: must be between 0 and 10, got 11",
        "collector.sparse_status: must be true or false, got a string",
        "workflows[1].runs[1]: '../etc' is not a plain id",
    ),
    # Both crash with a traceback today (see the report); a fix should make them pass.
    "huge_integer.yaml": ("api.timeout_seconds:", "must be between"),
    "base_url_bad_ipv6.yaml": ("api.base_url:",),
}


@pytest.fixture(autouse=True)
def _api_key_and_logging(monkeypatch):
    """Every test starts with the canary key set; main() rewires root logging, undo it."""
    monkeypatch.setenv(API_KEY_ENV, CANARY_KEY)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def check(path: Path | str, capsys) -> tuple[int, str, str]:
    status = main(["--config.file", str(path), "--check-config"])
    out, err = capsys.readouterr()
    return status, out, err


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_invalid_fixture_has_a_case():
    on_disk = {p.name for p in CONFIGS.glob("*.yaml")} - {"valid.yaml", "valid_minimal.yaml"}
    assert on_disk == set(INVALID_CASES)


@pytest.mark.parametrize(("name", "fragments"), INVALID_CASES.items(), ids=list(INVALID_CASES))
def test_invalid_config_exits_2_naming_path_and_problem(name, fragments, capsys):
    path = CONFIGS / name
    status, out, err = check(path, capsys)
    assert status == 2
    assert out == ""
    assert f"invalid configuration in {path}" in err
    for fragment in fragments:
        assert fragment in err
    assert "Traceback" not in err
    assert CANARY_KEY not in err


def test_several_problems_are_listed_at_once_one_per_line(capsys):
    status, _, err = check(CONFIGS / "several_problems.yaml", capsys)
    assert status == 2
    problem_lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(problem_lines) == 4
    assert [line.split(":", 1)[0] for line in problem_lines] == [
        "  - api.colour",
        "  - api.max_retries",
        "  - collector.sparse_status",
        "  - workflows[1].runs[1]",
    ]


@pytest.mark.parametrize(
    ("name", "workflows", "runs"), [("valid.yaml", 2, 3), ("valid_minimal.yaml", 1, 0)]
)
def test_valid_config_exits_0_and_says_valid(name, workflows, runs, capsys):
    path = CONFIGS / name
    status, out, err = check(path, capsys)
    assert status == 0
    assert out.strip() == f"{path}: valid ({workflows} workflow(s), {runs} run(s))"
    assert err == ""
    assert CANARY_KEY not in out


def test_valid_fixture_is_read_completely():
    config = load_config_file(CONFIGS / "valid.yaml", env={API_KEY_ENV: "k"})
    assert config.api == ApiConfig(
        base_url="https://api.copy.ai/api",  # trailing slash removed
        timeout_seconds=15.0,
        max_concurrency=4,
        max_retries=3,
        max_requests_per_second=2.5,
        max_response_bytes=1048576,
    )
    assert config.collector == CollectorConfig(
        refresh_interval_seconds=60.0, sparse_status=True, up_check_interval_seconds=0.0
    )
    assert [w.display_name for w in config.workflows] == [
        "Blog posts",
        "PKGW-0a1b2c3d-0000-4000-8000-000000000002",
    ]
    assert config.run_keys() == [
        ("WCFG-84e56597-ebaf-4b49-a98c-75cacd4aecaa", "WRUN-dc46baf3-cb19-4424-be04-95ba630409bf"),
        ("WCFG-84e56597-ebaf-4b49-a98c-75cacd4aecaa", "WRUN-1b2c3d4e-0000-4000-8000-000000000001"),
        ("PKGW-0a1b2c3d-0000-4000-8000-000000000002", "WRUN-1b2c3d4e-0000-4000-8000-000000000003"),
    ]


def test_defaults_are_applied():
    config = parse_config(MINIMAL, env={API_KEY_ENV: "k"})
    assert config.api.base_url == DEFAULT_BASE_URL == "https://api.copy.ai/api"
    assert config.api.api_key_file is None
    assert config.api.timeout_seconds == 10.0
    assert config.api.max_concurrency == 8
    assert config.api.max_retries == 2
    assert config.api.max_requests_per_second == 10.0
    assert config.api.max_response_bytes == 4 * 1024 * 1024
    assert config.api.api_key.reveal() == "k"
    assert config.collector == CollectorConfig(
        refresh_interval_seconds=30.0, sparse_status=False, up_check_interval_seconds=60.0
    )
    assert config.workflows == (WorkflowConfig(id="WCFG-1", name=None, runs=()),)
    assert config.workflows[0].display_name == "WCFG-1"
    assert config.run_keys() == []


def test_missing_api_key_exits_2_naming_the_variable(monkeypatch, capsys):
    monkeypatch.delenv(API_KEY_ENV)
    status, out, err = check(CONFIGS / "valid_minimal.yaml", capsys)
    assert status == 2
    assert out == ""
    assert "api: no API key: set the environment variable COPYAI_API_KEY" in err
    assert "Traceback" not in err


def test_blank_api_key_variable_counts_as_missing(monkeypatch, capsys):
    monkeypatch.setenv(API_KEY_ENV, "   ")
    status, _, err = check(CONFIGS / "valid_minimal.yaml", capsys)
    assert status == 2
    assert "no API key" in err
    assert "COPYAI_API_KEY" in err


def test_api_key_file_is_read_and_stripped(tmp_path):
    key_file = write(tmp_path, f"\n  {CANARY_KEY}\t\n\n", name="key")
    config = parse_config(f"api:\n  api_key_file: {key_file}\n{MINIMAL}", env={})
    assert config.api.api_key.reveal() == CANARY_KEY
    assert config.api.api_key_file == str(key_file)


def test_api_key_file_wins_over_the_environment(tmp_path):
    key_file = write(tmp_path, "from-file-key\n", name="key")
    config = parse_config(
        f"api:\n  api_key_file: {key_file}\n{MINIMAL}", env={API_KEY_ENV: "from-env-key"}
    )
    assert config.api.api_key.reveal() == "from-file-key"


def test_api_key_file_via_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(API_KEY_ENV)
    key_file = write(tmp_path, CANARY_KEY + "\n", name="key")
    path = write(tmp_path, f"api:\n  api_key_file: {key_file}\n{MINIMAL}")
    status, out, err = check(path, capsys)
    assert status == 0
    assert "valid (1 workflow(s), 0 run(s))" in out
    assert CANARY_KEY not in out + err


def test_empty_key_file_is_refused(tmp_path, capsys):
    key_file = write(tmp_path, " \n\n", name="key")
    path = write(tmp_path, f"api:\n  api_key_file: {key_file}\n{MINIMAL}")
    status, _, err = check(path, capsys)
    assert status == 2
    assert "api.api_key_file: file is empty" in err


def test_key_file_that_is_a_directory_is_refused(tmp_path, capsys):
    path = write(tmp_path, f"api:\n  api_key_file: {tmp_path}\n{MINIMAL}")
    status, _, err = check(path, capsys)
    assert status == 2
    assert "api.api_key_file: is not a regular file" in err


def test_oversized_key_file_is_refused(tmp_path, capsys):
    key_file = write(tmp_path, "k" * 5000, name="key")
    path = write(tmp_path, f"api:\n  api_key_file: {key_file}\n{MINIMAL}")
    status, out, err = check(path, capsys)
    assert status == 2
    assert "api.api_key_file:" in err
    assert "too large to hold the API key" in err
    assert "kkkkkkkk" not in out + err


def test_key_with_embedded_space_in_file_is_refused(tmp_path, capsys):
    key_file = write(tmp_path, "sk-FIRSTHALF SECONDHALF-x\n", name="key")
    path = write(tmp_path, f"api:\n  api_key_file: {key_file}\n{MINIMAL}")
    status, out, err = check(path, capsys)
    assert status == 2
    assert "api.api_key_file: the API key contains whitespace or non-printable" in err
    assert "FIRSTHALF" not in out + err
    assert "SECONDHALF" not in out + err


def test_key_with_embedded_space_in_environment_is_refused(monkeypatch, capsys):
    monkeypatch.setenv(API_KEY_ENV, "sk-FIRSTHALF SECONDHALF-x")
    status, out, err = check(CONFIGS / "valid_minimal.yaml", capsys)
    assert status == 2
    assert "COPYAI_API_KEY: the API key contains whitespace or non-printable" in err
    assert "FIRSTHALF" not in out + err
    assert "SECONDHALF" not in out + err


@pytest.mark.parametrize("key", ["sk-abc\x00def", "sk-abc\x1bdef", "sk-abcédef"])
def test_key_with_control_or_non_ascii_characters_is_refused(key):
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL, env={API_KEY_ENV: key})
    assert caught.value.problems == [
        "COPYAI_API_KEY: the API key contains whitespace or non-printable characters"
    ]


@pytest.mark.parametrize("name", sorted(INVALID_CASES))
def test_key_never_appears_in_output_of_invalid_config(name, capsys):
    crash = ""
    try:
        main(["--config.file", str(CONFIGS / name), "--check-config"])
    except Exception as exc:  # a crash is reported by the test above; here only the key counts
        crash = "".join(traceback.format_exception(exc))
    out, err = capsys.readouterr()
    assert CANARY_KEY not in out + err + crash


def test_key_from_file_never_appears_in_output_of_invalid_config(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(API_KEY_ENV)
    key_file = write(tmp_path, CANARY_KEY, name="key")
    broken = (CONFIGS / "several_problems.yaml").read_text(encoding="utf-8")
    path = write(tmp_path, broken.replace("api:\n", f"api:\n  api_key_file: {key_file}\n", 1))
    status, out, err = check(path, capsys)
    assert status == 2
    assert "(4 problems)" in err
    assert CANARY_KEY not in out + err


def test_secret_never_shows_the_key():
    secret = Secret(CANARY_KEY)
    assert secret.reveal() == CANARY_KEY
    assert CANARY_KEY not in repr(secret)
    assert CANARY_KEY not in str(secret)
    assert CANARY_KEY not in f"{secret}"
    assert repr(secret) == "Secret('********')"
    assert secret == Secret(CANARY_KEY)
    assert secret != Secret("other")


def test_config_repr_does_not_show_the_key():
    config = parse_config(MINIMAL, env={API_KEY_ENV: CANARY_KEY})
    assert config.api.api_key.reveal() == CANARY_KEY
    assert CANARY_KEY not in repr(config)
    assert CANARY_KEY not in str(config.api)


@pytest.mark.parametrize("value", ["0.5", "0.25", "2.5"])
def test_fractional_max_requests_per_second_is_accepted(value):
    config = parse_config(
        f"api:\n  max_requests_per_second: {value}\n{MINIMAL}", env={API_KEY_ENV: "k"}
    )
    assert config.api.max_requests_per_second == float(value)


def test_zero_max_requests_per_second_means_unlimited_and_is_accepted():
    config = parse_config(f"api:\n  max_requests_per_second: 0\n{MINIMAL}", env={API_KEY_ENV: "k"})
    assert config.api.max_requests_per_second == 0.0


def test_refresh_interval_zero_is_accepted():
    config = parse_config(
        f"collector:\n  refresh_interval_seconds: 0\n{MINIMAL}", env={API_KEY_ENV: "k"}
    )
    assert config.collector.refresh_interval_seconds == 0.0


@pytest.mark.parametrize(
    ("section", "key", "kind"),
    [
        ("api", "timeout_seconds", "a number"),
        ("api", "max_requests_per_second", "a number"),
        ("api", "max_concurrency", "an integer"),
        ("api", "max_retries", "an integer"),
        ("api", "max_response_bytes", "an integer"),
        ("collector", "refresh_interval_seconds", "a number"),
        ("collector", "up_check_interval_seconds", "a number"),
    ],
)
@pytest.mark.parametrize("boolean", ["true", "false", "yes", "off"])
def test_booleans_are_rejected_where_numbers_are_expected(section, key, kind, boolean):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"{section}:\n  {key}: {boolean}\n{MINIMAL}", env={API_KEY_ENV: "k"})
    assert caught.value.problems == [f"{section}.{key}: must be {kind}, got a boolean"]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_rejected(value):
    with pytest.raises(ConfigError) as caught:
        parse_config(f"api:\n  timeout_seconds: {value}\n{MINIMAL}", env={API_KEY_ENV: "k"})
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith("api.timeout_seconds: must be between 0.1 and 300")


def test_float_is_rejected_where_an_integer_is_expected():
    with pytest.raises(ConfigError) as caught:
        parse_config(f"api:\n  max_retries: 2.5\n{MINIMAL}", env={API_KEY_ENV: "k"})
    assert caught.value.problems == ["api.max_retries: must be an integer, got a number"]


def test_whitespace_only_name_is_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config("workflows:\n  - id: WCFG-1\n    name: '   '\n", env={API_KEY_ENV: "k"})
    assert caught.value.problems == ["workflows[0].name: must not be empty"]


def test_null_run_id_is_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config("workflows:\n  - id: WCFG-1\n    runs: [null]\n", env={API_KEY_ENV: "k"})
    assert caught.value.problems == ["workflows[0].runs[0]: must be an id string, got null"]


def test_empty_file_needs_workflows(tmp_path, capsys):
    status, _, err = check(write(tmp_path, ""), capsys)
    assert status == 2
    assert "workflows: at least one workflow is required" in err


def test_base_url_with_bad_port_is_rejected():
    with pytest.raises(ConfigError) as caught:
        parse_config(f"api:\n  base_url: http://h:99999\n{MINIMAL}", env={API_KEY_ENV: "k"})
    assert caught.value.problems == ["api.base_url: has an invalid port"]


def test_integer_too_long_for_python_is_a_config_error(tmp_path, capsys):
    # PyYAML's int() raises ValueError (not YAMLError) past 4300 digits; see the report.
    path = write(tmp_path, f"api:\n  max_concurrency: 1{'0' * 5000}\n{MINIMAL}")
    status, _, err = check(path, capsys)
    assert status == 2
    assert "invalid configuration" in err


def test_nonexistent_config_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope" / "config.yaml"
    status, out, err = check(missing, capsys)
    assert status == 2
    assert out == ""
    assert f"invalid configuration in {missing} (1 problem):" in err
    assert "config file does not exist" in err
    assert "Traceback" not in err


def test_config_path_that_is_a_directory_exits_2(tmp_path, capsys):
    status, _, err = check(tmp_path, capsys)
    assert status == 2
    assert "cannot read config file" in err
    assert "Traceback" not in err


def test_non_utf8_config_file_exits_2(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"workflows:\n  - id: WCFG-\xff\n")
    status, _, err = check(path, capsys)
    assert status == 2
    assert "cannot read config file: unreadable" in err


def test_console_entry_point_in_a_subprocess_exits_2_without_traceback(tmp_path):
    bad = CONFIGS / "several_problems.yaml"
    env = {"PATH": "/usr/bin:/bin", API_KEY_ENV: CANARY_KEY, "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(bad), "--check-config"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"invalid configuration in {bad} (4 problems):" in result.stderr
    assert "workflows[1].runs[1]" in result.stderr
    assert CANARY_KEY not in result.stdout + result.stderr


def test_relative_key_file_is_taken_from_the_config_files_directory(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("relative-key\n")
    path = write(tmp_path, f"api:\n  api_key_file: secrets/key\n{MINIMAL}")
    monkeypatch.chdir("/")
    config = load_config_file(path, env={})
    assert config.api.api_key.reveal() == "relative-key"


def test_key_pasted_into_the_key_file_field_is_not_echoed(tmp_path, capsys):
    path = write(tmp_path, f"api:\n  api_key_file: {CANARY_KEY}\n{MINIMAL}")
    status, out, err = check(path, capsys)
    assert status == 2
    assert "api.api_key_file: file does not exist" in err
    assert CANARY_KEY not in err + out


def test_example_config_in_the_repository_is_valid(capsys):
    status, out, _ = check(REPO_ROOT / "config.example.yaml", capsys)
    assert status == 0
    assert "valid (1 workflow(s), 1 run(s))" in out


def test_duration_buckets_are_read_and_checked():
    config = parse_config(
        f"collector:\n  duration_buckets_seconds: [1, 5, 25]\n{MINIMAL}", env={API_KEY_ENV: "k"}
    )
    assert config.collector.duration_buckets_seconds == (1.0, 5.0, 25.0)
    for bad, message in (
        ("[1, 2, x]", "duration_buckets_seconds[2]: must be a number, got a string"),
        ("[5, 1]", "duration_buckets_seconds: must be strictly increasing"),
        ("[]", "duration_buckets_seconds: must be a non-empty list of numbers"),
        ("[0]", "duration_buckets_seconds[0]: must be between 0.001 and 31536000 seconds"),
    ):
        with pytest.raises(ConfigError) as error:
            parse_config(
                f"collector:\n  duration_buckets_seconds: {bad}\n{MINIMAL}",
                env={API_KEY_ENV: "k"},
            )
        assert f"collector.{message}" in str(error.value)


def test_discovery_and_webhook_settings_are_validated(tmp_path):
    text = (
        "workflows:\n"
        "  - id: WCFG-1\n"
        "    discovery: {page_size: 500}\n"
        "webhooks:\n"
        "  listen_address: nowhere\n"
        "  register: {event_types: [workflowRun.paused]}\n"
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text, env={API_KEY_ENV: "k", "COPYAI_WEBHOOK_TOKEN": "short"})
    problems = "\n".join(error.value.problems)
    for expected in (
        "workflows[0].discovery.page_size: must be between 1 and 100, got 500",
        "workflows[0].discovery: is set but discover is not true",
        "webhooks.listen_address: must be host:port",
        "webhooks: the webhook token must be at least 16 characters",
        "webhooks.register.public_url: is required",
        "webhooks.register.event_types: must be a list of",
    ):
        assert expected in problems
    assert "short" not in problems


def test_webhooks_need_a_token(tmp_path):
    with pytest.raises(ConfigError) as error:
        parse_config(f"webhooks:\n  listen_address: 127.0.0.1:0\n{MINIMAL}", env={API_KEY_ENV: "k"})
    assert "webhooks: no webhook token: set the environment variable COPYAI_WEBHOOK_TOKEN" in str(
        error.value
    )
