"""End to end on the real broker: SDK-encoded traces in, the five rules, per-tenant export."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from streams.devtools.broker import LocalBroker
from tests.integration.harness import Pipeline, wait_for
from tests.integration.sdk_traces import SdkTraces, encode

pytestmark = pytest.mark.integration

COUNTS = {"ordinary": 2000, "vip": 2000, "error": 150, "slow": 150, "critical": 150}
Z_999 = 3.29  # two-sided 99.9 % normal quantile


def within_binomial(kept: int, n: int, p: float) -> bool:
    return abs(kept - n * p) <= Z_999 * math.sqrt(n * p * (1 - p)) + 1


def span_attrs(span: dict) -> dict[str, object]:
    out = {}
    for kv in span.get("attributes", []):
        value = kv["value"]
        out[kv["key"]] = next(iter(value.values())) if value else None
    return out


@pytest.fixture
def pipeline(broker: LocalBroker, tmp_path: Path):
    p = Pipeline(
        broker,
        tmp_path,
        exporters={
            "files-acme": {"type": "file", "path": str(tmp_path / "out-acme")},
            "files-globex": {"type": "file", "path": str(tmp_path / "out-globex")},
            "globex-kafka": {"type": "kafka", "topic": f"globex-{tmp_path.name[-8:]}"},
            "files-default": {"type": "file", "path": str(tmp_path / "out-default")},
        },
        tenants={
            "acme": {"exporters": ["files-acme"]},
            "globex": {"exporters": ["files-globex", "globex-kafka"]},
            "default": {"exporters": ["files-default"]},
        },
    )
    yield p
    p.stop()


def test_five_rules_tenants_late_spans(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker()
    sdk = SdkTraces()
    for kind, count in COUNTS.items():
        for i in range(count):
            # acme names itself in a resource attribute, globex through the Kafka header.
            tenant = "acme" if i % 2 else "globex"
            sdk.make(kind, tenant, tenant_in_resource=tenant == "acme")
    traces = sdk.spans_by_trace()
    total = len(traces)
    assert total == sum(COUNTS.values())
    worker.wait_ready()

    # Each trace is sent in two parts, a second apart, packed 50 traces to a message.
    rng = random.Random(1)
    order = list(traces)
    rng.shuffle(order)
    for part in (0, 1):
        for tenant in ("acme", "globex"):
            ids = [t for t in order if sdk.tenants[t] == tenant]
            headers = [("x-tenant-id", b"globex")] if tenant == "globex" else []
            for start in range(0, len(ids), 50):
                spans = [s for t in ids[start : start + 50] for s in traces[t][part::2]]
                pipeline.produce(encode(spans), headers)
        pipeline.flush()
        time.sleep(1.0)

    wait_for(lambda: worker.total("caudal_decisions_total") >= total, 90, "all decisions")
    assert worker.total("caudal_decisions_total") == total
    assert worker.total("caudal_spans_received_total") == sum(len(s) for s in traces.values())

    def exported_ids() -> dict[str, dict]:
        return {
            tenant: dict(by_trace)
            for tenant, by_trace in (
                ("acme", pipeline.exported("out-acme").get("acme", {})),
                ("globex", pipeline.exported("out-globex").get("globex", {})),
            )
        }

    kept_total = int(worker.total("caudal_decisions_total", outcome="kept"))
    wait_for(lambda: sum(len(v) for v in exported_ids().values()) >= kept_total, 60, "file exports")
    exported = exported_ids()
    kept = {tid: tenant for tenant, by in exported.items() for tid in by}

    # Tenant isolation: every kept trace is in its own tenant's files, nowhere else.
    for tid, tenant in kept.items():
        assert sdk.tenants[tid] == tenant
    assert not pipeline.exported("out-default"), "no trace belongs to the default tenant"
    assert len(kept) == kept_total

    # Whole traces, exported once, annotated on every span.
    for by_trace in exported.values():
        for tid, lines in by_trace.items():
            assert len(lines) == 1, f"trace {tid} exported {len(lines)} times"
            spans = [
                s
                for rs in lines[0]["resourceSpans"]
                for ss in rs["scopeSpans"]
                for s in ss["spans"]
            ]
            assert len(spans) == len(traces[tid])
            for span in spans:
                attrs = span_attrs(span)
                assert attrs["sampling.policy"] in {
                    "errors",
                    "slow",
                    "critical-services",
                    "vip-users",
                    "baseline",
                }
                assert 0 < float(attrs["sampling.probability"]) <= 1

    by_kind = Counter(sdk.kinds[tid] for tid in kept)
    for kind in ("error", "slow", "critical"):
        assert by_kind[kind] == COUNTS[kind], f"every {kind} trace is kept"
    assert within_binomial(by_kind["vip"], COUNTS["vip"], 0.5), by_kind
    assert within_binomial(by_kind["ordinary"], COUNTS["ordinary"], 0.1), by_kind

    # globex's Kafka exporter received exactly globex's kept traces.
    globex_kept = {tid for tid, t in kept.items() if t == "globex"}
    topic = pipeline.config["exporters"]["globex-kafka"]["topic"]
    messages = pipeline.consume_all(topic, expect=len(globex_kept))
    assert {m.key() for m in messages} == {b"globex"}
    assert len(messages) == len(globex_kept)

    # Late spans follow the decision already made.
    kept_late = [t for t in kept if sdk.tenants[t] == "acme"][:20]
    dropped_late = [t for t in traces if t not in kept and sdk.tenants[t] == "acme"][:20]
    tracer = sdk._tracer("frontend", "acme")
    late_spans = []
    for tid in kept_late + dropped_late:
        parent = NonRecordingSpan(
            SpanContext(int(tid, 16), 0x1234, is_remote=True, trace_flags=TraceFlags(1))
        )
        span = tracer.start_span("late", context=trace_api.set_span_in_context(parent))
        span.end()
    late_spans = [s for s in sdk.exporter.get_finished_spans() if s.name == "late"]
    pipeline.produce(encode(late_spans))
    pipeline.flush()
    wait_for(lambda: worker.total("caudal_late_spans_total") >= 40, 30, "late spans to be counted")
    assert worker.total("caudal_late_spans_total", outcome="kept") == 20
    assert worker.total("caudal_late_spans_total", outcome="dropped") == 20
    wait_for(
        lambda: all(len(pipeline.exported("out-acme")["acme"][t]) == 2 for t in kept_late),
        30,
        "late spans of kept traces to be exported",
    )
    after = pipeline.exported("out-acme")["acme"]
    for tid in dropped_late:
        assert tid not in after
    assert worker.stop() == 0
