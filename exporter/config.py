"""YAML config file → validated, immutable `Config`.

Every problem is collected with its path (`workflows[1].runs[0]: ...`) and reported
at once in one `ConfigError`; the CLI turns that into exit status 2.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.model import ID_PATTERN

DEFAULT_BASE_URL = "https://api.copy.ai/api"
API_KEY_ENV = "COPYAI_API_KEY"
MAX_KEY_FILE_BYTES = 4096


class ConfigError(Exception):
    """One or more problems with the configuration, each with its path."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.source}" if self.source else ""
        count = len(self.problems)
        head = f"invalid configuration{where} ({count} problem{'s' if count != 1 else ''}):"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


class Secret:
    """Holds the API key; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key_file: str | None = None
    timeout_seconds: float = 10.0
    max_concurrency: int = 8
    max_retries: int = 2
    max_requests_per_second: float = 10.0  # 0 = no client-side limit
    max_response_bytes: int = 4 * 1024 * 1024
    api_key: Secret = field(default=Secret(""), compare=False)


@dataclass(frozen=True)
class CollectorConfig:
    refresh_interval_seconds: float = 30.0
    sparse_status: bool = False
    up_check_interval_seconds: float = 60.0  # 0 = never probe when nothing else is due


@dataclass(frozen=True)
class WorkflowConfig:
    id: str
    name: str | None = None
    runs: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class Config:
    api: ApiConfig
    collector: CollectorConfig
    workflows: tuple[WorkflowConfig, ...]

    def run_keys(self) -> list[tuple[str, str]]:
        """(workflow_id, run_id) of every configured run, in config order."""
        return [(w.id, r) for w in self.workflows for r in w.runs]


# --- loading ------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "mapping key is not a plain value", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config_file(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    require_key: bool = True,
) -> Config:
    """Read, parse and validate a config file; raise ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["config file does not exist"], source) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise ConfigError([f"cannot read config file: {reason}"], source) from None
    return parse_config(
        text, source=source, env=env, require_key=require_key, base_dir=Path(path).parent
    )


def parse_config(
    text: str,
    source: str | None = None,
    env: Mapping[str, str] | None = None,
    require_key: bool = True,
    base_dir: Path | None = None,
) -> Config:
    """Parse YAML text; relative file paths in it are taken from `base_dir`."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([_describe_yaml_error(exc)], source) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer over Python's digit limit
        raise ConfigError([f"YAML value error: {str(exc)[:200]}"], source) from None
    if document is None:
        document = {}
    return build_config(
        document,
        source=source,
        env=os.environ if env is None else env,
        require_key=require_key,
        base_dir=base_dir,
    )


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"YAML syntax error: {problem}"


def build_config(
    document: object,
    source: str | None = None,
    env: Mapping[str, str] | None = None,
    require_key: bool = True,
    base_dir: Path | None = None,
) -> Config:
    v = _Validator()
    root = v.mapping(document, "", {"api", "collector", "workflows"})
    api = _api(v, root.get("api"), env or {}, require_key, base_dir or Path.cwd())
    collector = _collector(v, root.get("collector"))
    workflows = _workflows(v, root.get("workflows"))
    if v.problems:
        raise ConfigError(v.problems, source)
    return Config(api=api, collector=collector, workflows=workflows)


def _api(
    v: _Validator, node: object, env: Mapping[str, str], require_key: bool, base_dir: Path
) -> ApiConfig:
    d = ApiConfig()
    m = v.mapping(
        node,
        "api",
        {
            "base_url",
            "api_key_file",
            "timeout_seconds",
            "max_concurrency",
            "max_retries",
            "max_requests_per_second",
            "max_response_bytes",
        },
    )
    base_url = v.url(m, "api.base_url", d.base_url)
    key_file = v.string(m, "api.api_key_file", None)
    key = _read_key(v, key_file, env, require_key, base_dir)
    return ApiConfig(
        base_url=base_url,
        api_key_file=key_file,
        timeout_seconds=v.number(m, "api.timeout_seconds", d.timeout_seconds, 0.1, 300),
        max_concurrency=v.integer(m, "api.max_concurrency", d.max_concurrency, 1, 256),
        max_retries=v.integer(m, "api.max_retries", d.max_retries, 0, 10),
        max_requests_per_second=v.number(
            m, "api.max_requests_per_second", d.max_requests_per_second, 0, 10_000
        ),
        max_response_bytes=v.integer(
            m, "api.max_response_bytes", d.max_response_bytes, 1024, 64 * 1024 * 1024
        ),
        api_key=Secret(key),
    )


def _read_key(
    v: _Validator, key_file: str | None, env: Mapping[str, str], require_key: bool, base_dir: Path
) -> str:
    # Messages about the key file do not repeat its value: a key pasted into this field
    # by mistake must not end up on stderr or in a log.
    if key_file is not None:
        path = Path(key_file).expanduser()
        if not path.is_absolute():  # as in Prometheus: relative to the config file
            path = base_dir / path
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                v.problem("api.api_key_file", "is not a regular file")
                return ""
            if info.st_size > MAX_KEY_FILE_BYTES:
                v.problem("api.api_key_file", "file is too large to hold an API key")
                return ""
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            v.problem("api.api_key_file", "file does not exist" + _relative_note(key_file))
            return ""
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            v.problem("api.api_key_file", f"cannot read the file: {reason}")
            return ""
        where = "api.api_key_file"
        if not key:
            v.problem(where, "file is empty")
            return ""
    else:
        key = env.get(API_KEY_ENV, "").strip()
        where = API_KEY_ENV
        if not key:
            if require_key:
                v.problem(
                    "api",
                    f"no API key: set the environment variable {API_KEY_ENV} or api.api_key_file",
                )
            return ""
    # The key goes into an HTTP header: refuse anything that could split it.
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in key):
        v.problem(where, "the API key contains whitespace or non-printable characters")
        return ""
    return key


def _relative_note(key_file: str) -> str:
    if Path(key_file).expanduser().is_absolute():
        return ""
    return " (a relative path is taken from the config file's directory)"


def _collector(v: _Validator, node: object) -> CollectorConfig:
    d = CollectorConfig()
    m = v.mapping(
        node,
        "collector",
        {"refresh_interval_seconds", "sparse_status", "up_check_interval_seconds"},
    )
    return CollectorConfig(
        refresh_interval_seconds=v.number(
            m, "collector.refresh_interval_seconds", d.refresh_interval_seconds, 0, 86_400
        ),
        sparse_status=v.boolean(m, "collector.sparse_status", d.sparse_status),
        up_check_interval_seconds=v.number(
            m, "collector.up_check_interval_seconds", d.up_check_interval_seconds, 0, 86_400
        ),
    )


def _workflows(v: _Validator, node: object) -> tuple[WorkflowConfig, ...]:
    if node is None:
        v.problem("workflows", "at least one workflow is required")
        return ()
    if not isinstance(node, list):
        v.problem("workflows", f"must be a list, got {_type_name(node)}")
        return ()
    if not node:
        v.problem("workflows", "at least one workflow is required")
    workflows: list[WorkflowConfig] = []
    seen_workflows: dict[str, str] = {}
    seen_runs: dict[str, str] = {}
    for i, item in enumerate(node):
        path = f"workflows[{i}]"
        m = v.mapping(item, path, {"id", "name", "runs"})
        if not isinstance(item, Mapping):
            continue
        wid = v.token(m, f"{path}.id", required=True)
        if wid is not None:
            if wid in seen_workflows:
                v.problem(f"{path}.id", f"duplicate workflow id {wid} (also {seen_workflows[wid]})")
            else:
                seen_workflows[wid] = path
        name = v.string(m, f"{path}.name", None, max_length=200)
        if name is not None and not name.strip():
            v.problem(f"{path}.name", "must not be empty")
        runs: list[str] = []
        runs_node = m.get("runs")
        if runs_node is not None and not isinstance(runs_node, list):
            v.problem(f"{path}.runs", f"must be a list of run ids, got {_type_name(runs_node)}")
        elif runs_node:
            for j, run in enumerate(runs_node):
                run_path = f"{path}.runs[{j}]"
                rid = v.token_value(run, run_path)
                if rid is None:
                    continue
                if rid in seen_runs:
                    v.problem(run_path, f"duplicate run id {rid} (also {seen_runs[rid]})")
                    continue
                seen_runs[rid] = run_path
                runs.append(rid)
        if wid is not None:
            workflows.append(WorkflowConfig(id=wid, name=name, runs=tuple(runs)))
    return tuple(workflows)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


class _Validator:
    """Reads typed values out of YAML nodes, recording problems instead of raising."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def mapping(self, node: object, path: str, allowed: set[str]) -> Mapping[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            self.problem(path or "(top level)", f"must be a mapping, got {_type_name(node)}")
            return {}
        for key in node:
            if not isinstance(key, str) or key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                known = ", ".join(sorted(allowed))
                self.problem(where, f"unknown key (known keys here: {known})")
        return node

    def number(
        self, m: Mapping[str, Any], path: str, default: float, low: float, high: float
    ) -> float:
        key = path.rsplit(".", 1)[-1]
        if key not in m:
            return default
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(path, f"must be a number, got {_type_name(value)}")
            return default
        try:
            in_range = math.isfinite(value) and low <= value <= high
        except OverflowError:  # an integer too large for a float
            in_range = False
        if not in_range:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            self.problem(path, f"must be between {low:g} and {high:g}, got {shown}")
            return default
        return float(value)

    def integer(self, m: Mapping[str, Any], path: str, default: int, low: int, high: int) -> int:
        key = path.rsplit(".", 1)[-1]
        if key not in m:
            return default
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer, got {_type_name(value)}")
            return default
        if not low <= value <= high:
            shown = str(value) if len(str(value)) <= 40 else str(value)[:40] + "..."
            self.problem(path, f"must be between {low} and {high}, got {shown}")
            return default
        return value

    def boolean(self, m: Mapping[str, Any], path: str, default: bool) -> bool:
        key = path.rsplit(".", 1)[-1]
        if key not in m:
            return default
        value = m[key]
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false, got {_type_name(value)}")
            return default
        return value

    def string(
        self, m: Mapping[str, Any], path: str, default: str | None, max_length: int = 4096
    ) -> str | None:
        key = path.rsplit(".", 1)[-1]
        if key not in m or m[key] is None:
            return default
        value = m[key]
        if not isinstance(value, str):
            self.problem(path, f"must be a string, got {_type_name(value)}")
            return default
        if len(value) > max_length:
            self.problem(path, f"must be at most {max_length} characters")
            return default
        return value

    def url(self, m: Mapping[str, Any], path: str, default: str) -> str:
        value = self.string(m, path, None)
        if value is None:
            return default
        try:
            parts = urlsplit(value)
        except ValueError:
            self.problem(path, "is not a valid URL")
            return default
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(path, "must be an http:// or https:// URL with a host")
            return default
        if parts.query or parts.fragment or parts.username or parts.password:
            self.problem(path, "must not carry a query, fragment or credentials")
            return default
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            self.problem(path, "has an invalid port")
            return default
        return value.rstrip("/")

    def token(self, m: Mapping[str, Any], path: str, required: bool = False) -> str | None:
        key = path.rsplit(".", 1)[-1]
        if key not in m or m[key] is None:
            if required:
                self.problem(path, "is required")
            return None
        return self.token_value(m[key], path)

    def token_value(self, value: object, path: str) -> str | None:
        if not isinstance(value, str):
            self.problem(path, f"must be an id string, got {_type_name(value)}")
            return None
        if not ID_PATTERN.fullmatch(value):
            self.problem(
                path,
                f"{value[:80]!r} is not a plain id (1-128 letters, digits, '-' or '_')",
            )
            return None
        return value
