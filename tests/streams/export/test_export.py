"""Backends and the circuit breaker, against a real HTTP server on loopback."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.config import CircuitBreakerConfig, ExporterConfig
from streams.devtools.generate import build_trace
from streams.export.backends import PermanentError, RetryableError
from streams.export.backends.file import FileBackend
from streams.export.backends.otlp_http import OtlpHttpBackend
from streams.export.breaker import CircuitBreaker
from tests.httpbackend import HttpBackend


def payload(seed: int) -> bytes:
    import random

    _, blocks = build_trace(random.Random(seed), "ordinary", "acme", 1, spans=3)
    return ExportTraceServiceRequest(resource_spans=blocks).SerializeToString()


@pytest.fixture
def backend():
    server = HttpBackend().start()
    yield server
    server.stop()


def http(url: str, **fields: object) -> OtlpHttpBackend:
    return OtlpHttpBackend(ExporterConfig(type="otlp_http", endpoint=url, **fields))


def test_otlp_http_posts_gzip_protobuf_with_headers(backend: HttpBackend) -> None:
    http(backend.url, headers={"Authorization": "Bearer t"}).write("acme", [payload(1), payload(2)])
    [got] = backend.accepted()
    assert got.headers["Content-Type"] == "application/x-protobuf"
    assert got.headers["Authorization"] == "Bearer t"
    assert gzip.decompress(got.raw) == got.body
    assert len(got.spans_by_trace()) == 2  # both traces in one request, each whole


def test_otlp_http_json_encoding(backend: HttpBackend) -> None:
    http(backend.url, encoding="json", compression="none").write("acme", [payload(1)])
    [got] = backend.received
    assert got.headers["Content-Type"] == "application/json"
    assert b'"traceId"' in got.body


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_carry_retry_after(backend: HttpBackend, status: int) -> None:
    backend.answer = lambda now: (status, {"Retry-After": "7"})
    with pytest.raises(RetryableError) as exc:
        http(backend.url).write("acme", [payload(1)])
    assert exc.value.retry_after == 7.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_other_4xx_are_permanent_with_body(backend: HttpBackend, status: int) -> None:
    backend.answer = lambda now: (status, {})
    with pytest.raises(PermanentError) as exc:
        http(backend.url).write("acme", [payload(1)])
    assert exc.value.status == status
    assert b"backend says no" in exc.value.body


def test_connection_refused_is_retryable() -> None:
    from streams.devtools.broker import free_port

    with pytest.raises(RetryableError):
        http(f"http://127.0.0.1:{free_port()}", timeout=2).write("acme", [payload(1)])


def test_large_batches_are_split_between_traces(backend: HttpBackend) -> None:
    traces = [payload(i) for i in range(30)]
    config = {"batch": {"max_bytes": 2048}}
    http(backend.url, **config).write("acme", traces)
    assert len(backend.accepted()) > 1
    assert sum(len(r.spans_by_trace()) for r in backend.accepted()) == 30


def test_breaker_opens_half_opens_and_reopens_longer() -> None:
    breaker = CircuitBreaker(
        CircuitBreakerConfig(failure_threshold=3, open_duration=60, reopen_duration=300)
    )
    assert [breaker.failure(t) for t in (0, 1, 2)] == [False, False, True]
    assert breaker.wait_time(30) == pytest.approx(32)
    assert breaker.wait_time(62) == 0 and breaker.half_open
    assert breaker.failure(63) is True  # a failed probe reopens, for longer
    assert breaker.wait_time(64) == pytest.approx(299)
    assert breaker.wait_time(363) == 0 and breaker.half_open
    breaker.success()
    assert not breaker.half_open and breaker.wait_time(364) == 0


def test_file_backend_rotates_and_keeps_max_files(tmp_path: Path) -> None:
    files = FileBackend(str(tmp_path), max_bytes=2048, max_files=3)
    for i in range(40):
        files.write("acme", [payload(i)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["acme.jsonl", "acme.jsonl.1", "acme.jsonl.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())


def test_every_tenant_has_a_file_of_its_own() -> None:
    from streams.export.backends.file import file_name

    names = ["a/b", "a_b", "a.b", "a b", "../etc", "é" * 127, "é" * 126 + "x"]
    files = [file_name(n) for n in names]
    assert len(set(files)) == len(names)
    assert all("/" not in f and len(f) <= 200 for f in files)
