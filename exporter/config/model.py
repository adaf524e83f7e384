"""The configuration as frozen dataclasses. Each config key is declared once, here: its
field, default and check (`option`); the loader derives the allowed keys and the
validation from these declarations."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.config.checks import (
    Boolean,
    Buckets,
    Choice,
    Integer,
    Number,
    String,
    Url,
    option,
)

DEFAULT_BASE_URL = "https://api.copy.ai/api"
API_KEY_ENV = "COPYAI_API_KEY"
WEBHOOK_TOKEN_ENV = "COPYAI_WEBHOOK_TOKEN"  # noqa: S105 - a variable name, not a secret
DEFAULT_DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
DEFAULT_QUEUE_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
DEFAULT_CREDITS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
BUDGET_PERIODS = ("day", "week", "month")
BUDGET_NAME = r"[A-Za-z0-9_-]{1,64}"
WEBHOOK_EVENT_TYPES = (
    "workflowRun.started",
    "workflowRun.completed",
    "workflowRun.failed",
    "workflowCreditLimit.reached",
)
LISTEN_ADDRESS = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}"


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
    base_url: str = option(DEFAULT_BASE_URL, Url())
    api_key_file: str | None = option(None, String())
    timeout_seconds: float = option(10.0, Number(0.1, 300))
    max_concurrency: int = option(8, Integer(1, 256))
    max_retries: int = option(2, Integer(0, 10))
    max_requests_per_second: float = option(10.0, Number(0, 10_000))  # 0 = no limit
    max_response_bytes: int = option(4 * 1024 * 1024, Integer(1024, 64 * 1024 * 1024))
    api_key: Secret = field(default=Secret(""), compare=False)  # from the file or env


@dataclass(frozen=True)
class CollectorConfig:
    refresh_interval_seconds: float = option(30.0, Number(0, 86_400))
    sparse_status: bool = option(False, Boolean())
    up_check_interval_seconds: float = option(60.0, Number(0, 86_400))  # 0 = never probe
    duration_buckets_seconds: tuple[float, ...] = option(DEFAULT_DURATION_BUCKETS, Buckets())
    queue_buckets_seconds: tuple[float, ...] = option(DEFAULT_QUEUE_BUCKETS, Buckets())
    processing_buckets_seconds: tuple[float, ...] = option(DEFAULT_DURATION_BUCKETS, Buckets())
    credits_buckets: tuple[float, ...] = option(
        DEFAULT_CREDITS_BUCKETS, Buckets(high=1e12, unit="credits")
    )


@dataclass(frozen=True)
class DiscoveryConfig:
    window_seconds: float = option(86_400.0, Number(60, 31_536_000))
    max_tracked_runs: int = option(10_000, Integer(1, 1_000_000))
    page_size: int = option(100, Integer(1, 100))
    max_pages_per_refresh: int = option(50, Integer(1, 10_000))
    run_series: bool = option(False, Boolean())  # per-run series for discovered active runs
    max_run_series: int = option(50, Integer(0, 10_000))


@dataclass(frozen=True)
class WorkflowConfig:
    id: str  # read by the loader (a token, unique)
    name: str | None = option(None, String(max_length=200))
    runs: tuple[str, ...] = ()  # read by the loader (tokens, unique across workflows)
    discover: bool = option(False, Boolean())
    discovery: DiscoveryConfig = DiscoveryConfig()

    @property
    def display_name(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class RedisConfig:
    url: str = option("redis://127.0.0.1:6379/0", String())  # scheme checked by the loader
    password_file: str | None = option(None, String())
    key_prefix: str = option(
        "copyai-exporter:",
        String(
            max_length=100,
            pattern=r"[A-Za-z0-9:_.-]+",
            pattern_message="may only use letters, digits and : _ . -",
            empty_is_default=True,
        ),
    )
    lease_seconds: float = option(15.0, Number(2, 600))
    password: Secret = field(default=Secret(""), compare=False)


@dataclass(frozen=True)
class StateConfig:
    backend: str = option("embedded", Choice(("embedded", "redis")))
    path: str | None = option(None, String())  # SQLite file; None = memory only
    redis: RedisConfig | None = None


@dataclass(frozen=True)
class WebhookRegistration:
    public_url: str = option("", Url())  # must end in /webhook; the token is appended
    event_types: tuple[str, ...] = WEBHOOK_EVENT_TYPES  # read by the loader
    per_workflow: bool = option(True, Boolean())  # per workflow, or one workspace-wide


@dataclass(frozen=True)
class WebhookConfig:
    listen_address: str = option(
        "", String(pattern=LISTEN_ADDRESS, pattern_message="must be host:port (e.g. 0.0.0.0:10118)")
    )
    token: Secret = field(default=Secret(""), compare=False)
    token_file: str | None = option(None, String())
    max_body_bytes: int = option(65_536, Integer(1024, 16 * 1024 * 1024))
    accept_unknown_workflows: bool = option(False, Boolean())
    # while deliveries about a workflow arrive, its polling slows to this (None: 10 x
    # collector.refresh_interval_seconds); see "Webhook-first freshness" in the README
    reconcile_interval_seconds: float | None = option(None, Number(1, 86_400))
    register: WebhookRegistration | None = None

    def reconcile_interval(self, refresh_interval: float) -> float:
        if self.reconcile_interval_seconds is not None:
            return self.reconcile_interval_seconds
        return 10 * refresh_interval


@dataclass(frozen=True)
class BudgetConfig:
    """A credit budget over some workflows for each calendar period (UTC)."""

    name: str  # read by the loader (BUDGET_NAME, unique)
    credits: float  # read by the loader (required, > 0)
    period: str = option("month", Choice(BUDGET_PERIODS))  # day | week (from Monday) | month
    workflows: tuple[str, ...] = ()  # read by the loader: configured ids ("*": all of them)
    every_workflow: bool = False  # workflows was "*"


@dataclass(frozen=True)
class AttributionConfig:
    """Credits and finished runs by the values of a few fields of each run."""

    keys: tuple[str, ...] = ()  # read by the loader: metadata.<path> or input.<path>
    max_values_per_key: int = option(20, Integer(1, 1000))  # per workflow; later: __other__


@dataclass(frozen=True)
class Config:
    api: ApiConfig
    collector: CollectorConfig
    workflows: tuple[WorkflowConfig, ...]
    state: StateConfig = StateConfig()
    webhooks: WebhookConfig | None = None
    budgets: tuple[BudgetConfig, ...] = ()
    attribution: AttributionConfig = AttributionConfig()  # off: no keys

    def run_keys(self) -> list[tuple[str, str]]:
        """(workflow_id, run_id) of every configured run, in config order."""
        return [(w.id, r) for w in self.workflows for r in w.runs]

    def workflow(self, workflow_id: str) -> WorkflowConfig | None:
        for workflow in self.workflows:
            if workflow.id == workflow_id:
                return workflow
        return None
