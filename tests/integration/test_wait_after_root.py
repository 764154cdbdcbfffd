"""`decision.wait_after_root` on the real broker: a trace whose root arrived is decided about a
second after it, a rootless one after the whole window, and a child span that comes after the
early decision follows it."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from streams.devtools.broker import LocalBroker
from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.integration

TRACES = 20  # of each kind


def request(trace_id: bytes, span_id: bytes, parent: bytes) -> bytes:
    now = time.time_ns()
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name="op",
        start_time_unix_nano=now,
        end_time_unix_nano=now + 1_000_000,
    )
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="x"))])
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


def decided_at(bootstrap: str, topic: str) -> dict[tuple[bytes, bytes], float]:
    """When each span reached `caudal-sampled` (its record's time): (trace ID, span ID) -> s."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{random.random()}",
            "enable.partition.eof": True,
        }
    )
    out: dict[tuple[bytes, bytes], float] = {}
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        while pending:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                stamp = msg.timestamp()[1] / 1000
                for rs in ExportTraceServiceRequest.FromString(msg.value()).resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            out[(span.trace_id, span.span_id)] = stamp
    finally:
        consumer.close()
    return out


def test_a_trace_with_its_root_is_decided_soon_after_it(
    broker: LocalBroker, tmp_path: Path
) -> None:
    pipeline = Pipeline(
        broker,
        tmp_path,
        decision={"wait": "10s", "wait_after_root": "1s"},
        policies=[{"name": "all", "type": "always_sample"}],
    )
    rng = random.Random(5)
    try:
        worker = pipeline.start_worker()
        worker.wait_ready(90)
        sent: dict[tuple[bytes, bytes], float] = {}
        rooted, rootless = [], []
        for _ in range(TRACES):
            trace_id, root = rng.randbytes(16), rng.randbytes(8)
            sent[(trace_id, root)] = time.time()
            pipeline.produce(request(trace_id, root, b""))
            rooted.append((trace_id, root))
            trace_id = rng.randbytes(16)
            child = rng.randbytes(8)
            sent[(trace_id, child)] = time.time()
            pipeline.produce(request(trace_id, child, rng.randbytes(8)))
            rootless.append((trace_id, child))
            pipeline.flush()
            time.sleep(0.05)
        time.sleep(3)  # every rooted trace decided; now a child of each
        late = []
        for trace_id, root in rooted:
            child = rng.randbytes(8)
            pipeline.produce(request(trace_id, child, root))
            late.append((trace_id, child))
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= 2 * TRACES, 60, "every decision")
        wait_for(
            lambda: worker.total("caudal_late_spans_total", outcome="kept") >= TRACES,
            30,
            "the late children",
        )
        stamps = decided_at(broker.bootstrap, pipeline.kafka["sampled_topic"])
        after_root = sorted(stamps[span] - sent[span] for span in rooted)
        whole_window = sorted(stamps[span] - sent[span] for span in rootless)
        print(
            f"decided after the root: {after_root[0]:.2f}-{after_root[-1]:.2f} s; "
            f"rootless: {whole_window[0]:.2f}-{whole_window[-1]:.2f} s"
        )
        assert 1.0 <= after_root[0] and after_root[-1] <= 2.0
        assert 10.0 <= whole_window[0] and whole_window[-1] <= 11.5
        # The children came after the decision: each followed it, alone.
        assert all(span in stamps for span in late)
        assert worker.total("caudal_late_spans_total", outcome="kept") == TRACES
        assert worker.total("caudal_decision_lag_seconds_count", window="after_root") == TRACES
        assert worker.total("caudal_decision_lag_seconds_count", window="wait") == TRACES
    finally:
        pipeline.stop()
