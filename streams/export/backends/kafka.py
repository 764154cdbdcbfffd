"""OTLP protobuf to a Kafka topic (key = tenant), on this cluster or another."""

from __future__ import annotations

from streams.config import KafkaConfig
from streams.export.backends import RetryableError
from streams.kafka.clients import make_producer

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
        errors: list[object] = []

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                errors.append(err)

        for payload in traces:
            self.producer.produce(
                self.topic, key=tenant.encode(), value=payload, on_delivery=on_delivery
            )
        remaining = self.producer.flush(30)
        if errors or remaining:
            raise RetryableError(f"{len(errors)} records failed, {remaining} unacknowledged")

    def close(self) -> None:
        """Flush what is left."""
        self.producer.flush(10)
