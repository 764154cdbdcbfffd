"""`caudal ingest`: OTLP/HTTP and OTLP/gRPC in, trace-ID-keyed Kafka records out.

Each request is split by trace ID; every trace becomes one record keyed by its trace ID, on the
partition the worker's split stage would choose, with the tenant (from the bearer token) in the
`x-tenant-id` header. A client is answered only after Kafka acknowledged every record (acks=all,
idempotent producer), so an accepted span is never lost.

Backpressure follows the bytes handed to Kafka and not yet acknowledged (the gateway's memory):
under `warn_at` of `max_inflight_bytes` all is normal; above it a warning state is exported;
above `throttle_at` clients get 429 / RESOURCE_EXHAUSTED (Retry-After: 1); above
`unavailable_at`, or while Kafka is unreachable, 503 / UNAVAILABLE (Retry-After: 5).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
import time
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from streams.config import Settings
from streams.kafka.clients import ensure_topics, make_producer
from streams.ops.health import serve_endpoints
from streams.ops.logs import configure_logging
from streams.ops.metrics import (
    INGEST_BACKPRESSURE,
    INGEST_PRODUCE_LATENCY,
    INGEST_QUEUE_FILL,
    INGEST_REQUESTS,
    INGEST_SPANS,
)
from streams.pipeline.route import TokenBucket
from streams.wire.origin import NO_ORIGIN
from streams.wire.otlp import BadInput, decode_request, span_count, split_by_trace
from streams.wire.records import fit_fragments, fragment_budget, partition_for
from streams.wire.tracekey import tenant_problem

__all__ = ["Gateway", "Refused", "run_ingest"]

log = logging.getLogger(__name__)


NORMAL, WARNING, THROTTLED, UNAVAILABLE = range(4)


class Refused(Exception):
    """A request the gateway will not take: `status` (HTTP) says how, `retry_after` when."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


_GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


class Gateway:
    """Authentication, backpressure, rate limits and the Kafka side, shared by both listeners."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.ingest
        kafka = settings.kafka
        self.topic = kafka.input_topic
        self.partitions = kafka.partitions
        self.budget = fragment_budget(kafka.max_message_bytes)
        self._producer_options: dict[str, Any] = {
            "delivery_timeout": 15.0,
            "linger.ms": 5,
            "queue.buffering.max.kbytes": 2 * self.config.max_inflight_bytes // 1024,
            "error_cb": self._on_kafka_error,
        }
        self.producer = make_producer(kafka, **self._producer_options)
        self.pending: set[asyncio.Future[None]] = set()
        self.buckets = {
            tenant: TokenBucket(rate, rate) for tenant, rate in self.config.rate_limits.items()
        }
        self.inflight = 0
        self.lock = threading.Lock()
        self.kafka_down = False
        self.listening = False
        self.stop = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._threads = [
            threading.Thread(target=self._poll, name="ingest-poll", daemon=True),
            threading.Thread(target=self._probe, name="ingest-probe", daemon=True),
        ]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start delivery polling and the broker probe."""
        self.loop = loop
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Flush what was accepted, then stop the threads."""
        self.producer.flush(30)
        self.stop.set()

    # -- Kafka side -------------------------------------------------------------------------

    def _on_kafka_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        # A single connection failure (_TRANSPORT) is retried by librdkafka; only "all brokers
        # down" means Kafka is away. The probe thread says when it is back.
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not self.kafka_down:
                log.warning("kafka unreachable error=%s", err)
            self.kafka_down = True
        elif err.fatal():
            log.error("kafka producer failed error=%s", err)
            self.kafka_down = True

    def _poll(self) -> None:
        from confluent_kafka import KafkaException

        while not self.stop.is_set():
            try:
                self.producer.poll(0.05)
            except KafkaException as exc:
                # A fatal producer error (a broker that lost the idempotent producer's state,
                # for one) leaves the producer unusable: start a new one.
                log.error("kafka producer failed, starting a new one error=%s", exc)
                self._replace_producer()

    def _replace_producer(self) -> None:
        old = self.producer
        self.producer = make_producer(self.settings.kafka, **self._producer_options)
        with self.lock:
            pending, self.pending = self.pending, set()
            self.inflight = 0
        assert self.loop is not None
        for future in pending:  # their records will never be acknowledged: clients retry
            self.loop.call_soon_threadsafe(_fail, future, "producer replaced")
        old.purge()

    def _probe(self) -> None:
        """While Kafka is unreachable, check every 2 s whether it is back."""
        while not self.stop.wait(2.0):
            if not self.kafka_down:
                continue
            try:
                ensure_topics(self.settings.kafka, [(self.topic, self.partitions)], timeout=3)
            except Exception as exc:  # still down: keep answering 503
                log.info("kafka still unreachable error=%s", exc)
                continue
            # A producer that lived through the outage may be stuck with state the broker no
            # longer knows (idempotence sequence numbers, stale leaders): start afresh.
            self._replace_producer()
            log.info("kafka reachable again")
            self.kafka_down = False

    def ready(self) -> bool:
        """Worth sending requests to: listening, not stopping, and Kafka reachable."""
        return self.listening and not self.stop.is_set() and not self.kafka_down

    def status(self) -> dict[str, Any]:
        """The gateway's /status document."""
        return {
            "ready": self.ready(),
            "kafka_reachable": not self.kafka_down,
            "backpressure": ("normal", "warning", "throttling", "unavailable")[self.state()],
            "inflight_bytes": self.inflight,
            "max_inflight_bytes": self.config.max_inflight_bytes,
        }

    def state(self) -> int:
        """The backpressure state now (also exported as a metric)."""
        fill = self.inflight / self.config.max_inflight_bytes
        INGEST_QUEUE_FILL.set(fill)
        if self.kafka_down or fill >= self.config.unavailable_at:
            state = UNAVAILABLE
        elif fill >= self.config.throttle_at:
            state = THROTTLED
        elif fill >= self.config.warn_at:
            state = WARNING
        else:
            state = NORMAL
        INGEST_BACKPRESSURE.set(state)
        return state

    def admit(self) -> None:
        """Refuse early (before reading the body) when Kafka is behind or away."""
        state = self.state()
        if state == UNAVAILABLE:
            raise Refused(503, "Kafka is unreachable or the gateway is full", retry_after=5)
        if state == THROTTLED:
            raise Refused(429, "the gateway is busy, slow down", retry_after=1)

    def tenant_for(self, authorization: str | None, claimed: str | None) -> str:
        """The tenant of a request: its bearer token's, or (if trusted) the one it claims."""
        tokens = self.config.tokens
        if not tokens:
            return (claimed if self.config.trust_client_tenant and claimed else None) or (
                self.settings.default_tenant
            )
        token = (authorization or "").removeprefix("Bearer ").strip()
        tenant = tokens.get(token) if token else None
        if tenant is None:
            raise Refused(401, "missing or unknown bearer token")
        if self.config.trust_client_tenant and claimed:
            problem = tenant_problem(claimed)
            if problem is not None:
                raise Refused(400, f"x-tenant-id refused: {problem}")
            return claimed
        return tenant

    async def accept(self, request: ExportTraceServiceRequest, tenant: str) -> tuple[int, str]:
        """Split, rate-limit and produce a request; return (rejected spans, message)."""
        groups, invalid = split_by_trace(request)
        rejected = span_count(invalid.resource_spans) if invalid is not None else 0
        # One record per trace, or several when it is over kafka.max_message_bytes.
        records, too_large = [], 0
        for tid, blocks in groups.items():
            parts, oversize = fit_fragments(blocks, NO_ORIGIN, self.budget)
            records += [(partition_for(tid, self.partitions), tid, frag) for frag, _ in parts]
            too_large += span_count(oversize.resource_spans) if oversize is not None else 0
        spans = sum(span_count(blocks) for blocks in groups.values()) - too_large
        label = self.settings.tenant_label(tenant)
        bucket = self.buckets.get(tenant)
        if bucket is not None and spans and not bucket.take(spans, time.monotonic()):
            INGEST_SPANS.labels(label, "rate_limited").inc(spans)
            raise Refused(429, f"tenant {tenant!r} is over its ingest rate limit", retry_after=1)
        if records:
            await self._produce(records, tenant)
        INGEST_SPANS.labels(label, "accepted").inc(spans)
        rejected += too_large
        if rejected:
            INGEST_SPANS.labels(label, "rejected").inc(rejected)
            reasons = []
            if too_large:
                reasons.append(f"{too_large} span(s) larger than kafka.max_message_bytes")
            if rejected > too_large:
                reasons.append(f"{rejected - too_large} span(s) without a valid 16-byte trace ID")
            return rejected, "rejected: " + "; ".join(reasons)
        return 0, ""

    async def _produce(self, records: list[tuple[int, bytes, bytes]], tenant: str) -> None:
        assert self.loop is not None
        loop = self.loop
        done: asyncio.Future[None] = loop.create_future()
        remaining = [len(records)]
        size = sum(len(value) for _, _, value in records)
        headers: list[tuple[str, str | bytes | None]] = [("x-tenant-id", tenant.encode())]
        started = time.perf_counter()

        def on_delivery(err: Any, msg: Any) -> None:
            with self.lock:
                self.inflight -= len(msg.value() or b"")
            if err is not None:
                self.kafka_down = self.kafka_down or err.code() < 0
                loop.call_soon_threadsafe(_fail, done, err)
                return
            remaining[0] -= 1
            if remaining[0] == 0:
                loop.call_soon_threadsafe(_succeed, done)

        with self.lock:
            self.inflight += size
            self.pending.add(done)
        done.add_done_callback(self.pending.discard)
        queued = 0
        try:
            for partition, trace_id, value in records:
                self.producer.produce(
                    self.topic,
                    key=trace_id,
                    value=value,
                    partition=partition,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                queued += len(value)
        except (BufferError, Exception) as exc:
            # Records already queued will still be delivered (and counted down as they are);
            # the rest never will. The client retries the request.
            with self.lock:
                self.inflight -= size - queued
            raise Refused(503, f"cannot queue for Kafka: {exc}", retry_after=5) from exc
        try:
            await done
        except Exception as exc:
            raise Refused(503, f"Kafka did not acknowledge: {exc}", retry_after=5) from exc
        INGEST_PRODUCE_LATENCY.observe(time.perf_counter() - started)


def _succeed(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[None], err: Any) -> None:
    if not future.done():
        future.set_exception(RuntimeError(str(err)))


# -- OTLP/HTTP ------------------------------------------------------------------------------

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


def http_app(gateway: Gateway) -> web.Application:
    """POST /v1/traces, as the OTLP/HTTP specification describes it."""
    limit = gateway.config.max_request_bytes

    async def traces(request: web.Request) -> web.Response:
        content_type = request.content_type
        tenant = "-"
        try:
            tenant = gateway.tenant_for(
                request.headers.get("Authorization"), request.headers.get("x-tenant-id")
            )
            if content_type not in (_PROTOBUF, _JSON):
                raise Refused(415, f"unsupported content type {content_type!r}")
            if request.content_length is not None and request.content_length > limit:
                raise Refused(413, f"request body over {limit} bytes")
            gateway.admit()
            try:
                # aiohttp inflates gzip bodies itself, in bounded chunks, and stops at
                # client_max_size (HTTPRequestEntityTooLarge): no gzip bomb gets through.
                body = await request.read()
            except (BadHttpMessage, RequestPayloadError) as exc:
                raise Refused(400, f"cannot read the body: {exc}") from exc
            try:
                message = decode_request(
                    body, "otlp_json" if content_type == _JSON else "otlp_proto"
                )
            except BadInput as exc:
                if exc.reason == "empty":
                    message = ExportTraceServiceRequest()
                else:
                    raise Refused(400, exc.detail) from exc
            rejected, error = await gateway.accept(message, tenant)
        except web.HTTPRequestEntityTooLarge:
            return _http_error(413, f"request body over {limit} bytes", None, tenant, content_type)
        except Refused as exc:
            return _http_error(exc.status, str(exc), exc.retry_after, tenant, content_type)
        INGEST_REQUESTS.labels("http", gateway.settings.tenant_label(tenant), "200").inc()
        response = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=rejected, error_message=error)
            )
        if content_type == _JSON:
            from google.protobuf import json_format

            return web.json_response(json_format.MessageToDict(response))
        return web.Response(body=response.SerializeToString(), content_type=_PROTOBUF)

    def _http_error(
        status: int, message: str, retry_after: int | None, tenant: str, content_type: str
    ) -> web.Response:
        INGEST_REQUESTS.labels("http", gateway.settings.tenant_label(tenant), str(status)).inc()
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        # OTLP: error bodies are a google.rpc.Status in the request's encoding.
        status_msg = status_pb2.Status(code=_rpc_code(status), message=message)
        if content_type == _JSON:
            return web.json_response(
                {"code": status_msg.code, "message": message}, status=status, headers=headers
            )
        return web.Response(
            status=status,
            body=status_msg.SerializeToString(),
            content_type=_PROTOBUF,
            headers=headers,
        )

    app = web.Application(client_max_size=limit)
    app.router.add_post("/v1/traces", traces)
    return app


def _rpc_code(status: int) -> int:
    codes: dict[int, int] = {
        400: code_pb2.INVALID_ARGUMENT,
        401: code_pb2.UNAUTHENTICATED,
        413: code_pb2.RESOURCE_EXHAUSTED,
        415: code_pb2.INVALID_ARGUMENT,
        429: code_pb2.RESOURCE_EXHAUSTED,
        503: code_pb2.UNAVAILABLE,
    }
    return int(codes.get(status, code_pb2.UNKNOWN))


# -- OTLP/gRPC ------------------------------------------------------------------------------


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    """opentelemetry.proto.collector.trace.v1.TraceService/Export."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def Export(  # noqa: N802 (the gRPC method's name)
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> ExportTraceServiceResponse:
        """Accept one request, or abort with the status an OTLP client expects."""
        metadata = dict(context.invocation_metadata() or ())
        tenant = "-"
        try:
            tenant = self.gateway.tenant_for(
                metadata.get("authorization"), metadata.get("x-tenant-id")
            )
            self.gateway.admit()
            rejected, error = await self.gateway.accept(request, tenant)
        except Refused as exc:
            code = _GRPC_CODES.get(exc.status, grpc.StatusCode.INTERNAL)
            INGEST_REQUESTS.labels(
                "grpc", self.gateway.settings.tenant_label(tenant), code.name
            ).inc()
            await _abort(context, code, str(exc), exc.retry_after)
            raise  # unreachable: abort raises
        INGEST_REQUESTS.labels("grpc", self.gateway.settings.tenant_label(tenant), "OK").inc()
        response = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=rejected, error_message=error)
            )
        return response


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str, retry_after: int | None
) -> None:
    """Abort with RetryInfo in the status details: OTLP clients retry RESOURCE_EXHAUSTED only
    when the server says when."""
    if retry_after is not None:
        status = status_pb2.Status(code=code.value[0], message=message)
        info = error_details_pb2.RetryInfo(retry_delay=Duration(seconds=retry_after))
        status.details.add().Pack(info)
        context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
    await context.abort(code, message)


# -- process --------------------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run both listeners until SIGTERM or SIGINT, then drain.

    The metrics port also answers /healthz (the event loop runs), /readyz (listening, Kafka
    reachable, not draining) and /status.
    """
    config = settings.ingest
    ensure_topics(settings.kafka, [(settings.kafka.input_topic, settings.kafka.partitions)])
    gateway = Gateway(settings)
    loop = asyncio.get_running_loop()
    gateway.start(loop)
    heartbeat = [time.monotonic()]

    async def beat() -> None:
        while True:
            heartbeat[0] = time.monotonic()
            await asyncio.sleep(1)

    beating = asyncio.create_task(beat())
    endpoints = serve_endpoints(
        settings.metrics.host,
        config.metrics_port,
        alive=lambda: time.monotonic() - heartbeat[0] < 30,
        ready=gateway.ready,
        status=gateway.status,
    )

    ssl_context = None
    if config.tls is not None:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    runner = web.AppRunner(http_app(gateway), access_log=None)
    await runner.setup()
    http_host, http_port = _split_address(config.http)
    await web.TCPSite(runner, http_host, http_port, ssl_context=ssl_context).start()

    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", config.max_request_bytes)]
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        TraceService(gateway), server
    )
    if config.tls is not None:
        with open(config.tls.key_file, "rb") as key, open(config.tls.cert_file, "rb") as cert:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        server.add_secure_port(config.grpc, credentials)
    else:
        server.add_insecure_port(config.grpc)
    await server.start()
    gateway.listening = True
    log.info("ingest listening http=%s grpc=%s topic=%s", config.http, config.grpc, gateway.topic)

    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if ready is not None:
        ready.set()
    await stopping.wait()
    log.info("ingest draining")
    gateway.listening = False
    await server.stop(grace=5)
    await runner.cleanup()
    await asyncio.to_thread(gateway.close)
    beating.cancel()
    if endpoints is not None:
        endpoints.shutdown()
        endpoints.server_close()
    log.info("ingest stopped")


def run_ingest(settings: Settings) -> None:
    """`caudal ingest`: serve until told to stop."""
    configure_logging(settings.logging)
    asyncio.run(serve(settings))
