"""Exporters: kept traces from `caudal-sampled` to each tenant's backends.

Each exporter has its own consumer group on `caudal-sampled`, so a slow or dead backend holds
back only its own progress. Offsets are committed only after the backend accepted the batch; on
failure the batch is read again after a backoff, so a backend outage loses nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.config import ExporterConfig, KafkaConfig, Settings
from streams.kafka import SPAN_COUNT_HEADER, client_config, make_producer, rewind
from streams.metrics import SPANS_EXPORTED
from streams.otlp import request_to_json

__all__ = ["ExportLoop", "Exporter", "FileExporter", "KafkaExporter"]

log = logging.getLogger(__name__)


class Exporter(Protocol):
    """A backend: `write` returns only once the backend holds the traces, else raises."""

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """Deliver OTLP ExportTraceServiceRequest payloads, one per trace."""

    def close(self) -> None:
        """Release connections and files."""


class FileExporter:
    """OTLP/JSON lines, one file per tenant (`<path>/<tenant>.jsonl`), one line per trace."""

    def __init__(self, path: str) -> None:
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """Append one JSON line per trace and flush it to the file."""
        lines = [
            request_to_json(ExportTraceServiceRequest.FromString(payload)) + "\n"
            for payload in traces
        ]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tenant) or "_"
        with open(self.dir / f"{safe}.jsonl", "a", encoding="utf-8") as out:
            out.writelines(lines)

    def close(self) -> None:
        """Nothing to release: every write opens and closes its file."""


class KafkaExporter:
    """OTLP protobuf to a Kafka topic (key = tenant), on this cluster or another."""

    def __init__(self, kafka: KafkaConfig, topic: str, bootstrap_servers: str | None) -> None:
        target = (
            kafka.model_copy(update={"bootstrap_servers": bootstrap_servers})
            if (bootstrap_servers)
            else kafka
        )
        self.topic = topic
        self.producer = make_producer(target)

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """Produce and wait for every acknowledgement."""
        errors: list[object] = []
        for payload in traces:
            self.producer.produce(
                self.topic,
                key=tenant.encode(),
                value=payload,
                on_delivery=lambda err, _m: errors.append(err) if err else None,
            )
        remaining = self.producer.flush(30)
        if errors or remaining:
            raise RuntimeError(f"kafka exporter: {len(errors)} failed, {remaining} unacknowledged")

    def close(self) -> None:
        """Flush what is left."""
        self.producer.flush(10)


def build_exporter(name: str, config: ExporterConfig, kafka: KafkaConfig) -> Exporter:
    """The exporter described by one `exporters.NAME` entry."""
    if config.type == "file":
        assert config.path is not None
        return FileExporter(config.path)
    assert config.topic is not None
    return KafkaExporter(kafka, config.topic, config.bootstrap_servers)


class ExportLoop(threading.Thread):
    """Feed one exporter from `caudal-sampled`, committing only what it accepted."""

    def __init__(self, name: str, settings: Settings, stop: threading.Event) -> None:
        super().__init__(name=f"caudal-export-{name}", daemon=True)
        self.exporter_name = name
        self.settings = settings
        self.stop = stop
        self.config = settings.exporters[name]
        self.exporter = build_exporter(name, self.config, settings.kafka)
        self.routes: dict[str, bool] = {}
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
                },
            )
        )

    def _routed_here(self, tenant: str) -> bool:
        routed = self.routes.get(tenant)
        if routed is None:
            routed = self.routes[tenant] = self.exporter_name in self.settings.exporters_for(tenant)
        return routed

    def run(self) -> None:
        self.consumer.subscribe([self.settings.kafka.sampled_topic])
        backoff = 1.0
        try:
            while not self.stop.is_set():
                messages = [
                    m
                    for m in self.consumer.consume(self.config.batch_size, timeout=0.2)
                    if m.error() is None or m.error().code() != KafkaError._PARTITION_EOF
                ]
                if not messages:
                    continue
                try:
                    self._export(messages)
                except Exception as exc:  # a backend failure must never kill the loop
                    log.warning(
                        "export failed exporter=%s error=%s retry_in=%.0fs",
                        self.exporter_name,
                        exc,
                        backoff,
                    )
                    rewind(self.consumer, messages)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 1.0
                self.consumer.commit(asynchronous=False)
        finally:
            self.exporter.close()
            self.consumer.close()

    def _export(self, messages: list[Message]) -> None:
        by_tenant: dict[str, list[bytes]] = defaultdict(list)
        spans: dict[str, int] = defaultdict(int)
        for msg in messages:
            if msg.error() is not None:
                raise RuntimeError(f"consume error: {msg.error()}")
            tenant = (msg.key() or b"").decode("utf-8", "replace")
            if not self._routed_here(tenant):
                continue
            by_tenant[tenant].append(msg.value())
            headers = dict(msg.headers() or ())
            spans[tenant] += int(headers.get(SPAN_COUNT_HEADER, b"0"))
        for tenant, traces in by_tenant.items():
            self.exporter.write(tenant, traces)
            SPANS_EXPORTED.labels(self.exporter_name, tenant, "success").inc(spans[tenant])
