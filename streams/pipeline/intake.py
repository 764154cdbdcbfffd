"""Intake: what the buffer agent does with each record of `caudal-spans` (or of the input, when
it is keyed by trace ID): follow remembered decisions, shed load when degraded, buffer the rest.

Nothing in a record can stop it: a record that cannot be read is dead-lettered whole, a fragment
that cannot be used is dead-lettered alone, and the rest of the record goes on.
"""

from __future__ import annotations

import time
from collections.abc import Container
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from streams.kafka.clients import INDEX_HEADER, ORIGIN_HEADER, TENANT_HEADER, headers_of
from streams.kafka.dead_letters import send_dead_letter
from streams.kafka.state import PartitionNotOwned
from streams.ops.metrics import REDELIVERED, SPANS_RECEIVED
from streams.pipeline.buffer import Fragment
from streams.pipeline.progress import PROGRESS_HEADER, DirectClock, PartitionClock
from streams.pipeline.route import TenantResolver
from streams.pipeline.split import DeadLetterSink, split_one
from streams.wire.origin import NO_ORIGIN, decode_origins
from streams.wire.otlp import BadInput, unpack_index
from streams.wire.records import fragment_budget
from streams.wire.tracekey import tenant_problem, trace_key

if TYPE_CHECKING:
    from streams.pipeline.handover import Ownership
    from streams.worker import Worker

__all__ = ["BufferAgent", "FaustRecord", "Intake"]


class FaustRecord:
    """A Faust event's message behind confluent-kafka's Message accessors, which the split
    stage's rules (streams.pipeline.split.split_one) read."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message

    def value(self) -> bytes | None:
        return self.message.value  # type: ignore[no-any-return]

    def key(self) -> bytes | None:
        return self.message.key  # type: ignore[no-any-return]

    def headers(self) -> Any:
        return self.message.headers

    def topic(self) -> str:
        return self.message.topic  # type: ignore[no-any-return]

    def partition(self) -> int:
        return self.message.partition  # type: ignore[no-any-return]

    def offset(self) -> int:
        return self.message.offset  # type: ignore[no-any-return]


class Intake:
    """Per record of the buffer agent: follow remembered decisions, buffer everything else.

    Nothing in a record can stop it: a record that cannot be read is dead-lettered whole, a
    fragment that cannot be used is dead-lettered alone, and the rest of the record goes on.
    """

    def __init__(
        self,
        worker: Worker,
        resolver: TenantResolver,
        clock: PartitionClock | DirectClock,
        offsets: dict[int, int] | None = None,
    ) -> None:
        self.worker = worker
        self.resolver = resolver
        # A DirectClock when the worker reads the input itself (no split stage).
        self.clock = clock
        kafka = worker.settings.kafka
        self.encoding = kafka.input_encoding
        self.dlq_topic = kafka.dlq_topic
        self.max_bytes = kafka.max_message_bytes
        self.budget = fragment_budget(kafka.max_message_bytes)
        self.dead_letter = DeadLetterSink(
            worker.producer,
            kafka.dlq_topic,
            kafka.max_message_bytes,
            on_failure=lambda: worker.decider.failures.failed("dead_letter"),
        )
        # Last offset read per partition: the consumer lag gauge, the commit on revoke and a
        # DirectClock's "caught up" read it.
        self.offsets: dict[int, int] = {} if offsets is None else offsets

    def handle(self, message: Any) -> None:
        """Buffer one record's traces; never raises on bad data (it goes to the DLQ).

        PartitionNotOwned (the lease lapsed between the agent's check and a write) is raised:
        skipping the record would let its offset be committed without its spans.
        """
        now = time.time()
        self.offsets[message.partition] = message.offset
        if message.timestamp:
            self.worker.lag.note(now - message.timestamp)
        try:
            headers = dict(headers_of(FaustRecord(message)))
            index = headers.get(INDEX_HEADER)
            progress = headers.get(PROGRESS_HEADER)
            if index is not None:
                self._take_spans(message, headers, index, now)
            elif isinstance(self.clock, DirectClock):
                seen = min(message.timestamp or now, now)
                self._take_input(message, seen)
                self.clock.observe(message.partition, seen)
            elif progress is None:
                raise BadInput("invalid_index", f"record without a {INDEX_HEADER} header")
            if progress is not None and isinstance(self.clock, PartitionClock):
                try:
                    self.clock.observe(message.partition, progress)
                except ValueError as exc:
                    raise BadInput("invalid_progress", str(exc)) from None
        except PartitionNotOwned:
            raise
        except BadInput as exc:
            self._dead_letter(message, message.value, exc.reason, exc.detail)
        except Exception as exc:  # a record no rule foresaw: dead-lettered, never fatal
            self._dead_letter(message, message.value, "unusable_record", _describe(exc))

    def _take_spans(
        self, message: Any, headers: dict[str, bytes], index: bytes, now: float
    ) -> None:
        """A caudal-spans record: the split stage's fragments, sliced by its index."""
        name = headers.get(TENANT_HEADER, b"")
        try:
            tenant = name.decode() if name else self.resolver.default
        except UnicodeDecodeError:
            raise BadInput("invalid_tenant", "the tenant header is not UTF-8") from None
        problem = tenant_problem(tenant)
        if problem is not None:
            raise BadInput("invalid_tenant", problem)
        fragments = unpack_index(message.value or b"", index)
        origins = _origins(headers.get(ORIGIN_HEADER), len(fragments))
        # The window starts at the record's input time (streams.pipeline.progress).
        seen = min(message.timestamp or now, now)
        tail = trace_key(b"", tenant)  # a trace key is the trace ID, then this
        self._take_all(
            message,
            [
                (trace_id + tail, fragment, source)
                for (trace_id, fragment), source in zip(fragments, origins, strict=True)
            ],
            seen,
        )

    def _take_input(self, message: Any, now: float) -> None:
        # Reading the input topic directly (input_keyed_by_trace_id): the split stage's rules.
        worker = self.worker
        meter = worker.meter if worker.degradation.optional_work() else None
        settings = worker.settings
        record = FaustRecord(message)
        traces = split_one(record, settings, self.resolver, self.dead_letter, meter, self.budget)
        taken: list[Fragment] = []
        for _, tenant, spans, fragments in traces:
            SPANS_RECEIVED.labels(settings.tenant_label(tenant)).inc(spans)
            taken += [
                (trace_key(tid, tenant), fragment, source) for tid, fragment, source in fragments
            ]
        self._take_all(message, taken, now)

    def _take_all(self, message: Any, fragments: list[Fragment], now: float) -> None:
        """A record's fragments: each one follows its trace's decision or is shed, or else
        waits in the buffer; those to buffer are written together (one segment)."""
        partition = message.partition
        buffered: list[Fragment] = []
        queue = self.worker.buffer.queues.get(partition)
        held: Container[bytes] = queue.entries if queue is not None else ()  # buffered traces
        percentage = self.worker.degradation.percentage()
        budget, decided = self.budget, self.worker.cache.get
        for item in fragments:
            try:
                fits = len(item[1]) <= budget
                if fits and item[0] in held:
                    buffered.append(item)  # a trace already waiting
                elif fits and percentage is None and decided(item[0]) is None:
                    buffered.append(item)  # the common case: a new trace
                elif self._take(item, now, percentage):
                    buffered.append(item)
            except PartitionNotOwned:
                raise
            except BadInput as exc:
                self._dead_letter(message, item[1], exc.reason, exc.detail)
            except Exception as exc:  # this fragment alone is unusable; the record goes on
                reason = "invalid_protobuf" if isinstance(exc, DecodeError) else "unusable_fragment"
                self._dead_letter(message, item[1], reason, _describe(exc))
        if not buffered:
            return
        try:
            added = self.worker.buffer.append_many(partition, buffered, now)
        except PartitionNotOwned:
            raise
        except Exception as exc:  # never expected: the fragments are not lost but dead-lettered
            for _, fragment, _ in buffered:
                self._dead_letter(message, fragment, "unusable_fragment", _describe(exc))
            return
        if added < len(buffered):
            REDELIVERED.inc(len(buffered) - added)

    def _take(self, item: Fragment, now: float, percentage: float | None) -> bool:
        """Follow the trace's decision, or shed the fragment (`percentage`: the degradation
        level's, None when not degraded); True if it is to be buffered (a new trace)."""
        key, fragment, source = item
        worker = self.worker
        if len(fragment) > self.budget:
            # Only a record not written by a split stage can hold one (Caudal's own fit).
            raise BadInput("fragment_too_large", f"a {len(fragment)}-byte fragment")
        decided = worker.cache.get(key)
        if decided is not None:
            if decided.already_applied(source):
                REDELIVERED.inc()
                return False
            worker.decider.follow(key, decided, fragment)
            worker.cache.advance(key, decided, source)
            return False
        if percentage is not None:
            # Degraded: a new trace is not buffered; its spans are decided on arrival.
            worker.decider.shed(key, fragment, percentage, now)
            return False
        return True

    def _dead_letter(self, message: Any, value: bytes | None, reason: str, detail: str) -> None:
        send_dead_letter(
            self.worker.producer,
            self.dlq_topic,
            value,
            reason=reason,
            detail=detail,
            key=message.key,
            origin=(message.topic, message.partition, message.offset),
            headers=headers_of(FaustRecord(message)),
            max_bytes=self.max_bytes,
            on_delivery=self._delivered,
        )

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.worker.decider.failures.failed("dead_letter")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _origins(header: bytes | None, count: int) -> list[int]:
    """Each fragment's origin from the `caudal-origin` header (unknown without one)."""
    if header is None:
        return [NO_ORIGIN] * count
    try:
        return decode_origins(header, count)
    except ValueError as exc:
        raise BadInput("invalid_origin", str(exc)) from None


class BufferAgent:
    """The Faust agent on the buffer's topic: each record to Intake, under a valid lease."""

    def __init__(self, intake: Intake, ownership: Ownership) -> None:
        self.intake = intake
        self.ownership = ownership

    async def consume(self, stream: Any) -> None:
        """The agent's body (Faust calls it with the stream of its topic)."""
        async for event in stream.events():
            if not self.ownership.leased():
                await self.ownership.wait_leased()
            self.intake.handle(event.message)
