"""Trace buffer: spans wait in the RocksDB-backed `traces` table until their decision time.

Stored as *segments*: the fragments that one `caudal-spans` record (or one input record, when
the worker reads the input directly) adds to the buffer are written as one value under one key,
so a record costs one RocksDB put and one changelog record however many traces it packs, and a
decision tick reads each segment once for all the traces that have fragments in it. A segment
is deleted (one tombstone) once every trace with a fragment in it has been decided.

The Python heap holds one small entry per trace, packed in one bytes object (decision time,
bytes, origins applied, and 16 bytes per fragment: its segment and where its bytes sit there),
in arrival order per partition: about 210 bytes a trace with its key and queue slot. Span data
stays in RocksDB. Because every trace waits the same `decision.wait`, arrival order is decision
order, and one queue per partition (a dict and a deque of keys) is the whole timer. The
decision reads a trace's fragments back in order and concatenates them
(protobuf merges repeated fields, see streams.wire.otlp).

Segment key: `\\xffS` and an 8-byte sequence number, counted per partition (a new owner goes on
from the highest one it recovered), so sorted keys are arrival order. Segment value: a version
byte, the segment's time on the input's clock (8 bytes), the fragment count (4 bytes), then per
fragment its trace key (streams.wire.tracekey: 2-byte length, then the key), its origin
(streams.wire.origin, 12 bytes) and its length (4 bytes); then the fragments' OTLP bytes, back
to back. A segment never exceeds `kafka.max_message_bytes` (a record's fragments that would go
over are written as several segments). A fragment whose origin the trace already covers is a
copy (a record delivered again, or an input record split again after a crash) and is skipped.

Bounds: `max_traces` buffered traces; `max_trace_bytes` per trace (a trace past it is decided
on what arrived, and its later spans follow the decision as late spans); `max_buffer_bytes` in
all (past it the oldest traces are decided early). Nothing is ever dropped for a bound: it is
decided sooner, and counted in caudal_traces_decided_early by reason.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import Generic, TypeVar

from policies import TraceView
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
from streams.wire.records import DEFAULT_MAX_MESSAGE_BYTES, RECORD_MARGIN
from streams.wire.tracekey import key_trace_id, parse_key

__all__ = [
    "FRAGMENT_OVERHEAD",
    "BufferedTrace",
    "Pending",
    "Queue",
    "TraceBuffer",
    "Unreadable",
    "decode_segment",
    "encode_segment",
]

_VERSION = 1
_PREFIX = b"\xffS"
_KEY = struct.Struct(">2sQ")  # prefix, sequence number
_HEAD = struct.Struct(">BdI")  # version, time on the input's clock, fragment count
_KEY_LENGTH = struct.Struct(">H")
_LENGTH = struct.Struct(">I")
_ENTRY_FIXED = _KEY_LENGTH.size + ENTRY_BYTES + _LENGTH.size
_REF = struct.Struct(">QII")  # segment, offset, length: a fragment, as a trace's entry holds it
# The most a stored fragment adds to its OTLP bytes: its index entry (with a trace key of a
# 255-byte tenant), and a segment's key and head when it is alone in one.
FRAGMENT_OVERHEAD = _KEY.size + _HEAD.size + _ENTRY_FIXED + 16 + 1 + 255
# Segments read during one decision batch are kept for the traces that follow, up to this.
_READ_BUDGET = 32 * 1024 * 1024

# (trace key, fragment, origin)
Fragment = tuple[bytes, bytes, int]
# A fragment as a segment holds it: (trace key, fragment, origin encoded by `encode_origin`)
_Taken = tuple[bytes, bytes, bytes]
_UNREAD = b"\x00unread"  # load_each: a segment not read yet (None: read, and gone)
_NOTHING_ADDED = (0, b"")


def segment_key(seq: int) -> bytes:
    """The table key of a partition's segment number `seq`."""
    return _KEY.pack(_PREFIX, seq)


def encode_segment(seen: float, fragments: Sequence[Fragment]) -> bytes:
    """One segment's stored value (see the module docstring)."""
    return _segment(seen, [(key, fragment, encode_origin(o)) for key, fragment, o in fragments])


def _segment(seen: float, fragments: Sequence[_Taken]) -> bytes:
    """`encode_segment` of fragments whose origins are encoded (`encode_origin`) already."""
    parts = [_HEAD.pack(_VERSION, seen, len(fragments))]
    key_length, length = _KEY_LENGTH.pack, _LENGTH.pack
    for key, fragment, source in fragments:
        parts += (key_length(len(key)), key, source, length(len(fragment)))
    parts += [fragment for _, fragment, _ in fragments]
    return b"".join(parts)


def decode_segment(value: bytes) -> tuple[float, list[tuple[bytes, int, int, int]]]:
    """A segment's time and, per fragment, (trace key, origin, offset, length) in `value`;
    ValueError if `value` is not a segment."""
    try:
        version, seen, count = _HEAD.unpack_from(value)
    except struct.error:
        raise ValueError(f"a {len(value)}-byte value is not a segment") from None
    if version != _VERSION:
        raise ValueError(f"segment version {version}")
    out = []
    at = _HEAD.size
    entries = []
    try:
        for _ in range(count):
            (size,) = _KEY_LENGTH.unpack_from(value, at)
            key = value[at + 2 : at + 2 + size]
            at += 2 + size
            parsed = parse_key(key)
            if len(key) != size or parsed is None or parsed[1]:
                raise ValueError("a segment entry without a trace key")
            source = decode_origin(value, at)
            (length,) = _LENGTH.unpack_from(value, at + ENTRY_BYTES)
            at += ENTRY_BYTES + _LENGTH.size
            entries.append((key, source, length))
    except struct.error:
        raise ValueError(f"a segment of {count} fragments cut short") from None
    for key, source, length in entries:
        out.append((key, source, at, length))
        at += length
    if at != len(value):
        raise ValueError(f"a segment of {len(value)} bytes whose fragments end at {at}")
    return seen, out


@dataclass(slots=True)
class BufferedTrace:
    """A trace read back from the buffer: its fragments' OTLP bytes, in arrival order (read,
    not changed: not frozen only because a frozen dataclass takes three times as long to
    make, once per trace decided)."""

    first_seen: float
    fragments: list[bytes]
    origins: bytes = b""

    @property
    def otlp(self) -> bytes:
        """The whole trace as one serialized ExportTraceServiceRequest."""
        return b"".join(self.fragments)


@dataclass(slots=True)
class Pending:
    """A buffered trace's entry: its decision time, partition, bytes, the origins it has
    applied and where its fragments sit. The queues hold it packed (`pack`); the decision
    timer gets it as this object."""

    deadline: float
    partition: int
    size: int = 0
    origins: bytes = b""
    refs: bytes = b""  # per fragment: segment, offset, length (_REF)
    after_root: bool = False  # decided `decision.wait_after_root` after its root arrived

    @property
    def fragments(self) -> int:
        """How many fragments the trace has."""
        return len(self.refs) // _REF.size

    def pack(self) -> bytes:
        """The entry as one bytes object: ~80 bytes of heap for a trace of one fragment,
        where the object and its fields take ~200."""
        return _pack(self.deadline, self.size, self.origins, self.refs, self.after_root)

    @classmethod
    def unpack(cls, partition: int, packed: bytes) -> Pending:
        """Inverse of `pack`."""
        deadline, size, count, after_root = _PACKED.unpack_from(packed)
        cut = _PACKED.size + count * ENTRY_BYTES
        rest = packed[_PACKED.size : cut], packed[cut:]
        return cls(deadline, partition, size, *rest, bool(after_root))


# deadline, size, origin entries, whether the deadline is the root's; then origins, then refs
_PACKED = struct.Struct(">dIH?")


def _pack(
    deadline: float, size: int, origins: bytes, refs: bytes, after_root: bool = False
) -> bytes:
    count = len(origins) // ENTRY_BYTES
    return _PACKED.pack(deadline, size, count, after_root) + origins + refs


def _rooted_keys(fragments: Sequence[tuple[bytes, bytes, object]]) -> set[bytes]:
    """The trace keys one of whose `fragments` holds the root span (a span without a parent);
    a fragment that cannot be read holds none (it is dead-lettered when its trace is
    decided)."""
    found: set[bytes] = set()
    for key, fragment, _ in fragments:
        if key in found:
            continue
        try:
            if TraceView.from_request(key_trace_id(key), fragment).has_root:
                found.add(key)
        except Exception:  # noqa: S112 - not OTLP: no root, decided (and dead-lettered) later
            continue
    return found


def _after_root(packed: bytes) -> bool:
    return bool(_PACKED.unpack_from(packed)[3])


def _deadline(packed: bytes) -> float:
    return float(_PACKED.unpack_from(packed)[0])


def _origins(packed: bytes) -> bytes:
    count = _PACKED.unpack_from(packed)[2]
    return packed[_PACKED.size : _PACKED.size + count * ENTRY_BYTES]


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored record that is not a segment (found at recovery): dead-lettered."""

    partition: int
    key: bytes
    value: bytes


K = TypeVar("K", bound=Hashable)


class Queue(Generic[K]):
    """Packed entries by key, first in first out: one partition's buffered traces (Pending.pack
    by trace key, in decision order), or the kept decisions (streams.pipeline.decisions). A
    dict and a deque of keys, half the memory of an OrderedDict; a key taken out of order
    leaves its place in the deque, skipped when the deque reaches it."""

    __slots__ = ("entries", "order", "stale")

    def __init__(self, items: Iterable[tuple[K, bytes]] = ()) -> None:
        self.entries: dict[K, bytes] = dict(items)
        self.order: deque[K] = deque(self.entries)
        self.stale: dict[K, int] = {}  # places left in the deque, per key

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[K]:
        return iter(self.entries)

    def get(self, key: K) -> bytes | None:
        """A trace's packed entry."""
        return self.entries.get(key)

    def values(self) -> Iterable[bytes]:
        """Every packed entry."""
        return self.entries.values()

    def put(self, key: K, packed: bytes) -> None:
        """A new trace goes to the back; one already queued keeps its place."""
        if key not in self.entries:
            self.order.append(key)
        self.entries[key] = packed

    def head(self) -> tuple[K, bytes] | None:
        """The first trace, or None."""
        order, stale = self.order, self.stale
        while order:
            key = order[0]
            left = stale.get(key)
            if not left:
                return key, self.entries[key]
            order.popleft()
            if left > 1:
                stale[key] = left - 1
            else:
                del stale[key]
        return None

    def popleft(self) -> tuple[K, bytes]:
        """Take the first trace (the queue is not empty)."""
        first = self.head()
        assert first is not None
        self.order.popleft()
        del self.entries[first[0]]
        return first

    def pop(self, key: K) -> bytes | None:
        """Take a trace wherever it is."""
        packed = self.entries.pop(key, None)
        if packed is not None:
            self.stale[key] = self.stale.get(key, 0) + 1
        return packed

    def push_front(self, key: K, packed: bytes) -> None:
        """Put a trace back to be decided again (rare: after a failure): first, or, if it was
        taken out of order, at the place it left (its last place in the queue).

        Taking a place out of the deque would cost a walk of the whole queue per trace: a
        batch of thousands put back after a broker stall held the event loop for seconds."""
        if key not in self.entries:  # queued again meanwhile, it keeps that place
            left = self.stale.get(key, 0)
            if not left:
                self.order.appendleft(key)
            elif left > 1:  # its places are all stale: the last becomes live
                self.stale[key] = left - 1
            else:
                del self.stale[key]
        self.entries[key] = packed


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
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        wait_after_root: float | None = None,
    ) -> None:
        """`wait_after_root`: a trace whose root span arrived is due that long after it, if
        that is sooner than `wait` after its first fragment (None: every trace waits `wait`)."""
        self.store = store
        self.wait = wait
        self.wait_after_root = wait_after_root
        # Per partition, traces due after their root arrived: (deadline, key), in order.
        self.rooted: dict[int, deque[tuple[float, bytes]]] = {}
        self.limits = _Limits(max_traces, max_trace_bytes, max_buffer_bytes)
        self.segment_room = max_message_bytes - RECORD_MARGIN - _KEY.size
        # Per partition, packed entries (Pending.pack) in arrival order.
        self.queues: dict[int, Queue[bytes]] = {}
        # Per partition, traces past max_trace_bytes (decided before the rest).
        self.oversize: dict[int, dict[bytes, None]] = {}
        # Per partition: each stored segment's fragments not yet decided, and the next number.
        self.segments: dict[int, dict[int, int]] = {}
        self.next_segment: dict[int, int] = {}
        self.count = 0
        self.bytes = 0

    @property
    def max_traces(self) -> int:
        """decision.max_traces."""
        return self.limits.max_traces

    def __len__(self) -> int:
        return self.count

    def segment_span(self, partition: int) -> tuple[int, int]:
        """A partition's lowest stored segment number (the next one if none is stored) and
        its next one: every fragment buffered so far lies in a segment below the next."""
        following = self.next_segment.get(partition, 0)
        live = self.segments.get(partition)
        return (next(iter(live)), following) if live else (following, following)

    def holds(self, partition: int, key: bytes) -> bool:
        """Is the trace buffered (waiting for its decision)?"""
        queue = self.queues.get(partition)
        return queue is not None and key in queue

    def entry(self, partition: int, key: bytes) -> Pending | None:
        """The queue entry of a buffered trace."""
        queue = self.queues.get(partition)
        packed = queue.get(key) if queue is not None else None
        return Pending.unpack(partition, packed) if packed is not None else None

    def append(
        self, partition: int, key: bytes, fragment: bytes, now: float, origin: int = NO_ORIGIN
    ) -> bool:
        """Add one fragment of spans to a trace (see `append_many`); False if it is a copy."""
        return self.append_many(partition, [(key, fragment, origin)], now) == 1

    def append_many(self, partition: int, fragments: Sequence[Fragment], now: float) -> int:
        """Add fragments of spans (trace key, OTLP bytes, origin) to their traces, starting the
        decision window of a trace that is new, in one segment (more if they would not fit one
        record); returns how many were added (a fragment the trace already has is a copy,
        skipped).

        `now` is the fragments' time on the input's clock, `origin` where its spans entered
        Caudal. Nothing changes in memory before the table took the segment: a refused write
        (PartitionNotOwned) leaves the buffer as it was.
        """
        queue = self.queues.get(partition)
        if queue is None:
            queue = self.queues[partition] = Queue()
        held_entries = queue.entries
        applied: dict[bytes, bytes] = {}
        # As `fragments`, each origin encoded once, here: the trace's entry and its segment
        # both hold it so.
        taken: list[_Taken] = []
        for key, fragment, source in fragments:
            held = applied.get(key)
            if held is None:
                packed = held_entries.get(key)
                held = _origins(packed) if packed is not None else b""
            if held and covers(held, source):
                continue
            encoded = encode_origin(source)
            if held:
                applied[key] = add_origin(held, source)
            else:  # a trace's first fragment: add_origin, inline
                applied[key] = encoded if source != NO_ORIGIN else b""
            taken.append((key, fragment, encoded))
        if not taken:
            return 0
        # Before anything is written: a fragment that cannot be read holds no root.
        roots = _rooted_keys(taken) if self.wait_after_root is not None else set()
        written = [(self._write(partition, chunk, now), chunk) for chunk in self._chunks(taken)]
        live = self.segments.setdefault(partition, {})
        added: dict[bytes, tuple[int, bytes]] = {}  # per trace: bytes and refs added
        pack_ref = _REF.pack
        for seq, chunk in written:
            live[seq] = len(chunk)
            at = _HEAD.size + sum([_ENTRY_FIXED + len(item[0]) for item in chunk])
            for key, fragment, _ in chunk:
                length = len(fragment)
                size, refs = added.get(key, _NOTHING_ADDED)
                added[key] = (
                    size + length + _ENTRY_FIXED + len(key),
                    refs + pack_ref(seq, at, length),
                )
                at += length
        limit = self.limits.max_trace_bytes
        after_root = self.wait_after_root
        early = now + after_root if after_root is not None else None
        fresh = now + self.wait
        new = grown_all = 0
        # Queue.put and _pack, inline: this runs once per fragment buffered.
        order, pack_head = queue.order, _PACKED.pack
        for key, (grown, refs) in added.items():
            packed = held_entries.get(key)
            if packed is None:
                size, deadline, held_refs, rooted = grown, fresh, b"", False
                new += 1
                order.append(key)  # a new trace goes to the back
            else:
                entry = Pending.unpack(partition, packed)
                size, deadline, held_refs = entry.size + grown, entry.deadline, entry.refs
                rooted = entry.after_root
            if early is not None and early < deadline and key in roots:
                deadline, rooted = early, True
                self.rooted.setdefault(partition, deque()).append((early, key))
            origins = applied[key]
            head = pack_head(deadline, size, len(origins) // ENTRY_BYTES, rooted)
            held_entries[key] = head + origins + held_refs + refs
            grown_all += grown
            if limit and size > limit:
                self.oversize.setdefault(partition, {})[key] = None
        self.count += new
        self.bytes += grown_all
        return len(taken)

    def _chunks(self, fragments: list[_Taken]) -> Iterator[list[_Taken]]:
        """Fragments grouped into segments that fit a record (each fragment alone fits:
        streams.wire.records.fragment_budget leaves room for FRAGMENT_OVERHEAD)."""
        chunk: list[_Taken] = []
        size = _HEAD.size
        for item in fragments:
            cost = _ENTRY_FIXED + len(item[0]) + len(item[1])
            if chunk and size + cost > self.segment_room:
                yield chunk
                chunk, size = [], _HEAD.size
            chunk.append(item)
            size += cost
        if chunk:
            yield chunk

    def _write(self, partition: int, fragments: list[_Taken], now: float) -> int:
        seq = self.next_segment.get(partition, 0)
        self.store.put(partition, segment_key(seq), _segment(now, fragments))
        self.next_segment[partition] = seq + 1
        return seq

    def pop_due(
        self, clock: Callable[[int], float] | float, limit: int, partitions: Iterable[int] = ()
    ) -> list[tuple[bytes, Pending]]:
        """Take traces that are due, only from `partitions` (every queue when empty): those past
        max_trace_bytes, those whose window closed on their partition's clock (oldest first,
        across the partitions), then the oldest beyond max_traces or max_buffer_bytes.

        `clock` gives a partition's time (`PartitionClock.watermark`), or is one time for all.
        """
        due: list[tuple[bytes, Pending]] = []
        chosen = list(partitions) or list(self.queues)
        early = self._take_oversize(chosen, limit, due)
        marks: dict[int, float] = {}
        for partition in chosen:
            queue = self.queues.get(partition)
            if not queue:
                continue
            mark = clock if isinstance(clock, float | int) else clock(partition)
            marks[partition] = mark
            self._take_rooted(partition, queue, mark, limit, due)
        self._take_closed(marks, limit, due)
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
            heads = [
                (_deadline(head[1]), p)
                for p in chosen
                if (q := self.queues.get(p)) and (head := q.head()) is not None
            ]
            if not heads:
                break
            _, partition = min(heads)
            key, packed = self.queues[partition].popleft()
            entry = Pending.unpack(partition, packed)
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

    def _take_closed(
        self, marks: dict[int, float], limit: int, due: list[tuple[bytes, Pending]]
    ) -> None:
        """Traces whose window closed on their partition's clock (`marks`), oldest first across
        the partitions: a partition with a backlog does not hold back the older traces of the
        others, batch after batch."""
        heads = []
        for partition, mark in marks.items():
            first = self.queues[partition].head()
            if first is None:
                continue
            deadline = _deadline(first[1])
            if deadline <= mark:
                heads.append((deadline, partition))
        heapify(heads)
        while heads and len(due) < limit:
            _, partition = heappop(heads)
            queue, mark = self.queues[partition], marks[partition]
            # A run of this partition's traces, up to the oldest due trace of the others (runs
            # are long: a record's traces share one deadline).
            bound = min(mark, heads[0][0]) if heads else mark
            # Queue.head and popleft, inline where no place in the queue is stale.
            order, entries, stale = queue.order, queue.entries, queue.stale
            while entries and len(due) < limit:
                if stale:
                    key, packed = queue.head()  # type: ignore[misc]  # entries: not None
                else:
                    key = order[0]
                    packed = entries[key]
                deadline, size, count, after_root = _PACKED.unpack_from(packed)
                if deadline > bound:
                    if deadline <= mark:
                        heappush(heads, (deadline, partition))
                    break
                order.popleft()
                del entries[key]
                # Pending.unpack, inline: this runs once per trace decided.
                cut = _PACKED.size + count * ENTRY_BYTES
                entry = Pending(
                    deadline, partition, size, packed[_PACKED.size : cut], packed[cut:], after_root
                )
                due.append((key, entry))

    def _take_rooted(
        self,
        partition: int,
        queue: Queue[bytes],
        mark: float,
        limit: int,
        due: list[tuple[bytes, Pending]],
    ) -> None:
        """Traces of `partition` due `wait_after_root` after their root arrived."""
        rooted = self.rooted.get(partition)
        while rooted and rooted[0][0] <= mark and len(due) < limit:
            _, key = rooted.popleft()
            packed = queue.get(key)
            # Gone (decided by its window or a bound), or a later trace of the same key.
            if packed is None or not _after_root(packed) or _deadline(packed) > mark:
                continue
            queue.pop(key)
            due.append((key, Pending.unpack(partition, packed)))

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
                packed = queue.pop(key)
                if packed is not None:
                    due.append((key, Pending.unpack(partition, packed)))
                    taken += 1
        return taken

    def requeue(self, items: Iterable[tuple[bytes, Pending]], now: float) -> None:
        """Put traces back in their queue to be decided again (after a failure): first, or
        where they were if taken out of order (Queue.push_front)."""
        for key, entry in items:
            entry.deadline = now
            queue = self.queues.setdefault(entry.partition, Queue())
            if key not in queue:
                self.count += 1
                self.bytes += entry.size
            queue.push_front(key, entry.pack())
        self._observe()

    def load(self, key: bytes, entry: Pending) -> BufferedTrace | None:
        """Read a trace's stored fragments, in order."""
        return next(self.load_each([(key, entry)]))[2]

    def load_each(
        self, due: Iterable[tuple[bytes, Pending]]
    ) -> Iterator[tuple[bytes, Pending, BufferedTrace | None]]:
        """Each trace with its stored fragments (None if none is left), in order; a segment is
        read once for all the traces of `due` that have fragments in it (up to a budget)."""
        read: dict[tuple[int, int], bytes | None] = {}
        held = 0
        for key, entry in due:
            partition = entry.partition
            if held > _READ_BUDGET:  # before looking up what is held, not between
                read.clear()
                held = 0
            if len(entry.refs) == _REF.size:  # one fragment: the common case, in one step
                seq, at, length = _REF.unpack(entry.refs)
                value = read.get((partition, seq), _UNREAD)
                if value is _UNREAD:
                    [value] = self.store.get_many(partition, [segment_key(seq)])
                    read[(partition, seq)] = value
                    held += len(value or b"")
                if value is None:
                    yield key, entry, None
                else:
                    first_seen = _HEAD.unpack_from(value)[1]
                    fragment = value[at : at + length]
                    yield key, entry, BufferedTrace(first_seen, [fragment], entry.origins)
                continue
            refs = list(_REF.iter_unpack(entry.refs))
            missing = list(dict.fromkeys(seq for seq, _, _ in refs if (partition, seq) not in read))
            if missing:
                values = self.store.get_many(partition, [segment_key(seq) for seq in missing])
                for seq, value in zip(missing, values, strict=True):
                    read[(partition, seq)] = value
                    held += len(value or b"")
            fragments = []
            first_seen = None
            for seq, at, length in refs:
                value = read[(partition, seq)]
                if value is None:
                    continue
                if first_seen is None:
                    first_seen = _HEAD.unpack_from(value)[1]
                fragments.append(value[at : at + length])
            if first_seen is None:
                yield key, entry, None
            else:
                yield key, entry, BufferedTrace(first_seen, fragments, entry.origins)

    def remove(self, key: bytes, entry: Pending) -> None:
        """Let go of a decided trace's fragments: a segment none of whose fragments wait any
        more is deleted from the table (and its changelog)."""
        self.remove_many([entry])

    def remove_many(self, entries: Iterable[Pending]) -> None:
        """`remove` for each of `entries`, in order."""
        segments, delete = self.segments, self.store.delete
        for entry in entries:
            partition = entry.partition
            live = segments.get(partition)
            if live is None:
                continue
            for seq, _, _ in _REF.iter_unpack(entry.refs):
                left = live.get(seq)
                if left is None:
                    continue
                if left > 1:
                    live[seq] = left - 1
                else:
                    del live[seq]
                    delete(partition, segment_key(seq))

    def rebuild(self, partitions: Iterable[int]) -> list[Unreadable]:
        """Recreate the decision queues of `partitions` from the table (after recovery).

        Returns the stored records that are not segments, left in the table for the caller to
        dead-letter and delete.
        """
        unreadable: list[Unreadable] = []
        limit = self.limits.max_trace_bytes
        for partition in partitions:
            found: dict[bytes, Pending] = {}
            live: dict[int, int] = {}
            # Keys come sorted: segments in the order they were written.
            for stored_key, value in self.store.items(partition):
                try:
                    seq = _segment_seq(stored_key)
                    seen, fragments = decode_segment(value)
                except ValueError:
                    unreadable.append(Unreadable(partition, stored_key, value))
                    continue
                live[seq] = len(fragments)
                deadline = seen + self.wait
                for key, source, at, length in fragments:
                    entry = found.get(key)
                    if entry is None:
                        entry = found[key] = Pending(deadline, partition)
                    entry.refs += _REF.pack(seq, at, length)
                    entry.size += length + _ENTRY_FIXED + len(key)
                    entry.origins = add_origin(entry.origins, source)
            self.forget([partition])
            self.segments[partition] = live
            self.next_segment[partition] = max(live, default=-1) + 1
            ordered = sorted(found.items(), key=lambda item: item[1].deadline)
            self.queues[partition] = Queue((key, entry.pack()) for key, entry in ordered)
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
        packed = queue.pop(key) if queue is not None else None
        if packed is None:
            return
        entry = Pending.unpack(partition, packed)
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
            self.rooted.pop(partition, None)
            self.segments.pop(partition, None)
            self.next_segment.pop(partition, None)
            if queue:
                self.count -= len(queue)
                self.bytes -= sum(_PACKED.unpack_from(packed)[1] for packed in queue.values())
        self._observe()

    def _observe(self) -> None:
        TRACES_BUFFERED.set(self.count)
        BUFFER_BYTES.set(self.bytes)


def _segment_seq(key: bytes) -> int:
    try:
        prefix, seq = _KEY.unpack(key)
    except struct.error:
        raise ValueError("not a segment key") from None
    if prefix != _PREFIX:
        raise ValueError("not a segment key")
    return int(seq)
