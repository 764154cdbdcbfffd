"""`caudal backfill`: re-decide a time range of the input topic with extra policies, and export
the traces they keep that the pipeline did not, whole and once.

For every trace that started in the range (its earliest span), read back as the pipeline
grouped it (`streams.devtools.replay`): the tenant's current policies say whether the pipeline
kept it (they are deterministic on the trace, except what depends on the traffic around it:
rate and byte limits, `composite` budgets, quotas, and an adaptive sampler's learned rates,
which start afresh here); if it did not, and the backfill policies keep it, it goes to
`caudal-sampled` for the tenant's exporters, with `sampling.policy = backfill/<policy>`. Each
exported trace is then recorded in a compacted topic (`kafka.backfill_topic`, key: tenant and
trace ID), so running the same backfill again exports nothing.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from policies import PolicyConfigError, PolicyEngine, build_engine
from streams.config import ConfigError, Settings
from streams.devtools.replay import Replay, ReplayedTrace, ReplayStats
from streams.kafka.clients import (
    SPAN_COUNT_HEADER,
    DeliveryReports,
    client_config,
    ensure_topics,
    make_producer,
    produce,
    where,
)
from streams.kafka.dead_letters import send_dead_letter
from streams.pipeline.decide import PolicySets, sampled_parts
from streams.pipeline.route import TenantRoutes
from streams.wire.otlp import annotate_kept
from streams.wire.records import partition_for
from streams.wire.tracekey import trace_key

__all__ = ["Backfill", "BackfillSummary", "load_policies", "load_exported"]

POLICY_PREFIX = "backfill/"
_CONFIRM_EVERY = 500  # exported traces between two waits for the broker's acknowledgements
MARKER_MARGIN = 3600.0  # exported traces remembered from this long around the range


def load_policies(path: Path) -> PolicyEngine:
    """The backfill policies of a YAML file: a policy list, or a mapping with `policies:`.
    ConfigError with every problem and its key path."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), [("", str(exc))]) from None
    if isinstance(document, dict) and "policies" in document:
        document = document["policies"]
    if not isinstance(document, list) or not document:
        raise ConfigError(str(path), [("policies", "expected a non-empty list of policies")])
    try:
        return build_engine(document)
    except PolicyConfigError as exc:
        errors = [(".".join(["policies", *map(str, loc)]), msg) for loc, msg in exc.errors]
        raise ConfigError(str(path), errors) from None


@dataclass
class BackfillSummary:
    """What a backfill found and exported."""

    since: float
    until: float
    tenant: str | None
    dry_run: bool
    traces: int = 0  # traces that started in the range (of the tenant asked for)
    already_kept: int = 0  # kept by the pipeline's current policies
    already_exported: int = 0  # exported by an earlier backfill
    unknown_tenant: int = 0  # of a tenant the pipeline drops (`unknown_tenant: drop`)
    kept: Counter[str] = field(default_factory=Counter)  # backfill policy -> traces
    spans: int = 0
    bytes: int = 0
    spans_too_large: int = 0  # traces with a span no record can hold: dead-lettered
    replay: ReplayStats = field(default_factory=ReplayStats)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "tenant": self.tenant,
            "dry_run": self.dry_run,
            "records_read": self.replay.records,
            "traces_in_range": self.traces,
            "already_kept": self.already_kept,
            "already_exported": self.already_exported,
            "unknown_tenant": self.unknown_tenant,
            "newly_kept": dict(self.kept),
            "newly_kept_traces": sum(self.kept.values()),
            "spans_exported": self.spans,
            "bytes_exported": self.bytes,
            "traces_decided_early": self.replay.early,
            "late_fragments_left_out": self.replay.late_fragments,
            "unusable_records": dict(self.replay.unusable),
        }

    def text(self) -> str:
        """The summary for a reader."""
        verb = "to export" if self.dry_run else "exported"
        lines = [
            f"backfill {_iso(self.since)} .. {_iso(self.until)}, tenant {self.tenant or 'all'}"
            + (" (dry run: nothing exported)" if self.dry_run else ""),
            f"  records read:                 {self.replay.records:,}",
            f"  traces started in the range:  {self.traces:,}",
            f"  already kept by the pipeline: {self.already_kept:,}",
            f"  exported by a backfill before: {self.already_exported:,}",
            f"  newly kept:                   {sum(self.kept.values()):,}",
        ]
        lines += [f"    {name}: {count:,}" for name, count in self.kept.most_common()]
        lines += [
            f"  spans {verb}:{' ' * (21 - len(verb))}{self.spans:,}",
            f"  bytes {verb}:{' ' * (21 - len(verb))}{self.bytes:,}",
        ]
        if self.unknown_tenant:
            lines.append(f"  of unknown tenants (dropped): {self.unknown_tenant:,}")
        if self.replay.early:
            lines.append(f"  decided before complete (memory bounds): {self.replay.early:,}")
        if self.spans_too_large:
            lines.append(f"  traces with a span too large (dead-lettered): {self.spans_too_large}")
        for reason, count in sorted(self.replay.unusable.items()):
            lines.append(f"  unusable records ({reason}): {count:,}")
        return "\n".join(lines)


class Backfill:
    """One backfill run; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        engine: PolicyEngine,
        since: float,
        until: float,
        tenant: str | None = None,
        dry_run: bool = False,
        max_traces: int = 100_000,
        max_bytes: int = 256 * 1024 * 1024,
        progress: IO[str] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.since, self.until = since, until
        self.tenant = tenant
        self.dry_run = dry_run
        self.summary = BackfillSummary(since, until, tenant, dry_run)
        self.replay = Replay(
            settings, since, until, max_traces, max_bytes, self._reporter(progress)
        )
        self.summary.replay = self.replay.stats
        self.current = PolicySets.from_settings(settings)
        self.routes = TenantRoutes(settings)
        self.producer = None if dry_run else make_producer(settings.kafka)
        self.reports = DeliveryReports()
        self.unconfirmed: list[tuple[bytes, int, str]] = []  # marker key, start ms, policy

    def run(self) -> BackfillSummary:
        """Read the range, export what the backfill policies newly keep, return the summary."""
        kafka = self.settings.kafka
        if not self.dry_run:
            ensure_topics(
                kafka,
                [(kafka.sampled_topic, kafka.partitions), (kafka.backfill_topic, kafka.partitions)],
                # Each record's time is its trace's start (set by the producer), found by it.
                configs={
                    kafka.backfill_topic: {
                        "cleanup.policy": "compact",
                        "message.timestamp.type": "CreateTime",
                    }
                },
            )
        # Wide: a trace's late spans read in a later range start later than the trace did.
        margin = max(self.settings.decision.wait, MARKER_MARGIN)
        done = load_exported(self.settings, self.since - margin, self.until + margin)
        for trace in self.replay.traces():
            self._consider(trace, done)
        self._confirm()
        return self.summary

    def _consider(self, trace: ReplayedTrace, done: set[bytes]) -> None:
        if self.tenant is not None and trace.tenant != self.tenant:
            return
        view = trace.view()
        start = view.start_unix_nano / 1e9
        if not self.since <= start < self.until:
            return
        self.summary.traces += 1
        view.partition = partition_for(trace.trace_id, self.settings.kafka.partitions)
        # When the pipeline decided it: its first record's time plus the decision window.
        now = trace.first_seen + self.settings.decision.wait
        if self.current.for_tenant(trace.tenant).decide(view, now).kept:
            self.summary.already_kept += 1
            return
        key = trace_key(trace.trace_id, trace.tenant)
        if key in done:
            self.summary.already_exported += 1
            return
        if trace.tenant not in self.settings.tenants and self.routes.drop_unknown:
            self.summary.unknown_tenant += 1
            return
        decision = self.engine.decide(view, now)
        if not decision.kept or decision.policy is None:
            return
        self.summary.kept[decision.policy] += 1
        self.summary.spans += trace.spans
        policy = POLICY_PREFIX + decision.policy
        value = annotate_kept(
            trace.encoded, policy, decision.probability, decision.probability_known
        )
        value = self.routes.redact(trace.tenant, value)
        tenant = trace.tenant.encode()
        parts, too_large = sampled_parts(
            tenant, value, trace.spans, self.settings.kafka.max_message_bytes
        )
        self.summary.bytes += sum(len(part) for part, _ in parts)
        done.add(key)
        if self.producer is None:
            return
        if too_large is not None:
            self.summary.spans_too_large += 1
            send_dead_letter(
                self.producer,
                self.settings.kafka.dlq_topic,
                too_large,
                reason="span_too_large",
                detail="a span of a backfilled trace larger than kafka.max_message_bytes="
                f"{self.settings.kafka.max_message_bytes}",
                key=tenant,
                headers=[("caudal-dlq-trace-id", trace.trace_id.hex().encode())],
                max_bytes=self.settings.kafka.max_message_bytes,
                on_delivery=self.reports.on_delivery,
            )
        for part, spans in parts:
            produce(
                self.producer,
                self.settings.kafka.sampled_topic,
                key=tenant,
                value=part,
                headers=[(SPAN_COUNT_HEADER, str(spans).encode())],
                on_delivery=self.reports.on_delivery,
            )
            self.producer.poll(0)
        self.unconfirmed.append((key, int(start * 1000), policy))
        if len(self.unconfirmed) >= _CONFIRM_EVERY:
            self._confirm()

    def _confirm(self) -> None:
        """Wait until the exports were acknowledged, then record them as exported (a crash in
        between exports them again on the next run: at least once, never lost)."""
        if self.producer is None or not self.unconfirmed:
            return
        delivery = self.reports.wait(self.producer)
        if not delivery.ok:
            raise RuntimeError(f"kept traces were not acknowledged by the broker: {delivery}")
        for key, start_ms, policy in self.unconfirmed:
            produce(
                self.producer,
                self.settings.kafka.backfill_topic,
                key=key,
                value=policy.encode(),
                timestamp=start_ms,
                on_delivery=self.reports.on_delivery,
            )
            self.producer.poll(0)
        self.unconfirmed = []
        delivery = self.reports.wait(self.producer)
        if not delivery.ok:
            raise RuntimeError(f"the backfill record was not acknowledged: {delivery}")

    def _reporter(self, out: IO[str] | None) -> Callable[[ReplayStats], None] | None:
        if out is None:
            return None

        def report(stats: ReplayStats) -> None:
            out.write(
                f"\rbackfill: {stats.progress:.0%} of the range, {stats.records:,} records, "
                f"{self.summary.traces:,} traces in range, {sum(self.summary.kept.values()):,} "
                f"newly kept, {self.summary.already_kept:,} already kept"
            )
            out.flush()

        return report


def load_exported(settings: Settings, since: float, until: float) -> set[bytes]:
    """The trace keys an earlier backfill exported whose trace started between `since` and
    `until` (the records carry the trace's start as their time)."""
    kafka = settings.kafka
    consumer = Consumer(
        client_config(
            kafka,
            **{
                "group.id": f"{kafka.group_id}-backfill",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )
    try:
        topic = consumer.list_topics(kafka.backfill_topic, timeout=10).topics.get(
            kafka.backfill_topic
        )
        if topic is None or topic.error is not None or not topic.partitions:
            return set()
        partitions = set(topic.partitions)
        consumer.assign(
            [TopicPartition(kafka.backfill_topic, p, OFFSET_BEGINNING) for p in partitions]
        )
        found: set[bytes] = set()
        low, high = int(since * 1000), int(until * 1000)
        deadline = time.monotonic() + 60
        while partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kafka.backfill_topic} could not be read to its end")
            for msg in consumer.consume(1000, 1.0) or ():
                deadline = time.monotonic() + 60
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {kafka.backfill_topic}: {error}")
                    partitions.discard(where(msg)[1])
                    continue
                key = msg.key()
                if key and msg.value() and low <= msg.timestamp()[1] <= high:
                    found.add(bytes(key))
        return found
    finally:
        consumer.close()


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_summary(summary: BackfillSummary, as_json: bool, out: IO[str] = sys.stdout) -> None:
    """Print the summary (`--json`: one JSON object)."""
    out.write((json.dumps(summary.as_dict()) if as_json else summary.text()) + "\n")
