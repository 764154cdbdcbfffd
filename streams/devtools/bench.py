"""`caudal bench`: what a worker costs per span, against the raw floor of the same data.

1. Start N workers (one by default) on an empty input topic and wait until they own every
   partition.
2. Produce the traces (10 spans each by default, the generator's mix), `--traces-per-message`
   traces in each input message: all at once (a burst), or `--rate` traces per second (steady);
   kept traces go to a Kafka exporter.
3. End to end = spans decided / (time until every trace is decided − the decision wait).
4. Raw floor = confluent-kafka consume + OTLP parse + a walk over every span of the same topic,
   in this process, right after: the same machine, broker and data.

Also: the workers' CPU per span (user + system of the worker processes over the run, from
/proc), decision lag p50/p99 (the workers' histogram), peak RSS and RSS per 1,000 buffered
traces (the growth since the start, at the last look while the buffer is at its peak), the
broker's CPU, how many of the machine's cores were busy on average over the run (every process:
workers, broker, this producer; what bounds `--workers N` on a small machine), and the policy
engine's decisions per second for the five default rules.
`--json` prints one JSON object; a progress line goes to stderr while it runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from policies import flatten
from streams.config import DEFAULT_POLICIES, KafkaConfig
from streams.devtools.broker import LocalBroker, free_port
from streams.devtools.demo import read_metrics, start_worker, stop_process
from streams.devtools.generate import DEFAULT_MIX, build_trace
from streams.kafka.clients import TRAFFIC_DELIVERY_TIMEOUT, ensure_topics, make_producer

__all__ = [
    "BenchOptions",
    "BenchResult",
    "bench_policies",
    "cpu_seconds",
    "lag_buckets",
    "quantile",
    "quantile_bound",
    "reader",
    "rss_kib",
    "run_bench",
    "total",
    "wait_ready",
]

Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class BenchOptions:
    """What `caudal bench` runs."""

    traces: int = 50_000
    spans_per_trace: int = 10
    traces_per_message: int = 1
    partitions: int = 4
    workers: int = 1
    rate: float = 0.0  # traces per second offered; 0: everything at once
    wait: float = 1.0  # decision.wait of the workers
    bootstrap: str | None = None


def c_walk_built() -> bool:
    """Whether policies._wire is built: without it the policies parse every trace."""
    return flatten.c_walk is not None


@dataclass
class BenchResult:
    """The figures of one run (`--json` prints them as one object)."""

    traces: int
    spans_per_trace: int
    traces_per_message: int
    workers: int
    partitions: int
    offered_traces_per_second: float | None
    decision_wait_s: float
    elapsed_s: float
    first_decision_s: float | None
    """A burst's first decision, from the start (looked for every 0.25 s once the bench's
    producer is done; None at a steady `--rate`, where it comes while producing). No trace of
    a burst is due before the split stage has read every record stamped within the decision
    wait of it, so this is mostly buffering, and the rest of `elapsed_s` deciding."""
    produce_messages_per_second: float
    spans_per_second: float
    raw_floor_spans_per_second: float
    ratio: float
    cpu_us_per_span: float
    worker_cpu_s: float
    broker_cpu_s: float | None
    machine_busy_cores: float | None
    machine_cores: int
    decision_lag_p50_s: float
    decision_lag_p99_s: float
    decision_lag_p99_at_most_s: float | None
    """The upper edge of the histogram bucket the p99 lies in: the p99 is at most this,
    whatever the interpolation within the bucket gives (None: past the last finite edge)."""
    peak_rss_mib: float
    peak_buffered_traces: float
    rss_mib_per_1000_traces: float
    rocksdb_memtables_mib_at_peak: float
    rocksdb_block_cache_mib_at_peak: float
    policy_decisions_per_second: float
    c_walk: bool = field(default_factory=c_walk_built)
    """Whether the optional C module policies._wire is built (see README, Troubleshooting)."""


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (a worker and its split process), from /proc."""
    tree, i = [pid], 0
    while i < len(tree):
        try:
            tasks = list(Path(f"/proc/{tree[i]}/task").iterdir())
        except OSError:  # ended meanwhile, or not Linux
            tasks = []
        for task in tasks:
            try:
                tree.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                pass
        i += 1
    return tree


def rss_kib(pid: int, name: str = "VmRSS") -> int:
    """A process's RSS (or `VmHWM`, its peak) in KiB with its descendants', from /proc."""
    kib = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        kib += next((int(line.split()[1]) for line in lines if line.startswith(name + ":")), 0)
    return kib


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process and its descendants have used so far, from /proc/PID/stat."""
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name (may hold spaces)
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU time the whole machine has spent busy so far, all cores (from /proc/stat; None
    elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is counted in user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _bucket_of(buckets: list[tuple[float, float]], q: float) -> int | None:
    """The index of the first cumulative bucket holding a share `q` of the count (None: no
    count)."""
    count_all = buckets[-1][1] if buckets else 0
    if not count_all:
        return None
    return next(i for i, (_, count) in enumerate(buckets) if count >= q * count_all)


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Quantile from cumulative Prometheus buckets (upper bound, count), interpolated."""
    i = _bucket_of(buckets, q)
    if i is None:
        return float("nan")
    bound, count = buckets[i]
    prev_bound, prev_count = buckets[i - 1] if i else (0.0, 0.0)
    if bound == float("inf"):
        return prev_bound
    target = q * buckets[-1][1]
    share = (target - prev_count) / (count - prev_count) if count > prev_count else 0
    return prev_bound + (bound - prev_bound) * share


def quantile_bound(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The smallest bucket edge with at least a share `q` of the count at or under it (None
    when only the open bucket has it, or there is no count)."""
    i = _bucket_of(buckets, q)
    if i is None or buckets[i][0] == float("inf"):
        return None
    return buckets[i][0]


def lag_buckets(scrapes: Sequence[Samples]) -> list[tuple[float, float]]:
    """The decision-lag histogram of several workers, summed bucket by bucket."""
    summed: dict[float, float] = {}
    for samples in scrapes:
        for labels, value in samples.get("caudal_decision_lag_seconds_bucket", ()):
            bound = float(labels["le"])
            summed[bound] = summed.get(bound, 0.0) + value
    return sorted(summed.items())


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples (those with `labels`)."""
    return float(
        sum(
            v
            for found, v in samples.get(name, ())
            if all(found.get(k) == want for k, want in labels.items())
        )
    )


def reader(bootstrap: str, name: str) -> Consumer:
    """A consumer that reads topics from their start and commits nothing."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{name}-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def wait_ready(workers: list[Any], ports: list[int], partitions: int, timeout: float = 120) -> bool:
    """Until every worker is ready and together they own every partition."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w.poll() is not None for w in workers):
            return False
        scrapes = [read_metrics(port) for port in ports]
        ready = sum(total(s, "caudal_worker_ready") for s in scrapes)
        owned = sum(total(s, "caudal_partitions_owned") for s in scrapes)
        if ready >= len(workers) and owned >= partitions:
            return True
        time.sleep(0.2)
    return False


def _messages(options: BenchOptions) -> list[bytes]:
    rng = random.Random(42)
    kinds, weights = list(DEFAULT_MIX), list(DEFAULT_MIX.values())
    now = time.time_ns()
    out = []
    per = max(options.traces_per_message, 1)
    for first in range(0, options.traces, per):
        blocks = []
        for i in range(first, min(first + per, options.traces)):
            kind = rng.choices(kinds, weights)[0]
            blocks += build_trace(rng, kind, "bench", now + i, options.spans_per_trace)[1]
        out.append(ExportTraceServiceRequest(resource_spans=blocks).SerializeToString())
    return out


def _raw_floor(bootstrap: str, topic: str, expect: int) -> float:
    """Consume a topic from the start, parse each message and touch every span: spans/s."""
    consumer = reader(bootstrap, "bench-floor")
    # Assigned, not subscribed: a group's join can take many seconds, and nothing is committed.
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
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
    return spans / elapsed if elapsed else 0.0


def bench_policies(traces: int = 20_000, spans: int = 10) -> dict[str, float]:
    """Decisions per second of the policy engine alone, for the five default rules and for 15
    policies: each trace starts as the stored bytes a worker holds (an OTLP request), and its
    view is built inside the timing, as the decider builds it. The fastest of three passes
    counts, as timeit does: a slower pass measures the machine's other work, not the engine."""
    from policies import TraceView, build_engine

    rng = random.Random(1)
    kinds, weights = list(DEFAULT_MIX), list(DEFAULT_MIX.values())
    stored = []
    for _ in range(traces):
        trace_id, blocks = build_trace(
            rng, rng.choices(kinds, weights)[0], "bench", time.time_ns(), spans
        )
        stored.append(
            (trace_id, ExportTraceServiceRequest(resource_spans=blocks).SerializeToString())
        )
    rates = {}
    for label, policies in (("five_rules", DEFAULT_POLICIES), ("15_policies", _fifteen())):
        engine = build_engine(policies)
        fastest = math.inf
        for _ in range(3):
            started = time.perf_counter()
            for trace_id, request in stored:
                engine.decide(TraceView.from_request(trace_id, request), 0.0)
            fastest = min(fastest, time.perf_counter() - started)
        rates[label] = traces / fastest
    return rates


def _fifteen() -> list[dict[str, object]]:
    extra: list[dict[str, object]] = [
        {"name": f"svc-{i}", "type": "string_attribute", "key": "service.name", "values": [f"s{i}"]}
        for i in range(6)
    ]
    extra += [
        {"name": f"slow-{i}", "type": "latency", "threshold_ms": 2000 + 100 * i} for i in range(3)
    ]
    extra.append({"name": "always", "type": "always_sample", "sample_percentage": 1})
    return [*DEFAULT_POLICIES, *extra]


def run_policies_bench(traces: int, spans: int, as_json: bool) -> int:
    """`caudal bench --policies-only`."""
    rates = bench_policies(min(traces, 50_000), spans)
    if as_json:
        print(
            json.dumps(
                {
                    "policy_decisions_per_second": round(rates["five_rules"]),
                    "policy_decisions_per_second_15_policies": round(rates["15_policies"]),
                    "spans_per_trace": spans,
                    "c_walk": c_walk_built(),
                }
            )
        )
    else:
        print(f"policies [five default rules]: {rates['five_rules']:,.0f} decisions/s")
        print(f"policies [15 policies]:        {rates['15_policies']:,.0f} decisions/s")
    return 0


def _config(options: BenchOptions, bootstrap: str, run: str, work: Path, i: int, port: int) -> Path:
    config = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": options.partitions,
            "input_topic": f"bench-{run}",
            "spans_topic": f"bench-spans-{run}",
            "sampled_topic": f"bench-sampled-{run}",
            "dlq_topic": f"bench-dlq-{run}",
            "group_id": f"bench-{run}",
        },
        "decision": {"wait": f"{options.wait}s", "max_traces": max(options.traces, 1)},
        # A Kafka backend: the file exporter's OTLP/JSON encoding is for debugging, not speed.
        "exporters": {"backend": {"type": "kafka", "topic": f"bench-backend-{run}"}},
        "tenants": {"default": {"exporters": ["backend"]}},
        "worker": {"state_dir": str(work / f"state-{i}")},
        "metrics": {"port": port},
    }
    path = work / f"caudal-{i}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_bench(options: BenchOptions, as_json: bool = False) -> int:
    """Run the benchmark and print its figures; returns the exit code."""
    work = Path(tempfile.mkdtemp(prefix="caudal-bench-"))
    broker = None if options.bootstrap else LocalBroker(log_path=work / "broker.log").start()
    bootstrap = options.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    run = uuid.uuid4().hex[:6]
    kafka = KafkaConfig(bootstrap_servers=bootstrap)
    ensure_topics(kafka, [(f"bench-{run}", options.partitions)])
    _say(
        f"bench: {options.traces:,} traces x {options.spans_per_trace} spans, "
        f"{options.traces_per_message} per message, {options.partitions} partitions, "
        f"{options.workers} worker(s), "
        + (f"{options.rate:,.0f} traces/s" if options.rate else "burst")
        + f", work dir {work}"
    )
    payloads = _messages(options)
    ports = [free_port() for _ in range(options.workers)]
    workers = [
        start_worker(_config(options, bootstrap, run, work, i, port), work / f"worker-{i}.log")
        for i, port in enumerate(ports)
    ]
    try:
        if not wait_ready(workers, ports, options.partitions):
            _say("workers did not become ready")
            return 1
        broker_pid = broker.pid if broker is not None else None
        result = _measure(options, workers, ports, kafka, f"bench-{run}", payloads, broker_pid)
    finally:
        for worker in workers:
            stop_process(worker)
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    if result is None:
        return 1
    result.policy_decisions_per_second = round(bench_policies(20_000, 10)["five_rules"])
    print(json.dumps(asdict(result)) if as_json else _report(result))
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _produce(producer: Any, topic: str, payloads: list[bytes], per_second: float) -> float:
    """Every payload, paced at `per_second` messages (0: as fast as possible); seconds taken."""
    started = time.perf_counter()
    for i, payload in enumerate(payloads):
        if per_second:
            ahead = i / per_second - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topic, value=payload)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - started


def _measure(
    options: BenchOptions,
    workers: list[Any],
    ports: list[int],
    kafka: KafkaConfig,
    topic: str,
    payloads: list[bytes],
    broker_pid: int | None,
) -> BenchResult | None:
    rss_base = sum(rss_kib(w.pid) for w in workers)
    cpu_base = sum(cpu_seconds(w.pid) for w in workers)
    broker_base = cpu_seconds(broker_pid) if broker_pid else 0.0
    machine_base = machine_busy_seconds()
    producer = make_producer(
        kafka, TRAFFIC_DELIVERY_TIMEOUT, **{"linger.ms": 20, "batch.num.messages": 10000}
    )
    started = time.perf_counter()
    per_message = max(options.traces_per_message, 1)
    produced = _produce(producer, topic, payloads, options.rate / per_message)
    peak_buffered, rss_at_peak, decided, shown = 0.0, rss_base, 0.0, 0.0
    first_decision: float | None = None
    rocksdb_at_peak = {"memtables": 0.0, "block_cache": 0.0}
    while decided < options.traces:
        if any(w.poll() is not None for w in workers):
            _say(f"a worker stopped after {decided:,.0f} decisions")
            return None
        if time.perf_counter() - started > 900:
            _say(f"timed out after {decided:,.0f} decisions")
            return None
        scrapes = [read_metrics(port) for port in ports]
        decided = sum(total(s, "caudal_decisions_total") for s in scrapes)
        if decided and first_decision is None and not options.rate:
            first_decision = time.perf_counter() - started
        buffered = sum(total(s, "caudal_traces_buffered") for s in scrapes)
        # The RSS of the last look at the peak: by then what was read ahead, produced and not
        # yet acknowledged has settled, and the memory is what holding the traces costs.
        if buffered and buffered >= peak_buffered:
            peak_buffered, rss_at_peak = buffered, sum(rss_kib(w.pid) for w in workers)
            for part in rocksdb_at_peak:
                rocksdb_at_peak[part] = sum(
                    total(s, "caudal_rocksdb_memory_bytes", part=part) for s in scrapes
                )
        now = time.perf_counter()
        if now - shown >= 1.0:
            shown = now
            print(
                f"\r  {now - started:6.1f}s  decided {decided:>9,.0f} of {options.traces:,}"
                f"  buffered {buffered:>9,.0f}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(0.25)
    elapsed = time.perf_counter() - started
    print(file=sys.stderr)
    worker_cpu = sum(cpu_seconds(w.pid) for w in workers) - cpu_base
    broker_cpu = cpu_seconds(broker_pid) - broker_base if broker_pid else None
    machine_now = machine_busy_seconds()
    busy = None if machine_base is None or machine_now is None else machine_now - machine_base
    buckets = lag_buckets([read_metrics(port) for port in ports])
    spans = options.traces * options.spans_per_trace
    e2e = spans / max(elapsed - options.wait, 1e-9)
    floor = _raw_floor(kafka.bootstrap_servers, topic, len(payloads))
    per_k = (rss_at_peak - rss_base) / (peak_buffered / 1000) if peak_buffered else 0.0
    return BenchResult(
        traces=options.traces,
        spans_per_trace=options.spans_per_trace,
        traces_per_message=per_message,
        workers=options.workers,
        partitions=options.partitions,
        offered_traces_per_second=options.rate or None,
        decision_wait_s=options.wait,
        elapsed_s=round(elapsed, 2),
        first_decision_s=None if first_decision is None else round(first_decision, 2),
        produce_messages_per_second=round(len(payloads) / produced),
        spans_per_second=round(e2e),
        raw_floor_spans_per_second=round(floor),
        ratio=round(e2e / floor, 4) if floor else 0.0,
        cpu_us_per_span=round(worker_cpu * 1e6 / spans, 2),
        worker_cpu_s=round(worker_cpu, 2),
        broker_cpu_s=None if broker_cpu is None else round(broker_cpu, 2),
        machine_busy_cores=None if busy is None else round(busy / elapsed, 2),
        machine_cores=os.cpu_count() or 1,
        decision_lag_p50_s=round(quantile(buckets, 0.5), 3),
        decision_lag_p99_s=round(quantile(buckets, 0.99), 3),
        decision_lag_p99_at_most_s=quantile_bound(buckets, 0.99),
        peak_rss_mib=round(max(rss_kib(w.pid, "VmHWM") for w in workers) / 1024, 1),
        peak_buffered_traces=peak_buffered,
        rss_mib_per_1000_traces=round(per_k / 1024, 3),
        rocksdb_memtables_mib_at_peak=round(rocksdb_at_peak["memtables"] / 2**20, 1),
        rocksdb_block_cache_mib_at_peak=round(rocksdb_at_peak["block_cache"] / 2**20, 1),
        policy_decisions_per_second=0.0,
    )


def _report(r: BenchResult) -> str:
    offered = (
        f"{r.offered_traces_per_second:,.0f} traces/s" if r.offered_traces_per_second else "burst"
    )
    lines = [
        f"traffic:          {r.traces:,} traces x {r.spans_per_trace} spans, {offered}, "
        f"{r.workers} worker(s), {r.partitions} partitions",
        f"produce:          {r.produce_messages_per_second:,.0f} msg/s",
        f"end to end:       {r.spans_per_second:,.0f} spans/s ({r.elapsed_s:.1f}s, minus the "
        f"{r.decision_wait_s:g}s decision wait)",
        (
            f"first decision:   after {r.first_decision_s}s (the rest deciding)"
            if r.first_decision_s is not None
            else "first decision:   n/a (steady rate)"
        ),
        f"raw floor:        {r.raw_floor_spans_per_second:,.0f} spans/s (consume + OTLP parse)",
        f"ratio:            {r.ratio:.2f} of the raw floor",
        f"worker CPU:       {r.cpu_us_per_span:.1f} µs per span ({r.worker_cpu_s:.1f}s)",
        f"broker CPU:       {r.broker_cpu_s}s" if r.broker_cpu_s is not None else "broker CPU: n/a",
        f"machine:          {r.machine_busy_cores} of {r.machine_cores} cores busy on average",
        f"decision lag:     p50 {r.decision_lag_p50_s:.2f}s, p99 {r.decision_lag_p99_s:.2f}s "
        + (
            f"(at most {r.decision_lag_p99_at_most_s:g}s by the histogram)"
            if r.decision_lag_p99_at_most_s is not None
            else "(past the histogram's last edge)"
        ),
        f"peak RSS:         {r.peak_rss_mib:.0f} MiB",
        f"RSS per 1,000 buffered traces: {r.rss_mib_per_1000_traces:.2f} MiB "
        f"(peak {r.peak_buffered_traces:,.0f} buffered)",
        f"RocksDB at that peak: memtables {r.rocksdb_memtables_mib_at_peak:.0f} MiB, "
        f"block cache {r.rocksdb_block_cache_mib_at_peak:.0f} MiB",
        f"policy engine:    {r.policy_decisions_per_second:,.0f} decisions/s (five rules)",
    ]
    return "\n".join(lines)
