"""Every record Caudal writes fits the brokers' message size limit (kafka.max_message_bytes).

tansu takes records of any size, so the limit is enforced where Apache Kafka's producers meet
it: Caudal's producers set librdkafka's message.max.bytes to kafka.max_message_bytes and a
larger record would fail its delivery. The test also reads every topic back and measures."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from streams.devtools.broker import LocalBroker
from streams.kafka.dead_letters import DLQ_PART_HEADER
from streams.wire.records import record_size
from tests.integration.bad_input import garbage, request, span
from tests.integration.harness import Pipeline, wait_for
from tests.integration.test_bad_input import spans_exported

pytestmark = pytest.mark.integration

LIMIT = 1024 * 1024


def read_all(bootstrap: str, topics: list[str]) -> dict[str, list[Any]]:
    """Every record of `topics`, from the start, in order per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"sizes-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(topics)
    records: dict[str, list[Any]] = {topic: [] for topic in topics}
    deadline = time.monotonic() + 60
    quiet_until = deadline
    try:
        while time.monotonic() < min(deadline, quiet_until):
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is not None:
                    continue
                records[m.topic()].append(m)
                if m.value() is not None:  # the split stage's progress records never stop
                    quiet_until = time.monotonic() + 5
    finally:
        consumer.close()
    return records


def test_no_record_over_the_limit(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(
        broker,
        tmp_path,
        policies=[{"name": "all", "type": "always_sample"}],
        kafka={"max_message_bytes": LIMIT},
        exporters={
            "files": {"type": "file", "path": str(tmp_path / "out")},
            "copy": {"type": "kafka", "topic": f"copy-{tmp_path.name[-8:]}"},
        },
        tenants={"default": {"exporters": ["files", "copy"]}},
    )
    rng = random.Random(8)
    # The input topic takes large messages (a producer allowed 16 MiB writes them).
    big = Producer(
        {"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "message.max.bytes": 16 << 20}
    )
    input_topic = pipeline.kafka["input_topic"]
    huge, wide = rng.randbytes(16), rng.randbytes(16)
    junk = rng.randbytes(3 << 20)
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        # An 8 MB trace in one message; a trace of 20,000 spans in 4 messages of 1.5 MB.
        big.produce(
            input_topic, request(span(huge, n, size=10_000) for n in range(800)).SerializeToString()
        )
        for m in range(4):
            spans = (span(wide, m * 5000 + n, size=200) for n in range(5000))
            big.produce(input_topic, request(spans).SerializeToString())
        big.produce(input_topic, b"\xff" + junk)  # 3 MB that is not OTLP: dead-lettered
        big.produce(input_topic, garbage(rng))
        assert big.flush(30) == 0
        wait_for(lambda: spans_exported(pipeline).get(huge.hex()) == 800, 120, "the 8 MB trace")
        wait_for(lambda: spans_exported(pipeline).get(wide.hex()) == 20_000, 60, "the wide trace")
        wait_for(lambda: worker.total("caudal_dead_letters_total") >= 2, 30, "dead letters")
        assert worker.proc.poll() is None
        assert worker.total("caudal_produce_failures_total") == 0
        log = worker.log.read_text()
        assert "MSG_SIZE_TOO_LARGE" not in log and "Crashed" not in log

        group = pipeline.kafka["group_id"]
        topics = [
            pipeline.kafka["spans_topic"],
            pipeline.kafka["sampled_topic"],
            pipeline.kafka["dlq_topic"],
            f"{group}-traces-changelog",
            f"{group}-decisions-changelog",
            pipeline.config["exporters"]["copy"]["topic"],
        ]
        records = read_all(broker.bootstrap, topics)
        sizes = {
            topic: (len(ms), max(record_size(m.key(), m.value(), m.headers() or []) for m in ms))
            for topic, ms in records.items()
            if ms
        }
        print("\nrecords and largest record per topic:", sizes)
        for topic in topics:
            assert topic in sizes, f"nothing read from {topic}"
            assert sizes[topic][1] <= LIMIT, (topic, sizes[topic])
        assert sizes[pipeline.kafka["sampled_topic"]][0] >= 9, "the 8 MB trace in several records"
        letters = records[pipeline.kafka["dlq_topic"]]
        parts = [m for m in letters if DLQ_PART_HEADER in dict(m.headers())]
        assert len(parts) >= 4
        assert b"".join(m.value() for m in parts) == b"\xff" + junk, "the parts join back"
    finally:
        pipeline.stop()
