"""Synthetic OTLP traffic: a realistic mix of traces, written to the input topic.

Each trace is a small service call tree. Its kind decides what the default policies will see:
`error` (one span with status ERROR), `slow` (longer than 1 s), `critical` (touches the
`checkout` service), `vip` (`user.tier = vip`) or `ordinary`. A trace's spans are split into
several parts sent up to `spread` seconds apart, as SDK batch exporters do, so the worker must
reassemble them; a message packs parts of several traces.

For checking what a worker reports, traces can also lose their root span (`rootless`), hold a
span whose parent never arrives (`orphans`), and take part in an A/B experiment whose variants
have known error rates and latencies. `GroundTruth` tallies what was generated so the worker's
metrics can be compared with it. `fast` mode resends prebuilt traces under fresh trace IDs, to
offer more load than a worker can take (`caudal generate --fast --rate 0 --duration 60`).
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

# Hands one message (value, headers) to Kafka.
Produce = Callable[[bytes, list[tuple[str, str | bytes | None]]], None]

__all__ = [
    "DEFAULT_MIX",
    "Experiment",
    "GeneratorOptions",
    "GroundTruth",
    "TraceKind",
    "Variant",
    "build_trace",
    "parse_experiment",
    "run_generator",
]

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


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: its spans fail with `error_rate` and last about `latency_ms`."""

    name: str
    error_rate: float
    latency_ms: float


@dataclass(frozen=True)
class Experiment:
    """An A/B experiment carried on every span of a share of the traces."""

    id: str
    variants: tuple[Variant, ...]
    share: float = 1.0  # of the traces


def parse_experiment(text: str) -> Experiment:
    """`checkout-v2:a=0.02@50,b=0.1@200`: ID, then variant=error_rate@latency_ms, ..."""
    ident, sep, rest = text.partition(":")
    variants = []
    for item in rest.split(","):
        name, _, spec = item.partition("=")
        rate, _, latency = spec.partition("@")
        try:
            variants.append(Variant(name.strip(), float(rate), float(latency)))
        except ValueError:
            raise ValueError(
                f"experiment variant {item!r} is not NAME=ERROR_RATE@LATENCY_MS"
            ) from None
    if not sep or not ident or not variants:
        raise ValueError(f"experiment {text!r} is not ID:NAME=ERROR_RATE@LATENCY_MS,...")
    return Experiment(ident.strip(), tuple(variants))


@dataclass
class GroundTruth:
    """What a generator produced, tallied from the traces themselves."""

    traces: int = 0
    spans: int = 0
    error_traces: int = 0
    rootless_traces: int = 0
    orphan_spans: int = 0
    # (experiment, variant, service) -> requests / errors / summed seconds
    experiment_requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    experiment_errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    experiment_seconds: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, blocks: Sequence[ResourceSpans], times: int = 1) -> None:
        """Tally one whole trace (sent `times` times under different trace IDs)."""
        spans = [(rs, span) for rs in blocks for ss in rs.scope_spans for span in ss.spans]
        ids = {span.span_id for _, span in spans}
        self.traces += times
        self.spans += len(spans) * times
        self.error_traces += (
            any(s.status.code == Status.STATUS_CODE_ERROR for _, s in spans) * times
        )
        self.rootless_traces += all(span.parent_span_id for _, span in spans) * times
        self.orphan_spans += times * sum(
            1 for _, s in spans if s.parent_span_id and s.parent_span_id not in ids
        )
        for rs, span in spans:
            attrs = {kv.key: kv.value.string_value for kv in span.attributes}
            if "experiment.id" not in attrs:
                continue
            service = next(
                kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"
            )
            key = (attrs["experiment.id"], attrs["experiment.variant"], service)
            self.experiment_requests[key] += times
            self.experiment_errors[key] += (span.status.code == Status.STATUS_CODE_ERROR) * times
            elapsed = span.end_time_unix_nano - span.start_time_unix_nano
            self.experiment_seconds[key] += elapsed / 1e9 * times

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form (experiment keys joined with '/')."""

        def joined(counter: Counter[tuple[str, str, str]]) -> dict[str, float]:
            return {"/".join(key): value for key, value in sorted(counter.items())}

        return {
            "traces": self.traces,
            "spans": self.spans,
            "error_traces": self.error_traces,
            "rootless_traces": self.rootless_traces,
            "orphan_spans": self.orphan_spans,
            "experiment_requests": joined(self.experiment_requests),
            "experiment_errors": joined(self.experiment_errors),
            "experiment_seconds": joined(self.experiment_seconds),
        }


def build_trace(
    rng: random.Random,
    kind: TraceKind,
    tenant: str | None,
    start_ns: int,
    spans: int = 10,
    trace_id: bytes | None = None,
    variant: tuple[str, Variant] | None = None,
) -> tuple[bytes, list[ResourceSpans]]:
    """One trace of `spans` spans of the given kind; tenant (if given) as resource `tenant.id`.

    With `variant` (experiment ID, variant), every span carries `experiment.id` and
    `experiment.variant`, fails with the variant's error rate and lasts its latency.
    """
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
        if variant is not None:
            experiment, arm = variant
            span.attributes.extend(
                [_kv("experiment.id", experiment), _kv("experiment.variant", arm.name)]
            )
            span.end_time_unix_nano = span.start_time_unix_nano + int(
                arm.latency_ms * rng.uniform(0.5, 1.5) * 1_000_000
            )
            if rng.random() < arm.error_rate:
                span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="boom"))
    return trace_id, list(blocks.values())


def _break_integrity(
    rng: random.Random, blocks: list[ResourceSpans], rootless: bool, orphan: bool
) -> None:
    """Drop the root span (its children become orphans) and/or point a span at a lost parent."""
    first = blocks[0].scope_spans[0].spans
    if rootless:
        del first[0]  # build_trace puts the root first
    if orphan:
        candidates = [s for rs in blocks for s in rs.scope_spans[0].spans if s.parent_span_id]
        if candidates:
            rng.choice(candidates).parent_span_id = rng.randbytes(8)
    for rs in [rs for rs in blocks if not rs.scope_spans[0].spans]:
        blocks.remove(rs)


def _split_parts(
    rng: random.Random, blocks: list[ResourceSpans], parts: int
) -> list[list[ResourceSpans]]:
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
    rootless: float = 0.0  # share of traces whose root span is lost
    orphans: float = 0.0  # share of traces with a span whose parent is lost
    experiment: Experiment | None = None
    fast: bool = False  # resend prebuilt traces under new trace IDs, in one part each


def run_generator(
    produce: Produce,
    options: GeneratorOptions,
    should_stop: Callable[[], bool] = lambda: False,
    on_trace: Callable[[bytes, TraceKind, str], None] | None = None,
    truth: GroundTruth | None = None,
) -> int:
    """Generate traces and hand each message (value, headers) to `produce`; return the count."""
    rng = random.Random(options.seed if options.seed is not None else os.getpid() ^ time.time_ns())
    if options.fast:
        return _run_fast(produce, options, rng, should_stop, on_trace, truth)
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
            experiment = options.experiment
            variant = None
            if experiment is not None and rng.random() < experiment.share:
                variant = (experiment.id, rng.choice(experiment.variants))
            trace_id, blocks = build_trace(
                rng,
                kind,
                tenant if options.tenant_via == "resource" else None,
                time.time_ns(),
                options.spans,
                variant=variant,
            )
            rootless = rng.random() < options.rootless
            orphan = rng.random() < options.orphans
            if rootless or orphan:
                _break_integrity(rng, blocks, rootless, orphan)
            if truth is not None:
                truth.add(blocks)
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


def _run_fast(
    produce: Produce,
    options: GeneratorOptions,
    rng: random.Random,
    should_stop: Callable[[], bool],
    on_trace: Callable[[bytes, TraceKind, str], None] | None,
    truth: GroundTruth | None,
) -> int:
    """Prebuilt traces under fresh trace IDs: bytes replaced, nothing rebuilt per trace."""
    kinds = list(options.mix)
    weights = [options.mix[k] for k in kinds]
    templates: list[tuple[TraceKind, bytes, bytes, list[ResourceSpans]]] = []
    for i in range(200):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choices(kinds, weights)[0]
        tenant = options.tenants[i % len(options.tenants)]
        trace_id, blocks = build_trace(rng, kind, tenant, time.time_ns(), options.spans)
        data = ExportTraceServiceRequest(resource_spans=blocks).SerializeToString()
        templates.append((kind, trace_id, data, blocks))
    uses: Counter[int] = Counter()
    made = 0
    started = time.monotonic()
    while not should_stop() and (not options.traces or made < options.traces):
        due = options.per_message
        if options.rate > 0:
            due = min(due, int((time.monotonic() - started) * options.rate) - made)
            if due <= 0:
                time.sleep(0.005)
                continue
        if options.traces:
            due = min(due, options.traces - made)
        parts = []
        for _ in range(due):
            pick = rng.randrange(len(templates))
            kind, old_id, data, _ = templates[pick]
            trace_id = rng.randbytes(16)
            parts.append(data.replace(old_id, trace_id))
            uses[pick] += 1
            if on_trace is not None:
                on_trace(trace_id, kind, "")
        produce(b"".join(parts), [])
        made += due
    if truth is not None:
        # Tally each template once and count it as often as it was sent.
        for pick, times in uses.items():
            truth.add(templates[pick][3], times)
    return made


def _flush_due(queue: list[Any], produce: Produce, options: GeneratorOptions, now: float) -> None:
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


def _send(
    produce: Produce, options: GeneratorOptions, tenant: str, blocks: list[ResourceSpans]
) -> None:
    headers: list[tuple[str, str | bytes | None]] = (
        [("x-tenant-id", tenant.encode())] if options.tenant_via == "header" else []
    )
    produce(ExportTraceServiceRequest(resource_spans=blocks).SerializeToString(), headers)
