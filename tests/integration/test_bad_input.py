"""No record, trace or tenant can hurt the rest: every bad record is dead-lettered with its
reason, counted, and every valid trace sent next to them is exported whole."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer

from streams.devtools.broker import LocalBroker
from streams.kafka.dead_letters import DLQ_PART_HEADER, DLQ_REASON_HEADER
from streams.wire.origin import pack_origins
from streams.wire.otlp import pack_index
from streams.wire.records import partition_for
from tests.integration.bad_input import (
    CASE_HEADER,
    deep_json,
    deeply_nested,
    garbage,
    invalid_utf8,
    json_trace,
    request,
    span,
    valid,
)
from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.integration

KEEP_ALL = [{"name": "all", "type": "always_sample"}]
PARTITIONS = 4


def spans_exported(pipeline: Pipeline) -> Counter[str]:
    """Spans exported per trace ID (hex), all tenants."""
    counts: Counter[str] = Counter()
    for traces in pipeline.exported().values():
        for tid, docs in traces.items():
            counts[tid] += sum(
                len(ss["spans"])
                for doc in docs
                for rs in doc["resourceSpans"]
                for ss in rs["scopeSpans"]
            )
    return counts


def test_bad_input_suite(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path, policies=KEEP_ALL)
    rng = random.Random(13)
    # Messages up to 16 MiB on the input, as a topic configured for large batches takes them.
    big_producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "message.max.bytes": 16 << 20}
    )
    expected: dict[str, int] = {}  # trace ID hex -> spans
    bad: dict[str, tuple[int, set[str]]] = {}  # case -> (count, accepted reasons)

    def send_bad(case: str, values: list[bytes], reasons: set[str], **headers: bytes) -> None:
        bad[case] = (len(values), reasons)
        for value in values:
            pipeline.produce(value, [(CASE_HEADER, case.encode()), *headers.items()])

    def send_valid(count: int, spans: int = 3, **headers: bytes) -> list[bytes]:
        ids = [rng.randbytes(16) for _ in range(count)]
        for tid in ids:
            pipeline.produce(valid(tid, spans), list(headers.items()))
            expected[tid.hex()] = spans
        return ids

    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        send_valid(200)
        proto = request([span(rng.randbytes(16), 0)]).SerializeToString()
        send_bad("random", [garbage(rng) for _ in range(100)], {"invalid_protobuf"})
        send_bad(
            "truncated",
            [proto[: rng.randint(5, len(proto) - 5)] for _ in range(100)],
            {"invalid_protobuf", "no_spans"},
        )
        send_bad("json", [json_trace(rng.randbytes(16)) for _ in range(100)], {"invalid_protobuf"})
        send_bad("empty", [b""] * 100, {"empty"})
        for case, tid in (("short_id", b"8bytes!!"), ("no_id", b""), ("zero_id", bytes(16))):
            send_bad(case, [valid(tid)] * 100, {"invalid_trace_id"})
        send_bad(
            "utf8", [invalid_utf8(rng.randbytes(16)) for _ in range(100)], {"invalid_protobuf"}
        )
        send_bad(
            "nested",
            [deeply_nested(rng.randbytes(16), 120) for _ in range(100)],
            {"invalid_protobuf"},
        )
        send_bad(
            "bad_header",
            [valid(rng.randbytes(16))] * 100,
            {"invalid_tenant"},
            **{"x-tenant-id": b"\xff\xfe\x00"},
        )
        send_bad(
            "long_tenant",
            [valid(rng.randbytes(16))] * 100,
            {"invalid_tenant"},
            **{"x-tenant-id": ("é" * 150).encode()},
        )
        # An index header on the input topic means nothing there: the trace is used as sent.
        forged = [(b"caudal-index", b"\x00" * 20), ("caudal-tenant", b"x" * 300)]
        for tid in [rng.randbytes(16) for _ in range(100)]:
            pipeline.produce(valid(tid), forged)  # type: ignore[arg-type]
            expected[tid.hex()] = 3
        # 10,000 tenant names nobody configured.
        for i in range(10_000):
            tid = rng.randbytes(16)
            pipeline.produce(valid(tid, 1), [("x-tenant-id", f"tenant-{i}".encode())])
            expected[tid.hex()] = 1
        # An 8 MB trace in one message, and a 100,000-span trace in 1,000 messages.
        # The 8 MB message is written alone: tansu moves a partition's end before it stores a
        # batch, so a consumer fetching while a later, smaller batch is already stored reads
        # past the large one. Kafka never exposes an offset before its batch is stored.
        pipeline.flush()
        huge = rng.randbytes(16)
        errors: list[KafkaError | None] = []
        big_producer.produce(
            pipeline.kafka["input_topic"],
            request(span(huge, n, size=10_000) for n in range(800)).SerializeToString(),
            on_delivery=lambda err, _msg: errors.append(err),
        )
        assert big_producer.flush(30) == 0
        assert errors == [None], errors  # flush() also counts a failed delivery as done
        expected[huge.hex()] = 800
        wide = rng.randbytes(16)
        for m in range(1000):
            pipeline.produce(
                request(span(wide, m * 100 + n) for n in range(100)).SerializeToString()
            )
        expected[wide.hex()] = 100_000
        send_valid(200)

        # Records on caudal-spans written by something else than a split stage.
        spans_topic = pipeline.kafka["spans_topic"]
        forged_garbage = 0
        victims = send_valid(20)
        pipeline.flush()
        for tid in [rng.randbytes(16) for _ in range(50)] + victims:
            value, index = pack_index([(tid, garbage(rng))])
            pipeline.producer.produce(
                spans_topic,
                value=value,
                partition=partition_for(tid, PARTITIONS),
                headers=[("caudal-index", index), ("caudal-tenant", b"default")],
            )
            forged_garbage += 1
        spans_cases = {
            "past_end": (
                [("caudal-index", rng.randbytes(16) + (10**6).to_bytes(4, "big"))],
                {"invalid_index"},
            ),
            "odd_index": ([("caudal-index", b"\x01" * 7)], {"invalid_index"}),
            "spans_tenant": (
                [("caudal-index", b""), ("caudal-tenant", ("é" * 150).encode())],
                {"invalid_tenant"},
            ),
            "origins": (
                [
                    ("caudal-index", pack_index([(b"t" * 16, b"")])[1]),
                    ("caudal-origin", pack_origins([1, 2])),
                ],
                {"invalid_origin"},
            ),
            "no_index": ([], {"invalid_index"}),
        }
        for case, (headers, reasons) in spans_cases.items():
            bad[case] = (20, reasons)
            for _ in range(20):
                pipeline.producer.produce(
                    spans_topic,
                    value=b"garbage",
                    partition=rng.randrange(PARTITIONS),
                    headers=[(CASE_HEADER, case.encode()), *headers],
                )
        # Records on caudal-sampled written by something else than a worker.
        sampled_topic = pipeline.kafka["sampled_topic"]
        bad["sampled"] = (20, {"invalid_protobuf"})
        for _ in range(20):
            pipeline.producer.produce(
                sampled_topic,
                key=b"default",
                value=garbage(rng),
                headers=[(CASE_HEADER, b"sampled")],
            )
        counted = rng.randbytes(16)
        pipeline.producer.produce(
            sampled_topic,
            key=b"default",
            value=valid(counted),
            headers=[("caudal-span-count", b"not a number")],
        )
        expected[counted.hex()] = 3
        pipeline.flush()

        wanted = sum(count for count, _ in bad.values()) + forged_garbage
        wait_for(lambda: worker.total("caudal_dead_letters_total") >= wanted, 180, "dead letters")
        try:
            wait_for(lambda: len(spans_exported(pipeline)) >= len(expected), 180, "valid traces")
        finally:
            reasons = {
                labels["reason"]: value
                for labels, value in worker.metrics().get("caudal_dead_letters_total", ())
            }
            print("\ndead letters by reason:", reasons)
            for name in (
                "caudal_traces_buffered",
                "caudal_buffer_bytes",
                "caudal_decisions_total",
                "caudal_redelivered_fragments_total",
                "caudal_late_spans_total",
                "caudal_spans_received_total",
            ):
                print(name, worker.total(name))
            seen = spans_exported(pipeline)
            missing = {t: (seen.get(t), n) for t, n in expected.items() if seen.get(t) != n}
            print("not exported whole:", len(missing), list(missing.items())[:5])
        time.sleep(2)
        assert worker.proc.poll() is None, "the worker stays up"
        log = worker.log.read_text()
        assert "Crashed" not in log and "thread failed" not in log

        letters = pipeline.consume_all(pipeline.kafka["dlq_topic"], expect=wanted + 20, timeout=30)
        by_case: dict[str, Counter[str]] = {}
        spans_letters: Counter[str] = Counter()
        for m in letters:
            headers = dict(m.headers())
            reason = headers[DLQ_REASON_HEADER].decode()
            assert headers["caudal-dlq-detail"], reason
            case = headers.get(CASE_HEADER)
            if case is None:
                spans_letters[reason] += 1
            else:
                by_case.setdefault(case.decode(), Counter())[reason] += 1
        report = {case: dict(reasons) for case, reasons in sorted(by_case.items())}
        print("\ndead letters per case:", report, "from buffered fragments:", dict(spans_letters))
        for case, (count, reasons) in bad.items():
            got = by_case.get(case, Counter())
            assert sum(got.values()) == count, (case, got)
            assert set(got) <= reasons, (case, got)
        assert spans_letters == {"invalid_protobuf": forged_garbage}
        assert not any(DLQ_PART_HEADER in dict(m.headers()) for m in letters)

        exported = spans_exported(pipeline)
        wrong = {
            tid: (exported.get(tid), n) for tid, n in expected.items() if exported.get(tid) != n
        }
        assert not wrong, f"{len(wrong)} valid traces not exported whole: {list(wrong.items())[:5]}"
        assert set(exported) == set(expected), "nothing but the valid traces is exported"
        labels = {
            labels.get("tenant") for labels, _ in worker.metrics()["caudal_spans_received_total"]
        }
        assert labels == {"default"}, "unknown tenants count under the default tenant's label"
        assert worker.total("caudal_produce_failures_total") == 0
        print(
            "valid traces:",
            len(expected),
            "dead letters:",
            worker.total("caudal_dead_letters_total"),
            "decided early:",
            worker.total("caudal_traces_decided_early_total"),
        )
    finally:
        pipeline.stop()


def test_otlp_json_nested_too_deep(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path, policies=KEEP_ALL, kafka={"input_encoding": "otlp_json"})
    ids = [random.Random(i).randbytes(16) for i in range(20)]
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        for tid in ids:
            pipeline.produce(deep_json(5000))
            pipeline.produce(json_trace(tid))
        pipeline.flush()
        wait_for(lambda: len(spans_exported(pipeline)) >= len(ids), 90, "valid JSON traces")
        wait_for(lambda: worker.total("caudal_dead_letters_total") >= len(ids), 30, "dead letters")
        assert worker.total("caudal_dead_letters_total", reason="invalid_json") == len(ids)
        assert set(spans_exported(pipeline)) == {tid.hex() for tid in ids}
        assert worker.proc.poll() is None
    finally:
        pipeline.stop()
