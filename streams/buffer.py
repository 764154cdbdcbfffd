"""Trace buffer: spans wait in the RocksDB-backed `traces` table until their decision time.

The Python heap holds one small entry per trace (decision time, partition, bytes), in arrival
order per partition; span data stays in RocksDB. Because every trace waits the same
`decision.wait`, arrival order is decision order, and an ordered dict per partition is the whole
timer queue.

Stored value: an 8-byte first-seen time (on the input's clock), the tenant, the origins applied
(streams.origin: per input partition, the highest input offset whose spans are in the trace),
then OTLP fragment bytes. Appending spans is byte concatenation (see streams.otlp), so no span is
ever re-parsed before the decision. A fragment whose origin the trace already covers is a copy
(a record delivered again, or an input record split again after a crash) and is skipped.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streams.metrics import BUFFER_BYTES, TRACES_BUFFERED, TRACES_DECIDED_EARLY
from streams.origin import NO_ORIGIN, add_origin, covers
from streams.state import TableStore

__all__ = [
    "BufferedTrace",
    "Pending",
    "TraceBuffer",
    "decode_value",
    "encode_header",
]

_HEADER = struct.Struct(">dBH")  # first seen, tenant length, origins
_FIRST_SEEN = struct.Struct(">d")
_ORIGIN_BYTES = 8


def encode_header(first_seen: float, tenant: str, origins: bytes = b"") -> bytes:
    """The stored value's prefix: first-seen time, tenant and the origins applied."""
    name = tenant.encode()[:255]
    return _HEADER.pack(first_seen, len(name), len(origins) // _ORIGIN_BYTES) + name + origins


def _split_value(value: bytes) -> tuple[float, bytes, bytes, int]:
    """first seen, tenant bytes, origins, and where the OTLP bytes start."""
    first_seen, length, count = _HEADER.unpack_from(value)
    name_end = _HEADER.size + length
    end = name_end + count * _ORIGIN_BYTES
    return first_seen, value[_HEADER.size : name_end], value[name_end:end], end


@dataclass(frozen=True, slots=True)
class BufferedTrace:
    """A trace read back from the buffer."""

    first_seen: float
    tenant: str
    otlp: bytes
    origins: bytes = b""


def decode_value(value: bytes) -> BufferedTrace:
    """Split a stored value into first-seen time, tenant, OTLP bytes and origins."""
    first_seen, name, origins, start = _split_value(value)
    return BufferedTrace(first_seen, name.decode(), value[start:], origins)


@dataclass(slots=True)
class Pending:
    """What the decision timer keeps on the heap per buffered trace."""

    deadline: float
    partition: int
    size: int


class TraceBuffer:
    """Buffered traces: the `traces` table plus one decision queue per partition.

    A queue is in arrival order, which is deadline order since every trace waits the same
    `decision.wait`. A trace is due when its deadline has passed on its partition's clock
    (`streams.progress`), so a partition that lags behind its input holds its traces back
    while the others go on.
    """

    def __init__(self, store: TableStore, wait: float, max_traces: int) -> None:
        self.store = store
        self.wait = wait
        self.max_traces = max_traces
        self.queues: dict[int, OrderedDict[bytes, Pending]] = {}
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def holds(self, partition: int, trace_id: bytes) -> bool:
        """Is the trace buffered (waiting for its decision)?"""
        queue = self.queues.get(partition)
        return queue is not None and trace_id in queue

    def entry(self, partition: int, trace_id: bytes) -> Pending | None:
        """The queue entry of a buffered trace."""
        queue = self.queues.get(partition)
        return queue.get(trace_id) if queue is not None else None

    def append(
        self,
        partition: int,
        trace_id: bytes,
        tenant: str,
        fragment: bytes,
        now: float,
        origin: int = NO_ORIGIN,
    ) -> bool:
        """Add a fragment of spans to a trace, starting its decision window if it is new.

        `now` is the fragment's time on the input's clock, `origin` where its spans entered
        Caudal. False when the trace already has it (a copy, skipped).
        """
        queue = self.queues.get(partition)
        if queue is None:
            queue = self.queues[partition] = OrderedDict()
        entry = queue.get(trace_id)
        stored = self.store.get(partition, trace_id) if entry is not None else None
        if stored is None:
            value = encode_header(now, tenant, add_origin(b"", origin)) + fragment
            if entry is None:
                entry = queue[trace_id] = Pending(now + self.wait, partition, 0)
                self.count += 1
        else:
            first_seen, name, origins, start = _split_value(stored)
            if covers(origins, origin):
                return False
            head = encode_header(first_seen, name.decode(), add_origin(origins, origin))
            value = head + stored[start:] + fragment
        self.bytes += len(value) - entry.size
        entry.size = len(value)
        self.store.put(partition, trace_id, value)
        return True

    def pop_due(
        self, clock: Callable[[int], float] | float, limit: int, partitions: Iterable[int] = ()
    ) -> list[tuple[bytes, Pending]]:
        """Take traces whose window closed on their partition's clock, oldest first, then the
        oldest beyond max_traces; only from `partitions` (every queue when empty).

        `clock` gives a partition's time (`PartitionClock.watermark`), or is one time for all.
        """
        due: list[tuple[bytes, Pending]] = []
        chosen = list(partitions) or list(self.queues)
        for partition in chosen:
            queue = self.queues.get(partition)
            if not queue:
                continue
            mark = clock if isinstance(clock, float | int) else clock(partition)
            while queue and len(due) < limit:
                trace_id, entry = next(iter(queue.items()))
                if entry.deadline > mark:
                    break
                queue.popitem(last=False)
                due.append((trace_id, entry))
        early = 0
        while self.count - len(due) > self.max_traces and len(due) < limit:
            # The buffer is full: decide the oldest now rather than lose it.
            heads = [(q[next(iter(q))].deadline, p) for p in chosen if (q := self.queues.get(p))]
            if not heads:
                break
            _, partition = min(heads)
            due.append(self.queues[partition].popitem(last=False))
            early += 1
        if early:
            TRACES_DECIDED_EARLY.inc(early)
        self.count -= len(due)
        self.bytes -= sum(entry.size for _, entry in due)
        self._observe()
        return due

    def requeue(self, items: Iterable[tuple[bytes, Pending]], now: float) -> None:
        """Put traces back at the front of their queue to be decided again (after a failure)."""
        for trace_id, entry in items:
            entry.deadline = now
            queue = self.queues.setdefault(entry.partition, OrderedDict())
            if trace_id not in queue:
                self.count += 1
                self.bytes += entry.size
            queue[trace_id] = entry
            queue.move_to_end(trace_id, last=False)
        self._observe()

    def load(self, trace_id: bytes, entry: Pending) -> BufferedTrace | None:
        """Read a trace's stored spans."""
        value = self.store.get(entry.partition, trace_id)
        return decode_value(value) if value is not None else None

    def remove(self, partition: int, trace_id: bytes) -> None:
        """Delete a decided trace from the table (and its changelog)."""
        self.store.delete(partition, trace_id)

    def rebuild(self, partitions: Iterable[int]) -> None:
        """Recreate the decision queues of `partitions` from the table (after recovery)."""
        for partition in partitions:
            entries = []
            for trace_id, value in self.store.items(partition):
                (first_seen,) = _FIRST_SEEN.unpack_from(value)
                entries.append((first_seen + self.wait, trace_id, len(value)))
            entries.sort()
            self.forget([partition])
            self.queues[partition] = OrderedDict(
                (trace_id, Pending(deadline, partition, size))
                for deadline, trace_id, size in entries
            )
            self.count += len(entries)
            self.bytes += sum(size for _, _, size in entries)
        self._observe()

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the queues of partitions this worker no longer owns (their table stays)."""
        for partition in partitions:
            queue = self.queues.pop(partition, None)
            if queue:
                self.count -= len(queue)
                self.bytes -= sum(entry.size for entry in queue.values())
        self._observe()

    def _observe(self) -> None:
        TRACES_BUFFERED.set(self.count)
        BUFFER_BYTES.set(self.bytes)
