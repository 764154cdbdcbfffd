"""Intake: each record of the buffer agent buffered, followed or dead-lettered, never raised."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from streams.config import Settings
from streams.kafka.dead_letters import DLQ_REASON_HEADER
from streams.ops.experiments import ExperimentMeter
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache, PolicySets, Remembered
from streams.pipeline.degrade import Degradation, LagClock
from streams.pipeline.intake import Intake
from streams.pipeline.progress import DirectClock, PartitionClock
from streams.pipeline.route import TenantResolver, TenantRoutes
from streams.wire.origin import origin, pack_origins
from streams.wire.otlp import pack_index
from streams.wire.tracekey import trace_key
from tests.streams.pipeline.test_buffer import MemoryStore
from tests.streams.pipeline.test_quarantine import Producer


@dataclass
class Message:
    """What Faust hands the agent."""

    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    topic: str = "caudal-spans"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    timestamp: float = 100.0


def fragment(trace_id: bytes, n: int = 0) -> bytes:
    span = Span(trace_id=trace_id, span_id=(n + 1).to_bytes(8, "big"), name="op")
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


def intake(direct: bool = False, **config: Any) -> tuple[Intake, Any]:
    settings = Settings.model_validate(
        {"policies": [{"name": "all", "type": "always_sample"}], **config}
    )
    buffer = TraceBuffer(MemoryStore(), wait=5.0, max_traces=100)  # type: ignore[arg-type]
    cache = DecisionCache(MemoryStore(), kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    producer = Producer()
    decider = Decider(
        PolicySets.from_settings(settings), TenantRoutes(settings), buffer, cache, producer, "s"
    )
    worker = SimpleNamespace(
        settings=settings,
        buffer=buffer,
        cache=cache,
        decider=decider,
        producer=producer,
        lag=LagClock(),
        degradation=Degradation(settings.degradation),
        meter=ExperimentMeter(settings.experiments),
    )
    clock = DirectClock(lambda p: False) if direct else PartitionClock()
    return Intake(worker, TenantResolver.from_settings(settings), clock), worker  # type: ignore[arg-type]


def spans_record(traces: list[tuple[bytes, bytes]], tenant: bytes = b"acme", **kw: Any) -> Message:
    value, index = pack_index(traces)
    headers = [("caudal-index", index), ("caudal-tenant", tenant)]
    return Message(value, headers, **kw)


def reasons(worker: Any) -> list[str]:
    return [
        dict(r["headers"])[DLQ_REASON_HEADER].decode()
        for r in worker.producer.records
        if r["topic"] == worker.settings.kafka.dlq_topic
    ]


def test_fragments_are_buffered_per_tenant() -> None:
    take, worker = intake()
    tid = b"a" * 16
    take.handle(spans_record([(tid, fragment(tid)), (b"b" * 16, fragment(b"b" * 16))]))
    take.handle(spans_record([(tid, fragment(tid, 1))], tenant=b"globex", offset=1))
    assert worker.buffer.holds(0, trace_key(tid, "acme"))
    assert worker.buffer.holds(0, trace_key(tid, "globex"))
    assert len(worker.buffer) == 3
    assert reasons(worker) == []


def test_a_copy_of_a_fragment_is_skipped() -> None:
    take, worker = intake()
    tid = b"c" * 16
    record = spans_record([(tid, fragment(tid))])
    record.headers.append(("caudal-origin", pack_origins([origin(3, 17)])))
    take.handle(record)
    take.handle(record)
    entry = worker.buffer.entry(0, trace_key(tid, "acme"))
    assert entry is not None and entry.fragments == 1


def test_bad_records_are_dead_lettered_with_their_reason() -> None:
    take, worker = intake()
    tid = b"d" * 16
    take.handle(spans_record([(tid, fragment(tid))], tenant="é".encode() * 150))
    take.handle(spans_record([(tid, fragment(tid))], tenant=b"\xff\xfe"))
    take.handle(Message(b"junk", [("caudal-index", tid + (99).to_bytes(4, "big"))]))
    take.handle(Message(b"junk", [("caudal-index", b"\x01" * 7)]))
    take.handle(Message(b"junk"))
    broken = spans_record([(tid, fragment(tid))])
    broken.headers.append(("caudal-origin", b"\x00" * 5))
    take.handle(broken)
    assert reasons(worker) == [
        "invalid_tenant",
        "invalid_tenant",
        "invalid_index",
        "invalid_index",
        "invalid_index",
        "invalid_origin",
    ]
    assert len(worker.buffer) == 0


def test_a_late_fragment_that_is_not_otlp_is_dead_lettered_and_the_rest_goes_on() -> None:
    take, worker = intake()
    decided, other = b"e" * 16, b"f" * 16
    worker.cache.remember(trace_key(decided, "acme"), Remembered(1.0, 0, True, "all", 1.0, "acme"))
    take.handle(spans_record([(decided, b"\xff\xff not otlp"), (other, fragment(other))]))
    assert reasons(worker) == ["invalid_protobuf"]
    assert worker.buffer.holds(0, trace_key(other, "acme"))


def test_a_fragment_over_the_record_budget_is_refused() -> None:
    take, worker = intake(kafka={"max_message_bytes": 128 * 1024})
    tid = b"g" * 16
    take.handle(spans_record([(tid, b"x" * (100 * 1024))]))
    assert reasons(worker) == ["fragment_too_large"]


def test_input_keyed_by_trace_id_follows_the_split_rules() -> None:
    take, worker = intake(direct=True, kafka={"input_keyed_by_trace_id": True})
    good = ExportTraceServiceRequest.FromString(fragment(b"h" * 16))
    good.MergeFrom(ExportTraceServiceRequest.FromString(fragment(b"8bytes!!")))
    take.handle(Message(good.SerializeToString(), [("x-tenant-id", b"acme")], topic="otlp"))
    take.handle(Message(b"\xff junk", topic="otlp", offset=1))
    assert worker.buffer.holds(0, trace_key(b"h" * 16, "acme"))
    assert reasons(worker) == ["invalid_trace_id", "invalid_protobuf"]
