"""Configuration: one YAML file, typed and validated once at start.

Every error is reported with its key path (`decision.wait: ...`), all at once, so a user fixes a
file in one pass. Code below the loader receives a `Settings` object and never re-checks it nor
reads the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from policies import PolicyConfigError, PolicyEngine, build_engine
from streams.wire.tracekey import tenant_problem

__all__ = [
    "RELOAD",
    "ConfigError",
    "applies_on_reload",
    "changed_keys",
    "DEFAULT_POLICIES",
    "Settings",
    "load_settings",
    "parse_duration",
    "parse_size",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Turn `10s`, `500ms`, `5m`, `1h` (or a number of seconds) into seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"expected a duration such as '10s', '500ms' or '5m', got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
}


def parse_size(value: object) -> int:
    """Turn `512MiB`, `2GiB`, `100MB` (or a number of bytes) into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNIT_BYTES[match.group(2)])
    raise ValueError(f"expected a size such as '512MiB' or '2GiB', got {value!r}")


ByteSize = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Marks a field a running worker applies on reload (SIGHUP or a changed file); every other
# field needs a restart (streams.ops.reload says which changed).
RELOAD: dict[str, Any] = {"reload": True}


class KafkaConfig(_Model):
    """Where Caudal reads and writes: the cluster, the topics and how the input is shaped."""

    bootstrap_servers: str = "127.0.0.1:9092"
    # librdkafka properties such as security.protocol, sasl.mechanism, ssl.ca.location.
    security: dict[str, str] = {}
    input_topic: str = "otlp_spans"
    input_encoding: Literal["otlp_proto", "otlp_json"] = "otlp_proto"
    input_keyed_by_trace_id: bool = False
    partitions: int = Field(default=12, ge=1, le=10_000)
    spans_topic: str = "caudal-spans"
    sampled_topic: str = "caudal-sampled"
    dlq_topic: str = "caudal-dlq"
    group_id: str = "caudal"
    # The largest record the brokers take (Kafka's max.message.bytes, 1 MiB by default): no
    # record Caudal writes is larger; a trace that needs more goes in several records.
    max_message_bytes: ByteSize = Field(default=1024 * 1024, ge=64 * 1024)
    # Whether `header:` sources of tenant_from may name the tenant. The ingest gateway sets
    # x-tenant-id from the authenticated token; on an input topic that untrusted producers can
    # write, set false and a forged header names nobody.
    trust_tenant_headers: bool = True


class DecisionCacheConfig(_Model):
    """How many decisions are remembered so late spans follow them."""

    kept: int = Field(default=100_000, ge=0)
    dropped: int = Field(default=500_000, ge=0)
    ttl: Duration = 3600.0


class DecisionConfig(_Model):
    """The decision window and the bounds of the buffer (traces, bytes per trace, bytes)."""

    wait: Duration = 10.0
    max_traces: int = Field(default=200_000, ge=1)
    # A trace past this is decided at once on what arrived; its later spans follow the
    # decision (0: no bound).
    max_trace_bytes: ByteSize = 32 * 1024 * 1024
    # Past this, the oldest traces are decided early (0: no bound).
    max_buffer_bytes: ByteSize = 2 * 1024 * 1024 * 1024
    tick: Duration = 0.25
    decision_cache: DecisionCacheConfig = DecisionCacheConfig()


class TenantConfig(_Model):
    """One tenant's route (the exporters its kept traces go to), quota, redaction, policies."""

    exporters: list[str] = []
    # Kept spans per second for this tenant, counted in whole traces (all workers together).
    quota_spans_per_second: float | None = Field(default=None, gt=0, json_schema_extra=RELOAD)
    quota_burst_spans: int | None = Field(default=None, ge=1, json_schema_extra=RELOAD)
    # Over quota: drop the trace, or keep it only if it has an error span.
    quota_action: Literal["drop", "errors_only"] = Field(default="drop", json_schema_extra=RELOAD)
    redaction: RedactionConfig | None = Field(default=None, json_schema_extra=RELOAD)
    # None: the global list. A list replaces it, or follows it with `extends: default`.
    policies: list[dict[str, Any]] | None = Field(default=None, json_schema_extra=RELOAD)
    extends: Literal["default"] | None = Field(default=None, json_schema_extra=RELOAD)

    def policy_list(self, global_policies: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The tenant's effective policy list, or None when it uses the global one."""
        if self.policies is None:
            return None
        return [*global_policies, *self.policies] if self.extends else list(self.policies)


class BatchConfig(_Model):
    """How many kept traces an exporter sends at once, and how long it waits to fill a batch."""

    max_traces: int = Field(default=500, ge=1)
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    timeout: Duration = 0.2


class RetryConfig(_Model):
    """Retries of a batch on 429, 502, 503, 504, timeouts and connection errors."""

    enabled: bool = True
    initial_interval: Duration = 5.0
    multiplier: float = Field(default=2.0, ge=1.0)
    max_interval: Duration = 30.0
    max_retries: int = Field(default=5, ge=0)
    max_elapsed_time: Duration = 300.0


class CircuitBreakerConfig(_Model):
    """Stop calling a failing backend for a while; the sampled topic holds the backlog."""

    failure_threshold: int = Field(default=5, ge=1)
    open_duration: Duration = 60.0
    reopen_duration: Duration = 300.0


class TLSConfig(_Model):
    """TLS for an OTLP/HTTP backend (https endpoints)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False


class ExporterConfig(_Model):
    """A backend kept traces are written to."""

    type: Literal["otlp_http", "kafka", "file"]
    # otlp_http: base URL (`/v1/traces` is appended) or the full `traces_endpoint`.
    endpoint: str | None = None
    traces_endpoint: str | None = None
    encoding: Literal["proto", "json"] = "proto"
    compression: Literal["gzip", "none"] = "gzip"
    headers: dict[str, str] = {}
    timeout: Duration = 10.0
    tls: TLSConfig = TLSConfig()
    # file: a directory; one OTLP/JSON-lines file per tenant, rotated at max_bytes.
    path: str | None = None
    max_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    max_files: int = Field(default=5, ge=1)
    # kafka: the topic and, when it is another cluster, its bootstrap servers.
    topic: str | None = None
    bootstrap_servers: str | None = None
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


class RedactionRule(_Model):
    """What to do with attributes whose key matches (exactly, or by regex)."""

    key: str | None = None
    key_regex: str | None = None
    action: Literal["delete", "hash", "mask"]

    @model_validator(mode="after")
    def _one_key(self) -> RedactionRule:
        if (self.key is None) == (self.key_regex is None):
            raise ValueError("give exactly one of 'key' or 'key_regex'")
        if self.key_regex is not None:
            _compile(self.key_regex)
        return self


class ValueRule(_Model):
    """A regex replaced in every string attribute value (e-mail addresses, card numbers)."""

    pattern: str
    replacement: str = "****"

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

    rules: list[RedactionRule] = []
    values: list[ValueRule] = []
    hash_salt: str = ""


class HealthConfig(_Model):
    """Thresholds of the worker's health states (see /status)."""

    degraded_buffer_fill: float = Field(default=0.8, gt=0, le=1)
    min_export_success: float = Field(default=0.99, ge=0, le=1)
    max_export_failure: float = Field(default=0.5, ge=0, le=1)
    # RSS over which the worker reports itself unhealthy (`2GiB`, or bytes); 0: no limit.
    memory_limit: ByteSize = 0


class DegradationConfig(_Model):
    """Load shedding in announced levels under sustained pressure (see streams.pipeline.degrade)."""

    enabled: bool = True
    max_level: int = Field(default=4, ge=0, le=4)
    check_interval: Duration = 5.0
    # Pressure must last this many checks in a row before the first step up from level 0.
    sustain_checks: int = Field(default=2, ge=1)
    # One level down after this long without pressure; pressure climbs again at once.
    recovery_period: Duration = 300.0
    # Pressure: the records being read are older than this and getting older (lag growth) ...
    max_lag: Duration = 30.0
    # ... or the buffer is over this share of decision.max_traces ...
    buffer_fill: float = Field(default=0.9, gt=0, le=1)
    # ... or RSS is over this share of health.memory_limit (when a limit is set).
    memory_fill: float = Field(default=0.9, gt=0, le=1)
    # Trace-ID sampling percentages of levels 2, 3 and 4 (error spans are always kept).
    level_percentages: tuple[float, float, float] = (5.0, 1.0, 0.1)

    @model_validator(mode="after")
    def _check_percentages(self) -> DegradationConfig:
        if any(not 0 <= p <= 100 for p in self.level_percentages):
            raise ValueError("level_percentages: each must be between 0 and 100")
        return self


class ExperimentsConfig(_Model):
    """RED metrics per experiment and variant, counted on every span before sampling."""

    enabled: bool = True
    id_attribute: str = "experiment.id"
    variant_attribute: str = "experiment.variant"
    # Experiment IDs to count; empty: any, up to max_series label sets.
    allow: list[str] = []
    max_series: int = Field(default=200, ge=1)


class LoggingConfig(_Model):
    """Log lines: `text` (key=value) or `json` (one object per line)."""

    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ShutdownConfig(_Model):
    """How long a SIGTERM drain may take before the worker exits anyway."""

    grace: Duration = 30.0


class IngestTLSConfig(_Model):
    """TLS for the ingest listeners (both use the same certificate)."""

    cert_file: str
    key_file: str


class IngestConfig(_Model):
    """The OTLP ingest gateway (`caudal ingest`)."""

    http: str = "127.0.0.1:4318"
    grpc: str = "127.0.0.1:4317"
    # Bearer token -> tenant. Empty: no authentication (development only).
    tokens: dict[str, str] = {}
    # A YAML file with more `TOKEN: TENANT` entries (a mounted Kubernetes Secret), read at start.
    tokens_file: str | None = None
    trust_client_tenant: bool = False
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Bytes handed to Kafka and not yet acknowledged: the gateway's memory bound.
    max_inflight_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    warn_at: float = Field(default=0.5, gt=0, lt=1)
    throttle_at: float = Field(default=0.8, gt=0, lt=1)
    unavailable_at: float = Field(default=0.95, gt=0, le=1)
    # Spans per second per tenant; over it, 429 / RESOURCE_EXHAUSTED.
    rate_limits: dict[str, float] = {}
    tls: IngestTLSConfig | None = None
    metrics_port: int = Field(default=9465, ge=0, le=65535)


class WorkerConfig(_Model):
    """Per-process settings: where state lives. Give each worker on one machine its own."""

    state_dir: str = "./caudal-state"
    # How fast the group notices a dead worker and hands its partitions on.
    session_timeout: Duration = 6.0


class MetricsConfig(_Model):
    """The Prometheus endpoint; port 0 turns it off."""

    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


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

TENANT_SOURCE = re.compile(r"^(header|resource|baggage):[\w.\-]+$")


class Settings(_Model):
    """The whole validated configuration."""

    kafka: KafkaConfig = KafkaConfig()
    decision: DecisionConfig = DecisionConfig()
    policies: list[dict[str, Any]] = Field(
        default_factory=lambda: list(DEFAULT_POLICIES), json_schema_extra=RELOAD
    )
    tenants: dict[str, TenantConfig] = {"default": TenantConfig(exporters=["file"])}
    tenant_from: list[str] = ["header:x-tenant-id", "resource:tenant.id", "baggage:tenant"]
    default_tenant: str = "default"
    # A tenant with no entry in `tenants`: use the default tenant's route, or drop (counted).
    unknown_tenant: Literal["default", "drop"] = Field(default="default", json_schema_extra=RELOAD)
    redaction: RedactionConfig = Field(default=RedactionConfig(), json_schema_extra=RELOAD)
    exporters: dict[str, ExporterConfig] = {
        "file": ExporterConfig(type="file", path="./caudal-output")
    }
    worker: WorkerConfig = WorkerConfig()
    metrics: MetricsConfig = MetricsConfig()
    ingest: IngestConfig = IngestConfig()
    health: HealthConfig = HealthConfig()
    degradation: DegradationConfig = DegradationConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown: ShutdownConfig = ShutdownConfig()

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        names = [*self.tenants, self.default_tenant, *self.ingest.tokens.values()]
        for name in names:
            problem = tenant_problem(name)
            if problem is not None:
                raise ValueError(f"tenant {name[:40]!r}: {problem}")
        for source in self.tenant_from:
            if not TENANT_SOURCE.match(source):
                raise ValueError(
                    f"tenant_from: {source!r} is not 'header:NAME', 'resource:ATTRIBUTE' "
                    "or 'baggage:ENTRY'"
                )
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


def changed_keys(old: BaseModel, new: BaseModel) -> list[str]:
    """Key paths (`tenants.acme.exporters`) whose value differs between two configurations."""
    changed: list[str] = []

    def walk(a: Any, b: Any, path: tuple[str, ...]) -> None:
        if isinstance(a, dict) and isinstance(b, dict) and a.keys() | b.keys():
            for key in sorted(a.keys() | b.keys(), key=str):
                walk(a.get(key, _MISSING), b.get(key, _MISSING), (*path, str(key)))
        elif a != b:
            changed.append(".".join(path))

    walk(old.model_dump(), new.model_dump(), ())
    return changed


_MISSING = object()


def applies_on_reload(key: str) -> bool:
    """Does a running worker apply a change of this key path on reload?"""
    model: Any = Settings
    for part in key.split("."):
        if model is None:
            return False
        fields = getattr(model, "model_fields", None)
        if fields is None:  # a mapping: the part is a name (a tenant, an exporter)
            model = _value_model(model)
            continue
        info = fields.get(part)
        if info is None:
            return False
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("reload"):
            return True
        model = _field_model(info.annotation)
    return False


def _field_model(annotation: Any) -> Any:
    """The model class (or dict[str, Model] marker) a field holds, None for plain values."""
    origin = getattr(annotation, "__origin__", None)
    if origin is dict:
        return ("dict", annotation.__args__[1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _value_model(marker: Any) -> Any:
    if isinstance(marker, tuple) and marker[0] == "dict":
        value = marker[1]
        return value if isinstance(value, type) and issubclass(value, BaseModel) else None
    return None


class ConfigError(ValueError):
    """A configuration file was rejected; `errors` holds (key path, message) pairs."""

    def __init__(self, source: str, errors: list[tuple[str, str]]) -> None:
        self.source = source
        self.errors = errors
        lines = [f"{source}: {len(errors)} error(s)"]
        lines += [f"  {path}: {message}" for path, message in errors]
        super().__init__("\n".join(lines))


def _key_path(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


_ENV_OVERRIDES = {
    "CAUDAL_BOOTSTRAP_SERVERS": "bootstrap_servers",
    "CAUDAL_INPUT_TOPIC": "input_topic",
}


def _apply_environment(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """CAUDAL_* variables override the kafka section (so secrets stay out of the file)."""
    kafka = dict(raw.get("kafka") or {})
    for variable, key in _ENV_OVERRIDES.items():
        if environ.get(variable):
            kafka[key] = environ[variable]
    security = dict(kafka.get("security") or {})
    for variable, value in environ.items():
        # CAUDAL_SECURITY_SASL_USERNAME -> sasl.username
        if variable.startswith("CAUDAL_SECURITY_") and value:
            security[variable.removeprefix("CAUDAL_SECURITY_").lower().replace("_", ".")] = value
    if security:
        kafka["security"] = security
    if kafka:
        raw = {**raw, "kafka": kafka}
    return raw


def validate_mapping(raw: object, source: str = "<config>") -> Settings:
    """Validate a parsed YAML document; raise ConfigError with every problem found."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("(top level)", "expected a mapping of sections")])
    errors: list[tuple[str, str]] = []
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            errors.append((_key_path(tuple(err["loc"])), message))
    errors += _policy_errors(raw)
    errors += _unknown_exporters(raw)
    if errors:
        raise ConfigError(source, errors)
    assert settings is not None
    return settings


def _policy_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Errors of the global policy list and of every tenant's own list, with key paths."""
    errors: list[tuple[str, str]] = []
    global_policies = raw.get("policies", DEFAULT_POLICIES)
    lists: list[tuple[tuple[str, ...], object, int]] = [(("policies",), global_policies, 0)]
    tenants = raw.get("tenants")
    if isinstance(tenants, dict):
        for name, tenant in tenants.items():
            if isinstance(tenant, dict) and isinstance(tenant.get("policies"), list):
                own = tenant["policies"]
                # With `extends: default` the tenant's entries follow the global ones: check
                # them together (names must stay unique) and report the tenant's own indexes.
                if tenant.get("extends") == "default" and isinstance(global_policies, list):
                    lists.append(
                        (
                            ("tenants", str(name), "policies"),
                            [*global_policies, *own],
                            len(global_policies),
                        )
                    )
                else:
                    lists.append((("tenants", str(name), "policies"), own, 0))
    for prefix, policies, offset in lists:
        if not isinstance(policies, list):
            continue
        try:
            build_engine(policies)
        except PolicyConfigError as exc:
            for loc, msg in exc.errors:
                if offset and loc and isinstance(loc[0], int):
                    if loc[0] < offset:
                        continue  # a global entry's error, already reported under `policies`
                    loc = (loc[0] - offset, *loc[1:])
                errors.append((_key_path((*prefix, *loc)), msg))
    return errors


def _unknown_exporters(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Routes naming exporters that are not configured (checked even if other keys are bad)."""
    tenants = raw.get("tenants", {"default": {"exporters": ["file"]}})
    exporters = raw.get("exporters", {"file": None})
    if not isinstance(tenants, dict) or not isinstance(exporters, dict):
        return []
    known = ", ".join(sorted(map(str, exporters))) or "none"
    errors = []
    for tenant, route in tenants.items():
        names = route.get("exporters") if isinstance(route, dict) else None
        for i, name in enumerate(names if isinstance(names, list) else []):
            if name not in exporters:
                errors.append(
                    (
                        f"tenants.{tenant}.exporters.{i}",
                        f"unknown exporter {name!r} (configured: {known})",
                    )
                )
    return errors


def load_settings(
    path: str | Path | None, environ: dict[str, str] | None = None, read_tokens: bool = True
) -> Settings:
    """Read, override from CAUDAL_* variables and validate; no file means built-in defaults.

    `read_tokens=False` leaves `ingest.tokens_file` unread: only the gateway needs the tokens,
    so workers need not see the Secret that holds them.
    """
    environ = dict(os.environ) if environ is None else environ
    source = str(path) if path else "<defaults>"
    raw: object = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(source, [("(file)", f"cannot read: {exc.strerror}")]) from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, [("(file)", f"not valid YAML: {exc}")]) from exc
    if isinstance(raw, dict) or raw is None:
        raw = _apply_environment(raw or {}, environ)
        if read_tokens:
            raw = _read_tokens_file(raw, source)
    return validate_mapping(raw, source)


def _read_tokens_file(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge `ingest.tokens_file` into `ingest.tokens` (tokens stay out of the main file)."""
    ingest = raw.get("ingest")
    path = ingest.get("tokens_file") if isinstance(ingest, dict) else None
    if not isinstance(path, str):
        return raw
    key = "ingest.tokens_file"
    try:
        tokens = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(source, [(key, f"cannot read {path}: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, [(key, f"{path} is not valid YAML: {exc}")]) from exc
    if not isinstance(tokens, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()
    ):
        raise ConfigError(source, [(key, f"{path} must map each token to a tenant name")])
    assert isinstance(ingest, dict)
    merged = {**tokens, **(ingest.get("tokens") or {})}
    return {**raw, "ingest": {**ingest, "tokens": merged}}
