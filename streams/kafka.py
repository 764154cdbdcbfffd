"""Kafka clients: confluent-kafka configuration, topic creation and the shared producer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import KafkaConfig
from streams.metrics import DEAD_LETTERS

__all__ = [
    "DLQ_REASON_HEADER",
    "INDEX_HEADER",
    "SPAN_COUNT_HEADER",
    "TENANT_HEADER",
    "client_config",
    "ensure_topics",
    "make_producer",
    "rewind",
    "send_dead_letter",
]

log = logging.getLogger(__name__)

# Record headers Caudal reads and writes.
DLQ_REASON_HEADER = "caudal-dlq-reason"
INDEX_HEADER = "caudal-index"  # caudal-spans: (trace ID, length) of each packed fragment
TENANT_HEADER = "caudal-tenant"  # caudal-spans: the tenant resolved by the split stage
SPAN_COUNT_HEADER = "caudal-span-count"  # caudal-sampled: spans in the trace


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


def make_producer(kafka: KafkaConfig, **extra: Any) -> Producer:
    """An idempotent producer (acks=all): retries never duplicate or reorder a partition."""
    return Producer(
        client_config(
            kafka,
            **{
                "enable.idempotence": True,
                "linger.ms": 20,
                "message.max.bytes": 16 * 1024 * 1024,
                **extra,
            },
        )
    )


def ensure_topics(
    kafka: KafkaConfig, topics: Sequence[tuple[str, int]], timeout: float = 15.0
) -> None:
    """Create the topics that do not exist yet (name, partitions); existing ones are kept."""
    admin = AdminClient(client_config(kafka))
    existing = admin.list_topics(timeout=timeout).topics
    wanted = [NewTopic(name, partitions) for name, partitions in topics if name not in existing]
    if not wanted:
        return
    for name, future in admin.create_topics(wanted, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            log.info("topic created topic=%s", name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def send_dead_letter(
    producer: Producer,
    topic: str,
    value: bytes | None,
    *,
    reason: str,
    detail: str,
    key: bytes | None = None,
    origin: tuple[str, int, int] | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
) -> None:
    """Send a message that cannot be used to the dead-letter topic, reason in its headers.

    The original key, value and headers are kept so the message can be inspected and replayed;
    `origin` is the (topic, partition, offset) it was read from.
    """
    out = [*headers, (DLQ_REASON_HEADER, reason.encode()), ("caudal-dlq-detail", detail.encode())]
    if origin is not None:
        source_topic, partition, offset = origin
        out += [
            ("caudal-dlq-topic", source_topic.encode()),
            ("caudal-dlq-partition", str(partition).encode()),
            ("caudal-dlq-offset", str(offset).encode()),
        ]
    producer.produce(topic, value=value, key=key, headers=out)
    DEAD_LETTERS.labels(reason).inc()


def rewind(consumer: Consumer, messages: Sequence[Message]) -> None:
    """Seek back to the first offset of a batch that failed, so it is read again."""
    first: dict[tuple[str, int], int] = {}
    for m in messages:
        key = (m.topic(), m.partition())
        first[key] = min(first.get(key, m.offset()), m.offset())
    for (topic, partition), offset in first.items():
        consumer.seek(TopicPartition(topic, partition, offset))
