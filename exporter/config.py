"""YAML config file → validated, immutable `Config`.

Every problem is collected with its path (`workflows[1].runs[0]: ...`) and reported
at once in one `ConfigError`; the CLI turns that into exit status 2.
"""

from __future__ import annotations

import itertools
import math
import os
import re
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


DEFAULT_DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
WEBHOOK_TOKEN_ENV = "COPYAI_WEBHOOK_TOKEN"  # noqa: S105 - a variable name, not a secret
WEBHOOK_EVENT_TYPES = (
    "workflowRun.started",
    "workflowRun.completed",
    "workflowRun.failed",
    "workflowCreditLimit.reached",
)


@dataclass(frozen=True)
class CollectorConfig:
    refresh_interval_seconds: float = 30.0
    sparse_status: bool = False
    up_check_interval_seconds: float = 60.0  # 0 = never probe when nothing else is due
    duration_buckets_seconds: tuple[float, ...] = DEFAULT_DURATION_BUCKETS


@dataclass(frozen=True)
class DiscoveryConfig:
    window_seconds: float = 86_400.0  # finished runs older than this are forgotten
    max_tracked_runs: int = 10_000
    page_size: int = 100
    max_pages_per_refresh: int = 50
    run_series: bool = False  # per-run series for discovered active runs
    max_run_series: int = 50


@dataclass(frozen=True)
class WorkflowConfig:
    id: str
    name: str | None = None
    runs: tuple[str, ...] = ()
    discover: bool = False
    discovery: DiscoveryConfig = DiscoveryConfig()

    @property
    def display_name(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    password_file: str | None = None
    key_prefix: str = "copyai-exporter:"
    lease_seconds: float = 15.0  # how long the leader's lease lasts without renewal
    password: Secret = field(default=Secret(""), compare=False)


@dataclass(frozen=True)
class StateConfig:
    backend: str = "embedded"  # embedded (memory, or SQLite at path) or redis
    path: str | None = None  # SQLite file; None = history kept in memory only
    redis: RedisConfig | None = None


@dataclass(frozen=True)
class WebhookRegistration:
    public_url: str  # where Copy.ai delivers; the token is appended as a path segment
    event_types: tuple[str, ...] = WEBHOOK_EVENT_TYPES
    per_workflow: bool = True  # one registration per workflow, or workspace-wide


@dataclass(frozen=True)
class WebhookConfig:
    listen_address: str
    token: Secret = field(compare=False)
    token_file: str | None = None
    max_body_bytes: int = 65_536
    accept_unknown_workflows: bool = False
    register: WebhookRegistration | None = None


@dataclass(frozen=True)
class Config:
    api: ApiConfig
    collector: CollectorConfig
    workflows: tuple[WorkflowConfig, ...]
    state: StateConfig = StateConfig()
    webhooks: WebhookConfig | None = None

    def run_keys(self) -> list[tuple[str, str]]:
        """(workflow_id, run_id) of every configured run, in config order."""
        return [(w.id, r) for w in self.workflows for r in w.runs]

    def workflow(self, workflow_id: str) -> WorkflowConfig | None:
        for workflow in self.workflows:
            if workflow.id == workflow_id:
                return workflow
        return None


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
    except (KeyError, IndexError, AttributeError, TypeError, OverflowError) as exc:
        # PyYAML's constructors raise these for tags like `!!bool maybe` or `!!int ''`
        raise ConfigError(
            [f"YAML value error: {type(exc).__name__} in a tagged value"], source
        ) from None
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
    root = v.mapping(document, "", {"api", "collector", "workflows", "state", "webhooks"})
    base = base_dir or Path.cwd()
    api = _api(v, root.get("api"), env or {}, require_key, base)
    collector = _collector(v, root.get("collector"))
    workflows = _workflows(v, root.get("workflows"))
    state = _state(v, root.get("state"), base)
    webhooks = _webhooks(v, root.get("webhooks"), env or {}, base)
    if v.problems:
        raise ConfigError(v.problems, source)
    return Config(api=api, collector=collector, workflows=workflows, state=state, webhooks=webhooks)


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
    return _read_secret(
        v,
        key_file,
        env,
        base_dir,
        path="api.api_key_file",
        env_name=API_KEY_ENV,
        what="API key",
        required=require_key,
    )


def _read_secret(
    v: _Validator,
    secret_file: str | None,
    env: Mapping[str, str],
    base_dir: Path,
    *,
    path: str,
    env_name: str,
    what: str,
    required: bool,
) -> str:
    """A secret from a file (preferred) or an environment variable.

    Messages about the file do not repeat its value: a secret pasted into this field by
    mistake must not end up on stderr or in a log.
    """
    if secret_file is not None:
        file_path = _resolve_path(secret_file, base_dir)
        if file_path is None:
            v.problem(path, "is not a usable file path")
            return ""
        try:
            info = file_path.stat()
            if not stat.S_ISREG(info.st_mode):
                v.problem(path, "is not a regular file")
                return ""
            if info.st_size > MAX_KEY_FILE_BYTES:
                v.problem(path, f"file is too large to hold the {what}")
                return ""
            secret = file_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            v.problem(path, "file does not exist" + _relative_note(secret_file))
            return ""
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            v.problem(path, f"cannot read the file: {reason}")
            return ""
        where = path
        if not secret:
            v.problem(where, "file is empty")
            return ""
    else:
        secret = env.get(env_name, "").strip()
        where = env_name
        if not secret:
            if required:
                v.problem(
                    path.rsplit(".", 1)[0],
                    f"no {what}: set the environment variable {env_name} or {path}",
                )
            return ""
    # It goes into an HTTP header or URL: refuse anything that could split it.
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
        v.problem(where, f"the {what} contains whitespace or non-printable characters")
        return ""
    return secret


def _relative_note(key_file: str) -> str:
    if Path(key_file).expanduser().is_absolute():
        return ""
    return " (a relative path is taken from the config file's directory)"


def _collector(v: _Validator, node: object) -> CollectorConfig:
    d = CollectorConfig()
    m = v.mapping(
        node,
        "collector",
        {
            "refresh_interval_seconds",
            "sparse_status",
            "up_check_interval_seconds",
            "duration_buckets_seconds",
        },
    )
    return CollectorConfig(
        duration_buckets_seconds=_buckets(v, m, "collector.duration_buckets_seconds"),
        refresh_interval_seconds=v.number(
            m, "collector.refresh_interval_seconds", d.refresh_interval_seconds, 0, 86_400
        ),
        sparse_status=v.boolean(m, "collector.sparse_status", d.sparse_status),
        up_check_interval_seconds=v.number(
            m, "collector.up_check_interval_seconds", d.up_check_interval_seconds, 0, 86_400
        ),
    )


def _buckets(v: _Validator, m: Mapping[str, Any], path: str) -> tuple[float, ...]:
    node = m.get("duration_buckets_seconds")
    if node is None:
        return DEFAULT_DURATION_BUCKETS
    if not isinstance(node, list) or not node:
        v.problem(path, "must be a non-empty list of numbers")
        return DEFAULT_DURATION_BUCKETS
    values: list[float] = []
    for i, item in enumerate(node):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            v.problem(f"{path}[{i}]", f"must be a number, got {_type_name(item)}")
            return DEFAULT_DURATION_BUCKETS
        if not _finite_between(item, 0.001, 31_536_000):
            v.problem(f"{path}[{i}]", "must be between 0.001 and 31536000 seconds")
            return DEFAULT_DURATION_BUCKETS
        values.append(float(item))
    if any(b <= a for a, b in itertools.pairwise(values)):
        v.problem(path, "must be strictly increasing")
        return DEFAULT_DURATION_BUCKETS
    return tuple(values)


def _discovery(v: _Validator, node: object, path: str) -> DiscoveryConfig:
    d = DiscoveryConfig()
    m = v.mapping(
        node,
        path,
        {
            "window_seconds",
            "max_tracked_runs",
            "page_size",
            "max_pages_per_refresh",
            "run_series",
            "max_run_series",
        },
    )
    return DiscoveryConfig(
        window_seconds=v.number(m, f"{path}.window_seconds", d.window_seconds, 60, 31_536_000),
        max_tracked_runs=v.integer(m, f"{path}.max_tracked_runs", d.max_tracked_runs, 1, 1_000_000),
        page_size=v.integer(m, f"{path}.page_size", d.page_size, 1, 100),
        max_pages_per_refresh=v.integer(
            m, f"{path}.max_pages_per_refresh", d.max_pages_per_refresh, 1, 10_000
        ),
        run_series=v.boolean(m, f"{path}.run_series", d.run_series),
        max_run_series=v.integer(m, f"{path}.max_run_series", d.max_run_series, 0, 10_000),
    )


def _resolve_path(text: str, base_dir: Path) -> Path | None:
    """~ expanded, relative to the config file's directory; None if it cannot be a path
    (a NUL byte, an unknown ~user, unencodable characters)."""
    if "\0" in text:
        return None
    try:
        path = Path(text).expanduser()
        path = path if path.is_absolute() else base_dir / path
        os.fsencode(path)
        path.exists()  # raises for some malformed paths
    except (RuntimeError, ValueError, UnicodeError, OSError):
        return None
    return path


def _state(v: _Validator, node: object, base_dir: Path) -> StateConfig:
    m = v.mapping(node, "state", {"backend", "path", "redis"})
    backend = v.string(m, "state.backend", "embedded")
    if backend not in ("embedded", "redis"):
        v.problem("state.backend", "must be embedded or redis")
        backend = "embedded"
    path = v.string(m, "state.path", None)
    if backend == "redis":
        if path is not None:
            v.problem("state.path", "is for the embedded backend; with redis, state is in Redis")
        return StateConfig(backend="redis", redis=_redis(v, m.get("redis"), base_dir))
    if m.get("redis") is not None:
        v.problem("state.redis", "is set but state.backend is not redis")
    if path is None:
        return StateConfig()
    resolved = _resolve_path(path, base_dir)
    if resolved is None:
        v.problem("state.path", "is not a usable file path")
        return StateConfig()
    if resolved.is_dir():
        v.problem("state.path", "is a directory; give a file path such as state.db")
    elif not resolved.parent.is_dir():
        v.problem("state.path", f"directory {resolved.parent} does not exist")
    return StateConfig(path=str(resolved))


def _redis(v: _Validator, node: object, base_dir: Path) -> RedisConfig:
    d = RedisConfig()
    m = v.mapping(node, "state.redis", {"url", "password_file", "key_prefix", "lease_seconds"})
    url = v.string(m, "state.redis.url", d.url) or d.url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("redis", "rediss", "unix")
        or (parts.scheme != "unix" and not parts.hostname)
    ):
        v.problem("state.redis.url", "must be redis://host:port/db, rediss://... or unix://...")
    elif parts.password:
        v.problem("state.redis.url", "must not carry a password: use state.redis.password_file")
    password_file = v.string(m, "state.redis.password_file", None)
    password = ""
    if password_file is not None:
        password = _read_secret(
            v,
            password_file,
            {},
            base_dir,
            path="state.redis.password_file",
            env_name="",
            what="Redis password",
            required=True,
        )
    prefix = v.string(m, "state.redis.key_prefix", d.key_prefix, max_length=100) or d.key_prefix
    if not re.fullmatch(r"[A-Za-z0-9:_.-]+", prefix):
        v.problem("state.redis.key_prefix", "may only use letters, digits and : _ . -")
    return RedisConfig(
        url=url,
        password_file=password_file,
        key_prefix=prefix,
        lease_seconds=v.number(m, "state.redis.lease_seconds", d.lease_seconds, 2, 600),
        password=Secret(password),
    )


def _webhooks(
    v: _Validator, node: object, env: Mapping[str, str], base_dir: Path
) -> WebhookConfig | None:
    if node is None:
        return None
    m = v.mapping(
        node,
        "webhooks",
        {"listen_address", "token_file", "max_body_bytes", "accept_unknown_workflows", "register"},
    )
    listen = v.string(m, "webhooks.listen_address", None)
    if listen is None:
        v.problem("webhooks.listen_address", "is required when webhooks are configured")
        listen = ""
    elif not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}", listen):
        v.problem("webhooks.listen_address", "must be host:port (e.g. 0.0.0.0:10118)")
    token_file = v.string(m, "webhooks.token_file", None)
    token = _read_secret(
        v,
        token_file,
        env,
        base_dir,
        path="webhooks.token_file",
        env_name=WEBHOOK_TOKEN_ENV,
        what="webhook token",
        required=True,
    )
    if token and len(token) < 16:
        v.problem("webhooks", "the webhook token must be at least 16 characters")
    if token and not re.fullmatch(r"[A-Za-z0-9._~-]+", token):
        v.problem("webhooks", "the webhook token may only use letters, digits and . _ ~ -")
    register = None
    reg_node = m.get("register")
    if reg_node is not None:
        r = v.mapping(reg_node, "webhooks.register", {"public_url", "event_types", "per_workflow"})
        public_url = v.url(r, "webhooks.register.public_url", "")
        if not public_url:
            v.problem("webhooks.register.public_url", "is required to register webhooks")
        elif not urlsplit(public_url).path.endswith("/webhook"):
            # the token is appended as a path segment, and the receiver answers only
            # /webhook/<token>: any other path registers URLs that are answered 404
            v.problem(
                "webhooks.register.public_url",
                "must end in /webhook (the receiver serves /webhook/<token>; behind a "
                "proxy that rewrites paths, give its URL that ends in /webhook)",
            )
        event_types = WEBHOOK_EVENT_TYPES
        types_node = r.get("event_types")
        if types_node is not None:
            if not isinstance(types_node, list) or not all(
                isinstance(t, str) and t in WEBHOOK_EVENT_TYPES for t in types_node
            ):
                v.problem(
                    "webhooks.register.event_types",
                    f"must be a list of: {', '.join(WEBHOOK_EVENT_TYPES)}",
                )
            else:
                event_types = tuple(dict.fromkeys(types_node))
        register = WebhookRegistration(
            public_url=public_url,
            event_types=event_types,
            per_workflow=v.boolean(r, "webhooks.register.per_workflow", True),
        )
    return WebhookConfig(
        listen_address=listen,
        token=Secret(token),
        token_file=token_file,
        max_body_bytes=v.integer(m, "webhooks.max_body_bytes", 65_536, 1024, 16 * 1024 * 1024),
        accept_unknown_workflows=v.boolean(m, "webhooks.accept_unknown_workflows", False),
        register=register,
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
        if not isinstance(item, Mapping):
            v.problem(path, f"must be a mapping with an id, got {_type_name(item)}")
            continue
        m = v.mapping(item, path, {"id", "name", "runs", "discover", "discovery"})
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
        discover = v.boolean(m, f"{path}.discover", False)
        discovery = _discovery(v, m.get("discovery"), f"{path}.discovery")
        if m.get("discovery") is not None and not discover:
            v.problem(f"{path}.discovery", "is set but discover is not true")
        if wid is not None:
            workflows.append(
                WorkflowConfig(
                    id=wid,
                    name=name,
                    runs=tuple(runs),
                    discover=discover,
                    discovery=discovery,
                )
            )
    return tuple(workflows)


def _finite_between(value: float, low: float, high: float) -> bool:
    try:
        return math.isfinite(value) and low <= value <= high
    except OverflowError:  # an integer too large for a float
        return False


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer over Python's digit limit
        return "a very large number"
    return text if len(text) <= 40 else text[:40] + "..."


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
        if not _finite_between(value, low, high):
            self.problem(path, f"must be between {low:g} and {high:g}, got {_shown(value)}")
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
            self.problem(path, f"must be between {low} and {high}, got {_shown(value)}")
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
