"""Every Prometheus metric Caudal exports (prefix `caudal_`), declared here and only here.

Names, labels and help texts are part of the public contract; README's metrics table is
generated from this module (`metric_rows`), so the two cannot drift.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

__all__ = [
    "EXPOSITION",
    "Exposition",
    "caudal_families",
    "metric_rows",
    "EXPERIMENT_REQUESTS",
    "EXPERIMENT_ERRORS",
    "EXPERIMENT_DURATION",
    "EXPERIMENT_SERIES_DROPPED",
    "PIPELINE_STATE",
    "HEALTH_STATE",
    "DEGRADATION_LEVEL",
    "DEGRADATION_CHANGES",
    "DEGRADED_SPANS",
    "INGEST_REQUESTS",
    "INGEST_SPANS",
    "INGEST_BACKPRESSURE",
    "INGEST_QUEUE_FILL",
    "INGEST_PRODUCE_LATENCY",
    "DEAD_LETTERS",
    "DECISIONS",
    "EXPORTER_BACKLOG",
    "EXPORTER_STATE",
    "EXPORT_BATCHES",
    "EXPORT_RETRIES",
    "DECISION_CACHE_BYTES",
    "DECISION_CACHE_DECISIONS",
    "DECISION_LAG",
    "LATE_SPANS",
    "QUOTA_DROPS",
    "SPANS_EXPORTED",
    "SPANS_RECEIVED",
    "TRACES_BUFFERED",
    "TRACES_DECIDED_EARLY",
    "UNKNOWN_TENANT_DROPS",
    "WORKER_READY",
    "PARTITION_RECOVERY",
    "PARTITIONS_OWNED",
    "BUFFER_BYTES",
    "ROCKSDB_MEMORY",
    "CIRCUIT_OPENS",
    "CONFIG_RELOADS",
    "CONSUMER_LAG",
    "BUFFER_MAX_BYTES",
    "BUFFER_MAX_TRACES",
    "PRODUCE_FAILURES",
    "THREAD_FAILURES",
    "TRACE_MAX_BYTES",
    "DECISION_WAIT",
    "ORPHAN_SPANS",
    "REDELIVERED",
    "set_consumer_lag",
    "set_one_hot",
    "TRACES_WITHOUT_ROOT",
]

SPANS_RECEIVED = Counter(
    "caudal_spans_received", "Spans read from the input topic, per tenant.", ["tenant"]
)
TRACES_BUFFERED = Gauge(
    "caudal_traces_buffered", "Traces waiting in the buffer for their decision window to close."
)
BUFFER_BYTES = Gauge(
    "caudal_buffer_bytes", "Bytes of span data appended to the buffer and not yet decided."
)
ROCKSDB_MEMORY = Gauge(
    "caudal_rocksdb_memory_bytes",
    "RocksDB memory in use by the tables: block_cache (worker.rocksdb.block_cache) and "
    "memtables (worker.rocksdb.write_buffers).",
    ["part"],
)
DECISIONS = Counter(
    "caudal_decisions",
    "Traces decided, per deciding policy ('none' when dropped), outcome and tenant.",
    ["policy", "outcome", "tenant"],
)
TRACES_DECIDED_EARLY = Counter(
    "caudal_traces_decided_early",
    "Traces decided before their window closed, per bound reached (max_traces, "
    "max_buffer_bytes, max_trace_bytes).",
    ["reason"],
)
DECISION_CACHE_DECISIONS = Gauge(
    "caudal_decision_cache_decisions",
    "Decisions remembered for late spans, per kind (kept, dropped).",
    ["kind"],
)
DECISION_CACHE_BYTES = Gauge(
    "caudal_decision_cache_bytes",
    "Memory of the remembered decisions, per kind: kept (packed entries, their dict and "
    "queue) and dropped (a 64-bit hash table and ring sized for decision.decision_cache."
    "dropped).",
    ["kind"],
)
LATE_SPANS = Counter(
    "caudal_late_spans",
    "Spans that arrived after their trace was decided, per outcome (kept or dropped).",
    ["outcome"],
)


class BatchHistogram(Histogram):
    """A histogram that also takes many observations at once: one increment per bucket they
    touch, instead of one locked update of the sum and a bucket per observation."""

    def observe_many(self, values: Sequence[float]) -> None:
        """Observe every value of `values` (non-negative, like `observe`)."""
        if not values:
            return
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        bounds = self._upper_bounds
        counts = [0] * len(bounds)
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bucket with value <= bound
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        self._sum.inc(sum(values))


DECISION_LAG = BatchHistogram(
    "caudal_decision_lag_seconds",
    "Delay between a trace's decision time and the moment it was decided, per window: `wait` "
    "(decision.wait after its first record) or `after_root` (decision.wait_after_root after "
    "its root span arrived).",
    ["window"],
    # Fine around 1-2.5 s, where the alert (p99 over 2 s) and a healthy steady state sit.
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 5, 10, 30, 60),
)
SPANS_EXPORTED = Counter(
    "caudal_spans_exported",
    "Spans an exporter delivered (outcome success) or dead-lettered after its backend rejected "
    "them (dead_letter), per exporter and tenant.",
    ["exporter", "tenant", "outcome"],
)
CONFIG_RELOADS = Counter(
    "caudal_config_reloads",
    "Policy reloads (SIGHUP or a change of the config file), per outcome (success, failure).",
    ["outcome"],
)
QUOTA_DROPS = Counter(
    "caudal_quota_drops",
    "Kept traces dropped because their tenant was over quota, per tenant and keeping policy.",
    ["tenant", "policy"],
)
UNKNOWN_TENANT_DROPS = Counter(
    "caudal_unknown_tenant_drops",
    "Kept traces of tenants with no configuration, dropped (unknown_tenant: drop).",
)
WORKER_READY = Gauge(
    "caudal_worker_ready",
    "1 once the worker has joined its group and recovered its tables; 0 during a rebalance.",
)
PARTITION_RECOVERY = Histogram(
    "caudal_partition_recovery_seconds",
    "From a new assignment of caudal-spans partitions to deciding them again: tables "
    "recovered from their changelogs and decision queues rebuilt.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60),
)
PARTITIONS_OWNED = Gauge(
    "caudal_partitions_owned", "caudal-spans partitions this worker owns and decides."
)
EXPORTER_STATE = Gauge(
    "caudal_exporter_state",
    "1 for the exporter's current state (idle, sending, backoff, open, half_open, failed).",
    ["exporter", "state"],
)
EXPORT_BATCHES = Counter(
    "caudal_export_batches",
    "Export attempts of a batch, per exporter and outcome.",
    ["exporter", "outcome"],
)
EXPORT_RETRIES = Counter(
    "caudal_export_retries",
    "Batches retried after a retryable failure, per exporter.",
    ["exporter"],
)
CIRCUIT_OPENS = Counter(
    "caudal_circuit_breaker_opens", "Times an exporter's circuit breaker opened.", ["exporter"]
)
EXPORTER_BACKLOG = Gauge(
    "caudal_exporter_backlog",
    "Records of caudal-sampled this exporter has not delivered yet (its consumer lag).",
    ["exporter"],
)
TRACES_WITHOUT_ROOT = Counter(
    "caudal_traces_without_root",
    "Decided traces in which no span without a parent arrived (the root span is missing).",
)
ORPHAN_SPANS = Counter(
    "caudal_orphan_spans",
    "Spans of decided traces whose parent span is not in the trace.",
)
REDELIVERED = Counter(
    "caudal_redelivered_fragments",
    "Trace fragments read again after a restart or rebalance and skipped (already applied).",
)
CONSUMER_LAG = Gauge(
    "caudal_consumer_lag",
    "Records of the assigned partitions not yet read by this worker, per topic and partition.",
    ["topic", "partition"],
)
BUFFER_MAX_TRACES = Gauge(
    "caudal_buffer_max_traces", "decision.max_traces: traces the buffer holds at most."
)
DECISION_WAIT = Gauge(
    "caudal_decision_wait_seconds", "decision.wait: how long a trace is buffered before deciding."
)
DEAD_LETTERS = Counter(
    "caudal_dead_letters", "Messages sent to the dead-letter topic, per reason.", ["reason"]
)
BUFFER_MAX_BYTES = Gauge(
    "caudal_buffer_max_bytes", "decision.max_buffer_bytes: buffered bytes at most (0: no bound)."
)
TRACE_MAX_BYTES = Gauge(
    "caudal_trace_max_bytes",
    "decision.max_trace_bytes: bytes one trace buffers at most (0: no bound).",
)
PRODUCE_FAILURES = Counter(
    "caudal_produce_failures",
    "Records not delivered that no retry covers, per kind (sampled: late spans, degraded-mode "
    "spans; dead_letter); each refuses the next offset commit.",
    ["kind"],
)
THREAD_FAILURES = Counter(
    "caudal_thread_failures",
    "Worker threads (split stage, exporters) that stopped on an unexpected error, per thread.",
    ["thread"],
)


# Experiment RED metrics (streams.ops.experiments), on all traffic before sampling
EXPERIMENT_REQUESTS = Counter(
    "caudal_experiment_requests",
    "Spans of an experiment (all traffic, before sampling), per experiment, variant, service.",
    ["experiment", "variant", "service"],
)

EXPERIMENT_ERRORS = Counter(
    "caudal_experiment_errors",
    "Spans of status ERROR of an experiment (before sampling), per experiment, variant, service.",
    ["experiment", "variant", "service"],
)

EXPERIMENT_DURATION = Histogram(
    "caudal_experiment_duration_seconds",
    "Span durations of an experiment (before sampling), per experiment, variant and service.",
    ["experiment", "variant", "service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

EXPERIMENT_SERIES_DROPPED = Counter(
    "caudal_experiment_series_dropped",
    "Experiment spans not counted because experiments.max_series label sets were in use "
    "or the experiment is not in experiments.allow.",
)

# Health (streams.ops.health)
PIPELINE_STATE = Gauge(
    "caudal_pipeline_state", "1 for the worker's current pipeline state.", ["state"]
)

HEALTH_STATE = Gauge("caudal_health_state", "1 for the worker's current health state.", ["state"])

# Degradation levels (streams.pipeline.degrade)
DEGRADATION_LEVEL = Gauge(
    "caudal_degradation_level",
    "Degradation level: 0 normal, 1 larger batches, 2-4 per-span trace-ID sampling.",
)

DEGRADATION_CHANGES = Counter(
    "caudal_degradation_changes",
    "Changes of the degradation level, per direction (up, down).",
    ["direction"],
)

DEGRADED_SPANS = Counter(
    "caudal_degraded_spans",
    "Spans decided on arrival at degradation level 2 or more, per outcome (kept, dropped).",
    ["outcome"],
)

# The ingest gateway (streams.ingest.gateway): exposed by `caudal ingest`
INGEST_REQUESTS = Counter(
    "caudal_ingest_requests",
    "Ingest requests per protocol, tenant and outcome (HTTP status class or gRPC code).",
    ["protocol", "tenant", "outcome"],
)

INGEST_SPANS = Counter(
    "caudal_ingest_spans",
    "Spans the gateway received, per tenant and outcome (accepted, rejected, rate_limited).",
    ["tenant", "outcome"],
)

INGEST_BACKPRESSURE = Gauge(
    "caudal_ingest_backpressure",
    "Backpressure state: 0 normal, 1 warning, 2 throttling (429), 3 unavailable (503).",
)

INGEST_QUEUE_FILL = Gauge(
    "caudal_ingest_queue_fill_ratio", "Bytes awaiting Kafka's acknowledgement / the limit."
)

INGEST_PRODUCE_LATENCY = Histogram(
    "caudal_ingest_produce_latency_seconds",
    "From handing a request's records to Kafka until all were acknowledged.",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Label sets known in advance exist from the start (at 0), so rate() and increase() see their
# first increment.
for _outcome in ("kept", "dropped"):
    LATE_SPANS.labels(_outcome)
for _outcome in ("success", "failure"):
    CONFIG_RELOADS.labels(_outcome)
for _reason in ("max_traces", "max_buffer_bytes", "max_trace_bytes"):
    TRACES_DECIDED_EARLY.labels(_reason)
for _kind in ("sampled", "dead_letter"):
    PRODUCE_FAILURES.labels(_kind)
for _direction in ("up", "down"):
    DEGRADATION_CHANGES.labels(_direction)
for _outcome in ("kept", "dropped"):
    DEGRADED_SPANS.labels(_outcome)


_LAG_PARTITIONS: dict[str, set[int]] = {}


def set_one_hot(gauge: Gauge, states: Sequence[str], state: str, *labels: str) -> None:
    """A state gauge: 1 for `state`, 0 for every other of `states` (under `labels`)."""
    for known in states:
        gauge.labels(*labels, known).set(1 if known == state else 0)


def set_consumer_lag(topic: str, lags: dict[int, int]) -> None:
    """Replace the consumer-lag series of one topic (partitions no longer assigned go away)."""
    for partition in _LAG_PARTITIONS.get(topic, set()) - lags.keys():
        CONSUMER_LAG.remove(topic, str(partition))
    _LAG_PARTITIONS[topic] = set(lags)
    for partition, value in lags.items():
        CONSUMER_LAG.labels(topic, str(partition)).set(value)


def metric_rows() -> Iterator[tuple[str, tuple[str, ...], str]]:
    """(exposed name, labels, help) of every metric above, in the order declared."""
    for value in list(globals().values()):
        if isinstance(value, MetricWrapperBase):
            described = next(iter(value.describe()))
            name = described.name + ("_total" if described.type == "counter" else "")
            kind = " (histogram)" if described.type == "histogram" else ""
            yield name, tuple(value._labelnames), described.documentation + kind


def caudal_families() -> list[Metric]:
    """This process's `caudal_*` metric families as they stand (what a process of the worker
    reports to it), without the `_created` samples."""
    families = []
    for family in REGISTRY.collect():
        if family.name.startswith("caudal_"):
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            families.append(family)
    return families


class Exposition:
    """What /metrics serves: this process's registry, plus the `caudal_*` families that the
    worker's other processes (the split process) reported. A series that both have is their
    sum: counters and histograms add up, and a gauge's series is set in one process only (the
    input topic's consumer lag in the split process, the other topics' in the worker)."""

    def __init__(self) -> None:
        self._reported: dict[str, list[Metric]] = {}
        self._lock = threading.Lock()

    def report(self, source: str, families: list[Metric]) -> None:
        """The latest families of one other process (cumulative: they replace its last)."""
        with self._lock:
            self._reported[source] = families

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's registry interface (generate_latest)."""
        with self._lock:
            reports = list(self._reported.values())
        if not reports:
            yield from REGISTRY.collect()
            return
        theirs: dict[str, list[Metric]] = {}
        for families in reports:
            for family in families:
                theirs.setdefault(family.name, []).append(family)
        for family in REGISTRY.collect():
            yield _summed(family, theirs.pop(family.name, []))
        for others in theirs.values():
            yield _summed(others[0], others[1:])


def _summed(family: Metric, others: list[Metric]) -> Metric:
    """`family` with the samples of `others` (same name) added in, series by series."""
    if not others:
        return family
    series: dict[tuple[str, frozenset[tuple[str, str]]], tuple[str, dict[str, str], float]] = {}
    for sample in [s for f in (family, *others) for s in f.samples]:
        key = (sample.name, frozenset(sample.labels.items()))
        _, _, value = series.get(key, (None, None, 0.0))
        series[key] = (sample.name, sample.labels, value + sample.value)
    summed = Metric(family.name, family.documentation, family.type, family.unit)
    for name, labels, value in series.values():
        summed.add_sample(name, labels, value)
    return summed


EXPOSITION = Exposition()
