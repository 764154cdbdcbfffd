"""Split stage: regroup input messages by trace ID onto `caudal-spans`, partitioned by trace ID.

The input topic may be keyed any way (or not at all) and written by producers with different
partitioners; the split stage chooses each trace's partition itself, so every span of a trace meets
on one worker whatever wrote it. It packs all traces bound for one partition (and tenant) in a
consumer batch into one record, because the worker pays ~150 µs of Faust overhead per record.

It runs in a thread with its own confluent-kafka consumer group and commits input offsets only
after the records it produced were acknowledged: at-least-once, and a re-split is harmless because
the buffer appends fragments and decisions are taken once per trace ID. It does not wait for a
batch's acknowledgements before reading the next one: up to `MAX_IN_FLIGHT` batches are under way,
and each is vouched for (progress claims) and committed once it and every batch before it were
acknowledged; a failure reads them all again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from policies.flatten import checked_single_trace
from streams.config import Settings
from streams.kafka.clients import (
    DELIVERY_MARGIN,
    DELIVERY_TIMEOUT,
    INDEX_HEADER,
    ORIGIN_HEADER,
    TENANT_HEADER,
    RecordLike,
    client_config,
    consumer_lags,
    headers_of,
    make_producer,
    produce,
    rewind,
    where,
)
from streams.kafka.dead_letters import send_dead_letter
from streams.ops.experiments import ExperimentMeter
from streams.ops.health import Supervised
from streams.ops.metrics import SPANS_RECEIVED, set_consumer_lag
from streams.pipeline.degrade import LagClock, batch_factor, optional_work
from streams.pipeline.progress import PROGRESS_HEADER, SplitProgress
from streams.pipeline.route import TenantResolver
from streams.wire.origin import ENTRY_BYTES, origin, pack_origins
from streams.wire.otlp import (
    BadInput,
    decode_request,
    pack_index,
    span_count,
    split_by_trace,
)
from streams.wire.records import (
    RECORD_MARGIN,
    fit_fragments,
    fragment_budget,
    partition_for,
    record_size,
)
from streams.wire.tracekey import tenant_problem

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "SplitStage",
    "split_one",
    "split_messages",
]

log = logging.getLogger(__name__)

_PER_FRAGMENT = 20 + ENTRY_BYTES  # its index entry and its origin entry
# How often each caudal-spans partition gets a record with the latest progress claims (data
# records carry the claims of the batches acknowledged before theirs).
PROGRESS_INTERVAL = 0.2
# Batches produced and not yet acknowledged while the next ones are read and split: waiting for
# each batch's acknowledgements and commit left the split thread idle 40 % of a burst.
MAX_IN_FLIGHT = 4
# How long a revoke or a stop waits for the batches under way (the worker gives its threads 15 s).
DRAIN_TIMEOUT = 10.0


# (trace ID, fragment, origin: the input record its spans came from, see streams.wire.origin)
SourcedFragment = tuple[bytes, bytes, int]
Batch = dict[tuple[int, str], list[SourcedFragment]]


class StopFlag(Protocol):
    """What tells the split stage to stop (a threading.Event, or the split process's orders)."""

    def is_set(self) -> bool: ...


class DeadLetter(Protocol):
    """Where `split_one` sends what it cannot use (a `DeadLetterSink`, or a count)."""

    def __call__(
        self,
        msg: RecordLike,
        reason: str,
        detail: str,
        part: ExportTraceServiceRequest | None = None,
    ) -> None: ...


def split_messages(
    messages: Iterable[Message],
    settings: Settings,
    resolver: TenantResolver,
    dead_letter: DeadLetter,
    meter: ExperimentMeter | None = None,
) -> Batch:
    """Decode and regroup a consumer batch: (partition, tenant) → fragments of its traces.

    Experiment spans are counted here (`meter`), on all traffic, before any decision.
    """
    budget = fragment_budget(settings.kafka.max_message_bytes)
    batch: Batch = defaultdict(list)
    received: dict[str, int] = defaultdict(int)
    for msg in messages:
        try:
            split = split_one(msg, settings, resolver, dead_letter, meter, budget)
        except Exception as exc:  # a message no rule foresaw: dead-lettered, never a stall
            dead_letter(msg, "unusable_record", f"{type(exc).__name__}: {exc}"[:500])
            continue
        for target, tenant, spans, fragments in split:
            received[tenant] += spans
            batch[target].extend(fragments)
    for tenant, count in received.items():
        SPANS_RECEIVED.labels(settings.tenant_label(tenant)).inc(count)
    return batch


def split_one(
    msg: RecordLike,
    settings: Settings,
    resolver: TenantResolver,
    dead_letter: DeadLetter,
    meter: ExperimentMeter | None,
    budget: int,
) -> list[tuple[tuple[int, str], str, int, list[SourcedFragment]]]:
    """One input message's traces: (target, tenant, spans, fragments) each; what cannot be
    used goes to `dead_letter`. The worker reading the input directly uses it too."""
    value = msg.value() or b""
    encoding = settings.kafka.input_encoding
    # The trace ID and every byte read in one pass (in C), where the module can vouch.
    single, checked = (
        checked_single_trace(value) if value and encoding == "otlp_proto" else (None, False)
    )
    request = None
    if single is None or not checked:
        try:
            request = decode_request(value, encoding)
        except BadInput as exc:
            dead_letter(msg, exc.reason, exc.detail)
            return []
    if meter is not None and meter.may_apply(value):
        meter.observe((request or ExportTraceServiceRequest.FromString(value)).resource_spans)
    headers = headers_of(msg)
    hints = resolver.hints(dict(headers)) if headers else resolver.no_hints
    source = origin(msg.partition(), msg.offset())
    # The common shape, one trace per message, is forwarded as the bytes that arrived: no
    # regrouping, no serializing again, no protobuf object built.
    if single is not None and len(value) <= budget:
        tid = single.trace_id
        tenant = resolver.resolve_encoded(hints, single.resource_attributes, value)
        problem = tenant_problem(tenant)
        if problem is not None:
            dead_letter(msg, "invalid_tenant", problem)
            return []
        target = (partition_for(tid, settings.kafka.partitions), tenant)
        return [(target, tenant, single.spans, [(tid, value, source)])]
    request = request or ExportTraceServiceRequest.FromString(value)
    if single is not None:
        groups, invalid = {single.trace_id: list(request.resource_spans)}, None
    else:
        groups, invalid = split_by_trace(request)
    if invalid is not None:
        dead_letter(msg, "invalid_trace_id", "spans without a valid 16-byte trace ID", invalid)
    elif not groups:
        dead_letter(msg, "no_spans", "the request holds no spans")
        return []
    out = []
    for tid, blocks in groups.items():
        tenant = resolver.resolve(hints, blocks)
        problem = tenant_problem(tenant)
        if problem is not None:
            part = ExportTraceServiceRequest(resource_spans=blocks)
            dead_letter(msg, "invalid_tenant", problem, part)
            continue
        fragments, too_large = fit_fragments(blocks, source, budget)
        if too_large is not None:
            detail = (
                f"a span larger than kafka.max_message_bytes={settings.kafka.max_message_bytes}"
            )
            dead_letter(msg, "span_too_large", detail, too_large)
        target = (partition_for(tid, settings.kafka.partitions), tenant)
        out.append((target, tenant, span_count(blocks), [(tid, f, w) for f, w in fragments]))
    return out


@dataclass
class InFlight:
    """One read of the split stage, from its produce to its commit: what it vouches for once
    it and every read before it were acknowledged."""

    messages: list[Message]
    stamps: dict[int, float]  # largest input time per input partition
    idle: set[int]  # input partitions read to their end
    drained_at: float
    last: dict[tuple[str, int], int] = field(default_factory=dict)  # last offset per partition
    pending: int = 0  # records not yet acknowledged
    errors: list[Any] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        """The delivery callback of each record of the read."""
        self.pending -= 1
        if err is not None:
            self.errors.append(err)

    def offsets(self) -> list[TopicPartition]:
        """The offsets to commit once the read is acknowledged: past its last record."""
        return [TopicPartition(t, p, offset + 1) for (t, p), offset in self.last.items()]


class DeadLetterSink:
    """Send unusable input messages (or the unusable part of one) to the dead-letter topic."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        max_bytes: int,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.max_bytes = max_bytes
        self.failures = 0  # deliveries that failed: the batch is read again
        self.sent = 0  # dead letters sent (the split stage waits for them before a commit)
        self.on_failure = on_failure

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failures += 1
            if self.on_failure is not None:
                self.on_failure()

    def __call__(
        self,
        msg: RecordLike,
        reason: str,
        detail: str,
        part: ExportTraceServiceRequest | None = None,
    ) -> None:
        """Dead-letter `msg`, or only `part` of it (the spans that could not be used)."""
        value = part.SerializeToString() if part is not None else msg.value()
        send_dead_letter(
            self.producer,
            self.topic,
            value,
            reason=reason,
            detail=detail,
            key=msg.key(),
            origin=where(msg),
            headers=headers_of(msg),
            max_bytes=self.max_bytes,
            on_delivery=self._delivered,
        )
        self.sent += 1


class SplitStage(Supervised):
    """Consume the input topic, write trace-ID-partitioned records, commit after delivery."""

    def __init__(
        self,
        settings: Settings,
        stop: StopFlag,
        lag: LagClock | None = None,
        level: Callable[[], int] = lambda: 0,
        meter: ExperimentMeter | None = None,
        batch_size: int = 1000,
        delivery_timeout: float = DELIVERY_TIMEOUT,
    ) -> None:
        super().__init__(name="caudal-split")
        self.settings = settings
        self.stop = stop
        self.lag = lag or LagClock()
        self.level = level  # the worker's degradation level
        self.meter = meter
        self.batch_size = batch_size
        kafka = settings.kafka
        self.resolver = TenantResolver.from_settings(settings)
        # A record not acknowledged in time fails, and its read is read and produced again:
        # the failed copy is never written later beside the new one.
        self.producer = make_producer(kafka, delivery_timeout)
        self.delivery_wait = delivery_timeout + DELIVERY_MARGIN
        self.dead_letter = DeadLetterSink(self.producer, kafka.dlq_topic, kafka.max_message_bytes)
        self.consumer = Consumer(
            client_config(
                kafka,
                **{
                    "group.id": f"{kafka.group_id}-split",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 1000,
                    # Large fetches and librdkafka's read-ahead (64 MiB queued) keep the split
                    # stage fed: 8 MiB of each cut end-to-end throughput by a third in
                    # `caudal bench`.
                    "fetch.max.bytes": 32 * 1024 * 1024,
                    # Bounds how stale "nothing more to read" can be (SplitProgress.IDLE_MARGIN).
                    "fetch.wait.max.ms": 100,
                    "enable.partition.eof": True,
                    "on_commit": self._on_commit,
                },
            )
        )
        self.progress = SplitProgress()
        self.in_hand: list[Message] = []  # the batch being split, read again if it fails
        self.in_flight: deque[InFlight] = deque()  # produced, in read order
        self.next_lag = 0.0
        self.sent_at: dict[int, float] = {}

    def work(self) -> None:
        """Split batches until the worker stops."""
        kafka = self.settings.kafka
        self.consumer.subscribe(
            [kafka.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        log.info("split stage started topic=%s", kafka.input_topic)
        try:
            while not self.stop.is_set():
                try:
                    self._step()
                except Exception:  # one batch's failure must never stop the split stage
                    log.exception("split batch failed, reading it again")
                    self._rewind()
                    time.sleep(1.0)
                self.in_hand = []
        finally:
            self._drain()
            self.consumer.close()
            log.info("split stage stopped")

    def _step(self) -> None:
        """Read one batch, split it, produce it, then commit it."""
        if time.monotonic() >= self.next_lag:
            self.next_lag = time.monotonic() + 5.0
            self._export_lag()
        level = self.level()
        size = self.batch_size * batch_factor(level)
        polled_at = time.time()
        messages = self.consumer.consume(size, timeout=0.2)
        drained_at = time.time()
        usable = self.in_hand = [m for m in messages if m.error() is None]
        stamps, last = _scan(usable, polled_at)
        if len(usable) == len(messages):
            self.progress.had_records(stamps)
        else:  # events among the records (ends of partitions, errors), in order
            _log_errors(messages)
            self.progress.read(messages)
        # A partition vouches for "nothing more" only after the consumer reached its end (an
        # end-of-partition event since its last record) and this read was not cut short by the
        # batch size: just after an assignment, an empty read means the fetch has not started.
        idle = set(self.progress.at_end) if len(messages) < size else set()
        if not usable:
            # Vouches for the partitions read to their end, once what was read before is
            # acknowledged.
            self.in_flight.append(InFlight([], {}, idle, drained_at))
            self._settle()
            self._send_progress()
            return
        self.lag.note(time.time() - min(stamps.values()))
        meter = self.meter if optional_work(level) else None
        batch = split_messages(usable, self.settings, self.resolver, self.dead_letter, meter)
        stamp = max(stamps.values())
        read = InFlight(usable, stamps, idle, drained_at, last)
        self.in_flight.append(read)
        self._produce(batch, min(stamp, time.time()), read)
        read.started = time.monotonic()  # a wait for room in the producer's queue is no delay
        self._settle(wait=len(self.in_flight) > MAX_IN_FLIGHT)
        self._send_progress()

    def _settle(self, wait: bool = False, sync: bool = False) -> None:
        """Vouch for and commit the reads acknowledged so far, in read order; with `wait`,
        until at most MAX_IN_FLIGHT are under way. A failed read has it and every later one
        read again."""
        self.producer.poll(0)
        if self.dead_letter.sent and self.in_flight:
            # Rare: a dead letter's delivery is not counted per read, so wait for all; one not
            # acknowledged fails the reads under way (read again, dead-lettered again).
            if self.producer.flush(self.delivery_wait):
                self.dead_letter.failures += 1
            self.dead_letter.sent = 0
        while self.in_flight:
            head = self.in_flight[0]
            if head.pending > 0:
                # librdkafka fails each record of the read by then (the producer's delivery
                # timeout); this is a backstop.
                overdue = time.monotonic() - head.started > self.delivery_wait
                if not overdue and not (wait and len(self.in_flight) > MAX_IN_FLIGHT):
                    return
                if not overdue:
                    self.producer.poll(0.05)
                    continue
                head.errors.append("no acknowledgement in time")
            if head.errors or self.dead_letter.failures:
                dead, self.dead_letter.failures = self.dead_letter.failures, 0
                log.error(
                    "split produce failed errors=%d first=%s dead_letters=%d",
                    len(head.errors),
                    head.errors[0] if head.errors else None,
                    dead,
                )
                self._rewind()
                return
            self.in_flight.popleft()
            # Produced and acknowledged: what it vouches for holds whether or not the commit does.
            self.progress.committed(head.stamps, head.idle, head.drained_at)
            if head.messages:
                self._commit(head.offsets(), sync)

    def _commit(self, offsets: list[TopicPartition], sync: bool) -> None:
        try:
            if sync:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            # A rebalance moved the partitions meanwhile: their next owner splits these records
            # again, and the copies are recognised by their origin (streams.wire.origin).
            log.warning("split commit failed error=%s", exc)

    def _drain(self) -> None:
        """Wait for every read under way and commit those acknowledged (before a revoke or a
        stop); what failed is left to whoever reads the partitions next."""
        self.producer.flush(DRAIN_TIMEOUT)
        self._settle(sync=True)
        if self.in_flight:
            log.warning("split reads not acknowledged reads=%d", len(self.in_flight))
            self.in_flight.clear()

    def _rewind(self) -> None:
        """Read again the batch in hand and every read under way (none is vouched for)."""
        messages = [m for read in self.in_flight for m in read.messages] + self.in_hand
        self.in_flight.clear()
        # Their end was reached past what is read again: an empty read must not vouch for it.
        self.progress.at_end -= {m.partition() for m in messages}
        try:
            rewind(self.consumer, messages)
        except KafkaException as exc:  # revoked meanwhile: the next owner reads them
            log.warning("split rewind failed error=%s", exc)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drain()
        # No claim about partitions no longer read: the last one sent stays in force at the
        # workers until the next owner's claims replace it.
        self.progress.revoked([tp.partition for tp in partitions])

    def _on_commit(self, err: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        if err is not None:
            # Its records are split again by whoever reads the partition next (copies are
            # recognised by their origin).
            log.warning("split commit failed error=%s", err)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        topic = self.settings.kafka.input_topic
        total = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        self.progress.assigned([tp.partition for tp in partitions], total, time.time())

    def _send_progress(self) -> None:
        """A progress-only record to every partition that got nothing for a while."""
        header = self.progress.header()
        if header is None:
            return
        now = time.monotonic()
        topic = self.settings.kafka.spans_topic
        for partition in range(self.settings.kafka.partitions):
            if now - self.sent_at.get(partition, 0.0) >= PROGRESS_INTERVAL:
                produce(
                    self.producer,
                    topic,
                    value=None,
                    partition=partition,
                    headers=[(PROGRESS_HEADER, header)],
                )
                self.sent_at[partition] = now
        self.producer.poll(0)

    def _export_lag(self) -> None:
        """caudal_consumer_lag of the input topic: high watermark minus position."""
        lags = consumer_lags(self.consumer)
        if lags is not None:
            set_consumer_lag(self.settings.kafka.input_topic, lags)

    def _produce(self, batch: Batch, stamp: float, read: InFlight) -> None:
        """Produce a batch; `read` counts its acknowledgements.

        Every record is stamped with the batch's latest input time (a trace's decision window
        starts there) and carries the progress this split stage vouched for so far.
        """
        topic = self.settings.kafka.spans_topic
        timestamp = int(stamp * 1000)
        progress = self.progress.header()
        limit = self.settings.kafka.max_message_bytes - RECORD_MARGIN
        for (partition, tenant), fragments in batch.items():
            fixed = [(TENANT_HEADER, tenant.encode())]
            if progress is not None:
                fixed.append((PROGRESS_HEADER, progress))
            room = limit - record_size(None, None, fixed) - len(INDEX_HEADER) - len(ORIGIN_HEADER)
            for chunk in _chunks(fragments, room):
                value, index = pack_index([(tid, fragment) for tid, fragment, _ in chunk])
                headers = [
                    (INDEX_HEADER, index),
                    (ORIGIN_HEADER, pack_origins([source for _, _, source in chunk])),
                    *fixed,
                ]
                read.pending += 1
                produce(
                    self.producer,
                    topic,
                    value=value,
                    partition=partition,
                    timestamp=timestamp,
                    headers=headers,
                    on_delivery=read.on_delivery,
                )
                self.producer.poll(0)


def _chunks(fragments: list[SourcedFragment], room: int) -> Iterable[list[SourcedFragment]]:
    """Fragments grouped into records of at most `room` bytes of value, index and origins
    (each fragment alone fits: streams.pipeline.split.fragment_budget)."""
    chunk: list[SourcedFragment] = []
    size = 0
    for frag in fragments:
        cost = len(frag[1]) + _PER_FRAGMENT
        if chunk and size + cost > room:
            yield chunk
            chunk, size = [], 0
        chunk.append(frag)
        size += cost
    if chunk:
        yield chunk


def _scan(
    messages: list[Message], read_at: float
) -> tuple[dict[int, float], dict[tuple[str, int], int]]:
    """Per input partition of a read's records, the latest input timestamp, in seconds
    (`read_at` for a record that carries none); and per topic partition, the last offset."""
    stamps: dict[int, float] = {}
    last: dict[tuple[str, int], int] = {}
    for m in messages:  # once per record read
        partition: int = m.partition()  # type: ignore[assignment]  # a record read has one
        _, ms = m.timestamp()
        stamp = ms / 1000 if ms > 0 else read_at
        if stamp > stamps.get(partition, 0.0):
            stamps[partition] = stamp
        place: tuple[str, int] = (m.topic(), partition)  # type: ignore[assignment]
        offset: int = m.offset()  # type: ignore[assignment]
        if offset > last.get(place, -1):
            last[place] = offset
    return stamps, last


def _log_errors(messages: list[Message]) -> None:
    """Log a read's consumer errors (an end of partition is no error)."""
    for msg in messages:
        err = msg.error()
        if err is not None and err.code() != KafkaError._PARTITION_EOF:
            log.warning("split consume error error=%s", err)
