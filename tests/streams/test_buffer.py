"""Trace buffer and decision cache on an in-memory stand-in for the Faust table."""

from __future__ import annotations

from collections import defaultdict

from streams.buffer import TraceBuffer, decode_value
from streams.decide import DecisionCache, Remembered
from streams.origin import NO_ORIGIN, origin, pack_origins


class MemoryStore:
    """The TableStore interface over dicts, recording changelog writes."""

    def __init__(self) -> None:
        self.data: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data[partition].get(key)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.data[partition][key] = value
        self.changelog.append((partition, key, value))

    def delete(self, partition: int, key: bytes) -> None:
        self.data[partition].pop(key, None)
        self.changelog.append((partition, key, None))

    def items(self, partition: int):
        return iter(list(self.data[partition].items()))


def test_fragments_append_and_window_starts_at_first_span() -> None:
    store = MemoryStore()
    buffer = TraceBuffer(store, wait=10.0, max_traces=100)  # type: ignore[arg-type]
    buffer.append(2, b"t" * 16, "acme", b"AA", now=100.0)
    buffer.append(2, b"t" * 16, "other", b"BB", now=105.0)
    assert buffer.pop_due(109.9, limit=10) == []
    [(trace_id, entry)] = buffer.pop_due(110.0, limit=10)
    trace = buffer.load(trace_id, entry)
    assert trace is not None
    assert (trace.first_seen, trace.tenant, trace.otlp) == (100.0, "acme", b"AABB")
    assert len(buffer) == 0


def test_full_buffer_decides_oldest_early_never_drops() -> None:
    store = MemoryStore()
    buffer = TraceBuffer(store, wait=10.0, max_traces=3)  # type: ignore[arg-type]
    for i in range(5):
        buffer.append(0, bytes([i]) * 16, "t", b"x", now=float(i))
    due = buffer.pop_due(5.0, limit=100)
    assert [tid[0] for tid, _ in due] == [0, 1]
    assert len(buffer) == 3


def test_rebuild_restores_queue_in_deadline_order() -> None:
    store = MemoryStore()
    buffer = TraceBuffer(store, wait=10.0, max_traces=100)  # type: ignore[arg-type]
    buffer.append(1, b"b" * 16, "t", b"x", now=2.0)
    buffer.append(0, b"a" * 16, "t", b"x", now=1.0)
    again = TraceBuffer(store, wait=10.0, max_traces=100)  # type: ignore[arg-type]
    again.rebuild([0, 1])
    assert [tid for tid, _ in again.pop_due(100.0, 10)] == [b"a" * 16, b"b" * 16]
    assert decode_value(store.data[0][b"a" * 16]).tenant == "t"


def test_decision_cache_is_bounded_and_persisted() -> None:
    store = MemoryStore()
    cache = DecisionCache(store, kept=2, dropped=1, ttl=60.0)  # type: ignore[arg-type]
    for i in range(3):
        d = Remembered(float(i), 0, True, "errors", 1.0, "acme")
        cache.remember(bytes([i]) * 16, d)
        cache.persist(bytes([i]) * 16, d)
    cache.evict(now=3.0)
    assert cache.get(b"\0" * 16) is None
    assert cache.get(b"\2" * 16) == Remembered(2.0, 0, True, "errors", 1.0, "acme")
    assert b"\0" * 16 not in store.data[0]
    cache.evict(now=1000.0)  # past the TTL
    assert cache.get(b"\2" * 16) is None
    restored = DecisionCache(store, kept=2, dropped=1, ttl=60.0)  # type: ignore[arg-type]
    restored.rebuild([0])
    assert restored.get(b"\2" * 16) is None


def test_a_record_delivered_again_is_not_appended_twice() -> None:
    store = MemoryStore()
    buffer = TraceBuffer(store, wait=10.0, max_traces=100)  # type: ignore[arg-type]
    tid = b"r" * 16
    # The trace's spans came from input records 40 and 41 of input partition 3 and record 7
    # of input partition 0.
    assert buffer.append(0, tid, "t", b"A", 1.0, origin(3, 40))
    assert buffer.append(0, tid, "t", b"B", 1.0, origin(0, 7))
    assert buffer.append(0, tid, "t", b"C", 2.0, origin(3, 41))
    # After a restart the table is rebuilt and the same fragments arrive again, whether the
    # caudal-spans record was read again or the input record was split again.
    again = TraceBuffer(store, wait=10.0, max_traces=100)  # type: ignore[arg-type]
    again.rebuild([0])
    for source in (origin(3, 40), origin(0, 7), origin(3, 41)):
        assert not again.append(0, tid, "t", b"X", 3.0, source)
    assert again.append(0, tid, "t", b"D", 3.0, origin(3, 42))
    assert again.append(0, tid, "t", b"E", 3.0, origin(1, 0))
    trace = decode_value(store.data[0][tid])
    assert (trace.otlp, trace.tenant, trace.first_seen) == (b"ABCDE", "t", 1.0)


def test_fragments_of_unknown_origin_are_always_appended() -> None:
    store = MemoryStore()
    buffer = TraceBuffer(store, wait=10.0, max_traces=100)  # type: ignore[arg-type]
    tid = b"n" * 16
    assert buffer.append(0, tid, "t", b"A", 1.0, NO_ORIGIN)
    assert buffer.append(0, tid, "t", b"B", 1.0, NO_ORIGIN)
    assert decode_value(store.data[0][tid]).otlp == b"AB"


def test_a_decision_knows_which_fragments_it_covered() -> None:
    store = MemoryStore()
    cache = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    tid = b"d" * 16
    decided = Remembered(1.0, 0, True, "errors", 1.0, "acme", pack_origins([origin(2, 7)]))
    cache.remember(tid, decided)
    cache.persist(tid, decided)
    assert decided.already_applied(origin(2, 7))
    assert decided.already_applied(origin(2, 6))
    assert not decided.already_applied(origin(2, 8))
    assert not decided.already_applied(origin(1, 7))
    # A late span from input record 8 is followed; delivered again, it is recognised.
    cache.advance(tid, decided, origin(2, 8))
    restored = DecisionCache(store, kept=10, dropped=10, ttl=60.0)  # type: ignore[arg-type]
    restored.rebuild([0])
    entry = restored.get(tid)
    assert entry is not None and entry.already_applied(origin(2, 8))
    assert (entry.policy, entry.tenant, entry.kept) == ("errors", "acme", True)
