"""Fault-suite traffic with a known answer, and the count of what the backend received.

Every trace has `SPANS` spans sent in `PARTS` messages `gap` seconds apart, so a trace is still
being written while workers join, leave and crash. A trace is kept only for a span of status
ERROR, which sits in its first message (`error-first`), its last one (`error-last`) or nowhere
(`ok`: must be dropped). Each message packs the parts due at that moment of many traces, as a
Collector's batch does, and goes to the input topic unkeyed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

SPANS = 6
PARTS = 3
KINDS = (("error-first", 0.3), ("error-last", 0.3), ("ok", 0.4))
_MS = 1_000_000


@dataclass
class Truth:
    """What was generated: per trace ID, its span IDs and whether a policy must keep it."""

    spans: dict[bytes, frozenset[bytes]] = field(default_factory=dict)
    keep: dict[bytes, bool] = field(default_factory=dict)
    born: dict[bytes, float] = field(default_factory=dict)  # seconds since traffic started
    service: dict[bytes, str] = field(default_factory=dict)
    started: float = 0.0  # Unix time the traffic started


def _trace(rng: random.Random, kind: str, start_ns: int) -> tuple[bytes, list[Span]]:
    trace_id = rng.randbytes(16)
    root_id = rng.randbytes(8)
    spans = []
    for i in range(SPANS):
        span = Span(
            trace_id=trace_id,
            span_id=root_id if i == 0 else rng.randbytes(8),
            parent_span_id=b"" if i == 0 else root_id,
            name="GET /" if i == 0 else f"call {i}",
            kind=Span.SPAN_KIND_SERVER if i == 0 else Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start_ns + i * _MS,
            end_time_unix_nano=start_ns + (50 if i == 0 else 20 + i) * _MS,
        )
        spans.append(span)
    part_of_error = {"error-first": 0, "error-last": PARTS - 1}.get(kind)
    if part_of_error is not None:
        spans[part_of_error * (SPANS // PARTS) + 1].status.code = Status.STATUS_CODE_ERROR
    return trace_id, spans


def _request(parts: list[tuple[str, list[Span]]]) -> bytes:
    by_service: dict[str, list[Span]] = defaultdict(list)
    for service, spans in parts:
        by_service[service].extend(spans)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[KeyValue(key="service.name", value=AnyValue(string_value=name))]
                ),
                scope_spans=[ScopeSpans(spans=spans)],
            )
            for name, spans in by_service.items()
        ]
    ).SerializeToString()


class Traffic(threading.Thread):
    """`rate` new traces per second for `duration` seconds; parts `gap` seconds apart."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        rate: float,
        duration: float,
        gap: float = 1.0,
        seed: int = 1,
        tick: float = 0.1,
        pack: int = 40,
        services: tuple[tuple[str, float], ...] = (("shop", 1.0),),
    ) -> None:
        super().__init__(name="fault-traffic", daemon=True)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic = topic
        self.rate = rate
        self.duration = duration
        self.gap = gap
        self.tick = tick
        self.pack = pack
        self.rng = random.Random(seed)
        self.services = services
        self.truth = Truth()
        self.started = 0.0
        self.failed = 0

    def run(self) -> None:
        self.started = time.monotonic()
        self.truth.started = time.time()
        # (due time, sequence, service, part spans) waiting to be sent
        queue: list[tuple[float, int, str, list[Span]]] = []
        sequence = 0
        born = 0.0
        kinds, weights = zip(*KINDS, strict=True)
        names, shares = zip(*self.services, strict=True)
        while True:
            now = time.monotonic() - self.started
            if now < self.duration:
                while born <= now:
                    kind = self.rng.choices(kinds, weights)[0]
                    service = self.rng.choices(names, shares)[0] if len(names) > 1 else names[0]
                    start_ns = int((self.truth.started + born) * 1e9)
                    trace_id, spans = _trace(self.rng, kind, start_ns)
                    self.truth.spans[trace_id] = frozenset(s.span_id for s in spans)
                    self.truth.keep[trace_id] = kind != "ok"
                    self.truth.born[trace_id] = born
                    self.truth.service[trace_id] = service
                    per_part = SPANS // PARTS
                    for part in range(PARTS):
                        chunk = spans[part * per_part : (part + 1) * per_part]
                        queue.append((born + part * self.gap, sequence, service, chunk))
                        sequence += 1
                    born += 1.0 / self.rate
            queue.sort(key=lambda item: (item[0], item[1]))
            due = 0
            while due < len(queue) and queue[due][0] <= now:
                due += 1
            ready, queue = queue[:due], queue[due:]
            for i in range(0, len(ready), self.pack):
                self._send(_request([(svc, part) for _, _, svc, part in ready[i : i + self.pack]]))
            if now >= self.duration and not queue:
                break
            time.sleep(self.tick)
        if self.producer.flush(30):
            self.failed += 1

    def _send(self, value: bytes) -> None:
        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                self.failed += 1

        while True:
            try:
                self.producer.produce(self.topic, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)


@dataclass
class Received:
    """What the backend topic holds: per trace ID, how often each span ID arrived."""

    spans: dict[bytes, Counter[bytes]] = field(default_factory=lambda: defaultdict(Counter))
    records: int = 0


def read_backend(bootstrap: str, topic: str, timeout: float = 60) -> Received:
    """Read every record of `topic` up to its end (OTLP protobuf, one request per record)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fault-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    received = Received()
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = sorted(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                received.records += 1
                request = ExportTraceServiceRequest.FromString(msg.value())
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            received.spans[span.trace_id][span.span_id] += 1
        if pending:
            raise AssertionError(f"backend topic {topic} not read to its end: {pending}")
    finally:
        consumer.close()
    return received


@dataclass
class Tally:
    """The fault suite's figures."""

    generated: int
    must_keep: int
    kept_missing: int  # never arrived, or arrived without some of its spans
    kept_lost: int  # of which nothing arrived at all
    dropped_leaked: int
    duplicated: int  # traces with a span that arrived more than once
    foreign: int
    missing_born: list[float]

    def line(self) -> str:
        return (
            f"traces {self.generated}, to keep {self.must_keep}: "
            f"kept missing a span {self.kept_missing} ({self.kept_lost} never arrived), "
            f"dropped leaked {self.dropped_leaked}, duplicated {self.duplicated} "
            f"({100 * self.duplicated / max(1, self.must_keep):.2f} %), foreign {self.foreign}"
        )


def tally(truth: Truth, received: Received) -> Tally:
    """Compare the backend with the truth."""
    kept_missing = kept_lost = leaked = duplicated = 0
    missing_born = []
    for trace_id, span_ids in truth.spans.items():
        got = received.spans.get(trace_id, Counter())
        if truth.keep[trace_id]:
            if not span_ids <= got.keys():
                kept_missing += 1
                kept_lost += not got
                missing_born.append(truth.born[trace_id])
        elif got:
            leaked += 1
        if any(count > 1 for count in got.values()):
            duplicated += 1
    foreign = sum(1 for trace_id in received.spans if trace_id not in truth.spans)
    return Tally(
        generated=len(truth.spans),
        must_keep=sum(truth.keep.values()),
        kept_missing=kept_missing,
        kept_lost=kept_lost,
        dropped_leaked=leaked,
        duplicated=duplicated,
        foreign=foreign,
        missing_born=sorted(missing_born),
    )
