"""OTLP/HTTP: ExportTraceServiceRequest (protobuf or JSON, gzip) POSTed to /v1/traces."""

from __future__ import annotations

import gzip
import http.client
import ssl
import time
import urllib.error
import urllib.request
from email.utils import parsedate_to_datetime

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.config import ExporterConfig
from streams.export.backends import RETRYABLE_STATUS, PermanentError, RetryableError
from streams.wire.otlp import request_to_json

__all__ = ["OtlpHttpBackend"]


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
