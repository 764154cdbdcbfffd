"""Backends kept traces are exported to: OTLP/HTTP, a Kafka topic, OTLP/JSON files.

A backend's `write(tenant, traces)` returns once the backend holds the traces. It raises
`RetryableError` when trying again later may succeed (429, 502, 503, 504, timeouts, connection
errors; `retry_after` from the backend when it said) and `PermanentError` when it never will
(another 4xx): the export loop retries the first and dead-letters the second.
"""

from __future__ import annotations

from typing import Protocol

from streams.config import ExporterConfig, KafkaConfig

__all__ = [
    "Backend",
    "PermanentError",
    "RetryableError",
    "build_backend",
]

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class RetryableError(Exception):
    """The backend may accept the same batch later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """The backend rejected the batch for good: `status` and an excerpt of its answer."""

    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Backend(Protocol):
    """Where kept traces go."""

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """Deliver OTLP ExportTraceServiceRequest payloads (one per trace), or raise."""

    def close(self) -> None:
        """Release connections and files."""


def build_backend(config: ExporterConfig, kafka: KafkaConfig) -> Backend:
    """The backend described by one `exporters.NAME` entry."""
    # One module per backend, imported when it is configured.
    from streams.export.backends.file import FileBackend
    from streams.export.backends.kafka import KafkaBackend
    from streams.export.backends.otlp_http import OtlpHttpBackend

    if config.type == "file":
        assert config.path is not None
        return FileBackend(config.path, config.max_bytes, config.max_files)
    if config.type == "kafka":
        assert config.topic is not None
        return KafkaBackend(kafka, config.topic, config.bootstrap_servers)
    return OtlpHttpBackend(config)
