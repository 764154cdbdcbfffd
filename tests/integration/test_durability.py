"""Buffered traces survive a worker restart; malformed input goes to the dead-letter topic."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.devtools.broker import LocalBroker
from streams.devtools.generate import GeneratorOptions, run_generator
from streams.kafka.dead_letters import DLQ_REASON_HEADER
from streams.wire.otlp import BadInput, decode_request, split_by_trace
from tests.integration.harness import Pipeline, wait_for
from tests.integration.sdk_traces import SdkTraces, encode

pytestmark = pytest.mark.integration

REDELIVERED = "caudal_redelivered_fragments_total"


@pytest.mark.parametrize("state", ["same", "fresh"])
def test_sigterm_restart_keeps_buffered_traces(
    broker: LocalBroker, tmp_path: Path, state: str
) -> None:
    """Traces buffered when the worker stops are decided after it starts again.

    `same` restarts on the same state directory (RocksDB reopened); `fresh` starts on an empty
    one, as a replacement node would, and must rebuild the buffer from the table changelog.
    """
    pipeline = Pipeline(broker, tmp_path, decision={"wait": "20s"})
    sdk = SdkTraces(seed=11)
    ids = [sdk.make("error", "acme") for _ in range(200)]
    ids += [sdk.make("ordinary", "acme") for _ in range(300)]
    traces = sdk.spans_by_trace()
    try:
        first = pipeline.start_worker("w1")
        first.wait_ready()
        for tid in ids:
            pipeline.produce(encode(traces[tid]))
        pipeline.flush()
        wait_for(lambda: first.total("caudal_traces_buffered") == len(ids), 60, "buffering")
        assert first.total("caudal_decisions_total") == 0
        assert first.stop() == 0, first.log.read_text()[-2000:]

        second = pipeline.start_worker("w1" if state == "same" else "w2")
        second.wait_ready()
        assert second.total("caudal_traces_buffered") == len(ids)
        wait_for(lambda: second.total("caudal_decisions_total") == len(ids), 60, "decisions")
        exported = pipeline.exported()["acme"]
        wait_for(
            lambda: all(tid in pipeline.exported()["acme"] for tid in ids[:200]),
            30,
            "every error trace exported",
        )
        exported = pipeline.exported()["acme"]
        assert all(len(exported[tid]) == 1 for tid in ids[:200])
    finally:
        pipeline.stop()


def malformed(rng: random.Random, valid: bytes) -> bytes:
    """Random bytes or a truncated request that holds no usable span."""
    while True:
        if rng.random() < 0.5:
            value = rng.randbytes(rng.randint(1, 300))
        else:
            value = valid[: rng.randint(1, len(valid) - 1)]
        # A cut at a resource boundary is a shorter but valid request: not malformed.
        try:
            groups, _ = split_by_trace(decode_request(value))
        except BadInput:
            return value
        if not groups:
            return value


def test_malformed_messages_go_to_the_dlq(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path)
    sdk = SdkTraces(seed=5)
    ids = [sdk.make("error", "acme") for _ in range(300)]
    traces = sdk.spans_by_trace()
    rng = random.Random(3)
    bad = 0
    produced: set[bytes] = set()
    try:
        worker = pipeline.start_worker()
        for i, tid in enumerate(ids):
            valid = encode(traces[tid])
            pipeline.produce(valid)
            for _ in range(3 if i < 100 else 4):
                if bad < 1000:
                    value = malformed(rng, valid)
                    produced.add(value)
                    pipeline.produce(value)
                    bad += 1
        pipeline.flush()
        assert bad == 1000
        wait_for(lambda: worker.total("caudal_dead_letters_total") >= 1000, 90, "dead letters")
        wait_for(lambda: worker.total("caudal_decisions_total") >= len(ids), 60, "decisions")
        assert worker.proc.poll() is None, "the worker stays up"
        assert worker.total("caudal_dead_letters_total") == 1000
        assert worker.total("caudal_decisions_total", outcome="kept") == len(ids)

        letters = pipeline.consume_all(pipeline.kafka["dlq_topic"], expect=1000)
        assert len(letters) == 1000
        reasons = {dict(m.headers())[DLQ_REASON_HEADER].decode() for m in letters}
        assert reasons <= {"invalid_protobuf", "no_spans", "invalid_trace_id", "empty"}
        for m in letters:
            headers = dict(m.headers())
            assert headers["caudal-dlq-topic"].decode() == pipeline.kafka["input_topic"]
            assert headers["caudal-dlq-detail"]
        # The original bytes are kept, so a dead letter can be inspected and replayed.
        for m in letters:
            if dict(m.headers())[DLQ_REASON_HEADER] != b"invalid_trace_id":
                assert m.value() in produced
    finally:
        pipeline.stop()


def test_direct_read_of_trace_id_keyed_input(broker: LocalBroker, tmp_path: Path) -> None:
    """With input_keyed_by_trace_id the worker reads the input itself (no split stage)."""
    pipeline = Pipeline(broker, tmp_path, kafka={"input_keyed_by_trace_id": True})
    sdk = SdkTraces(seed=9)
    ids = [sdk.make("error", "acme") for _ in range(100)]
    traces = sdk.spans_by_trace()
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        for part in (0, 1):  # each trace in two messages, keyed as the Collector does (hex)
            for tid in ids:
                pipeline.producer.produce(
                    pipeline.kafka["input_topic"],
                    key=tid.encode(),
                    value=encode(traces[tid][part::2]),
                )
            pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= len(ids), 60, "decisions")
        wait_for(lambda: len(pipeline.exported().get("acme", {})) == len(ids), 30, "exports")
        exported = pipeline.exported()["acme"]
        for tid in ids:
            [line] = exported[tid]
            spans = [
                s for rs in line["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
            ]
            assert len(spans) == len(traces[tid])
    finally:
        pipeline.stop()


def committed(pipeline: Pipeline) -> list[int]:
    """The worker group's committed offsets on caudal-spans, per partition."""
    consumer = Consumer(
        {"bootstrap.servers": pipeline.broker.bootstrap, "group.id": pipeline.kafka["group_id"]}
    )
    try:
        partitions = [
            TopicPartition(pipeline.kafka["spans_topic"], p)
            for p in range(pipeline.kafka["partitions"])
        ]
        return [tp.offset for tp in consumer.committed(partitions, timeout=10)]
    finally:
        consumer.close()


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return json.load(response)


def test_sigterm_under_traffic_drains_commits_and_loses_nothing(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """SIGTERM while traffic flows: exit 0 within the grace period; the next worker (fresh
    state) decides what was buffered; every span is exported exactly once (offsets were
    committed, so nothing is read twice)."""
    pipeline = Pipeline(
        broker,
        tmp_path,
        decision={"wait": "4s"},
        policies=[{"name": "all", "type": "always_sample"}],
        shutdown={"grace": "20s"},
    )
    generated: list[bytes] = []
    options = GeneratorOptions(traces=3000, rate=200, spread=1.0, seed=21)
    generator = threading.Thread(
        target=run_generator,
        args=(lambda value, headers: pipeline.produce(value, headers), options),
        kwargs={"on_trace": lambda tid, kind, tenant: generated.append(tid)},
        daemon=True,
    )
    try:
        first = pipeline.start_worker("w1")
        first.wait_ready()
        generator.start()
        wait_for(lambda: first.total("caudal_decisions_total") > 300, 60, "traffic decided")
        assert first.total("caudal_traces_buffered") > 100, "traces are buffered at the stop"
        first_decided = first.total("caudal_decisions_total")

        # Stop once the worker has read a record not yet committed, so the drain has something
        # to commit (the periodic commit may just have caught up).
        deadline = time.monotonic() + 30
        while True:
            before = committed(pipeline)
            read = status(first.metrics_port)["read_offsets"]
            if any(offset >= before[int(p)] for p, offset in read.items()):
                break
            assert time.monotonic() < deadline, "no record read past the committed offsets"
            time.sleep(0.05)
        stopping = time.monotonic()
        code = first.stop()
        took = time.monotonic() - stopping
        assert code == 0, first.log.read_text()[-3000:]
        assert took < 20
        assert "draining" in first.log.read_text()
        # The drain committed every record the worker had read (a committed offset is the
        # next record to read).
        after = committed(pipeline)
        assert len(read) == len(after)
        assert all(after[int(p)] > offset for p, offset in read.items()), (read, after)

        second = pipeline.start_worker("w2")
        second.wait_ready()
        generator.join(60)
        pipeline.flush()
        assert len(generated) == 3000
        wanted = {tid.hex() for tid in generated}

        def exported_ids() -> set[str]:
            return {tid for per_tenant in pipeline.exported().values() for tid in per_tenant}

        wait_for(lambda: exported_ids() >= wanted, 90, "every generated trace exported")
        time.sleep(3)  # anything exported twice would show up by now
        for per_tenant in pipeline.exported().values():
            for tid, lines in per_tenant.items():
                span_ids = [
                    span["spanId"]
                    for line in lines
                    for rs in line["resourceSpans"]
                    for ss in rs["scopeSpans"]
                    for span in ss["spans"]
                ]
                assert len(span_ids) == len(set(span_ids)) == 10, tid
        print(
            f"stop took {took:.1f}s; decided by the first worker "
            f"{first_decided}, by the second {second.total('caudal_decisions_total'):.0f}; "
            f"fragments delivered again and skipped {second.total(REDELIVERED):.0f}"
        )
    finally:
        pipeline.stop()
