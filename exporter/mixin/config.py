"""The monitoring mixin's configuration (mixin.yaml): the selector of the exporter's
scrape job, every alert threshold, the SLO targets and the URLs notifications link to.
Every key is optional; without a file the outputs are the repository's shipped files.
Read like the exporter's own config: unknown keys and bad values are all listed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from exporter.config.checks import (
    ID_PATTERN,
    ConfigError,
    Integer,
    Number,
    String,
    Validator,
    finite_between,
    load_yaml,
    option,
    read_options,
    type_name,
)

PROJECT_URL = "https://github.com/copyai-exporter/copyai-exporter"
DEFAULT_SELECTOR = 'job="copyai-exporter"'
# one PromQL label matcher: name, operator, double-quoted value
MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


@dataclass(frozen=True)
class Thresholds:
    """The numbers the alerts compare with (each was marked TUNE in the rules)."""

    data_stale_seconds: float = option(900.0, Number(60, 86_400 * 7))
    runs_failing_ratio: float = option(0.2, Number(0.001, 1))
    runs_failing_min_failures: int = option(3, Integer(1, 1_000_000))
    run_stuck_seconds: float = option(3600.0, Number(60, 86_400 * 30))
    no_recent_success_seconds: float = option(21_600.0, Number(60, 86_400 * 30))
    credits_per_hour: float = option(5000.0, Number(0, 1e12))
    webhook_rejections_per_15m: int = option(10, Integer(0, 1_000_000))
    restarts_per_15m: int = option(2, Integer(1, 1000))
    leader_count_wrong_for_seconds: float = option(60.0, Number(15, 3600))
    workflow_data_lag_seconds: float = option(900.0, Number(60, 86_400 * 7))
    run_queued_seconds: float = option(1800.0, Number(60, 86_400 * 30))
    run_hung_seconds: float = option(3600.0, Number(60, 86_400 * 30))
    budget_exhaustion_for_seconds: float = option(1800.0, Number(60, 86_400))


@dataclass(frozen=True)
class Slo:
    """Each workflow's run success ratio (COMPLETE / finished): `target` for every
    workflow, `workflows` for those that need another; burn-rate alerts only once a
    window holds at least `min_runs` finished runs."""

    target: float = option(0.95, Number(0.5, 0.9999))
    min_runs: int = option(10, Integer(1, 1_000_000))
    workflows: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class MixinConfig:
    selector: str = option(DEFAULT_SELECTOR, String(max_length=1000))
    runbook_url_base: str = option(f"{PROJECT_URL}/blob/main/README.md", String())
    dashboard_url_base: str | None = option(None, String())
    dashboard_uid: str = option(
        "copyai-exporter",
        String(
            max_length=40,
            pattern=r"[A-Za-z0-9_-]+",
            pattern_message="must be 1-40 letters, digits, '-' or '_' (a Grafana uid)",
        ),
    )
    prometheus_url: str = option("http://localhost:9090", String())
    alertmanager_url: str = option("http://localhost:9093", String())
    thresholds: Thresholds = Thresholds()
    slo: Slo = Slo()

    @property
    def matchers(self) -> list[tuple[str, str, str]]:
        return parse_selector(self.selector)

    @property
    def group_labels(self) -> list[str]:
        """What "per job" means: job, and every other label the selector names."""
        names = [name for name, _, _ in self.matchers if name != "job"]
        return ["job", *dict.fromkeys(names)]


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """`job="a", namespace=~"b.*"` → [(name, operator, value), ...]; ValueError if it
    is not a list of PromQL label matchers."""
    matchers = []
    rest = text.strip()
    while rest:
        match = MATCHER.match(rest)
        if not match:
            raise ValueError(f"not a label matcher at {rest[:40]!r}")
        matchers.append((match.group(1), match.group(2), match.group(3)))
        rest = rest[match.end() :]
        if rest.startswith(","):
            rest = rest[1:]
            if not rest.strip():
                raise ValueError("a trailing comma")
        elif rest:
            raise ValueError(f"expected ',' at {rest[:40]!r}")
    return matchers


def load_mixin_config(path: str | Path | None) -> MixinConfig:
    if path is None:
        return MixinConfig()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read mixin config: {exc.strerror or exc}"], source) from None
    return build_mixin_config(load_yaml(text, source) or {}, source)


def build_mixin_config(document: object, source: str | None = None) -> MixinConfig:
    v = Validator()
    values, m = read_options(v, document, "", MixinConfig, "thresholds", "slo")
    try:
        parse_selector(values["selector"])
    except ValueError as exc:
        v.problem("selector", f"must be PromQL label matchers without braces ({exc})")
    for key in ("runbook_url_base", "dashboard_url_base", "prometheus_url", "alertmanager_url"):
        url = values[key]
        if url is not None and not re.fullmatch(r"https?://[^\s\"'<>]+", url):
            v.problem(key, "must be an absolute http:// or https:// URL")
        elif url is not None:
            values[key] = url.rstrip("/")
    thresholds = Thresholds(**read_options(v, m.get("thresholds"), "thresholds", Thresholds)[0])
    slo_values, s = read_options(v, m.get("slo"), "slo", Slo, "workflows")
    workflows: dict[str, float] = {}
    node = s.get("workflows")
    if node is not None and not isinstance(node, Mapping):
        v.problem("slo.workflows", f"must map workflow IDs to targets, got {type_name(node)}")
    elif node:
        for workflow_id, target in node.items():
            path = f"slo.workflows.{workflow_id}"
            if not isinstance(workflow_id, str) or not ID_PATTERN.fullmatch(workflow_id):
                v.problem(path, "is not a plain workflow id")
            elif (
                isinstance(target, bool)
                or not isinstance(target, (int, float))
                or not finite_between(target, 0.5, 0.9999)
            ):
                v.problem(path, "must be a target between 0.5 and 0.9999")
            else:
                workflows[workflow_id] = float(target)
    if v.problems:
        raise ConfigError(v.problems, source)
    slo = Slo(**slo_values, workflows=MappingProxyType(workflows))
    return MixinConfig(**values, thresholds=thresholds, slo=slo)
