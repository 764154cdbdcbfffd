"""Remembered decisions: what late spans follow, stored so they survive restarts.

A decision is held in memory for late spans and stored in the changelogged `decisions` table
as *decision records*: the decisions a tick persists for one partition go in one value (key
`\\xffD` and an 8-byte number counted per partition), so a tick costs one put and one changelog
record per partition, not one per trace. At recovery the newest record of a trace wins.

In memory, by kind (Refinery keeps kept and dropped apart too):
- a dropped decision is a 64-bit hash of its trace key, 24 bytes (`streams.pipeline.dropped`):
  its late spans are dropped whatever else it said;
- a kept decision (and a dead-lettered one, whose late spans go to the dead-letter topic too)
  is one packed bytes object under its key's hash: when, partition, probability, policy,
  record and the origins of the spans it covered (so a copy of one is not applied again);
  about 150 bytes with its dict and queue slots, plus 12 per origin;
- a decision not yet stored (its batch waits for the broker) is a `Remembered` object.

A record is deleted once every decision in it has left memory (kept ones one by one, the
dropped ones of a record once as many dropped decisions were evicted after it, first in first
out) and every segment that could hold spans of its traces is gone (a segment stays while any
trace with spans in it waits; were the record deleted before, a restart would find those
spans and take them for a trace still to decide).
"""

from __future__ import annotations

import dataclasses
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from streams.kafka.state import Store
from streams.ops.metrics import DECISION_CACHE_BYTES, DECISION_CACHE_DECISIONS
from streams.pipeline.buffer import Queue
from streams.pipeline.dropped import DroppedSet, key_hash
from streams.wire.origin import ENTRY_BYTES, add_origin, covers
from streams.wire.records import DEFAULT_MAX_MESSAGE_BYTES, RECORD_MARGIN
from streams.wire.tracekey import key_tenant, parse_key

__all__ = [
    "DEAD_LETTER_POLICY",
    "DROPPED",
    "LEGACY_RECORD",
    "DecisionCache",
    "Remembered",
    "decode_decisions",
]

_DECISION = struct.Struct(">dBdH")  # decided at, kept, probability, origins

DEAD_LETTER_POLICY = "dead_letter"  # a trace that could not be decided, and its late spans


@dataclass(slots=True)
class Remembered:
    """A decision kept for late spans."""

    decided_at: float
    partition: int
    kept: bool
    policy: str
    probability: float
    tenant: str
    # The origins (streams.wire.origin) of the spans the trace held: a fragment they cover is a
    # copy of one already decided, not a late span.
    origins: bytes = b""
    # Where it is stored: the number of its partition's decision record, LEGACY_RECORD (under
    # its own trace key, as an older release wrote it), or None (not yet stored).
    record: int | None = field(default=None, compare=False)

    def encode(self) -> bytes:
        """One decision as a decision record holds it (the tenant is in the key)."""
        count = len(self.origins) // ENTRY_BYTES
        head = _DECISION.pack(self.decided_at, self.kept, self.probability, count)
        return head + self.origins + self.policy.encode()

    @classmethod
    def decode(cls, partition: int, key: bytes, value: bytes) -> Remembered:
        """Inverse of `encode`; ValueError if `value` is not a decision."""
        parsed = parse_key(key)
        if parsed is None or parsed[1]:
            raise ValueError("not a trace key")
        try:
            decided_at, kept, probability, count = _DECISION.unpack_from(value)
        except struct.error as exc:
            raise ValueError(f"a {len(value)}-byte decision") from exc
        end = _DECISION.size + ENTRY_BYTES * count
        if end > len(value):
            raise ValueError(f"a decision of {count} origins in {len(value)} bytes")
        return cls(
            decided_at,
            partition,
            bool(kept),
            value[end:].decode("utf-8", "replace"),
            probability,
            key_tenant(key),
            value[_DECISION.size : end],
        )

    def already_applied(self, origin: int) -> bool:
        """Was the fragment of this origin part of the trace when it was decided?"""
        return covers(self.origins, origin)

    @property
    def only_dropped(self) -> bool:
        """A drop whose late spans are dropped too (held as a hash alone)."""
        return not self.kept and self.policy != DEAD_LETTER_POLICY


# What `DecisionCache.get` answers for a trace remembered only as dropped.
DROPPED: Final = Remembered(0.0, -1, False, "none", 0.0, "", b"", -1)

LEGACY_RECORD = -1
_RECORD_PREFIX = b"\xffD"
# A policy's learned state for the partition (policies.adaptive): the prefix, then the
# tenant (empty for the global policies), a NUL byte (never in a tenant name) and the path.
_STATE_PREFIX = b"\xffA"
_RECORD_KEY = struct.Struct(">2sQ")  # prefix, record number
_RECORD_COUNT = struct.Struct(">I")
_RECORD_ITEM = struct.Struct(">HI")  # trace key length, decision length
# A kept decision in memory: decided at (whole seconds), partition, probability, record
# (_NOT_STORED: not yet), policy (an index in DecisionCache.policies), kept, origin count.
_HELD = struct.Struct(">IHdqH?H")
_NOT_STORED = -2


def decode_decisions(partition: int, value: bytes) -> list[tuple[bytes, Remembered]]:
    """The decisions of a decision record's value (a count, then the decisions one after the
    other); ValueError if `value` is not a decision record."""
    try:
        (count,) = _RECORD_COUNT.unpack_from(value)
        at = _RECORD_COUNT.size
        out = []
        for _ in range(count):
            key_size, size = _RECORD_ITEM.unpack_from(value, at)
            at += _RECORD_ITEM.size
            key = value[at : at + key_size]
            item = value[at + key_size : at + key_size + size]
            at += key_size + size
            out.append((key, Remembered.decode(partition, key, item)))
    except struct.error as exc:
        raise ValueError(f"a decision record cut short: {exc}") from None
    if at != len(value):
        raise ValueError(f"a decision record of {len(value)} bytes whose decisions end at {at}")
    return out


def _record_number(key: bytes) -> int | None:
    if len(key) != _RECORD_KEY.size or not key.startswith(_RECORD_PREFIX):
        return None
    return int(_RECORD_KEY.unpack(key)[1])


class DecisionCache:
    """Bounded memory of recent decisions per trace key (tenant and trace ID), kept and
    dropped counted separately (as Refinery), stored as decision records (module docstring).
    """

    def __init__(
        self,
        store: Store,
        kept: int,
        dropped: int,
        ttl: float,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        segments: Callable[[int], tuple[int, int]] = lambda partition: (sys.maxsize, 0),
    ) -> None:
        """`segments` gives a partition's lowest stored segment number and its next one
        (TraceBuffer.segment_span); by default no record waits for segments."""
        self.store = store
        self.limits = {True: kept, False: dropped}
        self.ttl = ttl
        self.record_room = max_message_bytes - RECORD_MARGIN - _RECORD_KEY.size
        self.pending: dict[bytes, Remembered] = {}  # decided, not yet stored
        self.kept: Queue[int] = Queue()
        self.kept_bytes = 0  # of the packed entries held in `kept`
        self.dropped = DroppedSet(dropped)
        # Eviction marks of the dropped: (how many had been added, the latest decision time).
        self.dropped_marks: deque[tuple[int, float]] = deque()
        # Per partition: records holding dropped decisions, and how many dropped decisions had
        # been added once theirs were (the record's drops are gone once as many were evicted).
        self.dropped_records: dict[int, deque[tuple[int, int]]] = {}
        self.policies: list[str] = []
        self.policy_index: dict[str, int] = {}
        # Per partition: the decisions each stored record still holds in memory (its dropped
        # ones count as one), and the next number.
        self.records: dict[int, dict[int, int]] = {}
        self.next_record: dict[int, int] = {}
        # Per partition, records none of whose decisions is needed any more, waiting to be
        # deleted until every segment below the number (the partition's next segment then)
        # is gone: (that number, record).
        self.waiting: dict[int, deque[tuple[int, int]]] = {}
        self.segments = segments
        # Per partition, the policies' stored states found by `rebuild` (name -> value).
        self.policy_states: dict[int, dict[str, bytes]] = {}

    def __len__(self) -> int:
        return len(self.pending) + len(self.kept) + len(self.dropped)

    def put_policy_state(self, partition: int, name: str, value: bytes) -> None:
        """Store a policy's learned state for `partition` (see `PolicySets.states`)."""
        self.store.put(partition, _STATE_PREFIX + name.encode(), value)

    def get(self, key: bytes) -> Remembered | None:
        """The remembered decision for a trace, if any (`DROPPED` for one held as a hash)."""
        decision = self.pending.get(key)
        if decision is not None:
            return decision
        hashed = key_hash(key)
        packed = self.kept.entries.get(hashed)
        if packed is not None:
            return self._unpack(key, packed)
        if hashed in self.dropped:
            return DROPPED
        return None

    def latest(self, key: bytes) -> Remembered | None:
        """The decision of a trace as last changed (`advance`), unless held as a hash."""
        decision = self.get(key)
        return None if decision is DROPPED else decision

    def remember(self, key: bytes, decision: Remembered) -> None:
        """Hold a decision in memory (stored later by `persist`)."""
        self.pending[key] = decision

    def advance(self, key: bytes, decision: Remembered, origin: int) -> None:
        """A late span was applied: remember its origin so a copy is not applied again (a
        drop drops the copy anyway: nothing to remember)."""
        if decision.only_dropped:
            return
        origins = add_origin(decision.origins, origin)
        if origins != decision.origins:
            moved = dataclasses.replace(decision, origins=origins, record=None)
            self.pending.pop(key, None)
            self.persist(key, moved)
            self._release(decision.partition, decision.record)

    def forget(self, key: bytes, writable: Callable[[int], bool] = lambda p: True) -> None:
        """Drop a decision that could not be carried out (and its stored copy, if a late span
        had it stored meanwhile, see `advance`, and the partition is still `writable`)."""
        self.pending.pop(key, None)
        hashed = key_hash(key)
        packed = self._let_go(hashed)
        if packed is not None:
            decision = self._unpack(key, packed)
            if writable(decision.partition):
                self._release(decision.partition, decision.record)
        self.dropped.discard(hashed)

    def persist(self, key: bytes, decision: Remembered) -> None:
        """Write one decision to the changelogged table."""
        self.persist_many([(key, decision)])

    def persist_many(self, decided: Iterable[tuple[bytes, Remembered]]) -> None:
        """Write decisions to the changelogged table: one record per partition (more if they
        would not fit one Kafka record); then hold them in their compact form, in order."""
        decided = list(decided)
        by_partition: dict[int, list[tuple[bytes, Remembered]]] = {}
        for item in decided:
            by_partition.setdefault(item[1].partition, []).append(item)
        item_head = _RECORD_ITEM.pack
        for partition, items in by_partition.items():
            chunk: list[Remembered] = []
            parts: list[bytes] = []
            size = _RECORD_COUNT.size
            for key, decision in items:
                # A decision as a record holds it: its trace key, then its encoding.
                value = decision.encode()
                part = item_head(len(key), len(value)) + key + value
                if chunk and size + len(part) > self.record_room:
                    self._write(partition, parts, chunk)
                    chunk, parts, size = [], [], _RECORD_COUNT.size
                chunk.append(decision)
                parts.append(part)
                size += len(part)
            if chunk:
                self._write(partition, parts, chunk)
        self._hold(decided)

    def _write(self, partition: int, parts: list[bytes], chunk: list[Remembered]) -> None:
        seq = self.next_record.get(partition, 0)
        value = _RECORD_COUNT.pack(len(chunk)) + b"".join(parts)
        self.store.put(partition, _RECORD_KEY.pack(_RECORD_PREFIX, seq), value)
        self.next_record[partition] = seq + 1
        for decision in chunk:
            decision.record = seq

    def _hold(self, stored: list[tuple[bytes, Remembered]]) -> None:
        """Hold stored decisions (`record` set) in their compact form, in this order, and
        count what each record holds in memory."""
        refs: dict[tuple[int, int], int] = {}
        latest: dict[tuple[int, int], float] = {}
        pending, add_dropped = self.pending, self.dropped.add
        for key, decision in stored:
            place = (decision.partition, decision.record or 0)
            if pending.get(key) is decision:
                del pending[key]
            hashed = key_hash(key)
            if decision.only_dropped:
                add_dropped(hashed)
                at = decision.decided_at
                if place not in latest or at > latest[place]:
                    latest[place] = at
            else:
                self._keep(hashed, self._pack(decision))
                refs[place] = refs.get(place, 0) + 1
        added = self.dropped.inserted
        for partition, seq in latest:
            refs[(partition, seq)] = refs.get((partition, seq), 0) + 1
            self.dropped_records.setdefault(partition, deque()).append((seq, added))
        if latest:
            self.dropped_marks.append((added, max(latest.values())))
        for (partition, seq), count in refs.items():
            self.records.setdefault(partition, {})[seq] = count

    def _keep(self, hashed: int, packed: bytes) -> None:
        old = self.kept.get(hashed)
        if old is not None:
            self.kept_bytes -= sys.getsizeof(old)
        self.kept.put(hashed, packed)
        self.kept_bytes += sys.getsizeof(packed)

    def _let_go(self, hashed: int) -> bytes | None:
        packed = self.kept.pop(hashed)
        if packed is not None:
            self.kept_bytes -= sys.getsizeof(packed)
        return packed

    def _pack(self, decision: Remembered) -> bytes:
        index = self.policy_index.get(decision.policy)
        if index is None:
            index = self.policy_index[decision.policy] = len(self.policies)
            self.policies.append(decision.policy)
        record = _NOT_STORED if decision.record is None else decision.record
        count = len(decision.origins) // ENTRY_BYTES
        head = _HELD.pack(
            int(decision.decided_at),
            decision.partition,
            decision.probability,
            record,
            index,
            decision.kept,
            count,
        )
        return head + decision.origins

    def _unpack(self, key: bytes, packed: bytes) -> Remembered:
        decided_at, partition, probability, record, index, kept, _ = _HELD.unpack_from(packed)
        return Remembered(
            float(decided_at),
            partition,
            kept,
            self.policies[index],
            probability,
            key_tenant(key),
            packed[_HELD.size :],
            None if record == _NOT_STORED else record,
        )

    def _release(self, partition: int, record: int | None) -> None:
        """One decision of `record` left memory; the record goes with its last."""
        if record is None or record < 0:
            return
        live = self.records.get(partition)
        left = live.get(record) if live is not None else None
        if live is None or left is None:
            return
        if left > 1:
            live[record] = left - 1
            return
        del live[record]
        # Its traces' spans may still lie in segments shared with traces that wait: until
        # those are gone, the record is what says these traces were decided.
        self.waiting.setdefault(partition, deque()).append((self.segments(partition)[1], record))
        self._delete_released(partition)

    def _delete_released(self, partition: int) -> None:
        """Delete the released records of `partition` whose traces' segments are all gone."""
        waiting = self.waiting.get(partition)
        if not waiting:
            return
        floor = self.segments(partition)[0]
        while waiting and waiting[0][0] <= floor:
            _, record = waiting.popleft()
            self.store.delete(partition, _RECORD_KEY.pack(_RECORD_PREFIX, record))

    def evict(self, now: float, writable: Callable[[int], bool] = lambda p: True) -> int:
        """Forget decisions beyond the size limits or older than the TTL; return how many.

        A decision of a partition handed over (not `writable`) leaves memory only: its table
        belongs to the next owner.
        """
        evicted = 0
        kept, limit, oldest = self.kept, self.limits[True], now - self.ttl
        while (first := kept.head()) is not None:
            decided_at, partition, _, record = _HELD.unpack_from(first[1])[:4]
            if len(kept) <= limit and decided_at > oldest:
                break
            kept.popleft()
            self.kept_bytes -= sys.getsizeof(first[1])
            if writable(partition):
                self._release(partition, None if record == _NOT_STORED else record)
            evicted += 1
        dropped, marks = self.dropped, self.dropped_marks
        before = dropped.evicted
        while marks and marks[0][1] <= oldest:
            dropped.evict(marks.popleft()[0] - dropped.evicted)
        dropped.evict(len(dropped) - self.limits[False])
        while marks and marks[0][0] <= dropped.evicted:
            marks.popleft()
        evicted += dropped.evicted - before
        for partition, records in self.dropped_records.items():
            while records and records[0][1] <= dropped.evicted:
                seq = records.popleft()[0]
                if writable(partition):
                    self._release(partition, seq)
        for partition in list(self.waiting):
            if writable(partition):
                self._delete_released(partition)
        self._observe()
        return evicted

    def _observe(self) -> None:
        DECISION_CACHE_DECISIONS.labels("kept").set(len(self.kept))
        DECISION_CACHE_DECISIONS.labels("dropped").set(len(self.dropped))
        # The dict, its int keys, the packed values and the deque's slots.
        kept = self.kept
        held = sys.getsizeof(kept.entries) + 32 * len(kept) + self.kept_bytes + 8 * len(kept.order)
        DECISION_CACHE_BYTES.labels("kept").set(held)
        DECISION_CACHE_BYTES.labels("dropped").set(self.dropped.nbytes)

    def rebuild(self, partitions: Iterable[int]) -> list[tuple[int, bytes]]:
        """Load the remembered decisions of `partitions` from the table (after recovery);
        the (partition, key) of stored values to delete: those that are not decisions,
        records whose every decision a newer record replaced, and an older release's
        decisions (stored again as a record here)."""
        partitions = set(partitions)
        self.forget_partitions(partitions)
        unused = []
        for partition in partitions:
            loaded: dict[bytes, Remembered] = {}
            live: dict[int, int] = {}
            numbers = [-1]  # every record number stored, readable or not
            # An older release's decisions (one per trace key) first: any record is newer.
            stored = sorted(
                self.store.items(partition), key=lambda item: _record_number(item[0]) is not None
            )
            states = self.policy_states[partition] = {}
            for key, value in stored:
                if key.startswith(_STATE_PREFIX):
                    states[key[len(_STATE_PREFIX) :].decode("utf-8", "replace")] = value
                    continue
                seq = _record_number(key)
                if seq is not None:
                    numbers.append(seq)
                try:
                    found = self._decode(partition, key, value)
                except ValueError:
                    unused.append((partition, key))
                    continue
                for trace, decision in found:
                    older = loaded.get(trace)
                    if older is not None and older.record == LEGACY_RECORD:
                        unused.append((partition, trace))
                    elif older is not None and older.record is not None:
                        live[older.record] -= 1
                    loaded[trace] = decision
                    if decision.record is not None and decision.record >= 0:
                        live[decision.record] = live.get(decision.record, 0) + 1
            for seq, count in live.items():
                if count == 0:
                    unused.append((partition, _RECORD_KEY.pack(_RECORD_PREFIX, seq)))
            # Never reuse the number of a record that could not be read: it is deleted later.
            self.next_record[partition] = max(numbers) + 1
            self.records[partition] = {}
            recorded = [
                item
                for item in sorted(loaded.items(), key=lambda item: item[1].decided_at)
                if item[1].record is not None and item[1].record >= 0
            ]
            self._hold(recorded)
            for key, decision in loaded.items():
                if decision.record == LEGACY_RECORD:  # stored again by `migrate`
                    decision.record = None
                    self.pending[key] = decision
        self._observe()
        return unused

    def migrate(self, partitions: Iterable[int]) -> list[tuple[int, bytes]]:
        """Store an older release's per-trace decisions of `partitions` (found by `rebuild`,
        once the partitions are owned and writable) as a record of this release; the (partition,
        key) of the old values, to delete now."""
        chosen = set(partitions)
        legacy = [
            (key, decision)
            for key, decision in self.pending.items()
            if decision.partition in chosen and decision.record is None
        ]
        self.persist_many(legacy)
        return [(decision.partition, key) for key, decision in legacy]

    @staticmethod
    def _decode(partition: int, key: bytes, value: bytes) -> list[tuple[bytes, Remembered]]:
        seq = _record_number(key)
        if seq is None:
            decision = Remembered.decode(partition, key, value)
            decision.record = LEGACY_RECORD
            return [(key, decision)]
        found = decode_decisions(partition, value)
        for _, decision in found:
            decision.record = seq
        return found

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the decisions of partitions this worker no longer owns (from memory only).
        Their dropped decisions stay among the hashes until evicted: a decision never
        changes, and a lookup for a partition not owned is never made."""
        gone = set(partitions)
        if not gone:
            return
        for partition in gone:
            self.records.pop(partition, None)
            self.next_record.pop(partition, None)
            self.waiting.pop(partition, None)
            self.dropped_records.pop(partition, None)
        for key in [k for k, d in self.pending.items() if d.partition in gone]:
            del self.pending[key]
        kept = self.kept
        for hashed in [
            h for h, packed in kept.entries.items() if _HELD.unpack_from(packed)[1] in gone
        ]:
            self._let_go(hashed)
