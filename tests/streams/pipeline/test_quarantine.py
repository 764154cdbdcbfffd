"""No buffered trace can stop the decisions: what cannot be used is dead-lettered, the rest goes
on; every record produced fits the message size limit."""

from __future__ import annotations

import threading

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from streams.config import Settings
from streams.kafka.clients import SPAN_COUNT_HEADER
from streams.kafka.dead_letters import DLQ_REASON_HEADER
from streams.ops.health import ExportOutcomes, Health, Supervised
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import DEAD_LETTER_POLICY, Decider, DecisionCache, PolicySets
from streams.pipeline.route import TenantRoutes
from streams.wire.records import RECORD_MARGIN, record_size
from streams.wire.tracekey import trace_key
from tests.streams.pipeline.test_buffer import MemoryStore

SETTINGS = Settings.model_validate({"policies": [{"name": "all", "type": "always_sample"}]})


class Producer:
    """Records what was produced per topic and acknowledges everything."""

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def produce(self, topic: str, **kwargs: object) -> None:
        self.records.append({"topic": topic, **kwargs})

    def poll(self, timeout: float) -> int:
        return 0

    def on(self, topic: str) -> list[dict[str, object]]:
        return [r for r in self.records if r["topic"] == topic]


def fragment(trace_id: bytes, n: int, size: int = 0) -> bytes:
    span = Span(trace_id=trace_id, span_id=(n + 1).to_bytes(8, "big"), name=f"op-{n}")
    if size:
        span.attributes.add(key="pad", value=AnyValue(string_value="p" * size))
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


def decider(max_message_bytes: int = 1 << 20) -> tuple[Decider, Producer]:
    store = MemoryStore()
    buffer = TraceBuffer(store, wait=1.0, max_traces=100)  # type: ignore[arg-type]
    cache = DecisionCache(MemoryStore(), kept=100, dropped=100, ttl=60.0)  # type: ignore[arg-type]
    producer = Producer()
    routes = TenantRoutes(SETTINGS)
    policies = PolicySets.from_settings(SETTINGS)
    return (
        Decider(policies, routes, buffer, cache, producer, "sampled", "dlq", max_message_bytes),
        producer,
    )


def reasons(producer: Producer) -> list[bytes]:
    return [dict(r["headers"])[DLQ_REASON_HEADER] for r in producer.on("dlq")]  # type: ignore[arg-type]


def test_a_fragment_that_is_not_otlp_is_dead_lettered_and_the_trace_decided_on_the_rest() -> None:
    decide, producer = decider()
    key = trace_key(b"a" * 16, "acme")
    decide.buffer.append(0, key, fragment(b"a" * 16, 0), 1.0)
    decide.buffer.append(0, key, b"\xff\xff garbage", 1.0)
    decide.buffer.append(0, key, fragment(b"a" * 16, 1), 1.0)
    batch = decide.decide_due(10.0)
    decide.complete(batch, 10.0)
    [kept] = producer.on("sampled")
    spans = ExportTraceServiceRequest.FromString(kept["value"]).resource_spans  # type: ignore[arg-type]
    assert sum(len(ss.spans) for rs in spans for ss in rs.scope_spans) == 2
    assert kept["key"] == b"acme"
    assert reasons(producer) == [b"invalid_protobuf"]
    assert decide.buffer.store.data[0] == {}  # type: ignore[attr-defined]


def test_a_fragment_broken_inside_is_dead_lettered_and_the_trace_decided_on_the_rest() -> None:
    # An OTLP request at its top level (field 1, three bytes), whose ResourceSpans is not one:
    # the decider reads the stored bytes without parsing them first, so this shows only when
    # they are read, and must end the same way as garbage at the top level.
    decide, producer = decider()
    key = trace_key(b"i" * 16, "acme")
    decide.buffer.append(0, key, fragment(b"i" * 16, 0), 1.0)
    decide.buffer.append(0, key, b"\x0a\x03\xff\xff\xff", 1.0)
    decide.buffer.append(0, key, fragment(b"i" * 16, 1), 1.0)
    decide.complete(decide.decide_due(10.0), 10.0)
    [kept] = producer.on("sampled")
    spans = ExportTraceServiceRequest.FromString(kept["value"]).resource_spans  # type: ignore[arg-type]
    assert sum(len(ss.spans) for rs in spans for ss in rs.scope_spans) == 2
    assert reasons(producer) == [b"invalid_protobuf"]
    assert decide.buffer.store.data[0] == {}  # type: ignore[attr-defined]


def test_a_trace_of_garbage_is_dead_lettered_and_its_late_spans_follow_it() -> None:
    decide, producer = decider()
    key = trace_key(b"g" * 16, "acme")
    other = trace_key(b"o" * 16, "acme")
    decide.buffer.append(0, key, b"\xff\xff garbage", 1.0)
    decide.buffer.append(0, other, fragment(b"o" * 16, 0), 1.0)
    decide.complete(decide.decide_due(10.0), 10.0)
    assert len(producer.on("sampled")) == 1, "the other trace is decided as usual"
    remembered = decide.cache.get(key)
    assert remembered is not None and remembered.policy == DEAD_LETTER_POLICY
    decide.follow(key, remembered, fragment(b"g" * 16, 5))
    assert reasons(producer) == [b"invalid_protobuf", b"undecidable_trace"]
    assert len(producer.on("sampled")) == 1


def test_a_trace_that_fails_to_process_is_quarantined_whole() -> None:
    decide, producer = decider()
    bad, good = trace_key(b"b" * 16, "acme"), trace_key(b"c" * 16, "acme")
    decide.buffer.append(0, bad, fragment(b"b" * 16, 0), 1.0)
    decide.buffer.append(0, good, fragment(b"c" * 16, 0), 1.0)
    redact = decide.routes.redact

    def failing(tenant: str, request: bytes) -> bytes:
        parsed = ExportTraceServiceRequest.FromString(request)
        if parsed.resource_spans[0].scope_spans[0].spans[0].trace_id == b"b" * 16:
            raise RuntimeError("redaction failed")
        return redact(tenant, request)

    decide.routes.redact = failing  # type: ignore[method-assign]
    decide.complete(decide.decide_due(10.0), 10.0)
    assert reasons(producer) == [b"undecidable_trace"]
    assert len(producer.on("sampled")) == 1
    assert decide.buffer.store.data[0] == {}  # type: ignore[attr-defined]


def test_a_kept_trace_over_the_message_limit_is_exported_in_several_records() -> None:
    limit = 64 * 1024
    decide, producer = decider(max_message_bytes=limit)
    key = trace_key(b"h" * 16, "acme")
    for n in range(40):
        decide.buffer.append(0, key, fragment(b"h" * 16, n, size=5000), 1.0)
    decide.complete(decide.decide_due(10.0), 10.0)
    records = producer.on("sampled")
    assert len(records) >= 4
    for r in records:
        size = record_size(r["key"], r["value"], r["headers"])  # type: ignore[arg-type]
        assert size <= limit - RECORD_MARGIN
    counts = [int(dict(r["headers"])[SPAN_COUNT_HEADER]) for r in records]  # type: ignore[arg-type]
    assert sum(counts) == 40


def test_a_thread_that_dies_fails_the_worker() -> None:
    class Broken(Supervised):
        def work(self) -> None:
            raise RuntimeError("consumer closed")

    health = Health(SETTINGS, buffered=lambda: 0, outcomes=ExportOutcomes())
    failed = threading.Event()

    def on_failure(reason: str) -> None:
        health.failure = reason
        failed.set()

    thread = Broken("caudal-broken")
    thread.on_failure = on_failure
    health.set_pipeline("running")
    health.beat()
    assert health.alive()
    thread.start()
    assert failed.wait(5)
    assert not health.alive()
    state, why = health.evaluate()
    assert state == "unhealthy" and "RuntimeError: consumer closed" in why[-1]
