"""Trace buffer and decision cache on an in-memory stand-in for the Faust table."""

from __future__ import annotations

from collections import defaultdict

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from streams.pipeline import buffer as buffer_module
from streams.pipeline.buffer import (
    FRAGMENT_OVERHEAD,
    Queue,
    TraceBuffer,
    decode_segment,
    segment_key,
)
from streams.pipeline.decide import DecisionCache, Remembered, decode_decisions
from streams.wire.origin import NO_ORIGIN, origin, pack_origins
from streams.wire.records import RECORD_MARGIN
from streams.wire.tracekey import trace_key


class MemoryStore:
    """The TableStore interface over dicts, recording changelog writes."""

    topic = "caudal-traces-changelog"

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data[partition].get(key)

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [self.data[partition].get(key) for key in keys]

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data[partition][key] = value
        self.changelog.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        self.data[partition].pop(key, None)
        self.changelog.append((partition, key, None))

    def items(self, partition: int):
        return iter(sorted(self.data[partition].items()))

    def held_traces(self, partition: int) -> set[bytes]:
        """The trace keys with a fragment in a stored segment."""
        return {
            trace
            for value in self.data[partition].values()
            for trace, _, _, _ in decode_segment(value)[1]
        }

    def held_decisions(self, partition: int) -> set[bytes]:
        """The trace keys with a decision in a stored decision record."""
        return {
            trace
            for value in self.data[partition].values()
            for trace, _ in decode_decisions(partition, value)
        }


def key(tid: bytes, tenant: str = "t") -> bytes:
    return trace_key(tid, tenant)


def buffer_on(store: MemoryStore, **limits: int) -> TraceBuffer:
    return TraceBuffer(store, wait=10.0, **{"max_traces": 100, **limits})  # type: ignore[arg-type]


def test_fragments_append_and_window_starts_at_first_span() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    buffer.append(2, key(b"t" * 16, "acme"), b"AA", now=100.0)
    buffer.append(2, key(b"t" * 16, "acme"), b"BB", now=105.0)
    assert buffer.pop_due(109.9, limit=10) == []
    [(trace, entry)] = buffer.pop_due(110.0, limit=10)
    loaded = buffer.load(trace, entry)
    assert loaded is not None
    assert (loaded.first_seen, loaded.otlp) == (100.0, b"AABB")
    assert len(buffer) == 0


def test_two_tenants_sharing_a_trace_id_are_two_traces() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    tid = b"s" * 16
    buffer.append(0, key(tid, "acme"), b"A", now=1.0)
    buffer.append(0, key(tid, "globex"), b"G", now=2.0)
    due = buffer.pop_due(100.0, limit=10)
    assert [(k, buffer.load(k, e).otlp) for k, e in due] == [  # type: ignore[union-attr]
        (key(tid, "acme"), b"A"),
        (key(tid, "globex"), b"G"),
    ]


def test_append_writes_only_the_new_fragment() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    trace = key(b"h" * 16)
    for i in range(50):
        buffer.append(0, trace, bytes([i]) * 1000, now=1.0)
    # Each append wrote one record of its own size, not the trace so far.
    sizes = {len(value or b"") for _, _, value in store.changelog}
    assert len(store.changelog) == 50 and len(sizes) == 1
    assert 1000 < sizes.pop() <= 1000 + FRAGMENT_OVERHEAD
    [(k, entry)] = buffer.pop_due(100.0, 10)
    loaded = buffer.load(k, entry)
    assert loaded is not None and loaded.otlp == b"".join(bytes([i]) * 1000 for i in range(50))
    buffer.remove(k, entry)
    assert store.data[0] == {}


def test_a_decision_batch_reads_each_segment_once_and_a_gone_one_as_none() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    one = [(key(bytes([i]) * 16), b"one-%d" % i, i) for i in range(3)]
    two = [(key(bytes([i]) * 16), b"two-%d" % i, 10 + i) for i in range(3, 5)]
    buffer.append_many(0, one, now=1.0)  # one segment for three traces
    buffer.append_many(0, two, now=2.0)
    buffer.append(0, key(b"\x09" * 16), b"three", now=2.0)
    del store.data[0][segment_key(1)]  # the second segment is gone
    reads: list[list[bytes]] = []
    get_many = store.get_many
    store.get_many = lambda p, keys: reads.append(keys) or get_many(p, keys)  # type: ignore[method-assign]
    loaded = [(k, t and t.otlp) for k, _, t in buffer.load_each(buffer.pop_due(100.0, 10))]
    assert loaded == [
        *((k, fragment) for k, fragment, _ in one),
        *((k, None) for k, _, _ in two),
        (key(b"\x09" * 16), b"three"),
    ]
    assert reads == [[segment_key(0)], [segment_key(1)], [segment_key(2)]]


def test_full_buffer_decides_oldest_early_never_drops() -> None:
    store = MemoryStore()
    buffer = buffer_on(store, max_traces=3)
    for i in range(5):
        buffer.append(0, key(bytes([i]) * 16), b"x", now=float(i))
    due = buffer.pop_due(5.0, limit=100)
    assert [k[0] for k, _ in due] == [0, 1]
    assert len(buffer) == 3


def test_a_batch_takes_the_oldest_due_traces_of_all_partitions_first() -> None:
    # Partition 0 has a backlog of 40 due traces, partition 1 ten that came in among them: a
    # batch of 20 takes the 20 oldest, not partition 0's first 20, so the other partitions'
    # traces are not held back batch after batch (decision lag).
    buffer = buffer_on(MemoryStore())
    for i in range(40):
        buffer.append(0, key(b"a" * 15 + bytes([i])), b"x", now=float(i))
        if i % 4 == 1:
            buffer.append(1, key(b"b" * 15 + bytes([i])), b"x", now=i + 0.5)
    due = buffer.pop_due(100.0, limit=20)
    deadlines = [entry.deadline for _, entry in due]
    assert deadlines == sorted(deadlines)
    assert deadlines[-1] == 25.0  # 10 + 15 (the wait): partition 0's 16 oldest, 1's 4
    assert [entry.partition for _, entry in due].count(1) == 4
    rest = buffer.pop_due(100.0, limit=100)
    assert len(rest) == 30  # nothing lost, nothing twice
    assert {k for k, _ in due}.isdisjoint(k for k, _ in rest)
    # A partition's clock still holds back its own traces: partition 1's at 30.5 only.
    buffer = buffer_on(MemoryStore())
    for i in range(4):
        buffer.append(0, key(b"c" * 15 + bytes([i])), b"x", now=float(i))
        buffer.append(1, key(b"d" * 15 + bytes([i])), b"x", now=float(i))
    due = buffer.pop_due(lambda p: 11.5 if p else 100.0, limit=100)
    taken = [(e.deadline, e.partition) for _, e in due]
    assert [d for d, _ in taken] == sorted(d for d, _ in taken)
    assert sorted(taken) == [(10.0, 0), (10.0, 1), (11.0, 0), (11.0, 1), (12.0, 0), (13.0, 0)]


def test_a_trace_past_max_trace_bytes_is_due_at_once() -> None:
    store = MemoryStore()
    buffer = buffer_on(store, max_trace_bytes=5000)
    buffer.append(0, key(b"n" * 16), b"x" * 100, now=1.0)
    big = key(b"b" * 16)
    for _ in range(4):
        buffer.append(0, big, b"y" * 1000, now=2.0)
    assert buffer.pop_due(3.0, limit=10) == []
    buffer.append(0, big, b"y" * 1000, now=2.0)
    [(k, entry)] = buffer.pop_due(3.0, limit=10)
    assert k == big and entry.fragments == 5
    assert len(buffer) == 1  # the small trace waits for its window


def test_past_max_buffer_bytes_the_oldest_are_decided_early() -> None:
    store = MemoryStore()
    buffer = buffer_on(store, max_buffer_bytes=3500)
    for i in range(5):
        buffer.append(0, key(bytes([i]) * 16), b"z" * 980, now=float(i))
    each = buffer.bytes // 5  # a trace's fragment and its index entry
    assert 3 * each <= 3500 < 4 * each
    due = buffer.pop_due(0.0, limit=100)
    assert [k[0] for k, _ in due] == [0, 1]
    assert buffer.bytes == 3 * each


def test_rebuild_restores_queue_in_deadline_order() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    buffer.append(1, key(b"b" * 16), b"x", now=2.0)
    buffer.append(0, key(b"a" * 16), b"x", now=1.0)
    buffer.append(0, key(b"a" * 16), b"y", now=5.0)
    again = buffer_on(store)
    assert again.rebuild([0, 1]) == []
    due = again.pop_due(100.0, 10)
    assert [k for k, _ in due] == [key(b"a" * 16), key(b"b" * 16)]
    assert due[0][1].deadline == 11.0 and due[0][1].fragments == 2
    assert again.load(*due[0]).otlp == b"xy"  # type: ignore[union-attr]


def test_rebuild_reports_records_that_are_not_fragments() -> None:
    store = MemoryStore()
    store.put(0, b"k" * 16, b"an older release's value")
    store.put(0, key(b"g" * 16) + b"\0\0\0\0", b"short")
    buffer = buffer_on(store)
    buffer.append(0, key(b"a" * 16), b"x", now=1.0)
    again = buffer_on(store)
    unreadable = again.rebuild([0])
    assert sorted(u.key for u in unreadable) == sorted([b"k" * 16, key(b"g" * 16) + bytes(4)])
    assert len(again) == 1


def test_decision_cache_is_bounded_and_persisted() -> None:
    store = MemoryStore()
    cache = DecisionCache(store, kept=2, dropped=1, ttl=60.0)  # type: ignore[arg-type]
    for i in range(3):
        d = Remembered(float(i), 0, True, "errors", 1.0, "acme")
        cache.remember(key(bytes([i]) * 16, "acme"), d)
        cache.persist(key(bytes([i]) * 16, "acme"), d)
    cache.evict(now=3.0)
    assert cache.get(key(b"\0" * 16, "acme")) is None
    assert cache.get(key(b"\2" * 16, "acme")) == Remembered(2.0, 0, True, "errors", 1.0, "acme")
    assert key(b"\0" * 16, "acme") not in store.data[0]
    cache.evict(now=1000.0)  # past the TTL
    assert cache.get(key(b"\2" * 16, "acme")) is None
    restored = DecisionCache(store, kept=2, dropped=1, ttl=60.0)  # type: ignore[arg-type]
    restored.rebuild([0])
    assert restored.get(key(b"\2" * 16, "acme")) is None


def test_a_record_delivered_again_is_not_appended_twice() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    trace = key(b"r" * 16)
    # The trace's spans came from input records 40 and 41 of input partition 3 and record 7
    # of input partition 0; record 41 was cut in two parts.
    assert buffer.append(0, trace, b"A", 1.0, origin(3, 40))
    assert buffer.append(0, trace, b"B", 1.0, origin(0, 7))
    assert buffer.append(0, trace, b"C", 2.0, origin(3, 41, 0))
    assert buffer.append(0, trace, b"c", 2.0, origin(3, 41, 1))
    # After a restart the table is rebuilt and the same fragments arrive again, whether the
    # caudal-spans record was read again or the input record was split again.
    again = buffer_on(store)
    again.rebuild([0])
    for source in (origin(3, 40), origin(0, 7), origin(3, 41), origin(3, 41, 1)):
        assert not again.append(0, trace, b"X", 3.0, source)
    assert again.append(0, trace, b"D", 3.0, origin(3, 42))
    assert again.append(0, trace, b"E", 3.0, origin(1, 0))
    [(k, entry)] = again.pop_due(100.0, 10)
    loaded = again.load(k, entry)
    assert loaded is not None
    assert (loaded.otlp, loaded.first_seen) == (b"ABCcDE", 1.0)


def test_fragments_of_unknown_origin_are_always_appended() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    trace = key(b"n" * 16)
    assert buffer.append(0, trace, b"A", 1.0, NO_ORIGIN)
    assert buffer.append(0, trace, b"B", 1.0, NO_ORIGIN)
    [(k, entry)] = buffer.pop_due(100.0, 10)
    assert buffer.load(k, entry).otlp == b"AB"  # type: ignore[union-attr]


def test_a_decision_knows_which_fragments_it_covered() -> None:
    store = MemoryStore()
    cache = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    trace = key(b"d" * 16, "acme")
    decided = Remembered(1.0, 0, True, "errors", 1.0, "acme", pack_origins([origin(2, 7)]))
    cache.remember(trace, decided)
    cache.persist(trace, decided)
    assert decided.already_applied(origin(2, 7))
    assert decided.already_applied(origin(2, 6))
    assert not decided.already_applied(origin(2, 8))
    assert not decided.already_applied(origin(1, 7))
    # A late span from input record 8 is followed; delivered again, it is recognised.
    cache.advance(trace, decided, origin(2, 8))
    restored = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    restored.rebuild([0])
    entry = restored.get(trace)
    assert entry is not None and entry.already_applied(origin(2, 8))
    assert (entry.policy, entry.tenant, entry.kept) == ("errors", "acme", True)


def test_a_records_fragments_are_one_segment_deleted_with_its_last_trace() -> None:
    store = MemoryStore()
    buffer = buffer_on(store)
    traces = [key(bytes([i]) * 16) for i in range(3)]
    added = buffer.append_many(
        0, [(t, b"span" + t[:1], origin(1, 9, i)) for i, t in enumerate(traces)], 1.0
    )
    assert added == 3 and len(store.changelog) == 1, "one put for the record's three traces"
    due = buffer.pop_due(100.0, 10)
    assert [buffer.load(k, e).otlp for k, e in due] == [b"span\0", b"span\1", b"span\2"]  # type: ignore[union-attr]
    for k, e in due[:2]:
        buffer.remove(k, e)
    assert len(store.changelog) == 1 and len(store.data[0]) == 1, "a trace still needs it"
    buffer.remove(*due[2])
    assert store.changelog[-1][2] is None and store.data[0] == {}, "one tombstone"


def test_segments_stay_under_the_message_size_limit() -> None:
    store = MemoryStore()
    buffer = TraceBuffer(store, wait=1.0, max_traces=100, max_message_bytes=4096)  # type: ignore[arg-type]
    fragments = [(key(bytes([i]) * 16), bytes([i]) * 1000, origin(0, i)) for i in range(10)]
    assert buffer.append_many(0, fragments, 1.0) == 10
    assert len(store.changelog) > 2
    assert all(len(k) + len(v or b"") <= 4096 - RECORD_MARGIN for _, k, v in store.changelog)
    loaded = [buffer.load(k, e) for k, e in buffer.pop_due(100.0, 100)]
    assert [t.otlp for t in loaded] == [f for _, f, _ in fragments]  # type: ignore[union-attr]


def test_segments_written_after_a_rebuild_do_not_replace_recovered_ones() -> None:
    store = MemoryStore()
    buffer_on(store).append_many(0, [(key(b"a" * 16), b"A", 1), (key(b"b" * 16), b"B", 2)], 1.0)
    again = buffer_on(store)
    again.rebuild([0])
    again.append(0, key(b"c" * 16), b"C", 2.0, 3)
    again.append(0, key(b"a" * 16), b"a", 2.0, 4)
    due = again.pop_due(100.0, 10)
    assert [(k[:1], again.load(k, e).otlp) for k, e in due] == [  # type: ignore[union-attr]
        (b"a", b"Aa"),
        (b"b", b"B"),
        (b"c", b"C"),
    ]
    for item in due:
        again.remove(*item)
    assert store.data[0] == {}


def test_decisions_of_a_tick_are_one_record_per_partition() -> None:
    store = MemoryStore()
    cache = DecisionCache(store, kept=2, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    decided = [
        (key(bytes([i]) * 16), Remembered(float(i), i % 2, True, "errors", 1.0, "t"))
        for i in range(4)
    ]
    for k, d in decided:
        cache.remember(k, d)
    cache.persist_many(decided)
    assert sorted(p for p, _, _ in store.changelog) == [0, 1], "one record per partition"
    cache.evict(now=4.0)  # two of the four kept decisions go: one of each record
    assert len(store.data[0]) == len(store.data[1]) == 1, "each record still holds one"
    cache.remember(decided[2][0], decided[2][1])
    cache.advance(decided[2][0], decided[2][1], origin(5, 5))  # replaced by a newer record
    # The newer record written, then the older one deleted: it held nothing else any more.
    assert [value is None for _, _, value in store.changelog[2:]] == [False, True]
    assert len(store.data[0]) == len(store.data[1]) == 1
    restored = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    assert restored.rebuild([0, 1]) == []
    assert restored.get(decided[2][0]).already_applied(origin(5, 5))  # type: ignore[union-attr]
    assert restored.get(decided[3][0]) is not None and restored.get(decided[0][0]) is None


def test_a_queue_keeps_decision_order_when_traces_leave_out_of_order() -> None:
    queue = Queue()
    for name in (b"a", b"b", b"c", b"d"):
        queue.put(name, name.upper())
    assert queue.pop(b"b") == b"B" and queue.pop(b"c") == b"C"
    queue.put(b"b", b"B2")  # a trace of the same key again: at the back
    queue.put(b"a", b"A2")  # a trace already queued keeps its place
    queue.push_front(b"c", b"C2")  # to be decided again: where it left, out of order
    assert queue.popleft() == (b"a", b"A2")
    assert queue.pop(b"d") == b"D"
    queue.push_front(b"a", b"A3")  # taken in order: first
    queue.push_front(b"d", b"D2")  # the place it left is now first
    taken = [queue.popleft() for _ in range(len(queue))]
    assert taken == [(b"a", b"A3"), (b"c", b"C2"), (b"d", b"D2"), (b"b", b"B2")]
    assert queue.head() is None and not queue.stale


def test_segments_read_for_a_batch_are_let_go_between_traces_never_within_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(buffer_module, "_READ_BUDGET", 10)  # let go after every trace
    store = MemoryStore()
    buffer = buffer_on(store)
    a, x = key(b"a" * 16), key(b"x" * 16)
    buffer.append(0, a, b"A1" * 20, 1.0, origin(0, 1))
    buffer.append_many(0, [(a, b"A2" * 20, origin(0, 2)), (x, b"X1" * 20, origin(0, 2, 1))], 1.0)
    buffer.append(0, x, b"X2" * 20, 1.0, origin(0, 3))
    loaded = [(k, t.otlp) for k, _, t in buffer.load_each(buffer.pop_due(100.0, 10))]  # type: ignore[union-attr]
    assert loaded == [(a, b"A1" * 20 + b"A2" * 20), (x, b"X1" * 20 + b"X2" * 20)]


def test_an_older_releases_decision_is_stored_again_as_a_record_which_wins() -> None:
    store = MemoryStore()
    trace = key(b"\xffZ" + b"z" * 14, "acme")  # a trace key that sorts after every record key
    old = Remembered(1.0, 0, True, "errors", 1.0, "acme")
    store.put(0, trace, old.encode())  # as the previous release stored it
    cache = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    assert cache.rebuild([0]) == [], "nothing is written before the partition is owned"
    assert store.changelog == [(0, trace, old.encode())]
    assert cache.migrate([0]) == [(0, trace)], "stored again as a record; the old key goes"
    records = [v for k, v in store.data[0].items() if k.startswith(b"\xffD")]
    assert [t for value in records for t, _ in decode_decisions(0, value)] == [trace]
    cache.advance(trace, cache.get(trace), origin(4, 4))  # type: ignore[arg-type]
    # A crash before the old key was deleted: the newest record wins, the old key goes.
    restored = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    assert (0, trace) in restored.rebuild([0])
    assert restored.get(trace).already_applied(origin(4, 4))  # type: ignore[union-attr]


def test_a_record_number_that_could_not_be_read_is_not_used_again() -> None:
    store = MemoryStore()
    store.put(0, b"\xffD" + (7).to_bytes(8, "big"), b"not a record")
    cache = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    assert cache.rebuild([0]) == [(0, b"\xffD" + (7).to_bytes(8, "big"))]
    cache.persist(key(b"n" * 16), Remembered(1.0, 0, True, "errors", 1.0, "t"))
    assert b"\xffD" + (8).to_bytes(8, "big") in store.data[0]


def test_a_fragment_that_is_not_otlp_holds_no_root_and_breaks_nothing() -> None:
    buffer = TraceBuffer(MemoryStore(), wait=10.0, max_traces=100, wait_after_root=1.0)
    good, junk = b"g" * 16, b"j" * 16
    added = buffer.append_many(
        0, [(key(good), fragment(good, root=True), 1), (key(junk), b"\xff\xff\xff", 2)], now=100.0
    )
    assert added == 2 and len(buffer) == 2
    assert [k for k, _ in buffer.pop_due(101.0, limit=10)] == [key(good)]
    assert [k for k, _ in buffer.pop_due(110.0, limit=10)] == [key(junk)]


def fragment(trace_id: bytes, root: bool) -> bytes:
    """An OTLP request of one span of `trace_id`, a root or a child."""
    span = Span(trace_id=trace_id, span_id=b"s" * 8, parent_span_id=b"" if root else b"p" * 8)
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


def test_a_trace_is_due_wait_after_root_after_its_root_arrived() -> None:
    buffer = TraceBuffer(MemoryStore(), wait=10.0, max_traces=100, wait_after_root=1.0)
    rooted, rootless, root_first = b"r" * 16, b"n" * 16, b"f" * 16
    buffer.append(0, key(rooted), fragment(rooted, root=False), now=100.0)
    buffer.append(0, key(rootless), fragment(rootless, root=False), now=100.0)
    buffer.append(0, key(root_first), fragment(root_first, root=True), now=101.0)
    buffer.append(0, key(rooted), fragment(rooted, root=True), now=103.0)
    buffer.append(0, key(rooted), fragment(rooted, root=True), now=103.5)  # a second root
    assert buffer.pop_due(101.9, limit=10) == []
    assert [(k, e.after_root) for k, e in buffer.pop_due(102.0, limit=10)] == [
        (key(root_first), True)
    ]
    assert buffer.pop_due(103.9, limit=10) == []
    [(due, entry)] = buffer.pop_due(104.0, limit=10)
    assert (due, entry.after_root) == (key(rooted), True)
    assert buffer.pop_due(109.9, limit=10) == []
    [(due, entry)] = buffer.pop_due(110.0, limit=10)  # no root: the whole window
    assert (due, entry.after_root) == (key(rootless), False)
    assert len(buffer) == 0 and buffer.pop_due(200.0, limit=10) == []


def test_without_wait_after_root_a_root_changes_nothing() -> None:
    buffer = buffer_on(MemoryStore())
    buffer.append(0, key(b"r" * 16), fragment(b"r" * 16, root=True), now=100.0)
    assert buffer.pop_due(109.9, limit=10) == []
    assert len(buffer.pop_due(110.0, limit=10)) == 1
