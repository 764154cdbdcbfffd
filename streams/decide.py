"""Decisions: expired traces go through the policy engine; kept ones go to `caudal-sampled`.

A decision is taken once per trace ID and remembered (the `decisions` table plus a bounded
in-memory cache) so late spans follow it. The order of effects is what makes at-least-once safe:
1. decide and remember in memory (late spans arriving meanwhile follow the decision);
2. produce kept traces and wait for the broker's acknowledgement;
3. only then persist the decision and delete the trace from the buffer.
A crash between 2 and 3 re-decides the trace after recovery with the same answer (policies are
deterministic on the trace ID), so the worst case is a duplicate export, never a lost trace.
"""

from __future__ import annotations

import dataclasses
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from policies import Decision, PolicyEngine, TraceView
from streams.buffer import Pending, TraceBuffer
from streams.config import Settings
from streams.degrade import DEGRADED_POLICY, DEGRADED_SPANS, shed_fragment
from streams.kafka import SPAN_COUNT_HEADER
from streams.metrics import (
    DECISION_LAG,
    DECISIONS,
    LATE_SPANS,
    ORPHAN_SPANS,
    QUOTA_DROPS,
    TRACES_WITHOUT_ROOT,
    UNKNOWN_TENANT_DROPS,
)
from streams.origin import add_origin, covers
from streams.otlp import annotate_kept
from streams.route import TenantRoutes
from streams.state import TableStore

__all__ = ["DecisionCache", "Decider", "PolicySets", "Remembered"]

_DECISION = struct.Struct(">dBdH")


@dataclass(frozen=True, slots=True)
class Remembered:
    """A decision kept for late spans."""

    decided_at: float
    partition: int
    kept: bool
    policy: str
    probability: float
    tenant: str
    # The origins (streams.origin) of the spans the trace held: a fragment they cover is a
    # copy of one already decided, not a late span.
    origins: bytes = b""

    def encode(self) -> bytes:
        """Value stored in the `decisions` table."""
        count = len(self.origins) // 8
        head = _DECISION.pack(self.decided_at, self.kept, self.probability, count)
        return head + self.origins + self.policy.encode() + b"\0" + self.tenant.encode()

    @classmethod
    def decode(cls, partition: int, value: bytes) -> Remembered:
        """Inverse of `encode`."""
        decided_at, kept, probability, count = _DECISION.unpack_from(value)
        end = _DECISION.size + 8 * count
        policy, _, tenant = value[end:].partition(b"\0")
        return cls(
            decided_at,
            partition,
            bool(kept),
            policy.decode(),
            probability,
            tenant.decode(),
            value[_DECISION.size : end],
        )

    def already_applied(self, origin: int) -> bool:
        """Was the fragment of this origin part of the trace when it was decided?"""
        return covers(self.origins, origin)


class DecisionCache:
    """Bounded memory of recent decisions, kept and dropped counted separately (as Refinery)."""

    def __init__(self, store: TableStore, kept: int, dropped: int, ttl: float) -> None:
        self.store = store
        self.limits = {True: kept, False: dropped}
        self.ttl = ttl
        self.entries: dict[bool, OrderedDict[bytes, Remembered]] = {
            True: OrderedDict(),
            False: OrderedDict(),
        }

    def get(self, trace_id: bytes) -> Remembered | None:
        """The remembered decision for a trace, if any."""
        return self.entries[True].get(trace_id) or self.entries[False].get(trace_id)

    def remember(self, trace_id: bytes, decision: Remembered) -> None:
        """Hold a decision in memory (persisted later by `persist`)."""
        self.entries[decision.kept][trace_id] = decision

    def advance(self, trace_id: bytes, decision: Remembered, origin: int) -> None:
        """A late span was applied: remember its origin so a copy is not applied again."""
        origins = add_origin(decision.origins, origin)
        if origins != decision.origins:
            moved = dataclasses.replace(decision, origins=origins)
            self.entries[moved.kept][trace_id] = moved
            self.persist(trace_id, moved)

    def forget(self, trace_id: bytes) -> None:
        """Drop a decision that could not be carried out."""
        for entries in self.entries.values():
            entries.pop(trace_id, None)

    def persist(self, trace_id: bytes, decision: Remembered) -> None:
        """Write a decision to the changelogged table."""
        self.store.put(decision.partition, trace_id, decision.encode())

    def evict(self, now: float, writable: Callable[[int], bool] = lambda p: True) -> int:
        """Forget decisions beyond the size limits or older than the TTL; return how many.

        A decision of a partition handed over (not `writable`) leaves memory only: its table
        belongs to the next owner.
        """
        evicted = 0
        for kept, entries in self.entries.items():
            limit = self.limits[kept]
            while entries:
                trace_id, entry = next(iter(entries.items()))
                if len(entries) <= limit and now - entry.decided_at < self.ttl:
                    break
                entries.popitem(last=False)
                if writable(entry.partition):
                    self.store.delete(entry.partition, trace_id)
                evicted += 1
        return evicted

    def rebuild(self, partitions: Iterable[int]) -> None:
        """Load the remembered decisions of `partitions` from the table (after recovery)."""
        partitions = set(partitions)
        self.forget_partitions(partitions)
        loaded = []
        for partition in partitions:
            for trace_id, value in self.store.items(partition):
                loaded.append((trace_id, Remembered.decode(partition, value)))
        for trace_id, decision in loaded:
            self.entries[decision.kept][trace_id] = decision
        # Eviction goes oldest first: keep each map in decision order.
        for kept, entries in self.entries.items():
            self.entries[kept] = OrderedDict(
                sorted(entries.items(), key=lambda item: item[1].decided_at)
            )

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the decisions of partitions this worker no longer owns (from memory only)."""
        gone = set(partitions)
        if not gone:
            return
        for entries in self.entries.values():
            for trace_id in [t for t, d in entries.items() if d.partition in gone]:
                del entries[trace_id]


@dataclass(frozen=True)
class PolicySets:
    """The engine every tenant uses: the global one, or the tenant's own set."""

    default: PolicyEngine
    by_tenant: dict[str, PolicyEngine] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicySets:
        """Build every engine a configuration describes (validated at load: cannot fail)."""
        return cls(settings.build_engine(), settings.build_tenant_engines())

    def for_tenant(self, tenant: str) -> PolicyEngine:
        """The engine that decides this tenant's traces."""
        return self.by_tenant.get(tenant, self.default)


@dataclass
class DecidedBatch:
    """Decisions of one timer tick awaiting the broker's acknowledgement of kept traces."""

    items: list[tuple[bytes, Pending, Remembered]] = field(default_factory=list)
    failed: set[bytes] = field(default_factory=set)


class Decider:
    """Decide due traces and hand kept ones to a producer of `caudal-sampled`."""

    def __init__(
        self,
        policy_sets: PolicySets,
        routes: TenantRoutes,
        buffer: TraceBuffer,
        cache: DecisionCache,
        producer: object,
        sampled_topic: str,
    ) -> None:
        self.policy_sets = policy_sets
        self.routes = routes
        self.buffer = buffer
        self.cache = cache
        self.producer = producer
        self.sampled_topic = sampled_topic

    def decide_due(
        self,
        now: float,
        limit: int = 5000,
        clock: Callable[[int], float] | None = None,
        partitions: Iterable[int] = (),
    ) -> DecidedBatch:
        """Decide traces whose window closed and produce the kept ones (not yet flushed).

        A window closes on the partition's `clock` (streams.progress; `now` without one); only
        traces of `partitions` are decided (every buffered one when empty).
        """
        batch = DecidedBatch()
        due = self.buffer.pop_due(clock if clock is not None else now, limit, partitions)
        for trace_id, entry in due:
            trace = self.buffer.load(trace_id, entry)
            if trace is None:
                continue
            request = ExportTraceServiceRequest.FromString(trace.otlp)
            view = TraceView.from_resource_spans(trace_id, request.resource_spans)
            engine = self.policy_sets.for_tenant(trace.tenant)
            decision: Decision = engine.decide(view, now)
            if view.root_span is None:
                TRACES_WITHOUT_ROOT.inc()
            orphans = view.orphan_span_count
            if orphans:
                ORPHAN_SPANS.inc(orphans)
            kept, policy = decision.kept, decision.policy or "none"
            label = self.routes.label(trace.tenant)
            if kept:
                refused = self.routes.admit(trace.tenant, view.span_count, view.has_error, now)
                if refused == "quota":
                    QUOTA_DROPS.labels(label, policy).inc()
                elif refused:
                    UNKNOWN_TENANT_DROPS.inc()
                if refused:
                    kept, policy = False, refused
            probability = decision.probability if kept else 0.0
            remembered = Remembered(
                now, entry.partition, kept, policy, probability, trace.tenant, trace.origins
            )
            self.cache.remember(trace_id, remembered)
            if kept:
                annotate_kept(request, policy, probability)
                self.routes.redact(trace.tenant, request)
                self._produce(trace_id, trace.tenant, request, view.span_count, batch)
            DECISIONS.labels(policy if kept else "none", "kept" if kept else "dropped", label).inc()
            DECISION_LAG.observe(max(0.0, now - entry.deadline))
            batch.items.append((trace_id, entry, remembered))
        return batch

    def follow(self, trace_id: bytes, decision: Remembered, fragment: bytes, spans: int) -> None:
        """A late span: export it at once if its trace was kept, else drop it. Counted."""
        if decision.kept:
            request = annotate_kept(
                ExportTraceServiceRequest.FromString(fragment),
                decision.policy,
                decision.probability,
            )
            self.routes.redact(decision.tenant, request)
            self._produce(trace_id, decision.tenant, request, spans, None)
            LATE_SPANS.labels("kept").inc(spans)
        else:
            LATE_SPANS.labels("dropped").inc(spans)

    def shed(
        self, trace_id: bytes, tenant: str, fragment: bytes, percentage: float, now: float
    ) -> None:
        """Degraded mode: decide a fragment of a new trace on arrival (see streams.degrade)."""
        result = shed_fragment(trace_id, fragment, percentage)
        if result.dropped_spans:
            DEGRADED_SPANS.labels("dropped").inc(result.dropped_spans)
        if result.request is None:
            return
        refused = self.routes.admit(tenant, result.kept_spans, result.has_error, now)
        if refused:
            if refused == "quota":
                QUOTA_DROPS.labels(self.routes.label(tenant), DEGRADED_POLICY).inc()
            else:
                UNKNOWN_TENANT_DROPS.inc()
            DEGRADED_SPANS.labels("dropped").inc(result.kept_spans)
            return
        DEGRADED_SPANS.labels("kept").inc(result.kept_spans)
        self.routes.redact(tenant, result.request)
        self._produce(trace_id, tenant, result.request, result.kept_spans, None)

    def complete(
        self, batch: DecidedBatch, now: float, writable: Callable[[int], bool] = lambda p: True
    ) -> None:
        """After the flush: persist decisions and free the buffer; retry what failed."""
        retry = []
        for trace_id, entry, remembered in batch.items:
            # Not acknowledged, or this worker's lease lapsed meanwhile (streams.handover): the
            # trace stays in the table and is decided again by whoever owns it.
            if trace_id in batch.failed or not writable(entry.partition):
                self.cache.forget(trace_id)
                retry.append((trace_id, entry))
                continue
            self.cache.persist(trace_id, remembered)
            self.buffer.remove(entry.partition, trace_id)
        if retry:
            self.buffer.requeue(retry, now)
        self.cache.evict(now, writable)

    def _produce(
        self,
        trace_id: bytes,
        tenant: str,
        request: ExportTraceServiceRequest,
        spans: int,
        batch: DecidedBatch | None,
    ) -> None:
        def on_delivery(err: object, _msg: object) -> None:
            if err is not None and batch is not None:
                batch.failed.add(trace_id)

        self.producer.produce(  # type: ignore[attr-defined]
            self.sampled_topic,
            key=tenant.encode(),
            value=request.SerializeToString(),
            headers=[(SPAN_COUNT_HEADER, str(spans).encode())],
            on_delivery=on_delivery,
        )
        self.producer.poll(0)  # type: ignore[attr-defined]
