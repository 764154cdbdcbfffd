"""The OTLP ingest gateway on the real broker, with the OpenTelemetry SDK's own exporters."""

from __future__ import annotations

import gzip
import json
import random
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from streams.broker import LocalBroker
from streams.generate import build_trace
from tests.integration.harness import Pipeline, wait_for
from tests.integration.ingest_harness import IngestProcess
from tests.integration.sdk_traces import SdkTraces

pytestmark = pytest.mark.integration

TOKENS = {"token-a": "acme", "token-b": "globex"}


def post(url: str, body: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/x-protobuf", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def request_bytes(traces: int = 2, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    blocks = []
    for _ in range(traces):
        blocks += build_trace(rng, "error", None, 1_700_000_000_000_000_000, spans=5)[1]
    return ExportTraceServiceRequest(resource_spans=blocks).SerializeToString()


def test_sdk_exporters_through_the_gateway(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(
        broker,
        tmp_path,
        tenants={
            "acme": {"exporters": ["files"]},
            "globex": {"exporters": ["files"]},
            "default": {"exporters": ["files"]},
        },
    )
    gateway = IngestProcess(tmp_path, pipeline.config, {"tokens": TOKENS})
    try:
        worker = pipeline.start_worker()
        sdk = SdkTraces(seed=3)
        # acme claims to be "other" in a header and in its resource: the token decides.
        via_http = [sdk.make("error", "other") for _ in range(40)]
        via_http += [sdk.make("ordinary", "other") for _ in range(200)]
        spans = sdk.spans_by_trace()
        http = HttpExporter(
            endpoint=gateway.http_url,
            headers={"Authorization": "Bearer token-a", "x-tenant-id": "other"},
        )
        assert http.export([s for t in via_http for s in spans[t]]) == SpanExportResult.SUCCESS

        sdk_b = SdkTraces(seed=4)
        via_grpc = [sdk_b.make("error", "other") for _ in range(40)]
        via_grpc += [sdk_b.make("ordinary", "other") for _ in range(200)]
        spans_b = sdk_b.spans_by_trace()
        grpc_exporter = GrpcExporter(
            endpoint=f"127.0.0.1:{gateway.grpc_port}",
            insecure=True,
            headers={"authorization": "Bearer token-b"},
        )
        assert (
            grpc_exporter.export([s for t in via_grpc for s in spans_b[t]])
            == SpanExportResult.SUCCESS
        )
        grpc_exporter.shutdown()

        wait_for(lambda: worker.total("caudal_decisions_total") >= 480, 90, "decisions")
        assert worker.total("caudal_decisions_total") == 480
        for tenant in ("acme", "globex"):
            assert worker.total("caudal_decisions_total", tenant=tenant, policy="errors") == 40
        kept = int(worker.total("caudal_decisions_total", outcome="kept"))
        wait_for(lambda: sum(len(v) for v in pipeline.exported().values()) == kept, 30, "exports")
        exported = pipeline.exported()
        assert set(exported) == {"acme", "globex"}, "no trace landed in 'other'"
        assert set(exported["acme"]) <= set(via_http)
        assert set(exported["globex"]) <= set(via_grpc)
        assert set(via_http[:40]) <= set(exported["acme"])
        assert set(via_grpc[:40]) <= set(exported["globex"])
        assert gateway.total("caudal_ingest_spans_total", tenant="acme", outcome="accepted") > 0
    finally:
        gateway.stop()
        pipeline.stop()


def test_bad_requests_get_the_documented_status(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path)
    gateway = IngestProcess(
        tmp_path, pipeline.config, {"tokens": TOKENS, "max_request_bytes": 64 * 1024}
    )
    auth = {"Authorization": "Bearer token-a"}
    url = gateway.http_url
    try:
        valid = request_bytes()
        assert post(url, valid)[0] == 401
        assert post(url, valid, Authorization="Bearer nope")[0] == 401
        assert post(url, random.Random(1).randbytes(500), **auth)[0] == 400
        assert post(url, valid[: len(valid) // 2], **auth)[0] == 400
        assert post(url, b"{not json", **{**auth, "Content-Type": "application/json"})[0] == 400
        assert post(url, valid, **{**auth, "Content-Type": "text/plain"})[0] == 415
        assert post(url, request_bytes(traces=400), **auth)[0] == 413
        bomb = gzip.compress(b"\0" * (10 * 1024 * 1024))
        assert post(url, bomb, **{**auth, "Content-Encoding": "gzip"})[0] == 413
        assert post(url, b"\x0a\x05garbage", **{**auth, "Content-Encoding": "gzip"})[0] == 400

        # Spans with an invalid trace ID are rejected, the rest accepted (partial success).
        request = ExportTraceServiceRequest.FromString(valid)
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\0" * 16
        status, _, body = post(url, request.SerializeToString(), **auth)
        assert status == 200
        partial = ExportTraceServiceResponse.FromString(body).partial_success
        assert partial.rejected_spans == 1 and "trace ID" in partial.error_message

        status, _, body = post(url, gzip.compress(valid), **{**auth, "Content-Encoding": "gzip"})
        assert (
            status == 200
            and not ExportTraceServiceResponse.FromString(body).partial_success.rejected_spans
        )
        json_body = json.dumps({"resourceSpans": []}).encode()
        assert post(url, json_body, **{**auth, "Content-Type": "application/json"})[0] == 200
        assert gateway.proc.poll() is None, "the gateway stays up"
    finally:
        gateway.stop()
