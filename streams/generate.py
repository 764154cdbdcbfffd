"""Synthetic OTLP traffic: a realistic mix of traces, written to the input topic.

Each trace is a small service call tree. Its kind decides what the default policies will see:
`error` (one span with status ERROR), `slow` (longer than 1 s), `critical` (touches the
`checkout` service), `vip` (`user.tier = vip`) or `ordinary`. A trace's spans are split into
several parts sent up to `spread` seconds apart, as SDK batch exporters do, so the worker must
reassemble them; a message packs parts of several traces.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

__all__ = ["DEFAULT_MIX", "GeneratorOptions", "TraceKind", "build_trace", "run_generator"]

log = logging.getLogger(__name__)

TraceKind = str
DEFAULT_MIX: dict[TraceKind, float] = {
    "error": 0.05,
    "slow": 0.05,
    "critical": 0.05,
    "vip": 0.10,
    "ordinary": 0.75,
}
_SERVICES = ("frontend", "cart", "catalog", "inventory", "shipping", "search")
_SCOPE = InstrumentationScope(name="caudal.generate", version="1")


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def build_trace(
    rng: random.Random,
    kind: TraceKind,
    tenant: str | None,
    start_ns: int,
    spans: int = 10,
    trace_id: bytes | None = None,
) -> tuple[bytes, list[ResourceSpans]]:
    """One trace of `spans` spans of the given kind; tenant (if given) as resource `tenant.id`."""
    trace_id = trace_id or rng.randbytes(16)
    duration_ns = (
        rng.randint(1_500, 3_000) * 1_000_000 if kind == "slow" else rng.randint(5, 400) * 1_000_000
    )
    services = [rng.choice(_SERVICES) for _ in range(spans)]
    services[0] = "frontend"
    if kind == "critical":
        services[rng.randrange(1, spans) if spans > 1 else 0] = "checkout"
    error_at = rng.randrange(spans) if kind == "error" else -1
    blocks: dict[str, ResourceSpans] = {}
    span_ids = [rng.randbytes(8) for _ in range(spans)]
    for i in range(spans):
        service = services[i]
        rs = blocks.get(service)
        if rs is None:
            attrs = [_kv("service.name", service)]
            if tenant is not None:
                attrs.append(_kv("tenant.id", tenant))
            rs = blocks[service] = ResourceSpans(resource=Resource(attributes=attrs))
            rs.scope_spans.add(scope=_SCOPE)
        # The root spans the whole trace; children sit inside it.
        begin = start_ns if i == 0 else start_ns + rng.randint(0, duration_ns // 2)
        end = start_ns + duration_ns if i == 0 else begin + rng.randint(1, duration_ns // 2)
        span = rs.scope_spans[0].spans.add(
            trace_id=trace_id,
            span_id=span_ids[i],
            parent_span_id=b"" if i == 0 else span_ids[rng.randrange(i)],
            name=f"{service} op{i}",
            kind=Span.SPAN_KIND_SERVER if i == 0 else Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=begin,
            end_time_unix_nano=end,
        )
        if kind == "vip":
            span.attributes.append(_kv("user.tier", "vip"))
        if i == error_at:
            span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="boom"))
    return trace_id, list(blocks.values())


def _split_parts(rng: random.Random, blocks: list[ResourceSpans], parts: int) -> list[list]:
    """Cut a trace's spans into up to `parts` pieces, each keeping its resource and scope."""
    spans = [(rs, span) for rs in blocks for span in rs.scope_spans[0].spans]
    parts = max(1, min(parts, len(spans)))
    cuts = sorted(rng.sample(range(1, len(spans)), parts - 1)) if parts > 1 else []
    pieces = []
    for lo, hi in zip([0, *cuts], [*cuts, len(spans)], strict=True):
        out: dict[int, ResourceSpans] = {}
        for rs, span in spans[lo:hi]:
            target = out.get(id(rs))
            if target is None:
                target = out[id(rs)] = ResourceSpans(resource=rs.resource)
                target.scope_spans.add(scope=_SCOPE)
            target.scope_spans[0].spans.append(span)
        pieces.append(list(out.values()))
    return pieces


@dataclass
class GeneratorOptions:
    """What to generate and how fast."""

    traces: int = 0  # 0: until stopped
    rate: float = 200.0  # traces per second; 0: as fast as possible
    spans: int = 10
    tenants: Sequence[str] = ("acme", "globex")
    tenant_via: str = "resource"  # resource (tenant.id) or header (x-tenant-id)
    mix: dict[TraceKind, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    parts: int = 3  # pieces each trace is cut into
    spread: float = 2.0  # seconds over which a trace's pieces are sent
    per_message: int = 20  # pieces packed per Kafka message
    seed: int | None = None


def run_generator(
    produce: Callable[[bytes, list[tuple[str, bytes]]], None],
    options: GeneratorOptions,
    should_stop: Callable[[], bool] = lambda: False,
    on_trace: Callable[[bytes, TraceKind, str], None] | None = None,
) -> int:
    """Generate traces and hand each message (value, headers) to `produce`; return the count."""
    rng = random.Random(options.seed if options.seed is not None else os.getpid() ^ time.time_ns())
    kinds = list(options.mix)
    weights = [options.mix[k] for k in kinds]
    queue: list[tuple[float, int, str, list[ResourceSpans]]] = []
    seq = made = 0
    started = time.monotonic()
    while not should_stop():
        now = time.monotonic()
        due_traces = options.traces - made if options.traces else 1 << 30
        if options.rate > 0:
            due_traces = min(due_traces, int((now - started) * options.rate) - made)
        for _ in range(max(0, min(due_traces, 1000))):
            kind = rng.choices(kinds, weights)[0]
            tenant = options.tenants[made % len(options.tenants)]
            trace_id, blocks = build_trace(
                rng,
                kind,
                tenant if options.tenant_via == "resource" else None,
                time.time_ns(),
                options.spans,
            )
            if on_trace is not None:
                on_trace(trace_id, kind, tenant)
            for piece in _split_parts(rng, blocks, options.parts):
                seq += 1
                delay = rng.uniform(0, options.spread) if seq % options.parts else 0.0
                heapq.heappush(queue, (now + delay, seq, tenant, piece))
            made += 1
        _flush_due(queue, produce, options, now)
        if options.traces and made >= options.traces and not queue:
            break
        time.sleep(0.01 if queue or options.rate > 0 else 0)
    return made


def _flush_due(queue, produce, options: GeneratorOptions, now: float) -> None:
    """Send every piece whose time has come, packed per tenant into messages."""
    ready: dict[str, list[ResourceSpans]] = {}
    counts: dict[str, int] = {}
    while queue and queue[0][0] <= now:
        _, _, tenant, piece = heapq.heappop(queue)
        ready.setdefault(tenant, []).extend(piece)
        counts[tenant] = counts.get(tenant, 0) + 1
        if counts[tenant] >= options.per_message:
            _send(produce, options, tenant, ready.pop(tenant))
            counts[tenant] = 0
    for tenant, blocks in ready.items():
        _send(produce, options, tenant, blocks)


def _send(produce, options: GeneratorOptions, tenant: str, blocks: list[ResourceSpans]) -> None:
    headers = [("x-tenant-id", tenant.encode())] if options.tenant_via == "header" else []
    produce(ExportTraceServiceRequest(resource_spans=blocks).SerializeToString(), headers)
