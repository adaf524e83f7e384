"""The configuration: YAML file → validated, immutable `Config`.

model.py declares every key once (dataclass field, default, check); load.py reads a
file into it, collecting every problem with its path; checks.py holds what the config
and the web config share (the duplicate-refusing YAML loader, the Validator).
"""

from exporter.config.checks import ID_PATTERN, ConfigError, Validator, load_yaml
from exporter.config.load import build_config, load_config_file, parse_config, resolve_path
from exporter.config.model import (
    API_KEY_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_DURATION_BUCKETS,
    WEBHOOK_EVENT_TYPES,
    WEBHOOK_TOKEN_ENV,
    ApiConfig,
    AttributionConfig,
    BudgetConfig,
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

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_DURATION_BUCKETS",
    "ID_PATTERN",
    "WEBHOOK_EVENT_TYPES",
    "WEBHOOK_TOKEN_ENV",
    "ApiConfig",
    "AttributionConfig",
    "BudgetConfig",
    "CollectorConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "RedisConfig",
    "Secret",
    "StateConfig",
    "Validator",
    "WebhookConfig",
    "WebhookRegistration",
    "WorkflowConfig",
    "build_config",
    "load_config_file",
    "load_yaml",
    "parse_config",
    "resolve_path",
]
