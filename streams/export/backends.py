"""Backends kept traces are exported to: OTLP/HTTP, a Kafka topic, OTLP/JSON files.

A backend's `write(tenant, traces)` returns once the backend holds the traces. It raises
`RetryableError` when trying again later may succeed (429, 502, 503, 504, timeouts, connection
errors; `retry_after` from the backend when it said) and `PermanentError` when it never will
(another 4xx): the export loop retries the first and dead-letters the second.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.config import ExporterConfig, KafkaConfig
from streams.kafka.clients import make_producer
from streams.wire.otlp import request_to_json

__all__ = [
    "Backend",
    "FileBackend",
    "KafkaBackend",
    "OtlpHttpBackend",
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


def file_name(tenant: str) -> str:
    """A file name of its own for every tenant name: percent-encoded, so two tenants never share
    a file; a name too long for a file system is cut and ends in a digest of the whole."""
    name = urllib.parse.quote(tenant, safe="-_") or "_"
    if len(name) > 200:
        name = name[:180] + "~" + hashlib.sha256(tenant.encode()).hexdigest()[:16]
    return name


class FileBackend:
    """OTLP/JSON lines, one file per tenant (`<path>/<tenant>.jsonl`), one line per trace.

    A file is rotated at `max_bytes` (`.1` is the newest old file); `max_files` are kept.
    """

    def __init__(self, path: str, max_bytes: int, max_files: int) -> None:
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_files = max_files

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """Append one JSON line per trace and flush it to the file."""
        data = "".join(
            request_to_json(ExportTraceServiceRequest.FromString(payload)) + "\n"
            for payload in traces
        ).encode()
        target = self.dir / f"{file_name(tenant)}.jsonl"
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            self._rotate(target)
        with open(target, "ab") as out:
            out.write(data)

    def _rotate(self, target: Path) -> None:
        for index in range(self.max_files - 1, 0, -1):
            older = target.with_name(f"{target.name}.{index}")
            if older.exists():
                if index + 1 >= self.max_files:
                    older.unlink()
                else:
                    os.replace(older, target.with_name(f"{target.name}.{index + 1}"))
        if self.max_files > 1:
            os.replace(target, target.with_name(f"{target.name}.1"))
        else:
            target.unlink()

    def close(self) -> None:
        """Nothing to release: every write opens and closes its file."""


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


class OtlpHttpBackend:
    """OTLP/HTTP: POST ExportTraceServiceRequest (protobuf or JSON, gzip) to /v1/traces."""

    def __init__(self, config: ExporterConfig) -> None:
        self.url = config.url
        self.timeout = config.timeout
        self.json = config.encoding == "json"
        self.gzip = config.compression == "gzip"
        self.max_bytes = config.batch.max_bytes
        self.headers = {
            "Content-Type": "application/json" if self.json else "application/x-protobuf",
            **({"Content-Encoding": "gzip"} if self.gzip else {}),
            **config.headers,
        }
        self.context = _tls_context(config) if self.url.startswith("https:") else None

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """One request per chunk of at most max_bytes; each trace stays whole in one request."""
        chunk: list[bytes] = []
        size = 0
        for payload in traces:
            if chunk and size + len(payload) > self.max_bytes:
                self._post(chunk)
                chunk, size = [], 0
            chunk.append(payload)
            size += len(payload)
        if chunk:
            self._post(chunk)

    def _post(self, traces: list[bytes]) -> None:
        # Serialized requests concatenate into one request holding all their resource spans.
        body = b"".join(traces)
        if self.json:
            body = request_to_json(ExportTraceServiceRequest.FromString(body)).encode()
        if self.gzip:
            body = gzip.compress(body, compresslevel=5)
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as r:
                r.read()
        except urllib.error.HTTPError as exc:
            answer = exc.read()[:512]
            if exc.code in RETRYABLE_STATUS:
                raise RetryableError(
                    f"HTTP {exc.code}", _retry_after(exc.headers.get("Retry-After"))
                ) from exc
            raise PermanentError(f"HTTP {exc.code}", exc.code, answer) from exc
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Connections are not kept between requests."""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _tls_context(config: ExporterConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls.ca_file)
    if config.tls.cert_file:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    if config.tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def build_backend(config: ExporterConfig, kafka: KafkaConfig) -> Backend:
    """The backend described by one `exporters.NAME` entry."""
    if config.type == "file":
        assert config.path is not None
        return FileBackend(config.path, config.max_bytes, config.max_files)
    if config.type == "kafka":
        assert config.topic is not None
        return KafkaBackend(kafka, config.topic, config.bootstrap_servers)
    return OtlpHttpBackend(config)
