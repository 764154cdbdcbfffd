"""OTLP protobuf to a Kafka topic (key = tenant), on this cluster or another."""

from __future__ import annotations

from streams.config import KafkaConfig
from streams.export.backends import RetryableError
from streams.kafka.clients import make_producer, produce_all

__all__ = ["KafkaBackend"]


class KafkaBackend:
    """OTLP protobuf to a Kafka topic (key = tenant), on this cluster or another."""

    def __init__(self, kafka: KafkaConfig, topic: str, bootstrap_servers: str | None) -> None:
        if bootstrap_servers:
            kafka = kafka.model_copy(update={"bootstrap_servers": bootstrap_servers})
        self.topic = topic
        self.producer = make_producer(kafka)

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """Produce and wait for every acknowledgement."""
        records = ({"key": tenant.encode(), "value": value} for value in traces)
        delivery = produce_all(self.producer, self.topic, records)
        if not delivery.ok:
            raise RetryableError(f"not acknowledged: {delivery}")

    def close(self) -> None:
        """Flush what is left."""
        self.producer.flush(10)
