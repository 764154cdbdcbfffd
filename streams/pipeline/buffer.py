"""Trace buffer: spans wait in the RocksDB-backed `traces` table until their decision time.

The Python heap holds one small entry per trace (decision time, partition, bytes, fragment
count, origins applied), in arrival order per partition; span data stays in RocksDB. Because
every trace waits the same `decision.wait`, arrival order is decision order, and an ordered dict
per partition is the whole timer queue.

Each fragment is its own key: the trace key (streams.wire.tracekey: trace ID and tenant) followed by
the fragment's 4-byte sequence number. Appending a fragment is one RocksDB put and one changelog
record of that fragment's size, whatever the trace's size; the decision reads the fragments back
in order (one multi-get) and concatenates them (protobuf merges repeated fields, see
streams.wire.otlp). Stored value: the fragment's time on the input's clock (8 bytes), its origin
(streams.wire.origin, 12 bytes), then its OTLP bytes. A fragment whose origin the trace already
covers is a copy (a record delivered again, or an input record split again after a crash) and
is skipped.

Bounds: `max_traces` buffered traces; `max_trace_bytes` per trace (a trace past it is decided
on what arrived, and its later spans follow the decision as late spans); `max_buffer_bytes` in
all (past it the oldest traces are decided early). Nothing is ever dropped for a bound: it is
decided sooner, and counted in caudal_traces_decided_early by reason.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from streams.kafka.state import Store
from streams.ops.metrics import BUFFER_BYTES, TRACES_BUFFERED, TRACES_DECIDED_EARLY
from streams.wire.origin import (
    ENTRY_BYTES,
    NO_ORIGIN,
    add_origin,
    covers,
    decode_origin,
    encode_origin,
)
from streams.wire.tracekey import parse_key

__all__ = [
    "FRAGMENT_OVERHEAD",
    "BufferedTrace",
    "Pending",
    "TraceBuffer",
    "Unreadable",
]

_SEEN = struct.Struct(">d")
_SEQ = struct.Struct(">I")
_PREFIX = _SEEN.size + ENTRY_BYTES
# What a stored fragment adds to its OTLP bytes (value prefix, and the key: trace ID, tenant
# length, a 255-byte tenant at most, sequence number).
FRAGMENT_OVERHEAD = _PREFIX + 16 + 1 + 255 + _SEQ.size


@dataclass(frozen=True, slots=True)
class BufferedTrace:
    """A trace read back from the buffer: its fragments' OTLP bytes, in arrival order."""

    first_seen: float
    fragments: list[bytes]
    origins: bytes = b""

    @property
    def otlp(self) -> bytes:
        """The whole trace as one serialized ExportTraceServiceRequest."""
        return b"".join(self.fragments)


@dataclass(slots=True)
class Pending:
    """What the decision timer keeps on the heap per buffered trace."""

    deadline: float
    partition: int
    size: int = 0
    fragments: int = 0
    origins: bytes = b""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored record that is not a buffered fragment (found at recovery): dead-lettered."""

    partition: int
    key: bytes
    value: bytes


@dataclass
class _Limits:
    max_traces: int
    max_trace_bytes: int = 0  # 0: no bound
    max_buffer_bytes: int = 0


class TraceBuffer:
    """Buffered traces: the `traces` table plus one decision queue per partition.

    A queue is in arrival order, which is deadline order since every trace waits the same
    `decision.wait`. A trace is due when its deadline has passed on its partition's clock
    (`streams.pipeline.progress`), so a partition that lags behind its input holds its traces back
    while the others go on; a trace past `max_trace_bytes` is due at once.
    """

    def __init__(
        self,
        store: Store,
        wait: float,
        max_traces: int,
        max_trace_bytes: int = 0,
        max_buffer_bytes: int = 0,
    ) -> None:
        self.store = store
        self.wait = wait
        self.limits = _Limits(max_traces, max_trace_bytes, max_buffer_bytes)
        self.queues: dict[int, OrderedDict[bytes, Pending]] = {}
        # Per partition, traces past max_trace_bytes (decided before the rest).
        self.oversize: dict[int, dict[bytes, None]] = {}
        self.count = 0
        self.bytes = 0

    @property
    def max_traces(self) -> int:
        """decision.max_traces."""
        return self.limits.max_traces

    def __len__(self) -> int:
        return self.count

    def holds(self, partition: int, key: bytes) -> bool:
        """Is the trace buffered (waiting for its decision)?"""
        queue = self.queues.get(partition)
        return queue is not None and key in queue

    def entry(self, partition: int, key: bytes) -> Pending | None:
        """The queue entry of a buffered trace."""
        queue = self.queues.get(partition)
        return queue.get(key) if queue is not None else None

    def append(
        self, partition: int, key: bytes, fragment: bytes, now: float, origin: int = NO_ORIGIN
    ) -> bool:
        """Add a fragment of spans to a trace, starting its decision window if it is new.

        `key` is the trace key (streams.wire.tracekey), `now` the fragment's time on the input's
        clock, `origin` where its spans entered Caudal. False when the trace already has it
        (a copy, skipped).
        """
        queue = self.queues.get(partition)
        if queue is None:
            queue = self.queues[partition] = OrderedDict()
        entry = queue.get(key)
        if entry is not None and covers(entry.origins, origin):
            return False
        seq = entry.fragments if entry is not None else 0
        value = _SEEN.pack(now) + encode_origin(origin) + fragment
        self.store.put(partition, key + _SEQ.pack(seq), value)
        if entry is None:
            entry = queue[key] = Pending(now + self.wait, partition)
            self.count += 1
        entry.fragments += 1
        entry.origins = add_origin(entry.origins, origin)
        entry.size += len(value)
        self.bytes += len(value)
        limit = self.limits.max_trace_bytes
        if limit and entry.size > limit:
            self.oversize.setdefault(partition, {})[key] = None
        return True

    def pop_due(
        self, clock: Callable[[int], float] | float, limit: int, partitions: Iterable[int] = ()
    ) -> list[tuple[bytes, Pending]]:
        """Take traces that are due, only from `partitions` (every queue when empty): those past
        max_trace_bytes, those whose window closed on their partition's clock, oldest first,
        then the oldest beyond max_traces or max_buffer_bytes.

        `clock` gives a partition's time (`PartitionClock.watermark`), or is one time for all.
        """
        due: list[tuple[bytes, Pending]] = []
        chosen = list(partitions) or list(self.queues)
        early = self._take_oversize(chosen, limit, due)
        for partition in chosen:
            queue = self.queues.get(partition)
            if not queue:
                continue
            mark = clock if isinstance(clock, float | int) else clock(partition)
            while queue and len(due) < limit:
                key, entry = next(iter(queue.items()))
                if entry.deadline > mark:
                    break
                queue.popitem(last=False)
                due.append((key, entry))
        taken = sum(entry.size for _, entry in due)
        over_traces = over_bytes = 0
        while len(due) < limit:
            # A bound is reached: decide the oldest now rather than lose anything.
            full = self.count - len(due) > self.limits.max_traces
            heavy = self.limits.max_buffer_bytes and (
                self.bytes - taken > self.limits.max_buffer_bytes
            )
            if not (full or heavy):
                break
            heads = [(q[next(iter(q))].deadline, p) for p in chosen if (q := self.queues.get(p))]
            if not heads:
                break
            _, partition = min(heads)
            key, entry = self.queues[partition].popitem(last=False)
            due.append((key, entry))
            taken += entry.size
            if full:
                over_traces += 1
            else:
                over_bytes += 1
        for reason, count in (
            ("max_trace_bytes", early),
            ("max_traces", over_traces),
            ("max_buffer_bytes", over_bytes),
        ):
            if count:
                TRACES_DECIDED_EARLY.labels(reason).inc(count)
        for key, entry in due:
            oversize = self.oversize.get(entry.partition)
            if oversize:
                oversize.pop(key, None)
        self.count -= len(due)
        self.bytes -= taken
        self._observe()
        return due

    def _take_oversize(
        self, chosen: list[int], limit: int, due: list[tuple[bytes, Pending]]
    ) -> int:
        taken = 0
        for partition in chosen:
            oversize = self.oversize.get(partition)
            queue = self.queues.get(partition)
            while oversize and queue is not None and len(due) < limit:
                key = next(iter(oversize))
                del oversize[key]
                entry = queue.pop(key, None)
                if entry is not None:
                    due.append((key, entry))
                    taken += 1
        return taken

    def requeue(self, items: Iterable[tuple[bytes, Pending]], now: float) -> None:
        """Put traces back at the front of their queue to be decided again (after a failure)."""
        for key, entry in items:
            entry.deadline = now
            queue = self.queues.setdefault(entry.partition, OrderedDict())
            if key not in queue:
                self.count += 1
                self.bytes += entry.size
            queue[key] = entry
            queue.move_to_end(key, last=False)
        self._observe()

    def load(self, key: bytes, entry: Pending) -> BufferedTrace | None:
        """Read a trace's stored fragments, in order."""
        keys = [key + _SEQ.pack(seq) for seq in range(entry.fragments)]
        values = [v for v in self.store.get_many(entry.partition, keys) if v is not None]
        if not values:
            return None
        (first_seen,) = _SEEN.unpack_from(values[0])
        return BufferedTrace(first_seen, [v[_PREFIX:] for v in values], entry.origins)

    def remove(self, key: bytes, entry: Pending) -> None:
        """Delete a decided trace's fragments from the table (and its changelog)."""
        for seq in range(entry.fragments):
            self.store.delete(entry.partition, key + _SEQ.pack(seq))

    def rebuild(self, partitions: Iterable[int]) -> list[Unreadable]:
        """Recreate the decision queues of `partitions` from the table (after recovery).

        Returns the stored records that are not fragments of a trace, left in the table for the
        caller to dead-letter and delete.
        """
        unreadable: list[Unreadable] = []
        limit = self.limits.max_trace_bytes
        for partition in partitions:
            found: dict[bytes, Pending] = {}
            # Keys come sorted, so a trace's fragment 0 (its first-seen time) comes first.
            for stored_key, value in self.store.items(partition):
                parsed = parse_key(stored_key)
                if parsed is None or len(parsed[1]) != _SEQ.size or len(value) < _PREFIX:
                    unreadable.append(Unreadable(partition, stored_key, value))
                    continue
                key, seq_bytes = parsed
                (seq,) = _SEQ.unpack(seq_bytes)
                entry = found.get(key)
                if entry is None:
                    (seen,) = _SEEN.unpack_from(value)
                    entry = found[key] = Pending(seen + self.wait, partition)
                entry.fragments = max(entry.fragments, seq + 1)
                entry.size += len(value)
                entry.origins = add_origin(entry.origins, decode_origin(value, _SEEN.size))
            self.forget([partition])
            ordered = sorted(found.items(), key=lambda item: item[1].deadline)
            self.queues[partition] = OrderedDict(ordered)
            for key, entry in ordered:
                if limit and entry.size > limit:
                    self.oversize.setdefault(partition, {})[key] = None
            self.count += len(ordered)
            self.bytes += sum(entry.size for _, entry in ordered)
        self._observe()
        return unreadable

    def discard(self, partition: int, key: bytes) -> None:
        """Take a trace out of the buffer without deciding it (its decision already exists)."""
        queue = self.queues.get(partition)
        entry = queue.pop(key, None) if queue is not None else None
        if entry is None:
            return
        self.remove(key, entry)
        self.count -= 1
        self.bytes -= entry.size
        oversize = self.oversize.get(partition)
        if oversize:
            oversize.pop(key, None)
        self._observe()

    def drop_unreadable(self, items: Iterable[Unreadable]) -> None:
        """Delete stored records found unreadable (after they were dead-lettered)."""
        for item in items:
            self.store.delete(item.partition, item.key)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the queues of partitions this worker no longer owns (their table stays)."""
        for partition in partitions:
            queue = self.queues.pop(partition, None)
            self.oversize.pop(partition, None)
            if queue:
                self.count -= len(queue)
                self.bytes -= sum(entry.size for entry in queue.values())
        self._observe()

    def _observe(self) -> None:
        TRACES_BUFFERED.set(self.count)
        BUFFER_BYTES.set(self.bytes)
