"""Kafka clients: confluent-kafka configuration, topic creation and the shared producer."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from streams.config import ConfigError, KafkaConfig
from streams.ops.metrics import PRODUCE_FAILURES

__all__ = [
    "DELIVERY_MARGIN",
    "DELIVERY_TIMEOUT",
    "DELIVERY_WAIT",
    "TRAFFIC_DELIVERY_TIMEOUT",
    "Delivery",
    "DeliveryFailures",
    "DeliveryReports",
    "INDEX_HEADER",
    "ORIGIN_HEADER",
    "SPAN_COUNT_HEADER",
    "TENANT_HEADER",
    "client_config",
    "ensure_topics",
    "faust_credentials",
    "ProducerLike",
    "RecordLike",
    "headers_of",
    "consumer_lags",
    "make_producer",
    "offset_bounds",
    "where",
    "produce",
    "produce_all",
    "rewind",
]

log = logging.getLogger(__name__)

# Record headers Caudal reads and writes.
INDEX_HEADER = "caudal-index"  # caudal-spans: (trace ID, length) of each packed fragment
ORIGIN_HEADER = "caudal-origin"  # caudal-spans: input partition and offset of each fragment
TENANT_HEADER = "caudal-tenant"  # caudal-spans: the tenant resolved by the split stage
SPAN_COUNT_HEADER = "caudal-span-count"  # caudal-sampled: spans in the record

# How long a record may wait for the broker's acknowledgement (librdkafka's message.timeout.ms)
# before its delivery fails. Whoever produced it then produces it again, so no record may stay
# queued past the wait for it: once the broker answered again, it would be written beside its
# second copy (a kept trace exported twice, an input batch split twice), and through a long
# outage the copies would pile up in the queue.
DELIVERY_TIMEOUT = 30.0
# What a wait for records to be acknowledged or failed adds to their timeout: librdkafka fails
# a record soon after its timeout, not at the millisecond.
DELIVERY_MARGIN = 5.0
DELIVERY_WAIT = DELIVERY_TIMEOUT + DELIVERY_MARGIN
# A producer of test traffic (generator, demo, bench) writes nothing again: each record gets
# librdkafka's own 5 minutes.
TRAFFIC_DELIVERY_TIMEOUT = 300.0


# librdkafka's own messages (connection failures and the like) go through Python logging, so
# they come out in the configured log format instead of raw on stderr.
_LIBRDKAFKA_LOG = logging.getLogger("streams.librdkafka")


def client_config(kafka: KafkaConfig, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for this cluster: bootstrap servers, security, then `extra`."""
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "logger": _LIBRDKAFKA_LOG,
        **kafka.security,
        **extra,
    }


_SASL_PASSWORD = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def faust_credentials(security: Mapping[str, str]) -> Any:
    """The cluster security of `kafka.security` (librdkafka names) for Faust's aiokafka clients.

    Supported: `security.protocol` PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL; SASL mechanisms
    PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and GSSAPI; `ssl.ca.location`,
    `ssl.certificate.location`, `ssl.key.location`, `ssl.key.password`,
    `ssl.endpoint.identification.algorithm` and `enable.ssl.certificate.verification`.
    Anything else is rejected at start with its key path, rather than half-applied.
    """
    from faust.auth import GSSAPICredentials, SASLCredentials, SSLCredentials

    protocol = security.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise _security_error("security.protocol", f"unknown protocol {protocol!r}")
    context = _ssl_context(security) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return SSLCredentials(context)
    key = "sasl.mechanism" if "sasl.mechanism" in security else "sasl.mechanisms"
    mechanism = security.get(key, "PLAIN").upper()
    if mechanism in _SASL_PASSWORD:
        for needed in ("sasl.username", "sasl.password"):
            if not security.get(needed):
                raise _security_error(needed, f"required with sasl.mechanism {mechanism}")
        return SASLCredentials(
            username=security["sasl.username"],
            password=security["sasl.password"],
            ssl_context=context,
            mechanism=mechanism,
        )
    if mechanism == "GSSAPI":
        return GSSAPICredentials(
            kerberos_service_name=security.get("sasl.kerberos.service.name", "kafka"),
            ssl_context=context,
        )
    raise _security_error(key, f"{mechanism} is not supported by the worker's Kafka client")


def _ssl_context(security: Mapping[str, str]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=security.get("ssl.ca.location")
        )
        certificate = security.get("ssl.certificate.location")
        if certificate:
            context.load_cert_chain(
                certificate, security.get("ssl.key.location"), security.get("ssl.key.password")
            )
    except (OSError, ssl.SSLError) as exc:
        raise _security_error("ssl", f"cannot load the certificates: {exc}") from exc
    if security.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    if security.get("enable.ssl.certificate.verification", "true").lower() == "false":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _security_error(key: str, message: str) -> ConfigError:
    return ConfigError("kafka.security", [(f"kafka.security.{key}", message)])


def make_producer(
    kafka: KafkaConfig, delivery_timeout: float = DELIVERY_TIMEOUT, **extra: Any
) -> Producer:
    """An idempotent producer (acks=all): retries never duplicate or reorder a partition.

    librdkafka refuses any record over `kafka.max_message_bytes`, as the broker would, and
    fails one not acknowledged within `delivery_timeout` seconds (DELIVERY_TIMEOUT)."""
    return Producer(
        client_config(
            kafka,
            **{
                "enable.idempotence": True,
                "linger.ms": 20,
                "message.max.bytes": kafka.max_message_bytes,
                "message.timeout.ms": round(delivery_timeout * 1000),
                **extra,
            },
        )
    )


def ensure_topics(
    kafka: KafkaConfig,
    topics: Sequence[tuple[str, int]],
    timeout: float = 15.0,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Create the topics that do not exist yet (name, partitions), with their `configs`
    (topic name -> topic configuration, `cleanup.policy` say); existing ones are kept."""
    admin = AdminClient(client_config(kafka))
    existing = admin.list_topics(timeout=timeout).topics
    wanted = [
        NewTopic(name, partitions, config=dict((configs or {}).get(name, {})))
        for name, partitions in topics
        if name not in existing
    ]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("topic created topic=%s", name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def produce(producer: ProducerLike, topic: str, **record: Any) -> None:
    """`producer.produce`, waiting while librdkafka's queue is full (BufferError) instead of
    failing: a full queue means the broker is slower than the work, not that a record is bad."""
    while True:
        try:
            producer.produce(topic, **record)
            return
        except BufferError:
            producer.poll(0.05)


class DeliveryReports:
    """The delivery reports of a group of records: produce each with `on_delivery`, then
    `wait` for them all. Nothing a caller commits may depend on a record until `wait` said it
    was acknowledged."""

    def __init__(self) -> None:
        self.errors: list[Any] = []

    def on_delivery(self, err: Any, _msg: Any) -> None:
        """The delivery callback for each record of the group."""
        if err is not None:
            self.errors.append(err)

    def wait(self, producer: ProducerLike, timeout: float = DELIVERY_WAIT) -> Delivery:
        """Flush, and say what failed since the last wait (the reports start afresh)."""
        undelivered = producer.flush(timeout)
        errors, self.errors = self.errors, []
        return Delivery(errors, undelivered)


@dataclass(frozen=True)
class Delivery:
    """What became of a group of records: the errors reported, and how many records were not
    acknowledged in time."""

    errors: list[Any]
    undelivered: int

    @property
    def ok(self) -> bool:
        """Every record acknowledged."""
        return not self.errors and not self.undelivered

    def __str__(self) -> str:
        first = self.errors[0] if self.errors else "timeout"
        return f"errors={len(self.errors)} undelivered={self.undelivered} first={first}"


def produce_all(
    producer: ProducerLike,
    topic: str,
    records: Iterable[Mapping[str, Any]],
    timeout: float = DELIVERY_WAIT,
) -> Delivery:
    """Produce every record (`key`, `value`, `headers`, `partition`, ...) and wait for the
    acknowledgements of all of them."""
    reports = DeliveryReports()
    # No poll per record (the wait serves the callbacks; a full queue is polled by `produce`):
    # a poll lets go of the interpreter lock, and the exporters' threads took it back behind
    # the decision loop once per trace.
    for record in records:
        produce(producer, topic, **record, on_delivery=reports.on_delivery)
    return reports.wait(producer, timeout)


class DeliveryFailures:
    """Counts records whose delivery failed and that nothing retries (late spans, dead
    letters, degraded-mode spans): a failure refuses the next offset commit, so the input that
    caused them is read again (streams.kafka.state.bind_to_commits)."""

    def __init__(self) -> None:
        self.count = 0

    def failed(self, kind: str) -> None:
        """A record of `kind` was not delivered (counted in caudal_produce_failures_total)."""
        self.count += 1
        PRODUCE_FAILURES.labels(kind).inc()

    def take(self) -> int:
        """Failures since the last call."""
        count, self.count = self.count, 0
        return count


class ProducerLike(Protocol):
    """What Caudal uses of a producer (confluent_kafka.Producer; fakes in tests)."""

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


class RecordLike(Protocol):
    """What Caudal reads of a consumed record (confluent_kafka.Message; a Faust message behind
    streams.pipeline.intake.FaustRecord)."""

    def value(self) -> Any: ...

    def key(self) -> Any: ...

    def headers(self) -> Any: ...

    def topic(self) -> Any: ...

    def partition(self) -> Any: ...

    def offset(self) -> Any: ...


def headers_of(record: RecordLike) -> list[tuple[str, bytes]]:
    """A record's headers as (name, bytes) pairs; a header without a value has b"", and
    headers that cannot be read at all make an empty list (a dead letter must still go)."""
    try:
        raw = record.headers()
        if not raw:  # the common case: none
            return []
        return [(str(k), bytes(v) if v is not None else b"") for k, v in raw]
    except (TypeError, ValueError):
        return []


def where(record: RecordLike) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed record."""
    return str(record.topic()), int(record.partition()), int(record.offset())


def consumer_lags(consumer: Consumer) -> dict[int, int] | None:
    """Records behind per assigned partition (high watermark minus position) of a
    confluent-kafka consumer; partitions not read yet are left out. None when the broker
    cannot say now (lag is best effort: never a reason to stop)."""
    lags = {}
    try:
        for tp in consumer.position(consumer.assignment()):
            if tp.offset < 0:  # nothing read yet on this partition
                continue
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                lags[tp.partition] = max(0, high - tp.offset)
    except KafkaException as exc:
        log.debug("consumer lag unavailable error=%s", exc)
        return None
    return lags


def offset_bounds(messages: Sequence[RecordLike]) -> dict[tuple[str, int], tuple[int, int]]:
    """Per (topic, partition) of consumed `messages`, their first and last offsets."""
    bounds: dict[tuple[str, int], tuple[int, int]] = {}
    for m in messages:
        topic, partition, offset = where(m)
        first, last = bounds.get((topic, partition), (offset, offset))
        bounds[(topic, partition)] = (min(first, offset), max(last, offset))
    return bounds


def rewind(consumer: Consumer, messages: Sequence[Message]) -> None:
    """Seek back to the first offset of a batch that failed, so it is read again."""
    for (topic, partition), (first, _) in offset_bounds(messages).items():
        consumer.seek(TopicPartition(topic, partition, first))
