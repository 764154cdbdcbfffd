"""`caudal bench`: end-to-end throughput of one worker against the raw floor of the same data.

1. Start a worker on an empty input topic (decision wait 1 s) and wait until it is ready.
2. Produce N traces (10 spans each by default, one trace per message, the generator's mix);
   kept traces go to a Kafka exporter.
3. End to end = spans / (time until every trace is decided − the decision wait).
4. Raw floor = confluent-kafka consume + OTLP parse + a walk over every span of the same topic.
Also: decision lag p50/p99 (from the worker's histogram), peak RSS, RSS per 1,000 buffered traces.
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
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.config import DEFAULT_POLICIES, KafkaConfig
from streams.devtools.broker import LocalBroker, free_port
from streams.devtools.demo import read_metrics, start_worker, stop_process
from streams.devtools.generate import DEFAULT_MIX, build_trace
from streams.kafka.clients import ensure_topics, make_producer

__all__ = ["bench_policies", "run_big_trace_bench", "run_bench"]

WAIT = 1.0


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Quantile from cumulative Prometheus buckets (upper bound, count), interpolated."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return float("nan")
    target = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return prev_bound
            share = (target - prev_count) / (count - prev_count) if count > prev_count else 0
            return prev_bound + (bound - prev_bound) * share
        prev_bound, prev_count = bound, count
    return prev_bound


def _messages(traces: int, spans: int) -> list[bytes]:
    rng = random.Random(42)
    kinds, weights = list(DEFAULT_MIX), list(DEFAULT_MIX.values())
    now = time.time_ns()
    out = []
    for i in range(traces):
        _, blocks = build_trace(rng, rng.choices(kinds, weights)[0], "bench", now + i, spans)
        out.append(ExportTraceServiceRequest(resource_spans=blocks).SerializeToString())
    return out


def _reader(bootstrap: str, name: str) -> Consumer:
    """A consumer that reads topics from their start and commits nothing."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{name}-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def _raw_floor(bootstrap: str, topic: str, expect: int) -> tuple[float, int]:
    """Consume a topic from the start, parse each message and touch every span: spans/s."""
    consumer = _reader(bootstrap, "bench-floor")
    consumer.subscribe([topic])
    seen = spans = 0
    started = None
    deadline = time.monotonic() + 120
    while seen < expect and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            request = ExportTraceServiceRequest.FromString(msg.value())
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        spans += span.end_time_unix_nano > 0
            seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return (spans / elapsed if elapsed else 0.0), seen


def bench_policies(traces: int = 20_000, spans: int = 10) -> None:
    """Decisions per second of the policy engine alone (TraceView built per trace)."""
    from policies import TraceView, build_engine

    rng = random.Random(1)
    kinds, weights = list(DEFAULT_MIX), list(DEFAULT_MIX.values())
    built = [
        build_trace(rng, rng.choices(kinds, weights)[0], "bench", time.time_ns(), spans)
        for _ in range(traces)
    ]
    lists = {"five default rules": DEFAULT_POLICIES, "15 policies": _fifteen_policies()}
    for label, policies in lists.items():
        engine = build_engine(policies)
        started = time.perf_counter()
        kept = 0
        for trace_id, blocks in built:
            kept += engine.decide(TraceView.from_resource_spans(trace_id, blocks), 0.0).kept
        elapsed = time.perf_counter() - started
        print(
            f"policies [{label}]: {traces / elapsed:,.0f} decisions/s "
            f"({spans}-span traces, {100 * kept / traces:.1f}% kept)"
        )


def _fifteen_policies() -> list[dict[str, object]]:
    extra: list[dict[str, object]] = [
        {"name": f"svc-{i}", "type": "string_attribute", "key": "service.name", "values": [f"s{i}"]}
        for i in range(6)
    ]
    extra += [
        {"name": f"slow-{i}", "type": "latency", "threshold_ms": 2000 + 100 * i} for i in range(3)
    ]
    extra.append({"name": "always", "type": "always_sample", "sample_percentage": 1})
    return [*DEFAULT_POLICIES, *extra]


def run_bench(
    traces: int = 50_000,
    spans: int = 10,
    partitions: int = 4,
    bootstrap: str | None = None,
    policies_only: bool = False,
) -> int:
    """Run the benchmark and print its figures; returns the exit code."""
    if policies_only:
        bench_policies(min(traces, 50_000), spans)
        return 0
    work = Path(tempfile.mkdtemp(prefix="caudal-bench-"))
    broker = None if bootstrap else LocalBroker(log_path=work / "broker.log").start()
    bootstrap = bootstrap or broker.bootstrap  # type: ignore[union-attr]
    run = uuid.uuid4().hex[:6]
    topic = f"bench-{run}"
    metrics_port = free_port()
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": partitions,
            "input_topic": topic,
            "spans_topic": f"bench-spans-{run}",
            "sampled_topic": f"bench-sampled-{run}",
            "dlq_topic": f"bench-dlq-{run}",
            "group_id": f"bench-{run}",
        },
        "decision": {"wait": f"{WAIT}s", "max_traces": max(traces, 1)},
        # A Kafka backend: the file exporter's OTLP/JSON encoding is for debugging, not speed.
        "exporters": {"backend": {"type": "kafka", "topic": f"bench-backend-{run}"}},
        "tenants": {"default": {"exporters": ["backend"]}},
        "worker": {"state_dir": str(work / "state")},
        "metrics": {"port": metrics_port},
    }
    (work / "caudal.yaml").write_text(yaml.safe_dump(config))
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    ensure_topics(kafka, [(topic, partitions)])
    print(f"bench: {traces:,} traces x {spans} spans, {partitions} partitions, work dir {work}")
    payloads = _messages(traces, spans)
    worker = start_worker(work / "caudal.yaml", work / "worker.log")
    try:
        return _measure(worker, metrics_port, kafka, topic, payloads, traces, spans, bootstrap)
    finally:
        stop_process(worker)
        if broker is not None:
            broker.stop()
        shutil.rmtree(work / "state", ignore_errors=True)


def _total(samples: dict[str, Any], name: str) -> float:
    return float(sum(v for _, v in samples.get(name, ())))


def _measure(
    worker: Any,
    metrics_port: int,
    kafka: KafkaConfig,
    topic: str,
    payloads: list[bytes],
    traces: int,
    spans: int,
    bootstrap: str,
) -> int:
    deadline = time.monotonic() + 120
    while _total(read_metrics(metrics_port), "caudal_worker_ready") < 1:
        if worker.poll() is not None or time.monotonic() > deadline:
            print("worker did not become ready")
            return 1
        time.sleep(0.2)
    rss_base = _rss_kib(worker.pid)
    producer = make_producer(kafka, **{"linger.ms": 50, "batch.num.messages": 10000})
    started = time.perf_counter()
    for payload in payloads:
        while True:
            try:
                producer.produce(topic, value=payload)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    produced = time.perf_counter() - started
    peak_buffered, rss_at_peak = 0.0, rss_base
    decided = 0.0
    while decided < traces:
        if worker.poll() is not None or time.perf_counter() - started > 600:
            print(f"worker stopped or timed out after {decided:,.0f} decisions")
            return 1
        samples = read_metrics(metrics_port)
        decided = _total(samples, "caudal_decisions_total")
        buffered = _total(samples, "caudal_traces_buffered")
        if buffered > peak_buffered:
            peak_buffered, rss_at_peak = buffered, _rss_kib(worker.pid)
        time.sleep(0.25)
    elapsed = time.perf_counter() - started
    samples = read_metrics(metrics_port)
    buckets = sorted(
        (float(labels["le"]), value)
        for labels, value in samples.get("caudal_decision_lag_seconds_bucket", ())
    )
    e2e = traces * spans / max(elapsed - WAIT, 1e-9)
    floor, _ = _raw_floor(bootstrap, topic, traces)
    peak_rss = _rss_kib(worker.pid, "VmHWM")
    per_k = (rss_at_peak - rss_base) / (peak_buffered / 1000) if peak_buffered else 0.0
    print(f"produce:          {traces / produced:,.0f} msg/s ({produced:.1f}s)")
    print(
        f"end to end:       {e2e:,.0f} spans/s ({elapsed:.1f}s for {traces:,} traces, "
        f"minus the {WAIT:.0f}s decision wait)"
    )
    print(f"raw floor:        {floor:,.0f} spans/s (confluent-kafka consume + OTLP parse)")
    print(f"ratio:            {e2e / floor:.2f} of the raw floor" if floor else "ratio: n/a")
    print(
        f"decision lag:     p50 {_quantile(buckets, 0.5):.2f}s, p99 {_quantile(buckets, 0.99):.2f}s"
    )
    print(f"peak RSS:         {peak_rss / 1024:.0f} MiB")
    print(
        f"RSS per 1,000 buffered traces: {per_k / 1024:.2f} MiB "
        f"(peak {peak_buffered:,.0f} buffered)"
    )
    return 0


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
        deadline = time.monotonic() + 120
        while _total(read_metrics(metrics_port), "caudal_worker_ready") < 1:
            if worker.poll() is not None or time.monotonic() > deadline:
                print("worker did not become ready")
                return None
            time.sleep(0.2)
        producer = make_producer(kafka, **{"linger.ms": 5, "message.max.bytes": 16 << 20})
        _send_paced(producer, topic, steady, big, rate)
        producer.flush(60)
        expected = len(steady) + (1 if big else 0)
        deadline = time.monotonic() + 300
        while _total(read_metrics(metrics_port), "caudal_decisions_total") < expected:
            if worker.poll() is not None or time.monotonic() > deadline:
                print("worker stopped or timed out")
                return None
            time.sleep(0.25)
        samples = read_metrics(metrics_port)
        buckets = sorted(
            (float(labels["le"]), value)
            for labels, value in samples.get("caudal_decision_lag_seconds_bucket", ())
        )
        within = dict(buckets)
        result = {
            "p50": _quantile(buckets, 0.5),
            "p99": _quantile(buckets, 0.99),
            "over_1s": 1 - within.get(1.0, 0.0) / max(within.get(float("inf"), 1.0), 1.0),
            "rss": float(_rss_kib(worker.pid, "VmHWM")),
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
    consumer = _reader(bootstrap, "big-reader")
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
