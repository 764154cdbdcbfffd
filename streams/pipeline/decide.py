"""Decisions: expired traces go through the policy engine; kept ones go to `caudal-sampled`.

A decision is taken once per trace (tenant and trace ID) and remembered (the `decisions` table
plus a bounded in-memory cache) so late spans follow it. The order of effects is what makes
at-least-once safe:
1. decide and remember in memory (late spans arriving meanwhile follow the decision);
2. produce kept traces and wait for the broker's acknowledgement;
3. only then persist the decision and delete the trace from the buffer.
A crash between 2 and 3 re-decides the trace after recovery with the same answer (policies are
deterministic on the trace ID), so the worst case is a duplicate export, never a lost trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from confluent_kafka import KafkaException
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from policies import Decision, PolicyEngine, TraceView
from policies.flatten import checked_span_count
from streams.config import Settings
from streams.kafka.clients import SPAN_COUNT_HEADER, DeliveryFailures, ProducerLike, produce
from streams.kafka.dead_letters import send_dead_letter
from streams.ops.metrics import (
    DECISION_LAG,
    DECISIONS,
    DEGRADED_SPANS,
    LATE_SPANS,
    ORPHAN_SPANS,
    QUOTA_DROPS,
    TRACES_WITHOUT_ROOT,
    UNKNOWN_TENANT_DROPS,
)
from streams.pipeline.buffer import BufferedTrace, Pending, TraceBuffer, Unreadable
from streams.pipeline.decisions import (
    DEAD_LETTER_POLICY,
    LEGACY_RECORD,
    DecisionCache,
    Remembered,
    decode_decisions,
)
from streams.pipeline.degrade import DEGRADED_POLICY, shed_fragment
from streams.pipeline.route import TenantRoutes
from streams.wire.otlp import annotate_kept, split_request
from streams.wire.records import DEFAULT_MAX_MESSAGE_BYTES, RECORD_MARGIN
from streams.wire.tracekey import key_tenant, key_trace_id

__all__ = [
    "DEAD_LETTER_POLICY",
    "LEGACY_RECORD",
    "DecisionCache",
    "Decider",
    "PolicySets",
    "Remembered",
    "decode_decisions",
    "sampled_parts",
]

log = logging.getLogger(__name__)

_Read = TypeVar("_Read")


def sampled_parts(
    tenant: bytes, value: bytes, spans: int, max_message_bytes: int
) -> tuple[list[tuple[bytes, int]], bytes | None]:
    """A kept trace as the `caudal-sampled` records it needs, (value, spans) each, and the
    spans too large for any record (encoded), if some are."""
    budget = max_message_bytes - RECORD_MARGIN - len(tenant) - len(SPAN_COUNT_HEADER) - 12
    if len(value) <= budget:
        return [(value, spans)], None
    parts, too_large = split_request(ExportTraceServiceRequest.FromString(value), budget)
    return parts, None if too_large is None else too_large.SerializeToString()


@dataclass
class PolicySets:
    """The engine every tenant uses: the global one, or the tenant's own set; and which
    partitions this worker owns, for policies that keep state per partition."""

    default: PolicyEngine
    by_tenant: dict[str, PolicyEngine] = field(default_factory=dict)
    owned: frozenset[int] | None = None  # not told yet
    total: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicySets:
        """Build every engine a configuration describes (validated at load: cannot fail)."""
        return cls(settings.build_engine(), settings.build_tenant_engines())

    def for_tenant(self, tenant: str) -> PolicyEngine:
        """The engine that decides this tenant's traces."""
        return self.by_tenant.get(tenant, self.default)

    def adopt_state(self, previous: PolicySets) -> dict[str, bool]:
        """Each engine takes over the learned state of the engine it replaces (the same
        tenant's); returns per ``tenant:policy path`` whether the state was taken over."""
        before = previous._engines()
        outcome = {}
        for tenant, engine in self._engines().items():
            old = before.get(tenant)
            if old is not None:
                for path, adopted in engine.adopt_state(old).items():
                    outcome[f"{tenant or '*'}:{path}"] = adopted
        return outcome

    def set_partitions(self, owned: frozenset[int], total: int) -> None:
        """The partitions this worker owns, of `total`, for every engine's policies."""
        self.owned, self.total = owned, total
        for engine in self._engines().values():
            engine.set_partitions(owned, total)

    def states(self, partition: int) -> dict[str, bytes]:
        """Per ``tenant NUL policy path`` (no tenant for the global engine), the learned
        state of `partition` that changed since last asked."""
        out = {}
        for tenant, engine in self._engines().items():
            for path, data in engine.states(partition).items():
                out[f"{tenant}\x00{path}"] = data
        return out

    def restore(self, partition: int, states: Mapping[str, bytes]) -> None:
        """Hand each engine's policies their stored state of `partition`."""
        engines = self._engines()
        by_tenant: dict[str, dict[str, bytes]] = {}
        for name, data in states.items():
            tenant, _, path = name.partition("\x00")
            by_tenant.setdefault(tenant, {})[path] = data
        for tenant, found in by_tenant.items():
            engine = engines.get(tenant)
            if engine is None:
                continue
            for path, taken in engine.restore(partition, found).items():
                if not taken:
                    log.warning(
                        "policy state not restored (stored for another key) partition=%d "
                        "tenant=%s policy=%s",
                        partition,
                        tenant or "*",
                        path,
                    )

    def _engines(self) -> dict[str, PolicyEngine]:
        return {"": self.default, **self.by_tenant}


@dataclass
class DecidedBatch:
    """Decisions of one timer tick awaiting the broker's acknowledgement of kept traces."""

    items: list[tuple[bytes, Pending, Remembered]] = field(default_factory=list)
    failed: set[bytes] = field(default_factory=set)
    # Decisions per (policy, outcome, tenant label), counted once per batch, not per trace.
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    without_root: int = 0
    orphans: int = 0
    lags: list[float] = field(default_factory=list)
    lags_after_root: list[float] = field(default_factory=list)

    def count(self) -> None:
        """Add the batch's counts to the metrics."""
        for labels, n in self.counts.items():
            DECISIONS.labels(*labels).inc(n)
        if self.without_root:
            TRACES_WITHOUT_ROOT.inc(self.without_root)
        if self.orphans:
            ORPHAN_SPANS.inc(self.orphans)
        DECISION_LAG.labels("wait").observe_many(self.lags)
        DECISION_LAG.labels("after_root").observe_many(self.lags_after_root)
        self.counts, self.without_root, self.orphans = {}, 0, 0
        self.lags, self.lags_after_root = [], []


class Decider:
    """Decide due traces and hand kept ones to a producer of `caudal-sampled`.

    No trace can stop it: a fragment that is not OTLP is dead-lettered and the trace decided
    on the rest; a trace that cannot be decided, annotated, redacted or serialized is
    dead-lettered whole, remembered as `dead_letter`, and its late spans follow it there.
    Every record produced fits `max_message_bytes` (a large kept trace is cut into several
    records of the same trace).
    """

    def __init__(
        self,
        policy_sets: PolicySets,
        routes: TenantRoutes,
        buffer: TraceBuffer,
        cache: DecisionCache,
        producer: ProducerLike,
        sampled_topic: str,
        dlq_topic: str = "caudal-dlq",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        failures: DeliveryFailures | None = None,
    ) -> None:
        self.policy_sets = policy_sets
        self.routes = routes
        self.buffer = buffer
        self.cache = cache
        self.producer = producer
        self.sampled_topic = sampled_topic
        self.dlq_topic = dlq_topic
        self.max_message_bytes = max_message_bytes
        # Deliveries outside a decision batch (late spans, degraded mode, dead letters of the
        # buffer agent): a failure holds back the next offset commit.
        self.failures = failures or DeliveryFailures()

    def decide_due(
        self,
        now: float,
        limit: int = 5000,
        clock: Callable[[int], float] | None = None,
        partitions: Iterable[int] = (),
    ) -> DecidedBatch:
        """Decide traces whose window closed and produce the kept ones (not yet flushed).

        A window closes on the partition's `clock` (streams.pipeline.progress; `now` without
        one); only traces of `partitions` are decided (every buffered one when empty).
        """
        batch = DecidedBatch()
        due = self.buffer.pop_due(clock if clock is not None else now, limit, partitions)
        remember, items = self.cache.remember, batch.items
        for key, entry, trace in self.buffer.load_each(due):
            if trace is None:
                continue
            try:
                remembered = self._decide(key, entry, trace, now, batch)
            except KafkaException:
                raise  # the producer failed, not the trace
            except Exception as exc:  # whatever the trace holds, the others go on
                detail = f"{type(exc).__name__}: {exc}"
                remembered = self._quarantine(key, entry, trace, now, batch, detail)
            remember(key, remembered)
            items.append((key, entry, remembered))
        batch.count()
        return batch

    def _decide(
        self, key: bytes, entry: Pending, trace: BufferedTrace, now: float, batch: DecidedBatch
    ) -> Remembered:
        """Decide on the stored bytes; only a kept trace is parsed whole (to check it).

        The fragments, back to back, are one OTLP request. One whose inside is broken shows
        when the bytes are read (DecodeError): then every fragment is parsed on its own, those
        that fail are dead-lettered, and the trace is decided on the rest. Nothing is counted,
        admitted or produced before the trace has been read whole.
        """
        trace_id, tenant = key_trace_id(key), key_tenant(key)
        engine = self.policy_sets.for_tenant(tenant)
        usable = trace.fragments
        encoded = usable[0] if len(usable) == 1 else b"".join(usable)
        try:
            view = TraceView.from_request(trace_id, encoded)
            view.partition = entry.partition
            # Read before any policy runs, so a broken fragment is not taken for policy errors.
            has_root, orphans = view.has_root, view.orphan_span_count
            decision = engine.decide(view, now)
            if decision.kept:
                # Every byte read: a fragment broken deep inside shows here.
                checked_span_count(encoded)
        except DecodeError:
            request, usable = self._parse(key, usable, batch)
            view = TraceView.from_resource_spans(trace_id, request.resource_spans)
            view.partition = entry.partition
            decision = engine.decide(view, now)
            has_root, orphans = view.has_root, view.orphan_span_count
            encoded = request.SerializeToString()
        if view.span_count == 0:
            return self._quarantine(key, entry, trace, now, batch, "no spans", usable)
        if not has_root:
            batch.without_root += 1
        batch.orphans += orphans
        return self._conclude(key, tenant, entry, trace, now, batch, view, decision, encoded)

    def _conclude(
        self,
        key: bytes,
        tenant: str,
        entry: Pending,
        trace: BufferedTrace,
        now: float,
        batch: DecidedBatch,
        view: TraceView,
        decision: Decision,
        encoded: bytes,
    ) -> Remembered:
        """Apply a decision: the tenant's quota, annotations, redaction, the produce; counted."""
        kept, policy = decision.kept, decision.policy or "none"
        label = self.routes.label(tenant)
        if kept:
            refused = self.routes.admit(tenant, view.span_count, view.has_error, now)
            if refused == "quota":
                QUOTA_DROPS.labels(label, policy).inc()
            elif refused:
                UNKNOWN_TENANT_DROPS.inc()
            if refused:
                kept, policy = False, refused
        probability = decision.probability if kept else 0.0
        if kept:
            known = decision.probability_known
            plain = not view.trace_states
            annotated = annotate_kept(encoded, policy, probability, known, plain)
            value = self.routes.redact(tenant, annotated)
            self._produce(key, value, view.span_count, batch)
        labels = (policy, "kept", label) if kept else ("none", "dropped", label)
        batch.counts[labels] = batch.counts.get(labels, 0) + 1
        lags = batch.lags_after_root if entry.after_root else batch.lags
        lags.append(max(0.0, now - entry.deadline))
        return Remembered(now, entry.partition, kept, policy, probability, tenant, trace.origins)

    def _parse(
        self, key: bytes, fragments: list[bytes], batch: DecidedBatch
    ) -> tuple[ExportTraceServiceRequest, list[bytes]]:
        """The spans of `fragments` and the fragments that hold them; fragments that are not
        OTLP are dead-lettered and left out."""
        usable, requests = self._read_each(
            key, fragments, batch, ExportTraceServiceRequest.FromString
        )
        request = ExportTraceServiceRequest()
        for part in requests:
            request.MergeFrom(part)
        return request, usable

    def _read_each(
        self,
        key: bytes,
        fragments: list[bytes],
        batch: DecidedBatch,
        read: Callable[[bytes], _Read],
    ) -> tuple[list[bytes], list[_Read]]:
        """`read` applied to each fragment: the fragments it read and what it returned; a
        fragment it cannot read is dead-lettered (invalid_protobuf)."""
        usable: list[bytes] = []
        results: list[_Read] = []
        for fragment in fragments:
            try:
                result = read(fragment)
            except Exception as exc:
                detail = f"a buffered fragment: {exc}"
                self._dead_letter(key, fragment, "invalid_protobuf", detail, batch)
            else:
                usable.append(fragment)
                results.append(result)
        return usable, results

    def _quarantine(
        self,
        key: bytes,
        entry: Pending,
        trace: BufferedTrace,
        now: float,
        batch: DecidedBatch,
        detail: str,
        fragments: list[bytes] | None = None,
    ) -> Remembered:
        """Dead-letter a trace that cannot be decided (its `fragments` not yet dead-lettered,
        all by default); its late spans will follow it."""
        for fragment in trace.fragments if fragments is None else fragments:
            self._dead_letter(key, fragment, "undecidable_trace", detail, batch)
        tenant = key_tenant(key)
        return Remembered(
            now, entry.partition, False, DEAD_LETTER_POLICY, 0.0, tenant, trace.origins
        )

    def _dead_letter(
        self, key: bytes, value: bytes, reason: str, detail: str, batch: DecidedBatch | None
    ) -> None:
        send_dead_letter(
            self.producer,
            self.dlq_topic,
            value,
            reason=reason,
            detail=detail,
            key=key_tenant(key).encode(),
            headers=[("caudal-dlq-trace-id", key_trace_id(key).hex().encode())],
            max_bytes=self.max_message_bytes,
            on_delivery=self._on_delivery(key, batch, "dead_letter"),
        )

    def _on_delivery(
        self, key: bytes, batch: DecidedBatch | None, kind: str
    ) -> Callable[[object, object], None]:
        """A delivery callback: a failure retries the decision of `batch`, or (outside a
        decision) is counted and refuses the next commit."""

        def on_delivery(err: object, _msg: object) -> None:
            if err is not None:
                if batch is not None:
                    batch.failed.add(key)
                else:
                    self.failures.failed(kind)

        return on_delivery

    def settle_recovered(
        self,
        partitions: Iterable[int],
        unreadable: list[Unreadable],
        bad_decisions: list[tuple[int, bytes]],
    ) -> None:
        """After recovery of `partitions`: dead-letter and delete stored records that cannot be
        read, and delete what is left of traces already decided (a crash between a decision's
        record and its tombstones)."""
        for item in unreadable:
            send_dead_letter(
                self.producer,
                self.dlq_topic,
                item.value,
                reason="unreadable_buffer",
                detail=f"stored key {item.key.hex()[:100]} is not a buffered fragment",
                origin=(self.buffer.store.topic, item.partition, -1),
                max_bytes=self.max_message_bytes,
                on_delivery=self._note_failure,
            )
        self.buffer.drop_unreadable(unreadable)
        partitions = list(partitions)
        # An older release's decisions: stored again as a record, then their keys deleted.
        for partition, key in [*self.cache.migrate(partitions), *bad_decisions]:
            self.cache.store.delete(partition, key)
        for partition in partitions:
            self.policy_sets.restore(partition, self.cache.policy_states.pop(partition, {}))
        for partition in partitions:
            queue = self.buffer.queues.get(partition)
            for key in [k for k in queue or () if self.cache.get(k) is not None]:
                self.buffer.discard(partition, key)

    def _note_failure(self, err: object, _msg: object) -> None:
        if err is not None:
            self.failures.failed("dead_letter")

    def follow(self, key: bytes, decision: Remembered, fragment: bytes) -> None:
        """A late span: export it at once if its trace was kept, else drop it. Counted.

        Raises if the fragment is not OTLP (the caller dead-letters it)."""
        if decision.policy == DEAD_LETTER_POLICY:
            self._dead_letter(key, fragment, "undecidable_trace", "a late span", None)
            return
        spans = checked_span_count(fragment)  # every byte read: raises if not OTLP
        if decision.kept:
            engine = self.policy_sets.for_tenant(decision.tenant)
            known = engine.probability_known(decision.policy)
            annotated = annotate_kept(fragment, decision.policy, decision.probability, known)
            self._produce(key, self.routes.redact(decision.tenant, annotated), spans, None)
            LATE_SPANS.labels("kept").inc(spans)
        else:
            LATE_SPANS.labels("dropped").inc(spans)

    def shed(self, key: bytes, fragment: bytes, percentage: float, now: float) -> None:
        """Degraded mode: decide a fragment of a new trace on arrival (streams.pipeline.degrade)."""
        tenant = key_tenant(key)
        result = shed_fragment(key_trace_id(key), fragment, percentage)
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
        value = self.routes.redact(tenant, result.request)
        self._produce(key, value, result.kept_spans, None)

    def complete(
        self, batch: DecidedBatch, now: float, writable: Callable[[int], bool] = lambda p: True
    ) -> None:
        """After the flush: persist decisions and free the buffer; retry what failed."""
        retry = []
        allowed = {p: writable(p) for p in {entry.partition for _, entry, _ in batch.items}}
        if batch.failed or not all(allowed.values()):
            done = []
            for item in batch.items:
                key, entry, _ = item
                # Not acknowledged, or this worker's lease lapsed meanwhile
                # (streams.pipeline.handover): the trace stays in the table and is decided
                # again by whoever owns it.
                if key in batch.failed or not allowed[entry.partition]:
                    self.cache.forget(key, writable)
                    retry.append((key, entry))
                else:
                    done.append(item)
        else:
            done = batch.items  # the common case: every trace's decision stands
        # A late span may have replaced the decision meanwhile (and stored it: `advance`).
        pending = self.cache.pending
        current = [
            (key, pending.get(key) or self.cache.latest(key) or remembered)
            for key, _, remembered in done
        ]
        self.cache.persist_many([item for item in current if item[1].record is None])
        self.buffer.remove_many([entry for _, entry, _ in done])
        if retry:
            self.buffer.requeue(retry, now)
        self.cache.evict(now, writable)
        for partition, owned in allowed.items():
            if owned and writable(partition):
                for name, value in self.policy_sets.states(partition).items():
                    self.cache.put_policy_state(partition, name, value)

    def _produce(
        self,
        key: bytes,
        value: bytes,
        spans: int,
        batch: DecidedBatch | None,
    ) -> None:
        """Produce a kept trace (or late spans of one) to `caudal-sampled`, keyed by tenant, in
        as many records as `max_message_bytes` needs."""
        tenant = key_tenant(key).encode()

        on_delivery = self._on_delivery(key, batch, "sampled")
        parts, too_large = sampled_parts(tenant, value, spans, self.max_message_bytes)
        if too_large is not None:
            self._dead_letter(
                key,
                too_large,
                "span_too_large",
                f"a kept span larger than kafka.max_message_bytes={self.max_message_bytes}",
                batch,
            )
        for value, count in parts:
            produce(
                self.producer,
                self.sampled_topic,
                key=tenant,
                value=value,
                headers=[(SPAN_COUNT_HEADER, str(count).encode())],
                on_delivery=on_delivery,
            )
        # No poll per record: its callbacks are served by the flush that ends the decision
        # batch (and the one before every commit). A poll lets go of the GIL, and taking it
        # back behind the split thread cost 10 % of the decision loop.
