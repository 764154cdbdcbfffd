"""Kept spans carry the W3C threshold of the probability they were kept with (ot=th), so a
backend can weight its counts; none where a rate limit kept them."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from policies.tracestate import probability_of
from streams.config import DEFAULT_POLICIES, Settings
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache, PolicySets
from streams.pipeline.route import TenantRoutes
from streams.wire.tracekey import trace_key
from tests.streams.pipeline.test_buffer import MemoryStore
from tests.streams.pipeline.test_quarantine import Producer

# The default rules, with a rate-limited rule before the baseline.
LIMITED = {
    "name": "limited",
    "type": "and",
    "and_sub_policy": [
        {"name": "batch-jobs", "type": "string_attribute", "key": "job", "values": ["nightly"]},
        {"name": "cap", "type": "rate_limiting", "spans_per_second": 10**6},
    ],
}
POLICIES = [*DEFAULT_POLICIES[:-1], LIMITED, DEFAULT_POLICIES[-1]]


def request(trace_id: bytes, kind: str, trace_state: str = "") -> bytes:
    attributes = []
    if kind == "vip":
        attributes.append(KeyValue(key="user.tier", value=AnyValue(string_value="vip")))
    if kind == "nightly":
        attributes.append(KeyValue(key="job", value=AnyValue(string_value="nightly")))
    spans = []
    for n in range(3):
        span = Span(
            trace_id=trace_id,
            span_id=(n + 1).to_bytes(8, "big"),
            parent_span_id=b"" if n == 0 else (1).to_bytes(8, "big"),
            trace_state=trace_state,
            attributes=attributes,
        )
        if kind == "error" and n == 2:
            span.status.code = Status.STATUS_CODE_ERROR
        spans.append(span)
    batch = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    return ExportTraceServiceRequest(resource_spans=[batch]).SerializeToString()


def exported(kinds: list[str], trace_state: str = "") -> dict[str, list[tuple[float, str]]]:
    """Decide 400 traces of each kind; per kind, (sampling.probability, tracestate) of every
    exported span."""
    settings = Settings.model_validate({"policies": POLICIES})
    buffer = TraceBuffer(MemoryStore(), wait=1.0, max_traces=10_000)  # type: ignore[arg-type]
    cache = DecisionCache(MemoryStore(), kept=10_000, dropped=10_000, ttl=60.0)  # type: ignore[arg-type]
    producer = Producer()
    decider = Decider(
        PolicySets.from_settings(settings),
        TenantRoutes(settings),
        buffer,
        cache,
        producer,
        "sampled",
        "dlq",
    )
    kind_of = {}
    rng = random.Random(5)  # random trace IDs, as real ones are (FNV spreads them)
    for _ in range(400):
        for kind in kinds:
            trace_id = rng.randbytes(16)
            kind_of[trace_id] = kind
            buffer.append(
                0, trace_key(trace_id, "default"), request(trace_id, kind, trace_state), 1.0
            )
    decider.complete(decider.decide_due(10.0, 100_000), 10.0)
    out: dict[str, list[tuple[float, str]]] = {kind: [] for kind in kinds}
    for record in producer.on("sampled"):
        parsed = ExportTraceServiceRequest.FromString(record["value"])  # type: ignore[arg-type]
        for rs in parsed.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attrs = {kv.key: kv.value for kv in span.attributes}
                    probability = attrs["sampling.probability"].double_value
                    out[kind_of[span.trace_id]].append((probability, span.trace_state))
    return out


def implied(trace_state: str) -> float | None:
    for member in trace_state.split(","):
        if member.startswith("ot="):
            for field in member[3:].split(";"):
                if field.startswith("th:"):
                    return probability_of(field[3:])
    return None


def test_thresholds_state_the_configured_probabilities() -> None:
    spans = exported(["error", "vip", "plain", "nightly"])
    expected = {"error": 1.0, "vip": 0.5, "plain": 0.1}
    for kind, probability in expected.items():
        assert spans[kind], kind
        for attribute, state in spans[kind]:
            assert attribute == pytest.approx(probability)
            assert implied(state) == pytest.approx(probability, rel=0.005), (kind, state)
    # The share kept matches the stated probability (400 traces, 3 spans each).
    assert len(spans["vip"]) / 3 == pytest.approx(0.5 * 400, rel=0.2)
    assert len(spans["plain"]) / 3 == pytest.approx(0.1 * 400, rel=0.35)
    # Kept by a rate limit: the probability is unknown, so no threshold.
    assert spans["nightly"] and all(implied(state) is None for _, state in spans["nightly"])


def test_a_head_samplers_threshold_is_composed() -> None:
    spans = exported(["error", "plain"], trace_state="ot=th:c,vendor=x")  # head: 25 %
    for _, state in spans["error"]:
        assert implied(state) == pytest.approx(0.25, rel=0.005)
        assert state.endswith(",vendor=x")
    for _, state in spans["plain"]:
        assert implied(state) == pytest.approx(0.025, rel=0.005)
