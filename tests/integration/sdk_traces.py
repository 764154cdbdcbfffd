"""Traces made with the OpenTelemetry SDK and encoded by its own OTLP protobuf encoder."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

SERVICES = ("frontend", "cart", "catalog", "shipping")
MS = 1_000_000


@dataclass
class SdkTraces:
    """Builds traces per kind and tenant; `spans_by_trace` holds the finished SDK spans."""

    seed: int = 7
    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    providers: dict[tuple[str, str | None], TracerProvider] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # trace ID hex → kind
    tenants: dict[str, str] = field(default_factory=dict)  # trace ID hex → tenant

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _tracer(self, service: str, tenant: str | None) -> trace_api.Tracer:
        key = (service, tenant)
        provider = self.providers.get(key)
        if provider is None:
            attrs = {"service.name": service}
            if tenant is not None:
                attrs["tenant.id"] = tenant
            provider = TracerProvider(resource=Resource.create(attrs))
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
            self.providers[key] = provider
        return provider.get_tracer("caudal.tests")

    def make(self, kind: str, tenant: str, tenant_in_resource: bool = True, spans: int = 4) -> str:
        """Create one finished trace of `kind`; return its trace ID (hex)."""
        res_tenant = tenant if tenant_in_resource else None
        start = 1_700_000_000_000 * MS + self.rng.randrange(10**12)
        duration = 1500 * MS if kind == "slow" else self.rng.randint(5, 300) * MS
        services = ["frontend"] + [self.rng.choice(SERVICES[1:]) for _ in range(spans - 1)]
        if kind == "critical":
            services[-1] = "checkout"
        root = self._tracer("frontend", res_tenant).start_span("GET /", start_time=start)
        ctx = trace_api.set_span_in_context(root)
        for i, service in enumerate(services[1:], start=1):
            child = self._tracer(service, res_tenant).start_span(
                f"{service} call", context=ctx, start_time=start + i * MS
            )
            if kind == "vip":
                child.set_attribute("user.tier", "vip")
            if kind == "error" and i == 1:
                child.set_status(Status(StatusCode.ERROR, "boom"))
            child.end(end_time=start + i * MS + MS)
        root.end(end_time=start + duration)
        trace_id = format(root.get_span_context().trace_id, "032x")
        self.kinds[trace_id] = kind
        self.tenants[trace_id] = tenant
        return trace_id

    def spans_by_trace(self) -> dict[str, list[ReadableSpan]]:
        grouped: dict[str, list[ReadableSpan]] = defaultdict(list)
        for span in self.exporter.get_finished_spans():
            grouped[format(span.context.trace_id, "032x")].append(span)
        return grouped


def encode(spans: list[ReadableSpan]) -> bytes:
    """The SDK's OTLP encoder: an ExportTraceServiceRequest, as an OTLP exporter would send."""
    return encode_spans(spans).SerializeToString()
