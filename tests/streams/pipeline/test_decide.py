"""The decider's four moves: decide a due trace, complete the batch once it is acknowledged,
send a late span after its trace's decision, and decide on arrival in degraded mode."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.config import Settings
from streams.kafka.clients import SPAN_COUNT_HEADER
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache, PolicySets, Remembered
from streams.pipeline.route import TenantRoutes
from streams.wire.origin import origin
from streams.wire.tracekey import trace_key
from tests.streams.pipeline.test_buffer import MemoryStore
from tests.streams.pipeline.test_quarantine import Producer, fragment

SETTINGS = Settings.model_validate(
    {
        "policies": [{"name": "all", "type": "always_sample"}],
        "tenants": {
            "default": {"exporters": ["file"]},
            "acme": {"exporters": ["file"], "quota_spans_per_second": 1, "quota_burst_spans": 1},
        },
        "redaction": {"rules": [{"key": "user.email", "action": "delete"}]},
    }
)


def decider() -> tuple[Decider, Producer]:
    buffer = TraceBuffer(MemoryStore(), wait=1.0, max_traces=100)  # type: ignore[arg-type]
    cache = DecisionCache(MemoryStore(), kept=100, dropped=100, ttl=60.0)  # type: ignore[arg-type]
    producer = Producer()
    routes = TenantRoutes(SETTINGS)
    decide = Decider(PolicySets.from_settings(SETTINGS), routes, buffer, cache, producer, "sampled")
    return decide, producer


def spans_of(record: dict[str, object]) -> list[str]:
    request = ExportTraceServiceRequest.FromString(record["value"])  # type: ignore[arg-type]
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def attributes(record: dict[str, object]) -> dict[str, str]:
    request = ExportTraceServiceRequest.FromString(record["value"])  # type: ignore[arg-type]
    span = request.resource_spans[0].scope_spans[0].spans[0]
    return {a.key: a.value.string_value or str(a.value.double_value) for a in span.attributes}


def test_a_due_trace_is_decided_whole_and_freed_only_once_acknowledged() -> None:
    decide, producer = decider()
    key = trace_key(b"a" * 16, "default")
    for n in range(3):
        decide.buffer.append(0, key, fragment(b"a" * 16, n), 1.0)
    assert decide.decide_due(now=1.5).items == []  # the window (1 s) is still open
    batch = decide.decide_due(now=2.5)
    [record] = producer.on("sampled")
    assert sorted(spans_of(record)) == ["op-0", "op-1", "op-2"]
    assert dict(record["headers"])[SPAN_COUNT_HEADER] == b"3"  # type: ignore[arg-type]
    assert attributes(record)["sampling.policy"] == "all"
    stored = decide.buffer.store  # type: ignore[attr-defined]
    assert stored.held_traces(0) == {key}, "in the table until the broker acknowledged it"
    decide.complete(batch, now=2.5)
    assert stored.data[0] == {} and len(decide.buffer) == 0
    assert decide.cache.get(key) is not None and decide.cache.get(key).kept


def test_a_kept_trace_that_was_not_acknowledged_is_decided_again() -> None:
    decide, producer = decider()
    key = trace_key(b"b" * 16, "default")
    decide.buffer.append(0, key, fragment(b"b" * 16, 0), 1.0)
    batch = decide.decide_due(now=2.5)
    batch.failed.add(key)
    decide.complete(batch, now=2.5)
    assert len(decide.buffer) == 1 and decide.cache.get(key) is None, "queued again"
    decide.complete(decide.decide_due(now=10.0), now=10.0)
    assert len(producer.on("sampled")) == 2
    assert len(decide.buffer) == 0 and decide.buffer.store.data[0] == {}  # type: ignore[attr-defined]


def test_a_late_span_follows_its_traces_decision_redacted() -> None:
    decide, producer = decider()
    key = trace_key(b"c" * 16, "default")
    kept = Remembered(1.0, 0, True, "all", 1.0, "default")
    late = ExportTraceServiceRequest.FromString(fragment(b"c" * 16, 7))
    span = late.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.add(key="user.email").value.string_value = "a@example.com"
    decide.follow(key, kept, late.SerializeToString())
    [record] = producer.on("sampled")
    assert spans_of(record) == ["op-7"]
    assert "user.email" not in attributes(record) and attributes(record)["sampling.policy"] == "all"
    dropped = Remembered(1.0, 0, False, "none", 1.0, "default")
    decide.follow(key, dropped, fragment(b"c" * 16, 8))
    assert len(producer.on("sampled")) == 1, "a late span of a dropped trace is dropped"


def test_degraded_mode_decides_on_arrival_within_the_tenants_quota() -> None:
    decide, producer = decider()
    trace_id = b"d" * 16
    decide.shed(trace_key(trace_id, "default"), fragment(trace_id, 0), 100.0, now=1.0)
    [record] = producer.on("sampled")
    assert attributes(record)["sampling.policy"] == "degraded"
    decide.shed(trace_key(trace_id, "default"), fragment(trace_id, 1), 0.0, now=1.0)
    assert len(producer.on("sampled")) == 1, "at 0 % only error spans are kept"
    decide.routes.set_share(1.0)
    acme = trace_key(trace_id, "acme")
    decide.shed(acme, fragment(trace_id, 2), 100.0, now=1.0)
    decide.shed(acme, fragment(trace_id, 3), 100.0, now=1.0)  # over acme's quota of 1 span
    assert len(producer.on("sampled")) == 2


def decider_over(buffer: TraceBuffer, decisions: MemoryStore, kept: int = 100) -> Decider:
    cache = DecisionCache(decisions, kept=kept, dropped=100, ttl=60.0, segments=buffer.segment_span)  # type: ignore[arg-type]
    return Decider(
        PolicySets.from_settings(SETTINGS), TenantRoutes(SETTINGS), buffer, cache, Producer(), "s"
    )


def test_a_late_span_during_the_flush_leaves_one_stored_decision() -> None:
    decisions = MemoryStore()
    decide = decider_over(TraceBuffer(MemoryStore(), wait=1.0, max_traces=100), decisions)
    key = trace_key(b"l" * 16, "default")
    decide.buffer.append(0, key, fragment(b"l" * 16, 0), 1.0, origin(0, 1))
    batch = decide.decide_due(now=2.5)
    # While the kept trace's produce is flushed, a late span of it arrives and is followed.
    decided = decide.cache.get(key)
    assert decided is not None
    decide.follow(key, decided, fragment(b"l" * 16, 1))
    decide.cache.advance(key, decided, origin(0, 2))
    decide.complete(batch, now=2.5)  # stores nothing older than what the late span stored
    assert decisions.held_decisions(0) == {key}
    restored = DecisionCache(decisions, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    restored.rebuild([0])
    assert restored.get(key).already_applied(origin(0, 2))  # type: ignore[union-attr]
    decide.cache.limits = {True: 0, False: 0}
    decide.cache.evict(now=3.0)  # the decision goes, and its one record with it
    assert decisions.data[0] == {}


def test_a_decided_traces_spans_left_in_a_shared_segment_stay_decided_after_a_restart() -> None:
    traces, decisions = MemoryStore(), MemoryStore()
    decide = decider_over(TraceBuffer(traces, wait=5.0, max_traces=100), decisions, kept=0)
    a, b = trace_key(b"a" * 16, "default"), trace_key(b"b" * 16, "default")
    decide.buffer.append(0, a, fragment(b"a" * 16, 0), 1.0, origin(0, 1))
    # A's late fragment shares its segment with B, which waits longer.
    both = [(a, fragment(b"a" * 16, 1), origin(0, 2)), (b, fragment(b"b" * 16, 0), origin(0, 3))]
    decide.buffer.append_many(0, both, 4.0)
    decide.complete(decide.decide_due(now=6.5), now=6.5)  # A decided, its decision evicted
    assert decide.cache.get(a) is None and traces.held_traces(0) == {a, b}
    assert decisions.held_decisions(0) == {a}, "kept while A's spans lie in B's segment"
    # A crash now: the next owner rebuilds both tables and must not decide A again.
    buffer = TraceBuffer(traces, wait=5.0, max_traces=100)
    again = decider_over(buffer, decisions)
    unreadable = buffer.rebuild([0])
    again.settle_recovered([0], unreadable, again.cache.rebuild([0]))
    assert not buffer.holds(0, a) and buffer.holds(0, b)
    again.complete(again.decide_due(now=20.0), now=20.0)  # B decided: its segment goes
    again.cache.limits = {True: 0, False: 0}
    again.cache.evict(now=21.0)
    assert traces.data[0] == {} and decisions.data[0] == {}
