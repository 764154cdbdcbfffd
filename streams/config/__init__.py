"""Configuration: one YAML file, typed and validated once at start.

`models` declares every key (type, default, bounds, meaning, whether a reload applies it);
`load` reads a file, applies the environment and command-line overrides and validates;
`checks` holds the checks across keys; `changes` tells the reloader what changed and what
needs a restart; `reference` generates README's configuration table. Code below the loader
receives a `Settings` object and never re-checks it nor reads the environment.
"""

from streams.config.changes import applies_on_reload, changed_keys
from streams.config.load import ConfigError, ConfigSource, load_settings, validate_mapping
from streams.config.models import (
    DEFAULT_POLICIES,
    RELOAD,
    BatchConfig,
    CircuitBreakerConfig,
    DecisionCacheConfig,
    DecisionConfig,
    DegradationConfig,
    ExperimentsConfig,
    ExporterConfig,
    HealthConfig,
    IngestConfig,
    IngestTLSConfig,
    KafkaConfig,
    LoggingConfig,
    MetricsConfig,
    RedactionConfig,
    RedactionRule,
    RetryConfig,
    RocksDBConfig,
    Settings,
    ShutdownConfig,
    TenantConfig,
    TLSConfig,
    ValueRule,
    WorkerConfig,
)
from streams.config.units import parse_duration, parse_size

__all__ = [
    "DEFAULT_POLICIES",
    "RELOAD",
    "BatchConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "ConfigSource",
    "DecisionCacheConfig",
    "DecisionConfig",
    "DegradationConfig",
    "ExperimentsConfig",
    "ExporterConfig",
    "HealthConfig",
    "IngestConfig",
    "IngestTLSConfig",
    "KafkaConfig",
    "LoggingConfig",
    "MetricsConfig",
    "RedactionConfig",
    "RedactionRule",
    "RetryConfig",
    "Settings",
    "ShutdownConfig",
    "TLSConfig",
    "TenantConfig",
    "ValueRule",
    "RocksDBConfig",
    "WorkerConfig",
    "applies_on_reload",
    "changed_keys",
    "load_settings",
    "parse_duration",
    "parse_size",
    "validate_mapping",
]
