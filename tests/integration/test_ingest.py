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

from streams.devtools.broker import LocalBroker
from streams.devtools.generate import build_trace
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


def probe(gateway: IngestProcess, path: str) -> int:
    """Status of a GET on the gateway's metrics port (/readyz, /healthz)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{gateway.metrics_port}{path}", timeout=5
        ) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


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


def _trace_ids(body: bytes) -> set[str]:
    request = ExportTraceServiceRequest.FromString(body)
    return {
        s.trace_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
    }


def _read_topic(bootstrap: str, topic: str, expect_traces: int) -> dict[str, int]:
    """Spans per trace ID found in the topic (reads until `expect_traces` or a timeout)."""
    import time
    import uuid

    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 60
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        messages = consumer.consume(1000, timeout=0.5)
        if not messages and len(counts) >= expect_traces and time.monotonic() - idle_since > 2:
            break
        for msg in messages:
            if msg.error() is None:
                idle_since = time.monotonic()
                request = ExportTraceServiceRequest.FromString(msg.value())
                assert msg.key() == bytes.fromhex(next(iter(_trace_ids(msg.value()))))
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            counts[span.trace_id.hex()] = counts.get(span.trace_id.hex(), 0) + 1
    consumer.close()
    return counts


def test_broker_outage_answers_503_and_loses_nothing(tmp_path: Path) -> None:
    import threading
    import time

    from streams.devtools.broker import LocalBroker, free_port

    port = free_port()
    broker = LocalBroker(port=port, log_path=tmp_path / "tansu.log").start()
    config = {"kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 4}}
    gateway = IngestProcess(tmp_path, config, {"tokens": TOKENS})
    auth = {"Authorization": "Bearer token-a"}
    try:
        assert post(gateway.http_url, request_bytes(), **auth)[0] == 200
        assert probe(gateway, "/readyz") == 200
        assert probe(gateway, "/healthz") == 200
        broker.stop()

        def refused() -> bool:
            status, headers, _ = post(gateway.http_url, request_bytes(), **auth)
            return status == 503 and headers.get("Retry-After") == "5"

        wait_for(refused, 60, "503 with Retry-After while the broker is down")
        # Not ready while Kafka is away (a load balancer sends elsewhere), but alive.
        assert probe(gateway, "/readyz") == 503
        assert probe(gateway, "/healthz") == 200

        sdk = SdkTraces(seed=8)
        ids = [sdk.make("ordinary", "acme") for _ in range(100)]
        spans = sdk.spans_by_trace()
        exporter = HttpExporter(endpoint=gateway.http_url, headers=auth, timeout=5)
        attempts: list[int] = []

        def client() -> None:
            for start in range(0, len(ids), 10):
                batch = [s for t in ids[start : start + 10] for s in spans[t]]
                tries = 0
                while exporter.export(batch) != SpanExportResult.SUCCESS:
                    tries += 1  # the SDK gave up on this attempt; an application retries
                    time.sleep(0.5)
                attempts.append(tries)

        sender = threading.Thread(target=client)
        sender.start()
        time.sleep(8)
        assert sender.is_alive(), "nothing can be accepted while Kafka is away"
        broker = LocalBroker(port=port, log_path=tmp_path / "tansu-2.log").start()
        sender.join(120)
        assert not sender.is_alive()
        wait_for(lambda: probe(gateway, "/readyz") == 200, 30, "ready again")
        counts = _read_topic(broker.bootstrap, "otlp_spans", len(ids))
        assert {t: n for t, n in counts.items() if t in ids} == {t: len(spans[t]) for t in ids}
        assert gateway.proc.poll() is None
    finally:
        gateway.stop()
        broker.stop()


def test_overload_is_throttled_and_every_accepted_span_is_in_kafka(
    broker: LocalBroker, tmp_path: Path
) -> None:
    import threading
    import time

    from streams.devtools.broker import LocalBroker  # noqa: F401 (type only)

    pipeline = Pipeline(broker, tmp_path)
    gateway = IngestProcess(
        tmp_path, pipeline.config, {"tokens": TOKENS, "max_inflight_bytes": 1024 * 1024}
    )
    auth = {"Authorization": "Bearer token-a"}
    accepted: set[str] = set()
    statuses: dict[int, int] = {}
    spans_accepted = [0]
    lock = threading.Lock()

    # Ready-made requests of 1,000 traces (5,000 spans, ~0.7 MB) so the clients outrun Kafka.
    bodies = [request_bytes(traces=1000, seed=seed) for seed in range(12)]
    ids = [_trace_ids(body) for body in bodies]

    def load(worker: int) -> None:
        n = worker
        while time.monotonic() < stop_at:
            body = bodies[n % len(bodies)]
            status, _, _ = post(gateway.http_url, body, **auth)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    accepted.update(ids[n % len(bodies)])
                    spans_accepted[0] += 5000
            n += 1

    stop_at = time.monotonic() + 10
    try:
        started = time.monotonic()
        threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        print(
            f"ingest: {statuses.get(200, 0) / elapsed:.0f} accepted requests/s, "
            f"{spans_accepted[0] / elapsed:,.0f} spans/s; statuses {statuses}; "
            f"accepted {len(accepted)} distinct traces"
        )
        assert statuses.get(429, 0) > 0, statuses
        assert set(statuses) <= {200, 429, 503}, statuses
        peak_kib = next(
            int(line.split()[1])
            for line in Path(f"/proc/{gateway.proc.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        assert peak_kib < 400 * 1024, f"gateway peak RSS {peak_kib / 1024:.0f} MiB"
        counts = _read_topic(broker.bootstrap, pipeline.kafka["input_topic"], len(accepted))
        assert accepted <= set(counts), "a span answered 200 is missing from Kafka"
    finally:
        gateway.stop()
