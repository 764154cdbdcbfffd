"""The handover protocol and the at-least-once order, on an in-memory table and producer."""

from __future__ import annotations

import asyncio
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from streams.config import Settings
from streams.kafka.state import PartitionNotOwned
from streams.ops.metrics import PARTITION_RECOVERY
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache, PolicySets
from streams.pipeline.handover import DecisionTick, Handover, Lease, LeaseLapsed, Ownership
from streams.pipeline.progress import PartitionClock, encode_claims
from streams.pipeline.route import TenantRoutes
from streams.wire.tracekey import trace_key
from tests.streams.pipeline.test_buffer import MemoryStore

SETTINGS = Settings.model_validate(
    {"policies": [{"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}]}
)


def K(trace_id: bytes) -> bytes:
    """The default tenant's trace key."""
    return trace_key(trace_id, "default")


def buffered(store: MemoryStore, trace_id: bytes) -> bool:
    """Does the table hold a fragment of the trace?"""
    return K(trace_id) in store.held_traces(0)


class FencedStore(MemoryStore):
    """MemoryStore that refuses writes where `writable` says no, as TableStore does."""

    def __init__(self, ownership: Ownership) -> None:
        super().__init__()
        self.ownership = ownership

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        if not self.ownership.writable(partition):
            raise PartitionNotOwned(str(partition))
        super().put(partition, key, value)

    def delete(self, partition: int, key: bytes) -> None:
        if not self.ownership.writable(partition):
            raise PartitionNotOwned(str(partition))
        super().delete(partition, key)


class FakeProducer:
    """Records what was produced; `flush` acknowledges unless told to fail."""

    def __init__(self) -> None:
        self.produced: list[bytes] = []
        self.waiting: list[object] = []
        self.fail = False

    def produce(self, topic: str, key: bytes, value: bytes, headers: object, on_delivery) -> None:
        self.produced.append(value)
        self.waiting.append(on_delivery)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        callbacks, self.waiting = self.waiting, []
        for callback in callbacks:
            callback("broker down" if self.fail else None, None)
        return 0


def request(trace_id: bytes, error: bool) -> bytes:
    span = Span(trace_id=trace_id, span_id=b"s" * 8, name="GET /")
    if error:
        span.status.code = Status.STATUS_CODE_ERROR
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


class Node:
    """One worker's decision side over a shared table."""

    def __init__(self, tables: tuple[dict, dict] | None = None) -> None:
        self.ownership = Ownership()
        self.store = FencedStore(self.ownership)
        self.decisions = FencedStore(self.ownership)
        if tables is not None:
            self.store.data, self.decisions.data = tables
        self.producer = FakeProducer()
        self.buffer = TraceBuffer(self.store, wait=5.0, max_traces=1000)  # type: ignore[arg-type]
        self.cache = DecisionCache(self.decisions, kept=100, dropped=100, ttl=60.0)  # type: ignore[arg-type]
        self.decider = Decider(
            PolicySets.from_settings(SETTINGS),
            TenantRoutes(SETTINGS),
            self.buffer,
            self.cache,
            self.producer,
            "sampled",
        )
        self.clock = PartitionClock()
        self.tick = DecisionTick(
            self.decider, self.producer, self.ownership, self.clock, lambda: 100
        )
        self.ready: list[frozenset[int]] = []
        self.handover = Handover(
            self.ownership,
            self.tick,
            self.buffer,
            self.cache,
            self.clock,
            self.ready.append,
            lambda: None,
        )

    def buffered(self, tid: bytes, error: bool, lease: Lease | None = None) -> Node:
        """Own partition 0 with one trace buffered there and its window closed."""
        self.ownership.lease = lease
        self.handover.recovered(frozenset({0}))
        self.buffer.append(0, K(tid), request(tid, error), 100.0)
        self.advance(0, 200.0)
        return self

    def tables(self) -> tuple[dict, dict]:
        """The two tables as the next owner recovers them from their changelogs."""
        return self.store.data, self.decisions.data

    def advance(self, partition: int, to: float) -> None:
        self.clock.observe(partition, encode_claims(1, 1.0, {0: to}))


def test_only_owned_partitions_are_decided_and_only_past_their_clock() -> None:
    node = Node()
    node.handover.recovered(frozenset({0, 1}))
    node.buffer.append(0, K(b"a" * 16), request(b"a" * 16, True), 100.0)
    node.buffer.append(1, K(b"b" * 16), request(b"b" * 16, True), 100.0)
    node.advance(0, 104.9)
    node.advance(1, 105.0)
    asyncio.run(node.tick())
    assert len(node.producer.produced) == 1, "partition 0's input has not reached the deadline"
    node.advance(0, 105.0)
    node.ownership.begin_revoke()
    asyncio.run(node.tick())
    assert len(node.producer.produced) == 1, "nothing is decided once a revoke began"


def test_a_revoke_waits_for_the_batch_under_way_then_nothing_is_written() -> None:
    tid = b"c" * 16
    node = Node().buffered(tid, True)

    async def scenario() -> None:
        tick = asyncio.create_task(node.tick())
        await asyncio.sleep(0)  # the tick has decided and is waiting for the flush
        await node.handover.before_revoke(set())
        assert tick.done(), "the revoke returned only after the batch completed"
        await node.handover.after_revoke(set())

    asyncio.run(scenario())
    assert not buffered(node.store, tid), "the decided trace was deleted before the handover"
    assert K(tid) in node.decisions.held_decisions(0), "and its decision written"
    with pytest.raises(PartitionNotOwned):
        node.store.put(0, b"x" * 16, b"late")


def test_a_crash_before_the_decision_is_written_decides_again_the_same_way() -> None:
    """Kill point: kept trace produced, decision and tombstone not yet written."""
    tid = b"k" * 16
    old = Node().buffered(tid, True)
    batch = old.decider.decide_due(200.0, 10, old.clock.watermark, old.ownership.owned)
    assert len(old.producer.produced) == 1
    # ... the process dies here: complete() never runs.
    new = Node(old.tables())
    new.handover.recovered(frozenset({0}))
    new.advance(0, 200.0)
    asyncio.run(new.tick())
    assert len(new.producer.produced) == 1, "the trace is exported again: a duplicate, not a loss"
    assert batch.items[0][2].kept
    assert not buffered(new.store, tid)


def test_a_crash_after_the_decision_is_written_does_not_decide_again() -> None:
    tid = b"w" * 16
    old = Node().buffered(tid, False)
    asyncio.run(old.tick())
    new = Node(old.tables())
    new.handover.recovered(frozenset({0}))
    new.advance(0, 200.0)
    asyncio.run(new.tick())
    assert new.producer.produced == []
    decided = new.cache.get(K(tid))
    assert decided is not None and not decided.kept, "late spans follow the old decision"


def test_unacknowledged_kept_traces_stay_buffered() -> None:
    tid = b"u" * 16
    node = Node().buffered(tid, True)
    node.producer.fail = True
    batch = node.decider.decide_due(200.0, 1, node.clock.watermark, node.ownership.owned)
    node.producer.flush(1)
    node.decider.complete(batch, 200.0, node.ownership.writable)
    assert buffered(node.store, tid), "not acknowledged: still in the table"
    assert node.buffer.holds(0, K(tid)), "and queued to be decided again"


def test_assignment_forgets_what_went_elsewhere_and_recovery_rebuilds_what_came() -> None:
    first = Node()
    first.handover.recovered(frozenset({0, 1}))
    first.buffer.append(0, K(b"p" * 16), request(b"p" * 16, True), 100.0)
    first.buffer.append(1, K(b"q" * 16), request(b"q" * 16, True), 100.0)
    first.handover.assigned(frozenset({0}))
    assert first.buffer.holds(0, K(b"p" * 16)) and not first.buffer.holds(1, K(b"q" * 16))
    second = Node(first.tables())
    second.handover.recovered(frozenset({1}))
    assert second.buffer.holds(1, K(b"q" * 16)) and len(second.buffer) == 1
    assert second.ready == [frozenset({1})]


def test_a_lapsed_lease_stops_decisions_and_writes_until_a_heartbeat_renews_it() -> None:
    tid = b"l" * 16
    lease = Lease(session_timeout=6.0)
    node = Node().buffered(tid, True, lease)
    lease.renew(time.monotonic() - 10)  # last heartbeat accepted 10 s ago
    asyncio.run(node.tick())
    assert node.producer.produced == [], "the group may have given the partition away"
    with pytest.raises(PartitionNotOwned):
        node.store.put(0, b"x" * 16, b"v")
    lease.renew(time.monotonic())
    asyncio.run(node.tick())
    assert len(node.producer.produced) == 1


def test_a_batch_whose_lease_lapsed_stays_in_the_table() -> None:
    tid = b"m" * 16
    lease = Lease(session_timeout=6.0)
    lease.renew(time.monotonic())
    node = Node().buffered(tid, True, lease)
    batch = node.decider.decide_due(200.0, 10, node.clock.watermark, node.ownership.owned)
    node.producer.flush(1)
    lease.until = time.monotonic() - 1  # lapsed during the flush
    node.decider.complete(batch, 200.0, node.ownership.writable)
    assert buffered(node.store, tid) and K(tid) not in node.decisions.held_decisions(0)
    assert node.buffer.holds(0, K(tid))


def test_records_wait_for_the_lease_and_a_revoke_meanwhile_restarts_the_worker() -> None:
    ownership = Ownership(lease=Lease(session_timeout=6.0))
    ownership.lease.renew(time.monotonic() - 10)

    async def revoke_soon() -> None:
        await asyncio.sleep(0.1)
        ownership.begin_revoke()

    async def scenario() -> None:
        asyncio.get_running_loop().create_task(revoke_soon())
        await ownership.wait_leased(poll=0.01)

    with pytest.raises(LeaseLapsed):
        asyncio.run(scenario())


def test_recovery_time_is_counted_from_the_assignment() -> None:
    node = Node()
    before = PARTITION_RECOVERY._sum.get()
    node.handover.assigned(frozenset({0}))
    time.sleep(0.05)
    node.handover.recovered(frozenset({0}))
    assert PARTITION_RECOVERY._sum.get() - before >= 0.05


def test_revoke_commits_what_was_read_then_the_partitions_are_read_only() -> None:
    node = Node()
    committed: list[dict[int, int]] = []

    async def commit(offsets: dict[int, int]) -> bool:
        assert node.ownership.writable(0), "committed before the partitions turn read-only"
        committed.append(offsets)
        return False  # refused: the revoke still ends

    node.handover.read_offsets = lambda: {0: 41, 5: 9}  # partition 5 went elsewhere earlier
    node.handover.commit = commit
    node.handover.recovered(frozenset({0}))

    async def revoke() -> None:
        await node.handover.before_revoke(set())
        await node.handover.after_revoke(set())

    asyncio.run(revoke())
    assert committed == [{0: 42}]
    assert not node.ownership.writable(0)
