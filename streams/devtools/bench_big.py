"""`caudal bench --big-trace SPANS`: one huge trace must not starve the rest.

Steady traffic twice, in two fresh workers: alone, then with one huge trace sent in the middle;
the steady traffic's decision lag in both runs, the huge trace's exported spans and largest
record, and each worker's peak RSS against health.memory_limit.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.config import KafkaConfig
from streams.devtools.bench import lag_buckets, quantile, reader, rss_kib, total, wait_ready
from streams.devtools.broker import LocalBroker, free_port
from streams.devtools.demo import read_metrics, start_worker, stop_process
from streams.devtools.generate import DEFAULT_MIX, build_trace
from streams.kafka.clients import TRAFFIC_DELIVERY_TIMEOUT, ensure_topics, make_producer

__all__ = ["run_big_trace_bench"]


def run_big_trace_bench(
    rate: int = 500,
    seconds: float = 40.0,
    big_spans: int = 100_000,
    big_messages: int = 1_000,
    partitions: int = 4,
    bootstrap: str | None = None,
) -> int:
    """Steady traffic twice, in two fresh workers: alone, then with one huge trace sent in the
    middle. Prints the steady traffic's decision lag in both runs, the huge trace's exported
    spans and largest record, and each worker's peak RSS against health.memory_limit."""
    work = Path(tempfile.mkdtemp(prefix="caudal-bench-big-"))
    broker = None if bootstrap else LocalBroker(log_path=work / "broker.log").start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    rng = random.Random(7)
    kinds, weights = list(DEFAULT_MIX), list(DEFAULT_MIX.values())
    total = int(rate * seconds)
    now = time.time_ns()
    steady = [
        ExportTraceServiceRequest(
            resource_spans=build_trace(rng, rng.choices(kinds, weights)[0], None, now + i)[1]
        ).SerializeToString()
        for i in range(total)
    ]
    big_id = rng.randbytes(16)
    per_message = big_spans // big_messages
    big = [
        ExportTraceServiceRequest(
            resource_spans=build_trace(rng, "ordinary", None, now, per_message, big_id)[1]
        ).SerializeToString()
        for _ in range(big_messages)
    ]
    print(
        f"bench big trace: {rate} traces/s x {seconds:.0f}s of 10-span traces; huge trace: "
        f"{big_spans:,} spans in {big_messages:,} messages ({sum(map(len, big)) / 2**20:.1f} MiB)"
    )
    results = {}
    try:
        for phase in ("alone", "with the huge trace"):
            results[phase] = _big_phase(
                work, bootstrap, partitions, steady, big if phase != "alone" else [], rate, big_id
            )
            if results[phase] is None:
                return 1
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    alone, loaded = results["alone"], results["with the huge trace"]
    assert alone is not None and loaded is not None
    for phase, r in results.items():
        assert r is not None
        print(
            f"{phase:>20}: decision lag p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s "
            f"({r['over_1s']:.2%} over 1 s), "
            f"peak RSS {r['rss'] / 1024:.0f} MiB of {r['limit'] / 2**20:.0f} MiB"
        )
    print(f"p99 difference:       {loaded['p99'] - alone['p99']:+.2f}s")
    print(
        f"huge trace exported:  {loaded['big_spans']:,} of {big_spans:,} spans in "
        f"{loaded['big_records']} records, largest {loaded['largest'] / 2**10:.0f} KiB"
    )
    return 0


def _big_phase(
    work: Path,
    bootstrap: str,
    partitions: int,
    steady: list[bytes],
    big: list[bytes],
    rate: int,
    big_id: bytes,
) -> dict[str, float] | None:
    run = uuid.uuid4().hex[:6]
    topic, backend = f"big-{run}", f"big-backend-{run}"
    metrics_port = free_port()
    limit = 2 * 2**30
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": partitions,
            "input_topic": topic,
            "spans_topic": f"big-spans-{run}",
            "sampled_topic": f"big-sampled-{run}",
            "dlq_topic": f"big-dlq-{run}",
            "group_id": f"big-{run}",
        },
        # Longer than the huge trace takes to arrive (5 s): it is decided whole, at once.
        "decision": {"wait": "8s"},
        "policies": [{"name": "all", "type": "always_sample"}],
        "exporters": {"backend": {"type": "kafka", "topic": backend}},
        "tenants": {"default": {"exporters": ["backend"]}},
        "worker": {"state_dir": str(work / f"state-{run}")},
        "metrics": {"port": metrics_port},
        "health": {"memory_limit": limit},
    }
    path = work / f"caudal-{run}.yaml"
    path.write_text(yaml.safe_dump(config))
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    ensure_topics(kafka, [(topic, partitions)])
    worker = start_worker(path, work / f"worker-{run}.log")
    try:
        if not wait_ready([worker], [metrics_port], partitions):
            print("worker did not become ready")
            return None
        producer = make_producer(
            kafka, TRAFFIC_DELIVERY_TIMEOUT, **{"linger.ms": 5, "message.max.bytes": 16 << 20}
        )
        _send_paced(producer, topic, steady, big, rate)
        producer.flush(60)
        expected = len(steady) + (1 if big else 0)
        deadline = time.monotonic() + 300
        while total(read_metrics(metrics_port), "caudal_decisions_total") < expected:
            if worker.poll() is not None or time.monotonic() > deadline:
                print("worker stopped or timed out")
                return None
            time.sleep(0.25)
        samples = read_metrics(metrics_port)
        buckets = lag_buckets([samples])
        within = dict(buckets)
        result = {
            "p50": quantile(buckets, 0.5),
            "p99": quantile(buckets, 0.99),
            "over_1s": 1 - within.get(1.0, 0.0) / max(within.get(float("inf"), 1.0), 1.0),
            "rss": float(rss_kib(worker.pid, "VmHWM")),
            "limit": float(limit),
        }
        if big:
            result.update(_big_exported(bootstrap, backend, big_id))
        return result
    finally:
        stop_process(worker)


def _send_paced(
    producer: Any, topic: str, steady: list[bytes], big: list[bytes], rate: int
) -> None:
    """`steady` at `rate` messages a second; `big` evenly over 5 s from a third of the way in."""
    big_start = len(steady) / rate / 3
    sent_big = 0
    began = time.perf_counter()
    for i, payload in enumerate(steady):
        while time.perf_counter() - began < i / rate:
            time.sleep(0.001)
        producer.produce(topic, value=payload)
        due = int((time.perf_counter() - began - big_start) / 5.0 * len(big)) + 1
        while sent_big < min(due, len(big)):
            producer.produce(topic, value=big[sent_big])
            sent_big += 1
        producer.poll(0)
    for payload in big[sent_big:]:
        producer.produce(topic, value=payload)


def _big_exported(bootstrap: str, topic: str, big_id: bytes) -> dict[str, float]:
    """Spans of the huge trace on the backend topic, its records and the largest record."""
    consumer = reader(bootstrap, "big-reader")
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    spans = records = largest = 0
    idle_until = time.monotonic() + 20
    try:
        while time.monotonic() < idle_until:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                idle_until = time.monotonic() + 3
                value = msg.value() or b""
                request = ExportTraceServiceRequest.FromString(value)
                mine = sum(
                    1
                    for rs in request.resource_spans
                    for ss in rs.scope_spans
                    for s in ss.spans
                    if s.trace_id == big_id
                )
                if mine:
                    spans += mine
                    records += 1
                    largest = max(largest, len(value))
    finally:
        consumer.close()
    return {"big_spans": spans, "big_records": records, "largest": largest}
