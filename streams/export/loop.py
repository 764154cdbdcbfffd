"""Export: kept traces from `caudal-sampled` to each tenant's backends.

Each exporter has its own consumer group on `caudal-sampled` and its own thread, so a slow or
dead backend holds back only its own progress. Offsets are committed only after the backend
accepted the batch (or rejected it for good: then the batch is in the dead-letter topic).

A batch that fails with a retryable error is retried on a schedule (initial interval, doubling,
capped; `Retry-After` honoured). Consecutive failures open the exporter's circuit breaker: no
calls for `open_duration`, then one probe (half-open); a success closes it, a failure opens it
again for `reopen_duration`. Nothing is dropped meanwhile: the batch waits, and the backlog waits
in Kafka. The exporter's state is exported as `caudal_exporter_state`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from policies.flatten import checked_span_count
from streams.config import Settings
from streams.export.backends import PermanentError, RetryableError, build_backend
from streams.export.breaker import CircuitBreaker
from streams.kafka.clients import (
    DeliveryReports,
    ProducerLike,
    client_config,
    consumer_lags,
    headers_of,
    rewind,
    where,
)
from streams.kafka.dead_letters import send_dead_letter
from streams.ops.health import ExportOutcomes, Supervised
from streams.ops.metrics import (
    CIRCUIT_OPENS,
    EXPORT_BATCHES,
    EXPORT_RETRIES,
    EXPORTER_BACKLOG,
    EXPORTER_STATE,
    SPANS_EXPORTED,
    set_one_hot,
)

__all__ = ["STATES", "ExportLoop"]

log = logging.getLogger(__name__)

STATES = ("idle", "sending", "backoff", "open", "half_open", "failed")


class ExportLoop(Supervised):
    """Feed one exporter from `caudal-sampled`, committing only what it delivered."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        stop: threading.Event,
        producer: ProducerLike,
        outcomes: ExportOutcomes | None = None,
    ) -> None:
        super().__init__(name=f"caudal-export-{name}")
        self.exporter_name = name
        self.settings = settings
        self.stop = stop
        self.producer = producer  # for dead letters
        self.dead_letters = DeliveryReports()
        # The producer is the worker's, shared with the decisions: wait on it only for a batch
        # that sent dead letters, not behind every record the worker has in flight.
        self.sent_dead_letters = False
        self.outcomes = outcomes or ExportOutcomes()
        self.config = settings.exporters[name]
        self.backend = build_backend(self.config, settings.kafka)
        self.breaker = CircuitBreaker(self.config.circuit_breaker)
        self.routes: dict[str, bool] = {}
        self.revoked = False
        self.state = ""
        self.set_state("idle")
        kafka = settings.kafka
        self.consumer = Consumer(
            client_config(
                kafka,
                **{
                    "group.id": f"{kafka.group_id}-export-{name}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": 6000,
                    "heartbeat.interval.ms": 1000,
                    "max.poll.interval.ms": 600_000,
                },
            )
        )
        self._backlog_at = 0.0

    def set_state(self, state: str) -> None:
        """Move the state machine (one-hot gauge per state)."""
        if state != self.state:
            set_one_hot(EXPORTER_STATE, STATES, state, self.exporter_name)
            self.state = state

    def _routed_here(self, tenant: str) -> bool:
        routed = self.routes.get(tenant)
        if routed is None:
            routed = self.exporter_name in self.settings.exporters_for(tenant)
            self.routes[tenant] = routed
        return routed

    def _on_revoke(self, _consumer: Consumer, _partitions: list[TopicPartition]) -> None:
        # A batch in hand now belongs to the partitions' next owner: abandon it uncommitted.
        self.revoked = True

    def work(self) -> None:
        """Consume, deliver, commit, until the worker stops."""
        self.consumer.subscribe([self.settings.kafka.sampled_topic], on_revoke=self._on_revoke)
        batch = self.config.batch
        try:
            while not self.stop.is_set():
                self.revoked = False
                consumed = self.consumer.consume(batch.max_traces, timeout=batch.timeout)
                # An error event is not data: the records around it are delivered as usual.
                messages = [m for m in consumed if not self._is_error(m)]
                self._observe_backlog()
                if not messages:
                    continue
                if self._deliver(messages) and not self.revoked:
                    if not self._dead_letters_acknowledged(messages):
                        continue
                    try:
                        self.consumer.commit(asynchronous=False)
                    except KafkaException as exc:
                        # A rebalance took the partitions meanwhile: their next owner delivers
                        # this batch again (at-least-once, a duplicate at worst).
                        log.warning(
                            "export commit failed exporter=%s error=%s", self.exporter_name, exc
                        )
                self.set_state("idle")
        finally:
            self.backend.close()
            self.consumer.close()

    def _dead_letters_acknowledged(self, messages: list[Message]) -> bool:
        """Are the batch's dead letters in their topic? If not, the batch is read again
        (never committed past a record that is in neither the backend nor the dead letters)."""
        if not self.sent_dead_letters:
            return True
        self.sent_dead_letters = False
        delivery = self.dead_letters.wait(self.producer)
        if delivery.ok:
            return True
        log.error("export dead letters not delivered exporter=%s %s", self.exporter_name, delivery)
        rewind(self.consumer, messages)
        return False

    def _is_error(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return False
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("export consume error exporter=%s error=%s", self.exporter_name, err)
        return True

    def _deliver(self, messages: list[Message]) -> bool:
        """Deliver a batch, retrying as configured; False if it must be read again."""
        pending: dict[str, list[bytes]] = defaultdict(list)
        spans: dict[str, int] = defaultdict(int)
        for msg in messages:
            tenant = (msg.key() or b"").decode("utf-8", "replace")
            if not self._routed_here(tenant):
                continue
            value = msg.value() or b""
            count = self._usable(msg, value)
            if count:
                pending[tenant].append(value)
                spans[tenant] += count
        retry = self.config.retry
        interval, retries, started = retry.initial_interval, 0, time.monotonic()
        while pending:
            if self.stop.is_set() or self.revoked:
                return False
            wait = self.breaker.wait_time(time.monotonic())
            if wait > 0:
                self.set_state("open")
                self._pause(wait)
                continue
            self.set_state("half_open" if self.breaker.half_open else "sending")
            failure = self._send(pending, spans)
            self.outcomes.record(failure is None)
            if failure is None:
                self.breaker.success()
                EXPORT_BATCHES.labels(self.exporter_name, "success").inc()
                return True
            EXPORT_BATCHES.labels(self.exporter_name, "failure").inc()
            now = time.monotonic()
            exhausted = (
                not retry.enabled
                or retries >= retry.max_retries
                or (now - started >= retry.max_elapsed_time)
            )
            if self.breaker.failure(now) or exhausted:
                if exhausted:
                    # Out of retries, yet dropping would lose data: hold the batch and let
                    # the breaker space out the attempts from now on.
                    self.breaker.force_open(now)
                    interval, retries, started = retry.initial_interval, 0, now
                CIRCUIT_OPENS.labels(self.exporter_name).inc()
                log.warning(
                    "circuit opened exporter=%s error=%s for=%.0fs",
                    self.exporter_name,
                    failure,
                    self.breaker.wait_time(now),
                )
                continue
            retries += 1
            EXPORT_RETRIES.labels(self.exporter_name).inc()
            delay = failure.retry_after if failure.retry_after is not None else interval
            interval = min(interval * retry.multiplier, retry.max_interval)
            log.info(
                "export retry exporter=%s error=%s attempt=%d in=%.1fs",
                self.exporter_name,
                failure,
                retries,
                delay,
            )
            self.set_state("backoff")
            self._pause(delay)
        return True

    def _send(
        self, pending: dict[str, list[bytes]], spans: dict[str, int]
    ) -> RetryableError | None:
        """Try every tenant still pending; delivered and rejected ones leave `pending`."""
        for tenant in list(pending):
            try:
                self.backend.write(tenant, pending[tenant])
            except PermanentError as exc:
                self.set_state("failed")
                self._dead_letter(tenant, pending.pop(tenant), exc)
                SPANS_EXPORTED.labels(self.exporter_name, self._label(tenant), "dead_letter").inc(
                    spans[tenant]
                )
                continue
            except RetryableError as exc:
                return exc
            except Exception as exc:  # an unexpected backend failure is retried, never fatal
                log.exception("export failed exporter=%s", self.exporter_name)
                return RetryableError(f"{type(exc).__name__}: {exc}")
            del pending[tenant]
            SPANS_EXPORTED.labels(self.exporter_name, self._label(tenant), "success").inc(
                spans[tenant]
            )
        return None

    def _usable(self, msg: Message, value: bytes) -> int:
        """Spans in a record of caudal-sampled; 0 (and dead-lettered) if it is not OTLP, so
        one bad record never fails the batch it came in."""
        try:
            count = checked_span_count(value)  # every byte read: raises if not OTLP
        except Exception as exc:
            reason, detail = "invalid_protobuf", f"{type(exc).__name__}: {exc}"
        else:
            if count:
                return count
            reason, detail = "no_spans", "a record of caudal-sampled without spans"
        send_dead_letter(
            self.producer,
            self.settings.kafka.dlq_topic,
            msg.value(),
            reason=reason,
            detail=detail,
            key=msg.key(),
            origin=where(msg),
            headers=[*headers_of(msg), ("caudal-dlq-exporter", self.exporter_name.encode())],
            max_bytes=self.settings.kafka.max_message_bytes,
            on_delivery=self.dead_letters.on_delivery,
        )
        self.sent_dead_letters = True
        return 0

    def _label(self, tenant: str) -> str:
        return self.settings.tenant_label(tenant)

    def _dead_letter(self, tenant: str, traces: list[bytes], exc: PermanentError) -> None:
        log.warning(
            "export rejected exporter=%s status=%d traces=%d",
            self.exporter_name,
            exc.status,
            len(traces),
            extra={"tenant": tenant},
        )
        for payload in traces:
            send_dead_letter(
                self.producer,
                self.settings.kafka.dlq_topic,
                payload,
                reason="exporter_rejected",
                detail=str(exc),
                key=tenant.encode(),
                headers=[
                    ("caudal-dlq-exporter", self.exporter_name.encode()),
                    ("caudal-dlq-status", str(exc.status).encode()),
                    ("caudal-dlq-body", exc.body[:4096]),
                ],
                max_bytes=self.settings.kafka.max_message_bytes,
                on_delivery=self.dead_letters.on_delivery,
            )
        self.sent_dead_letters = True

    def _pause(self, seconds: float) -> None:
        """Wait without fetching, but keep polling so the group keeps this member."""
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        deadline = time.monotonic() + seconds
        try:
            while not self.stop.is_set() and not self.revoked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.stop.wait(min(remaining, 0.5))
                self.consumer.poll(0)
        finally:
            if assignment and not self.revoked:
                self.consumer.resume(assignment)

    def _observe_backlog(self) -> None:
        """Messages of `caudal-sampled` not yet delivered by this exporter (every ~5 s)."""
        now = time.monotonic()
        if now - self._backlog_at < 5:
            return
        self._backlog_at = now
        lags = consumer_lags(self.consumer)
        if lags is not None:
            EXPORTER_BACKLOG.labels(self.exporter_name).set(sum(lags.values()))
