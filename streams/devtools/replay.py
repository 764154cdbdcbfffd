"""Read a time range of the input topic back, regrouped into whole traces, with bounded memory.

The machinery under `caudal backfill` and `caudal decide --from-topic`. Every record of the
range goes through the split stage's own decoding and tenant resolution (`split_one`), so a
trace is grouped and attributed as the workers grouped it. A trace is complete, and handed
out, once every partition has been read past its first record's time plus `decision.wait`:
what the pipeline decided on. Spans of a trace that reach the topic later were late spans for
the pipeline too and are left out, as are spans before the range: see `Replay`.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from policies import TraceView
from streams.config import Settings, parse_duration
from streams.kafka.clients import RecordLike, client_config, where
from streams.pipeline.route import TenantResolver
from streams.pipeline.split import split_one
from streams.wire.records import fragment_budget

__all__ = ["Replay", "ReplayStats", "ReplayedTrace", "parse_time"]

_RELATIVE = re.compile(r"^-\s*(.+)$")
_READ_TIMEOUT = 10.0


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds of `text`: ISO 8601 (`2026-12-06T14:02:00Z`; no zone means UTC), `now`,
    or a duration before now (`-30m`, `-1h`, `-90s`). ValueError otherwise."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - parse_duration(relative.group(1).strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expected a time such as 2026-12-06T14:02:00Z or -30m, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class ReplayedTrace:
    """One trace of the range, whole as the pipeline saw it."""

    tenant: str
    trace_id: bytes
    fragments: list[bytes]  # encoded ExportTraceServiceRequests, concatenable
    first_seen: float  # the input time of its first record (Unix seconds)
    spans: int
    early: bool = False  # handed out before complete, to stay within the memory bounds

    @property
    def encoded(self) -> bytes:
        """The trace as one encoded request (fragments merge by concatenation)."""
        return b"".join(self.fragments)

    def view(self) -> TraceView:
        """The policies' view of the trace."""
        return TraceView.from_request(self.trace_id, self.encoded)

    @property
    def size(self) -> int:
        """Bytes of span data."""
        return sum(len(f) for f in self.fragments)


@dataclass
class ReplayStats:
    """What a replay read."""

    records: int = 0
    unusable: Counter[str] = field(default_factory=Counter)  # dead-letter reason -> records
    traces: int = 0
    early: int = 0  # traces handed out before complete (memory bounds)
    late_fragments: int = 0  # fragments of a trace already handed out: left out
    progress: float = 0.0  # share of the range's records read


class _Assembly:
    __slots__ = ("first_seen", "fragments", "spans", "size")

    def __init__(self, first_seen: float) -> None:
        self.first_seen = first_seen
        self.fragments: list[bytes] = []
        self.spans = 0
        self.size = 0


class Replay:
    """The traces of the input topic's records stamped from `since` − `decision.wait` to
    `until` + `decision.wait` (Unix seconds), whole, in the order they complete.

    Records are read from every partition in step (a partition read ahead of the slowest by
    more than twice the wait is paused), so a trace whose spans lie in several partitions
    meets in one place. At most `max_traces` traces or `max_bytes` of span data are held: past
    either, the oldest trace is handed out early, on what arrived (counted, as the worker
    decides early past `decision.max_traces`). Callers choose traces by their start time;
    reading the wait before `since` finds the first records of traces that started just
    before a record was stamped (clocks, batching). The last `max_traces` traces handed out,
    and all those whose window is still open, are remembered, so a late span of one does not
    come back as a trace of its own. The bounds are checked after every record.
    """

    def __init__(
        self,
        settings: Settings,
        since: float,
        until: float,
        max_traces: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        progress: Callable[[ReplayStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.wait = settings.decision.wait
        self.read_from = since - self.wait
        self.read_until = until + self.wait
        self.max_traces = max_traces
        self.max_bytes = max_bytes
        self.stats = ReplayStats()
        self.progress = progress
        self.resolver = TenantResolver.from_settings(settings)
        self.budget = fragment_budget(settings.kafka.max_message_bytes)
        self._open: OrderedDict[tuple[str, bytes], _Assembly] = OrderedDict()
        self._open_bytes = 0
        # Traces handed out (key -> their first record's time): their later spans are left out.
        self._done: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._clock = float("-inf")

    def traces(self) -> Iterator[ReplayedTrace]:
        """Read the range and yield its traces as they complete."""
        consumer = Consumer(
            client_config(
                self.settings.kafka,
                **{
                    "group.id": f"{self.settings.kafka.group_id}-replay",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    # Finding offsets reads single records: answer at once, not after 500 ms.
                    "fetch.wait.max.ms": 10,
                },
            )
        )
        try:
            yield from self._read(consumer)
        finally:
            consumer.close()

    def _read(self, consumer: Consumer) -> Iterator[ReplayedTrace]:
        topic = self.settings.kafka.input_topic
        metadata = consumer.list_topics(topic, timeout=_READ_TIMEOUT).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RuntimeError(f"the input topic {topic!r} cannot be read")
        starts, total = {}, 0
        for partition in sorted(metadata.partitions):
            tp = TopicPartition(topic, partition)
            begin, end = _bounds(consumer, tp)
            start = find_offset(consumer, tp, self.read_from, begin, end)
            stop = find_offset(consumer, tp, self.read_until, start, end)
            if start < stop:
                starts[partition] = (start, stop)
                total += stop - start
        read: dict[int, float] = {}  # partition -> time of the last record read
        active = dict(starts)
        paused: set[int] = set()
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in starts.items()])
        last_report = 0.0
        while active:
            for msg in consumer.consume(500, 1.0):
                _, partition, offset = where(msg)
                if partition not in active:
                    continue
                error = msg.error()
                if error is not None and error.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"reading {topic}: {error}")
                if error is not None or offset >= active[partition][1]:
                    del active[partition]  # at its end, or past the range
                    consumer.pause([TopicPartition(topic, partition)])
                    paused.discard(partition)
                    continue
                stamp = msg.timestamp()[1] / 1000
                read[partition] = max(read.get(partition, stamp), stamp)
                self.stats.records += 1
                self._add(msg, stamp)
                # After every record: the bounds hold between two records, not two batches.
                yield from self._complete(min(read.get(p, self.read_from) for p in active))
            clock = min((read.get(p, self.read_from) for p in active), default=float("inf"))
            yield from self._complete(clock)
            paused = self._pace(consumer, topic, active, read, clock, paused)
            if self.progress is not None and time.monotonic() - last_report >= 1:
                last_report = time.monotonic()
                self.stats.progress = self.stats.records / total if total else 1.0
                self.progress(self.stats)
        yield from self._complete(float("inf"))
        self.stats.progress = 1.0

    def _pace(
        self,
        consumer: Consumer,
        topic: str,
        active: dict[int, tuple[int, int]],
        read: dict[int, float],
        clock: float,
        paused: set[int],
    ) -> set[int]:
        """Pause partitions read far ahead of the slowest one; resume them as it catches up."""
        ahead = {p for p in active if read.get(p, clock) > clock + 2 * self.wait}
        if ahead - paused:
            consumer.pause([TopicPartition(topic, p) for p in ahead - paused])
        if paused - ahead:
            consumer.resume([TopicPartition(topic, p) for p in paused - ahead])
        return ahead

    def _add(self, msg: Message, stamp: float) -> None:
        def unusable(
            msg: RecordLike,
            reason: str,
            detail: str,
            part: ExportTraceServiceRequest | None = None,
        ) -> None:
            self.stats.unusable[reason] += 1  # the workers dead-lettered it

        for _, tenant, spans, fragments in split_one(
            msg, self.settings, self.resolver, unusable, None, self.budget
        ):
            key = (tenant, fragments[0][0]) if fragments else None
            if key is None:
                continue
            if key in self._done:
                self.stats.late_fragments += len(fragments)
                continue
            assembly = self._open.get(key)
            if assembly is None:
                assembly = self._open[key] = _Assembly(stamp)
            assembly.spans += spans
            for _, fragment, _ in fragments:
                assembly.fragments.append(fragment)
                assembly.size += len(fragment)
                self._open_bytes += len(fragment)

    def _complete(self, clock: float) -> Iterator[ReplayedTrace]:
        """Hand out the traces whose window closed by `clock`, then the oldest past a bound."""
        self._clock = clock
        while self._open:
            key, assembly = next(iter(self._open.items()))
            over = len(self._open) > self.max_traces or self._open_bytes > self.max_bytes
            if assembly.first_seen + self.wait > clock and not over:
                break
            yield self._hand_out(key, early=assembly.first_seen + self.wait > clock)

    def _hand_out(self, key: tuple[str, bytes], early: bool) -> ReplayedTrace:
        assembly = self._open.pop(key)
        self._open_bytes -= assembly.size
        done = self._done
        done[key] = assembly.first_seen
        # Forget the oldest beyond max_traces, but none whose window is still open on the
        # clock: a trace handed out early still has spans to come.
        while len(done) > self.max_traces and next(iter(done.values())) < self._clock - self.wait:
            done.popitem(last=False)
        self.stats.traces += 1
        self.stats.early += early
        tenant, trace_id = key
        return ReplayedTrace(
            tenant, trace_id, assembly.fragments, assembly.first_seen, assembly.spans, early
        )


def _read_at(consumer: Consumer, tp: TopicPartition, offset: int) -> Message | None:
    """The record at `offset` (or the first after it, past a compacted or aborted gap), None
    at the end of the partition."""
    consumer.assign([TopicPartition(tp.topic, tp.partition, offset)])
    deadline = time.monotonic() + _READ_TIMEOUT
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        error = msg.error()
        if error is None:
            return msg
        if error.code() == KafkaError._PARTITION_EOF:
            return None
        raise RuntimeError(f"reading {tp.topic}[{tp.partition}]: {error}")
    raise RuntimeError(f"reading {tp.topic}[{tp.partition}] at {offset}: no answer")


def _bounds(consumer: Consumer, tp: TopicPartition) -> tuple[int, int]:
    """The partition's first offset and its end, as fetching reports them (the watermark
    query of some brokers lags behind what they hold)."""
    first = _read_at(consumer, TopicPartition(tp.topic, tp.partition), OFFSET_BEGINNING)
    if first is None:
        _, end = consumer.get_watermark_offsets(tp, cached=True)
        return max(0, end), max(0, end)
    _, end = consumer.get_watermark_offsets(tp, cached=True)
    begin = where(first)[2]
    return begin, max(end, begin + 1)


def find_offset(consumer: Consumer, tp: TopicPartition, when: float, low: int, high: int) -> int:
    """The first offset in [low, high) whose record is stamped at or after `when` (`high` if
    none): the broker's offsets-for-times answer, checked against the records around it, and
    where it does not hold, a binary search over the records (stamps assumed in order)."""
    millis = int(when * 1000)
    found = consumer.offsets_for_times(
        [TopicPartition(tp.topic, tp.partition, millis)], timeout=_READ_TIMEOUT
    )[0].offset
    candidate = high if found < 0 else min(max(found, low), high)

    def stamp(offset: int) -> int | None:
        msg = _read_at(consumer, tp, offset)
        return None if msg is None else int(msg.timestamp()[1])

    def holds(offset: int) -> bool:
        if offset < high:
            at = stamp(offset)
            if at is None or at < millis:
                return False
        if offset > low:
            before = stamp(offset - 1)
            if before is not None and before >= millis:
                return False
        return True

    if holds(candidate):
        return candidate
    lo, hi = low, high
    while lo < hi:
        middle = (lo + hi) // 2
        at = stamp(middle)
        if at is None or at >= millis:
            hi = middle
        else:
            lo = middle + 1
    return lo


def progress_line(label: str, out: IO[str] = sys.stderr) -> Callable[[ReplayStats], None]:
    """A `progress` callback writing one self-overwriting line."""

    def report(stats: ReplayStats) -> None:
        out.write(
            f"\r{label}: {stats.progress:.0%} of the range, {stats.records:,} records, "
            f"{stats.traces:,} traces"
        )
        out.flush()

    return report
