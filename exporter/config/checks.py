"""Validation shared by every file the exporter reads (the config and the web config):
a YAML loader that refuses duplicate keys, a `Validator` that collects problems with
their paths instead of raising, and `option()`, which declares a config key once, on
its dataclass field, with its default and its check.

    @dataclass(frozen=True)
    class CollectorConfig:
        refresh_interval_seconds: float = option(30.0, Number(0, 86_400))

`read_options(v, node, "collector", CollectorConfig)` then knows the allowed keys, reads
each with its check, and reports unknown keys, all from that one declaration.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import yaml

# An ID goes into a URL path and a label value, so it must be a plain token: in the
# config (workflow and run IDs) as in what the API answers (api/records.py).
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")


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


# --- YAML --------------------------------------------------------------------------------


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


def load_yaml(text: str, source: str | None) -> object:
    """Parse YAML with duplicate keys refused; ConfigError (one problem) otherwise."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([_describe_yaml_error(exc)], source) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer over Python's digit limit
        raise ConfigError([f"YAML value error: {str(exc)[:200]}"], source) from None
    except (KeyError, IndexError, AttributeError, TypeError, OverflowError) as exc:
        # PyYAML's constructors raise these for tags like `!!bool maybe` or `!!int ''`
        raise ConfigError(
            [f"YAML value error: {type(exc).__name__} in a tagged value"], source
        ) from None


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"YAML syntax error: {problem}"


# --- reading typed values ------------------------------------------------------------------


def finite_between(value: float, low: float, high: float) -> bool:
    try:
        return math.isfinite(value) and low <= value <= high
    except OverflowError:  # an integer too large for a float
        return False


def shown(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer over Python's digit limit
        return "a very large number"
    return text if len(text) <= 40 else text[:40] + "..."


def type_name(value: object) -> str:
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


class Validator:
    """Reads typed values out of YAML nodes, recording problems instead of raising."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def mapping(self, node: object, path: str, allowed: set[str]) -> Mapping[str, Any]:
        if node is None:
            return {}
        if not isinstance(node, Mapping):
            self.problem(path or "(top level)", f"must be a mapping, got {type_name(node)}")
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
            self.problem(path, f"must be a number, got {type_name(value)}")
            return default
        if not finite_between(value, low, high):
            self.problem(path, f"must be between {low:g} and {high:g}, got {shown(value)}")
            return default
        return float(value)

    def integer(self, m: Mapping[str, Any], path: str, default: int, low: int, high: int) -> int:
        key = path.rsplit(".", 1)[-1]
        if key not in m:
            return default
        value = m[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer, got {type_name(value)}")
            return default
        if not low <= value <= high:
            self.problem(path, f"must be between {low} and {high}, got {shown(value)}")
            return default
        return value

    def boolean(self, m: Mapping[str, Any], path: str, default: bool) -> bool:
        key = path.rsplit(".", 1)[-1]
        if key not in m:
            return default
        value = m[key]
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false, got {type_name(value)}")
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
            self.problem(path, f"must be a string, got {type_name(value)}")
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
            self.problem(path, f"must be an id string, got {type_name(value)}")
            return None
        if not ID_PATTERN.fullmatch(value):
            self.problem(
                path,
                f"{value[:80]!r} is not a plain id (1-128 letters, digits, '-' or '_')",
            )
            return None
        return value


# --- declaring a key once ----------------------------------------------------------------


class Check:
    """How one key is read; `read` returns the value, or the default after a problem."""

    def read(self, v: Validator, m: Mapping[str, Any], path: str, default: Any) -> Any:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Number(Check):
    low: float
    high: float

    def read(self, v, m, path, default):
        return v.number(m, path, default, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Integer(Check):
    low: int
    high: int

    def read(self, v, m, path, default):
        return v.integer(m, path, default, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class Boolean(Check):
    def read(self, v, m, path, default):
        return v.boolean(m, path, default)


@dataclasses.dataclass(frozen=True)
class String(Check):
    max_length: int = 4096
    pattern: str | None = None  # a value given must match it whole
    pattern_message: str = ""
    empty_is_default: bool = False  # "" means: not given

    def read(self, v, m, path, default):
        given = m.get(path.rsplit(".", 1)[-1])
        value = v.string(m, path, default, self.max_length)
        if self.empty_is_default and value == "":
            return default
        if (
            self.pattern
            and isinstance(given, str)
            and value == given
            and not re.fullmatch(self.pattern, value)
        ):
            v.problem(path, self.pattern_message)
        return value


@dataclasses.dataclass(frozen=True)
class Url(Check):
    def read(self, v, m, path, default):
        return v.url(m, path, default)


@dataclasses.dataclass(frozen=True)
class Choice(Check):
    values: tuple[str, ...]

    def read(self, v, m, path, default):
        value = v.string(m, path, default)
        if value not in self.values:
            v.problem(path, f"must be {' or '.join(self.values)}")
            return default
        return value


@dataclasses.dataclass(frozen=True)
class Buckets(Check):
    """A non-empty, strictly increasing list of seconds (or of another `unit`)."""

    low: float = 0.001
    high: float = 31_536_000
    unit: str = "seconds"

    def read(self, v, m, path, default):
        node = m.get(path.rsplit(".", 1)[-1])
        if node is None:
            return default
        if not isinstance(node, list) or not node:
            v.problem(path, "must be a non-empty list of numbers")
            return default
        values: list[float] = []
        for i, item in enumerate(node):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                v.problem(f"{path}[{i}]", f"must be a number, got {type_name(item)}")
                return default
            if not finite_between(item, self.low, self.high):
                v.problem(
                    f"{path}[{i}]",
                    f"must be between {self.low:g} and {self.high:.0f} {self.unit}",
                )
                return default
            values.append(float(item))
        if any(b <= a for a, b in itertools.pairwise(values)):
            v.problem(path, "must be strictly increasing")
            return default
        return tuple(values)


def option(default: Any, check: Check, **kwargs: Any) -> Any:
    """A dataclass field that is a config key: its default and its check, declared once."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("config defaults must be immutable")
    return dataclasses.field(default=default, metadata={"check": check}, **kwargs)


def options_of(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


def allowed_keys(cls: type, *extra: str) -> set[str]:
    return {f.name for f in options_of(cls)} | set(extra)


def read_options(
    v: Validator, node: object, path: str, cls: type, *extra_keys: str
) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """Every declared option of `cls` read from `node` (defaults where absent or bad), and
    the mapping itself for the keys the caller reads on its own (`extra_keys`)."""
    m = v.mapping(node, path, allowed_keys(cls, *extra_keys))
    prefix = f"{path}." if path else ""
    values = {
        f.name: f.metadata["check"].read(v, m, prefix + f.name, f.default) for f in options_of(cls)
    }
    return values, m
