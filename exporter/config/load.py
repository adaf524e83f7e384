"""YAML config file → validated, immutable `Config`.

Every problem is collected with its path (`workflows[1].runs[0]: ...`) and reported at
once in one `ConfigError`; the CLI turns that into exit status 2. Simple keys are read
from their declarations in config.model; what is read here by hand is what depends on
other keys (secrets from files or the environment, unique IDs, backends).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from exporter.config.checks import ConfigError, Validator, load_yaml, read_options, type_name
from exporter.config.costs import read_attribution, read_budgets
from exporter.config.model import (
    API_KEY_ENV,
    WEBHOOK_EVENT_TYPES,
    WEBHOOK_TOKEN_ENV,
    ApiConfig,
    CollectorConfig,
    Config,
    DiscoveryConfig,
    RedisConfig,
    Secret,
    StateConfig,
    WebhookConfig,
    WebhookRegistration,
    WorkflowConfig,
)

MAX_KEY_FILE_BYTES = 4096


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
    document = load_yaml(text, source)
    if document is None:
        document = {}
    return build_config(
        document,
        source=source,
        env=os.environ if env is None else env,
        require_key=require_key,
        base_dir=base_dir,
    )


def build_config(
    document: object,
    source: str | None = None,
    env: Mapping[str, str] | None = None,
    require_key: bool = True,
    base_dir: Path | None = None,
) -> Config:
    v = Validator()
    root = v.mapping(
        document,
        "",
        {"api", "collector", "workflows", "state", "webhooks", "budgets", "attribution"},
    )
    base = base_dir or Path.cwd()
    api = _api(v, root.get("api"), env or {}, require_key, base)
    collector = CollectorConfig(
        **read_options(v, root.get("collector"), "collector", CollectorConfig)[0]
    )
    workflows = _workflows(v, root.get("workflows"))
    state = _state(v, root.get("state"), base)
    webhooks = _webhooks(v, root.get("webhooks"), env or {}, base)
    budgets = read_budgets(v, root.get("budgets"), workflows)
    attribution = read_attribution(v, root.get("attribution"))
    if v.problems:
        raise ConfigError(v.problems, source)
    return Config(
        api=api,
        collector=collector,
        workflows=workflows,
        state=state,
        webhooks=webhooks,
        budgets=budgets,
        attribution=attribution,
    )


def _api(
    v: Validator, node: object, env: Mapping[str, str], require_key: bool, base_dir: Path
) -> ApiConfig:
    values, _ = read_options(v, node, "api", ApiConfig)
    key = _read_secret(
        v,
        values["api_key_file"],
        env,
        base_dir,
        path="api.api_key_file",
        env_name=API_KEY_ENV,
        what="API key",
        required=require_key,
    )
    return ApiConfig(**values, api_key=Secret(key))


def _read_secret(
    v: Validator,
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
        file_path = resolve_path(secret_file, base_dir)
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


def resolve_path(text: str, base_dir: Path) -> Path | None:
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


def _state(v: Validator, node: object, base_dir: Path) -> StateConfig:
    values, m = read_options(v, node, "state", StateConfig, "redis")
    backend, path = values["backend"], values["path"]
    if backend == "redis":
        if path is not None:
            v.problem("state.path", "is for the embedded backend; with redis, state is in Redis")
        return StateConfig(backend="redis", redis=_redis(v, m.get("redis"), base_dir))
    if m.get("redis") is not None:
        v.problem("state.redis", "is set but state.backend is not redis")
    if path is None:
        return StateConfig()
    resolved = resolve_path(path, base_dir)
    if resolved is None:
        v.problem("state.path", "is not a usable file path")
        return StateConfig()
    if resolved.is_dir():
        v.problem("state.path", "is a directory; give a file path such as state.db")
    elif not resolved.parent.is_dir():
        v.problem("state.path", f"directory {resolved.parent} does not exist")
    return StateConfig(path=str(resolved))


def _redis(v: Validator, node: object, base_dir: Path) -> RedisConfig:
    values, _ = read_options(v, node, "state.redis", RedisConfig)
    url = values["url"] or RedisConfig.url
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
    password = ""
    if values["password_file"] is not None:
        password = _read_secret(
            v,
            values["password_file"],
            {},
            base_dir,
            path="state.redis.password_file",
            env_name="",
            what="Redis password",
            required=True,
        )
    values["url"] = url
    return RedisConfig(**values, password=Secret(password))


def _webhooks(
    v: Validator, node: object, env: Mapping[str, str], base_dir: Path
) -> WebhookConfig | None:
    if node is None:
        return None
    values, m = read_options(v, node, "webhooks", WebhookConfig, "register")
    if m.get("listen_address") is None:
        v.problem("webhooks.listen_address", "is required when webhooks are configured")
    token = _read_secret(
        v,
        values["token_file"],
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
    if m.get("register") is not None:
        register = _registration(v, m["register"])
    return WebhookConfig(**values, token=Secret(token), register=register)


def _registration(v: Validator, node: object) -> WebhookRegistration:
    path = "webhooks.register"
    values, r = read_options(v, node, path, WebhookRegistration, "event_types")
    public_url = values["public_url"]
    if not public_url:
        v.problem(f"{path}.public_url", "is required to register webhooks")
    elif not urlsplit(public_url).path.endswith("/webhook"):
        # the token is appended as a path segment, and the receiver answers only
        # /webhook/<token>: any other path registers URLs that are answered 404
        v.problem(
            f"{path}.public_url",
            "must end in /webhook (the receiver serves /webhook/<token>; behind a "
            "proxy that rewrites paths, give its URL that ends in /webhook)",
        )
    event_types = WEBHOOK_EVENT_TYPES
    types_node = r.get("event_types")
    if types_node is not None:
        if not isinstance(types_node, list) or not all(
            isinstance(t, str) and t in WEBHOOK_EVENT_TYPES for t in types_node
        ):
            v.problem(f"{path}.event_types", f"must be a list of: {', '.join(WEBHOOK_EVENT_TYPES)}")
        else:
            event_types = tuple(dict.fromkeys(types_node))
    return WebhookRegistration(**values, event_types=event_types)


def _workflows(v: Validator, node: object) -> tuple[WorkflowConfig, ...]:
    if node is None:
        v.problem("workflows", "at least one workflow is required")
        return ()
    if not isinstance(node, list):
        v.problem("workflows", f"must be a list, got {type_name(node)}")
        return ()
    if not node:
        v.problem("workflows", "at least one workflow is required")
    workflows: list[WorkflowConfig] = []
    seen_workflows: dict[str, str] = {}
    seen_runs: dict[str, str] = {}
    for i, item in enumerate(node):
        path = f"workflows[{i}]"
        if not isinstance(item, Mapping):
            v.problem(path, f"must be a mapping with an id, got {type_name(item)}")
            continue
        values, m = read_options(v, item, path, WorkflowConfig, "id", "runs", "discovery")
        wid = v.token(m, f"{path}.id", required=True)
        if wid is not None:
            if wid in seen_workflows:
                v.problem(f"{path}.id", f"duplicate workflow id {wid} (also {seen_workflows[wid]})")
            else:
                seen_workflows[wid] = path
        if values["name"] is not None and not values["name"].strip():
            v.problem(f"{path}.name", "must not be empty")
        runs = _runs(v, m.get("runs"), path, seen_runs)
        discovery = DiscoveryConfig(
            **read_options(v, m.get("discovery"), f"{path}.discovery", DiscoveryConfig)[0]
        )
        if m.get("discovery") is not None and not values["discover"]:
            v.problem(f"{path}.discovery", "is set but discover is not true")
        if wid is not None:
            workflows.append(WorkflowConfig(id=wid, runs=runs, discovery=discovery, **values))
    return tuple(workflows)


def _runs(v: Validator, node: object, path: str, seen: dict[str, str]) -> tuple[str, ...]:
    runs: list[str] = []
    if node is not None and not isinstance(node, list):
        v.problem(f"{path}.runs", f"must be a list of run ids, got {type_name(node)}")
    elif node:
        for j, run in enumerate(node):
            run_path = f"{path}.runs[{j}]"
            rid = v.token_value(run, run_path)
            if rid is None:
                continue
            if rid in seen:
                v.problem(run_path, f"duplicate run id {rid} (also {seen[rid]})")
                continue
            seen[rid] = run_path
            runs.append(rid)
    return tuple(runs)
