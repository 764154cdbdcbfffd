"""Trace buffer: spans wait in the RocksDB-backed `traces` table until their decision time.

The Python heap holds one small entry per trace (decision time, partition, bytes), in arrival
order; span data stays in RocksDB. Because every trace waits the same `decision.wait`, arrival
order is decision order, and an ordered dict is the whole timer queue.

Stored value: an 8-byte first-seen time, the 8-byte position of the last record applied, the
tenant, then OTLP fragment bytes. Appending spans is byte concatenation (see streams.otlp), so no
span is ever re-parsed before the decision.

The position (`record_position`: the record's offset and the fragment's index in it) makes
appending idempotent. After a crash or a stop whose last offsets were not committed, Kafka
delivers some records again; their spans are already in the table (the changelog is flushed
before offsets are committed, never after), and a fragment at or below the stored position
is skipped instead of being appended twice.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from streams.metrics import BUFFER_BYTES, TRACES_BUFFERED, TRACES_DECIDED_EARLY
from streams.state import TableStore

__all__ = [
    "UNKNOWN_POSITION",
    "BufferedTrace",
    "already_applied",
    "Pending",
    "TraceBuffer",
    "decode_value",
    "encode_header",
    "record_position",
]

_HEADER = struct.Struct(">dqB")
_POSITION = struct.Struct(">q")
_POSITION_AT = 8  # byte offset of the position in the header
_INDEX_BITS = 20  # fragments per record: far more than a 1 MB record can hold

UNKNOWN_POSITION = -1


def record_position(offset: int, index: int) -> int:
    """A fragment's place in its partition: record offset, then index within the record."""
    return (offset << _INDEX_BITS) | index


def already_applied(position: int, last: int) -> bool:
    """Is the fragment at `position` covered by a state whose last applied position is `last`?"""
    return position != UNKNOWN_POSITION and position <= last


def encode_header(first_seen: float, tenant: str, position: int = UNKNOWN_POSITION) -> bytes:
    """The stored value's prefix: first-seen time, last applied position and tenant."""
    name = tenant.encode()[:255]
    return _HEADER.pack(first_seen, position, len(name)) + name


@dataclass(frozen=True, slots=True)
class BufferedTrace:
    """A trace read back from the buffer."""

    first_seen: float
    tenant: str
    otlp: bytes


def decode_value(value: bytes) -> BufferedTrace:
    """Split a stored value into first-seen time, tenant and OTLP bytes."""
    first_seen, _, length = _HEADER.unpack_from(value)
    start = _HEADER.size + length
    return BufferedTrace(first_seen, value[_HEADER.size : start].decode(), value[start:])


@dataclass(slots=True)
class Pending:
    """What the decision timer keeps on the heap per buffered trace."""

    deadline: float
    partition: int
    size: int
    position: int = UNKNOWN_POSITION


class TraceBuffer:
    """Buffered traces: the `traces` table plus the in-memory decision queue."""

    def __init__(self, store: TableStore, wait: float, max_traces: int) -> None:
        self.store = store
        self.wait = wait
        self.max_traces = max_traces
        self.pending: OrderedDict[bytes, Pending] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, trace_id: bytes) -> bool:
        return trace_id in self.pending

    def append(
        self,
        partition: int,
        trace_id: bytes,
        tenant: str,
        fragment: bytes,
        now: float,
        position: int = UNKNOWN_POSITION,
    ) -> bool:
        """Add a fragment of spans to a trace, starting its decision window if it is new.

        False when the fragment was already applied (a record delivered again).
        """
        entry = self.pending.get(trace_id)
        if entry is None:
            value = encode_header(now, tenant, position) + fragment
            entry = self.pending[trace_id] = Pending(now + self.wait, partition, 0, position)
        else:
            if already_applied(position, entry.position):
                return False
            entry.position = max(position, entry.position)
            stored = self.store.get(partition, trace_id)
            if stored is None:
                value = encode_header(now, tenant, entry.position) + fragment
            else:
                head = bytearray(stored[: _HEADER.size])
                _POSITION.pack_into(head, _POSITION_AT, entry.position)
                value = bytes(head) + stored[_HEADER.size :] + fragment
        self.bytes += len(value) - entry.size
        entry.size = len(value)
        self.store.put(partition, trace_id, value)
        return True

    def pop_due(self, now: float, limit: int) -> list[tuple[bytes, Pending]]:
        """Take traces whose window closed, oldest first, plus the oldest beyond max_traces."""
        due: list[tuple[bytes, Pending]] = []
        pending = self.pending
        early = 0
        while pending and len(due) < limit:
            trace_id, entry = next(iter(pending.items()))
            if entry.deadline > now:
                if len(pending) <= self.max_traces:
                    break
                early += 1  # the buffer is full: decide the oldest now rather than lose it
            pending.popitem(last=False)
            self.bytes -= entry.size
            due.append((trace_id, entry))
        if early:
            TRACES_DECIDED_EARLY.inc(early)
        self._observe()
        return due

    def requeue(self, items: Iterable[tuple[bytes, Pending]], now: float) -> None:
        """Put traces back at the front of the queue to be decided again (after a failure)."""
        for trace_id, entry in items:
            entry.deadline = now
            self.pending[trace_id] = entry
            self.pending.move_to_end(trace_id, last=False)
            self.bytes += entry.size
        self._observe()

    def load(self, trace_id: bytes, entry: Pending) -> BufferedTrace | None:
        """Read a trace's stored spans."""
        value = self.store.get(entry.partition, trace_id)
        return decode_value(value) if value is not None else None

    def remove(self, partition: int, trace_id: bytes) -> None:
        """Delete a decided trace from the table (and its changelog)."""
        self.store.delete(partition, trace_id)

    def rebuild(self, partitions: Iterable[int]) -> None:
        """Recreate the decision queue from the table after recovery or a rebalance."""
        entries = []
        for partition in partitions:
            for trace_id, value in self.store.items(partition):
                first_seen, position, _ = _HEADER.unpack_from(value)
                entries.append((first_seen + self.wait, trace_id, partition, len(value), position))
        entries.sort()
        self.pending = OrderedDict(
            (trace_id, Pending(deadline, partition, size, position))
            for deadline, trace_id, partition, size, position in entries
        )
        self.bytes = sum(entry.size for entry in self.pending.values())
        self._observe()

    def _observe(self) -> None:
        TRACES_BUFFERED.set(len(self.pending))
        BUFFER_BYTES.set(self.bytes)
