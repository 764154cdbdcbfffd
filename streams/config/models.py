"""The configuration's models: every key, its type, default, bounds, meaning and reload rule.

This is the one source of those facts. The loader validates a file against them, the reloader
asks them what a running worker may apply (`RELOAD`), and README's configuration table is
generated from them (`streams.config.reference`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from policies import PolicyEngine, build_engine
from streams.config.units import ByteSize, Duration

__all__ = [
    "DEFAULT_POLICIES",
    "RELOAD",
    "BatchConfig",
    "CircuitBreakerConfig",
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
    "RocksDBConfig",
    "Settings",
    "ShutdownConfig",
    "TLSConfig",
    "TenantConfig",
    "ValueRule",
    "WorkerConfig",
]

# Marks a field a running worker applies on reload (SIGHUP or a changed file); every other
# field needs a restart (streams.ops.reload names the ones that changed).
RELOAD: dict[str, Any] = {"reload": True}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Model):
    """Where Caudal reads and writes: the cluster, the topics and how the input is shaped."""

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka cluster; env `CAUDAL_BOOTSTRAP_SERVERS`"
    )
    security: dict[str, str] = Field(
        default={},
        description="librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`) for every "
        "Kafka client; the workers' Faust clients get the same: protocols PLAINTEXT, SSL, "
        "SASL_PLAINTEXT, SASL_SSL; SASL PLAIN, SCRAM-SHA-256/512, GSSAPI; `ssl.ca.location`, "
        "`ssl.certificate.location`, `ssl.key.location`, `ssl.key.password`; anything they "
        "cannot apply is rejected at start. Env `CAUDAL_SECURITY_<PROPERTY>` "
        "(`CAUDAL_SECURITY_SASL_USERNAME` sets `sasl.username`)",
    )
    input_topic: str = Field(
        default="otlp_spans", description="where spans arrive; env `CAUDAL_INPUT_TOPIC`"
    )
    input_encoding: Literal["otlp_proto", "otlp_json"] = Field(
        default="otlp_proto", description="`otlp_proto` or `otlp_json`"
    )
    input_keyed_by_trace_id: bool = Field(
        default=False, description="read the input directly, without the split stage (see Input)"
    )
    partitions: int = Field(
        default=12,
        ge=1,
        le=10_000,
        description="partitions of `caudal-spans`, `caudal-sampled` and the tables",
    )
    spans_topic: str = Field(
        default="caudal-spans", description="internal topic: spans by trace ID"
    )
    sampled_topic: str = Field(default="caudal-sampled", description="internal topic: kept traces")
    dlq_topic: str = Field(default="caudal-dlq", description="dead-letter topic (see Dead letters)")
    backfill_topic: str = Field(
        default="caudal-backfill",
        description="compacted topic of the traces `caudal backfill` exported (see Incident "
        "backfill)",
    )
    group_id: str = Field(
        default="caudal", description="consumer group (and Faust app id) shared by the workers"
    )
    max_message_bytes: ByteSize = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        description="the largest record the brokers take (Kafka's `max.message.bytes`); no "
        "record Caudal writes is larger, a trace that needs more goes in several records "
        "(see Large traces)",
    )
    trust_tenant_headers: bool = Field(
        default=True,
        description="`false` ignores the `header:` sources of `tenant_from`, so a forged "
        "header on an input that untrusted producers write names nobody (see Input)",
    )


class DecisionCacheConfig(_Model):
    """How many decisions are remembered so late spans follow them."""

    kept: int = Field(default=100_000, ge=0, description="kept decisions remembered for late spans")
    dropped: int = Field(default=500_000, ge=0, description="dropped decisions remembered")
    ttl: Duration = Field(default=3600.0, description="how long a decision is remembered")


class DecisionConfig(_Model):
    """The decision window and the bounds of the buffer (traces, bytes per trace, bytes)."""

    wait: Duration = Field(
        default=10.0,
        description="decision window, from the input time of a trace's first record; it "
        "closes only once every input record stamped before its end has been read (see How a "
        "partition changes hands)",
    )
    wait_after_root: Duration | None = Field(
        default=None,
        description="a trace whose root span arrived is decided this long after it, if "
        "sooner than `wait` (the Collector's `decision_wait_after_root_received`; none: off)",
    )
    max_traces: int = Field(
        default=200_000,
        ge=1,
        description="buffered traces per worker; past it the oldest is decided early",
    )
    max_trace_bytes: ByteSize = Field(
        default=32 * 1024 * 1024,
        description="a trace past it is decided at once on what arrived; its later spans "
        "follow the decision (0: no bound)",
    )
    max_buffer_bytes: ByteSize = Field(
        default=2 * 1024 * 1024 * 1024,
        description="buffered span bytes per worker; past it the oldest traces are decided "
        "early (0: no bound)",
    )
    tick: Duration = Field(default=0.25, description="how often due traces are decided")
    decision_cache: DecisionCacheConfig = DecisionCacheConfig()


class RedactionRule(_Model):
    """What to do with attributes whose key matches (exactly, or by regex)."""

    key: str | None = Field(default=None, description="an attribute key")
    key_regex: str | None = Field(default=None, description="or a regex over attribute keys")
    action: Literal["delete", "hash", "mask"] = Field(
        description="`delete`, `hash` (salted SHA-256 of the value) or `mask` (`****`)"
    )

    @model_validator(mode="after")
    def _one_key(self) -> RedactionRule:
        if (self.key is None) == (self.key_regex is None):
            raise ValueError("give exactly one of 'key' or 'key_regex'")
        if self.key_regex is not None:
            _compile(self.key_regex)
        return self


class ValueRule(_Model):
    """A regex replaced in every string attribute value (e-mail addresses, card numbers)."""

    pattern: str = Field(description="a regex searched in every string value")
    replacement: str = Field(default="****", description="what each match becomes")

    @model_validator(mode="after")
    def _valid(self) -> ValueRule:
        _compile(self.pattern)
        return self


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc


class RedactionConfig(_Model):
    """PII redaction on span, event and resource attributes before traces leave Caudal."""

    rules: list[RedactionRule] = Field(
        default=[], description="`{key or key_regex, action}` entries (see Exporters)"
    )
    values: list[ValueRule] = Field(
        default=[], description="`{pattern, replacement}` entries applied inside every string value"
    )
    hash_salt: str = Field(default="", description="salt of the `hash` action")


class TenantConfig(_Model):
    """One tenant's route (the exporters its kept traces go to), quota, redaction, policies."""

    exporters: list[str] = Field(
        default=[],
        description="the tenant's route: its kept traces go, whole, to every exporter listed",
    )
    quota_spans_per_second: float | None = Field(
        default=None,
        gt=0,
        json_schema_extra=RELOAD,
        description="kept spans per second for the tenant, whole traces, across all workers "
        "(none: no quota)",
    )
    quota_burst_spans: int | None = Field(
        default=None,
        ge=1,
        json_schema_extra=RELOAD,
        description="bucket size (none: one second of quota)",
    )
    quota_action: Literal["drop", "errors_only"] = Field(
        default="drop",
        json_schema_extra=RELOAD,
        description="over quota: `drop` the trace, or `errors_only` (keep it only if a span "
        "has status ERROR)",
    )
    redaction: RedactionConfig | None = Field(
        default=None,
        json_schema_extra=RELOAD,
        description="the tenant's own redaction rules (none: the global `redaction`)",
    )
    policies: list[dict[str, Any]] | None = Field(
        default=None,
        json_schema_extra=RELOAD,
        description="the tenant's own policy list; it replaces the global one (none: the "
        "global list)",
    )
    extends: Literal["default"] | None = Field(
        default=None,
        json_schema_extra=RELOAD,
        description="`default`: the tenant's `policies` follow the global ones instead of "
        "replacing them",
    )

    def policy_list(self, global_policies: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The tenant's effective policy list, or None when it uses the global one."""
        if self.policies is None:
            return None
        return [*global_policies, *self.policies] if self.extends else list(self.policies)


class BatchConfig(_Model):
    """How many kept traces an exporter sends at once, and how long it waits to fill a batch."""

    max_traces: int = Field(default=500, ge=1, description="traces per batch")
    max_bytes: ByteSize = Field(default=4 * 1024 * 1024, ge=1024, description="bytes per batch")
    timeout: Duration = Field(default=0.2, description="longest wait to fill a batch")


class RetryConfig(_Model):
    """Retries of a batch on 429, 502, 503, 504, timeouts and connection errors."""

    enabled: bool = Field(default=True, description="retry at all")
    initial_interval: Duration = Field(default=5.0, description="first wait")
    multiplier: float = Field(default=2.0, ge=1.0, description="each wait is this times the last")
    max_interval: Duration = Field(default=30.0, description="longest wait")
    max_retries: int = Field(default=5, ge=0, description="retries of one batch")
    max_elapsed_time: Duration = Field(default=300.0, description="longest time spent on one batch")


class CircuitBreakerConfig(_Model):
    """Stop calling a failing backend for a while; the sampled topic holds the backlog."""

    failure_threshold: int = Field(default=5, ge=1, description="consecutive failures that open it")
    open_duration: Duration = Field(default=60.0, description="first time open, then one probe")
    reopen_duration: Duration = Field(default=300.0, description="time open after a failed probe")


class TLSConfig(_Model):
    """TLS for an OTLP/HTTP backend (https endpoints)."""

    ca_file: str | None = Field(default=None, description="CA bundle to verify the backend")
    cert_file: str | None = Field(default=None, description="client certificate")
    key_file: str | None = Field(default=None, description="client key")
    insecure_skip_verify: bool = Field(default=False, description="do not verify (testing only)")


class ExporterConfig(_Model):
    """A backend kept traces are written to."""

    type: Literal["otlp_http", "kafka", "file"] = Field(
        description="`otlp_http`, `kafka` or `file` (see Exporters)"
    )
    endpoint: str | None = Field(
        default=None, description="otlp_http: base URL, `/v1/traces` is appended"
    )
    traces_endpoint: str | None = Field(default=None, description="otlp_http: the full URL instead")
    encoding: Literal["proto", "json"] = Field(
        default="proto", description="otlp_http: body encoding"
    )
    compression: Literal["gzip", "none"] = Field(
        default="gzip", description="otlp_http: compression"
    )
    headers: dict[str, str] = Field(
        default={}, description="otlp_http: request headers (e.g. `Authorization`)"
    )
    timeout: Duration = Field(default=10.0, description="otlp_http: request timeout")
    tls: TLSConfig = TLSConfig()
    path: str | None = Field(
        default=None,
        description="file: a directory; one OTLP/JSON-lines file per tenant",
    )
    max_bytes: ByteSize = Field(
        default=100 * 1024 * 1024, ge=1024, description="file: rotate a file at this size"
    )
    max_files: int = Field(default=5, ge=1, description="file: rotated files kept per tenant")
    topic: str | None = Field(default=None, description="kafka: the topic")
    bootstrap_servers: str | None = Field(
        default=None, description="kafka: another cluster's servers (none: Caudal's own)"
    )
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()

    @model_validator(mode="after")
    def _check_target(self) -> ExporterConfig:
        if self.type == "file" and not self.path:
            raise ValueError("a file exporter needs 'path' (a directory)")
        if self.type == "kafka" and not self.topic:
            raise ValueError("a kafka exporter needs 'topic'")
        if self.type == "otlp_http" and not (self.endpoint or self.traces_endpoint):
            raise ValueError("an otlp_http exporter needs 'endpoint' (or 'traces_endpoint')")
        return self

    @property
    def url(self) -> str:
        """Where an otlp_http exporter POSTs."""
        if self.traces_endpoint:
            return self.traces_endpoint
        return (self.endpoint or "").rstrip("/") + "/v1/traces"


class HealthConfig(_Model):
    """Thresholds of the worker's health states (see /status)."""

    degraded_buffer_fill: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="buffer fill (of `decision.max_traces`) that is degraded",
    )
    min_export_success: float = Field(
        default=0.99,
        ge=0,
        le=1,
        description="export success ratio under which the worker is degraded",
    )
    max_export_failure: float = Field(
        default=0.5, ge=0, le=1, description="export failure ratio over which it is unhealthy"
    )
    memory_limit: ByteSize = Field(
        default=0,
        description="RSS (the worker's and its split process's) over which the worker is "
        "unhealthy (`2GiB`, or bytes); 0: no limit",
    )


class DegradationConfig(_Model):
    """Load shedding in announced levels under sustained pressure (see streams.pipeline.degrade)."""

    enabled: bool = Field(
        default=True, description="shed load under pressure (see Degradation levels)"
    )
    max_level: int = Field(default=4, ge=0, le=4, description="the highest level it may reach")
    check_interval: Duration = Field(default=5.0, description="how often pressure is read")
    sustain_checks: int = Field(
        default=2, ge=1, description="checks in a row with pressure before the first step up"
    )
    recovery_period: Duration = Field(
        default=300.0, description="one level down after this long without pressure"
    )
    max_lag: Duration = Field(
        default=30.0, description="pressure: the records being read are older than this and aging"
    )
    buffer_fill: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="pressure: the buffer is over this share of `max_traces`",
    )
    memory_fill: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="pressure: RSS is over this share of `health.memory_limit`",
    )
    level_percentages: tuple[float, float, float] = Field(
        default=(5.0, 1.0, 0.1),
        description="trace-ID sampling percentages of levels 2, 3 and 4 (error spans are "
        "always kept)",
    )

    @model_validator(mode="after")
    def _check_percentages(self) -> DegradationConfig:
        if any(not 0 <= p <= 100 for p in self.level_percentages):
            raise ValueError("level_percentages: each must be between 0 and 100")
        return self


class ExperimentsConfig(_Model):
    """RED metrics per experiment and variant, counted on every span before sampling."""

    enabled: bool = Field(default=True, description="count experiment RED metrics (see Metrics)")
    id_attribute: str = Field(
        default="experiment.id", description="the attribute naming the experiment"
    )
    variant_attribute: str = Field(
        default="experiment.variant", description="the attribute naming the variant"
    )
    allow: list[str] = Field(default=[], description="experiment IDs to count; empty: any")
    max_series: int = Field(default=200, ge=1, description="most label sets counted")


class LoggingConfig(_Model):
    """Log lines: `text` (key=value) or `json` (one object per line)."""

    format: Literal["text", "json"] = Field(
        default="text", description="`text` or `json` (see Logs)"
    )
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="`debug`, `info`, `warning` or `error`"
    )


class ShutdownConfig(_Model):
    """How long a SIGTERM drain may take before the worker exits anyway."""

    grace: Duration = Field(
        default=30.0,
        description="longest SIGTERM drain; past it the worker exits with code 1 and the next "
        "owner re-reads what was not committed",
    )


class IngestTLSConfig(_Model):
    """TLS for the ingest listeners (both use the same certificate)."""

    cert_file: str = Field(description="server certificate")
    key_file: str = Field(description="server key")


class IngestConfig(_Model):
    """The OTLP ingest gateway (`caudal ingest`)."""

    http: str = Field(default="127.0.0.1:4318", description="OTLP/HTTP listen address")
    grpc: str = Field(default="127.0.0.1:4317", description="OTLP/gRPC listen address")
    tokens: dict[str, str] = Field(
        default={},
        description="bearer token → tenant (`Authorization: Bearer …`, gRPC metadata "
        "`authorization`); empty: no authentication (development only)",
    )
    tokens_file: str | None = Field(
        default=None,
        description="a YAML file of more `TOKEN: TENANT` entries (a mounted Secret), read by "
        "`caudal ingest` and `caudal validate` at start; workers ignore it",
    )
    trust_client_tenant: bool = Field(
        default=False,
        description="take the tenant a client claims in `x-tenant-id` instead of its token's",
    )
    max_request_bytes: ByteSize = Field(
        default=16 * 1024 * 1024, ge=1024, description="larger bodies (also after gzip) get 413"
    )
    max_inflight_bytes: ByteSize = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="bytes handed to Kafka and not yet acknowledged: the gateway's memory bound",
    )
    warn_at: float = Field(default=0.5, gt=0, lt=1, description="that fill: backpressure warning")
    throttle_at: float = Field(default=0.8, gt=0, lt=1, description="that fill: answer 429")
    unavailable_at: float = Field(default=0.95, gt=0, le=1, description="that fill: answer 503")
    rate_limits: dict[str, float] = Field(
        default={}, description="tenant → spans per second; over it, 429 / RESOURCE_EXHAUSTED"
    )
    tls: IngestTLSConfig | None = Field(
        default=None, description="`{cert_file, key_file}` for both listeners"
    )
    metrics_port: int = Field(
        default=9465,
        ge=0,
        le=65535,
        description="the gateway's `/metrics`, `/healthz`, `/readyz` (503 while Kafka is "
        "unreachable or the gateway drains) and `/status`",
    )


class RocksDBConfig(_Model):
    """RocksDB's memory, each bound shared by every partition of both tables (see Sizing)."""

    block_cache: ByteSize = Field(
        default=32 * 1024 * 1024,
        ge=1024 * 1024,
        description="one LRU cache of table blocks, their indexes and filters, for every "
        "partition and table",
    )
    write_buffers: ByteSize = Field(
        default=32 * 1024 * 1024,
        ge=1024 * 1024,
        description="memtables of every partition and table together; past it the largest "
        "is flushed to disk, so buffered spans beyond it wait on disk, not in memory",
    )
    compression: Literal["none", "lz4", "zstd", "snappy"] = Field(
        default="none",
        description="how table files on disk are compressed; `none` spends no CPU on spans "
        "that live for one decision window, `lz4` or `zstd` trade CPU for disk",
    )


class WorkerConfig(_Model):
    """Per-process settings: where state lives. Give each worker on one machine its own."""

    state_dir: str = Field(
        default="./caudal-state", description="RocksDB state (one per worker process)"
    )
    session_timeout: Duration = Field(
        default=6.0,
        description="how fast the group notices a dead worker and hands its partitions on",
    )
    split_process: bool = Field(
        default=True,
        description="run the split stage in a process of its own (its own interpreter lock "
        "and core); `false`: a thread of the worker, for a worker limited to one core",
    )
    rocksdb: RocksDBConfig = RocksDBConfig()


class MetricsConfig(_Model):
    """The Prometheus endpoint; port 0 turns it off."""

    host: str = Field(
        default="127.0.0.1", description="address of `/metrics`, `/healthz`, `/readyz`"
    )
    port: int = Field(default=9464, ge=0, le=65535, description="its port; 0 turns it off")


DEFAULT_POLICIES: list[dict[str, Any]] = [
    {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
    {"name": "slow", "type": "latency", "threshold_ms": 1000},
    {
        "name": "critical-services",
        "type": "string_attribute",
        "key": "service.name",
        "values": ["checkout", "payment"],
    },
    {
        "name": "vip-users",
        "type": "string_attribute",
        "key": "user.tier",
        "values": ["vip"],
        "sample_percentage": 50,
    },
    # "Everything else": an inverted match inside `and` only fails the `and` (OTel semantics),
    # so VIP traces are kept at 50 %, not 50 % plus 10 % of the other half.
    {
        "name": "baseline",
        "type": "and",
        "and_sub_policy": [
            {
                "name": "not-vip",
                "type": "string_attribute",
                "key": "user.tier",
                "values": ["vip"],
                "invert_match": True,
            },
            {"name": "ten-percent", "type": "probabilistic", "sampling_percentage": 10},
        ],
    },
]


class Settings(_Model):
    """The whole validated configuration."""

    kafka: KafkaConfig = KafkaConfig()
    decision: DecisionConfig = DecisionConfig()
    policies: list[dict[str, Any]] = Field(
        default_factory=lambda: list(DEFAULT_POLICIES),
        json_schema_extra={**RELOAD, "shown_default": "the five rules"},
        description="the policy list, in order (see Policies)",
    )
    tenants: dict[str, TenantConfig] = Field(
        default={"default": TenantConfig(exporters=["file"])},
        description="tenants by name (default: `default` routed to `file`)",
    )
    tenant_from: list[str] = Field(
        default=["header:x-tenant-id", "resource:tenant.id", "baggage:tenant"],
        description="tenant sources (`header:NAME`, `resource:ATTRIBUTE`, `baggage:ENTRY`), "
        "first present wins",
    )
    default_tenant: str = Field(default="default", description="tenant when no source names one")
    unknown_tenant: Literal["default", "drop"] = Field(
        default="default",
        json_schema_extra=RELOAD,
        description="a tenant missing from `tenants`: `default` (the default tenant's route) "
        "or `drop` (counted in `caudal_unknown_tenant_drops_total`)",
    )
    redaction: RedactionConfig = Field(
        default=RedactionConfig(),
        json_schema_extra=RELOAD,
        description="PII redaction before export (see Exporters)",
    )
    exporters: dict[str, ExporterConfig] = Field(
        default={"file": ExporterConfig(type="file", path="./caudal-output")},
        description="backends by name (default: `file` writing to `./caudal-output`)",
    )
    worker: WorkerConfig = WorkerConfig()
    metrics: MetricsConfig = MetricsConfig()
    ingest: IngestConfig = IngestConfig()
    health: HealthConfig = HealthConfig()
    degradation: DegradationConfig = DegradationConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown: ShutdownConfig = ShutdownConfig()

    @model_validator(mode="after")
    def _cross_check(self, info: ValidationInfo) -> Settings:
        # The loader runs the cross-checks itself, to report them with their key paths beside
        # the other errors; settings built in code are checked here.
        if not (info.context or {}).get("checked_by_loader"):
            from streams.config.checks import cross_check

            problems = cross_check(self)
            if problems:
                raise ValueError("; ".join(f"{path}: {message}" for path, message in problems))
        return self

    def build_engine(self) -> PolicyEngine:
        """The policy engine for `policies` (validated at load, so this does not fail)."""
        return build_engine(self.policies)

    def build_tenant_engines(self) -> dict[str, PolicyEngine]:
        """Engines of the tenants that have their own policy sets."""
        engines = {}
        for tenant, config in self.tenants.items():
            policies = config.policy_list(self.policies)
            if policies is not None:
                engines[tenant] = build_engine(policies)
        return engines

    def exporters_for(self, tenant: str) -> list[str]:
        """Exporter names a tenant's kept traces go to: its own route, else the default's."""
        route = self.tenants.get(tenant) or self.tenants.get(self.default_tenant)
        return route.exporters if route else []

    def tenant_label(self, tenant: str) -> str:
        """The tenant name for metric labels: unknown tenants count as the default one, so
        clients cannot create unbounded label values."""
        return tenant if tenant in self.tenants else self.default_tenant
