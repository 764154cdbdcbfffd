"""Export on the real broker with real HTTP backends: isolation, outages, rejection, quotas."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from streams.devtools.broker import LocalBroker
from streams.devtools.generate import build_trace
from tests.httpbackend import HttpBackend
from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.integration

EMAIL = "jane.doe@example.com"
CARD = "4111-1111-1111-1111"
REDACTION = {
    "values": [
        {"pattern": "[\\w.+-]+@[\\w-]+\\.[\\w.]+", "replacement": "<email>"},
        {"pattern": "\\b(?:\\d[ -]?){13,16}\\b", "replacement": "<card>"},
    ]
}
KEEP_ALL = [{"name": "everything", "type": "always_sample"}]


def make_traces(
    rng: random.Random, tenant: str, count: int, kinds=("ordinary",)
) -> dict[str, bytes]:
    """Traces of 10 spans carrying PII in attributes, as serialized requests by trace ID."""
    out = {}
    for _ in range(count):
        trace_id, blocks = build_trace(rng, rng.choice(kinds), tenant, time.time_ns(), spans=10)
        for rs in blocks:
            for span in rs.scope_spans[0].spans:
                span.attributes.append(
                    KeyValue(key="user.contact", value=AnyValue(string_value=EMAIL))
                )
                span.attributes.append(
                    KeyValue(key="payment.note", value=AnyValue(string_value=f"card {CARD}"))
                )
        out[trace_id.hex()] = ExportTraceServiceRequest(resource_spans=blocks).SerializeToString()
    return out


def exporter(backend: HttpBackend, **extra: object) -> dict[str, object]:
    return {"type": "otlp_http", "endpoint": backend.url, **extra}


@pytest.fixture
def backends():
    started: dict[str, HttpBackend] = {}

    def make(name: str, **kwargs: object) -> HttpBackend:
        started[name] = HttpBackend(**kwargs).start()
        return started[name]

    yield make
    for backend in started.values():
        backend.stop()


def test_isolation_rejection_quota_and_redaction(
    broker: LocalBroker, tmp_path: Path, backends
) -> None:
    names = ("acme", "globex", "initech")
    http = {name: backends(name) for name in names}
    rejected = backends("rejected", answer=lambda now: (400, {}))
    metered = backends("metered")
    pipeline = Pipeline(
        broker,
        tmp_path,
        exporters={
            **{name: exporter(http[name]) for name in names},
            "rejected": exporter(rejected),
            "metered": exporter(metered),
        },
        tenants={
            **{name: {"exporters": [name]} for name in names},
            "default": {"exporters": ["acme"]},
            "rejected": {"exporters": ["rejected"], "policies": KEEP_ALL},
            "metered": {
                "exporters": ["metered"],
                "policies": KEEP_ALL,
                "quota_spans_per_second": 1000,
            },
        },
        redaction=REDACTION,
        decision={"wait": "2s"},
    )
    rng = random.Random(5)
    kinds = ("ordinary", "error", "slow", "vip", "critical")
    traces = {name: make_traces(rng, name, 5000 // 3 + 1, kinds) for name in names}
    bad = make_traces(rng, "rejected", 20)
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        for tenant_traces in (*traces.values(), bad):
            for payload in tenant_traces.values():
                pipeline.produce(payload)
        pipeline.flush()
        first_wave = sum(len(t) for t in traces.values()) + len(bad)
        wait_for(lambda: worker.total("caudal_decisions_total") >= first_wave, 120, "decisions")

        # Then the metered tenant offers 3,000 spans/s of kept traces for 15 s.
        offered: dict[str, bytes] = {}
        started = time.monotonic()
        for tick in range(150):  # 30 traces every 100 ms
            batch = make_traces(rng, "metered", 30)
            offered.update(batch)
            for payload in batch.values():
                pipeline.produce(payload)
            pipeline.flush()
            time.sleep(max(0.0, started + (tick + 1) / 10 - time.monotonic()))
        total = sum(len(t) for t in traces.values()) + len(bad) + len(offered)
        wait_for(lambda: worker.total("caudal_decisions_total") >= total, 120, "all decisions")

        for name in names:
            kept = int(worker.total("caudal_decisions_total", tenant=name, outcome="kept"))
            wait_for(
                lambda name=name, kept=kept: len(http[name].spans_by_trace()) >= kept,
                60,
                f"{name} exports",
            )
            received = http[name].spans_by_trace()
            assert len(received) == kept
            assert set(received) <= set(traces[name]), f"{name} got another tenant's traces"
            assert set(received.values()) == {10}, "whole traces, each exported once"

        # Rejected (400): dead-lettered with the status and the backend's answer, not retried.
        letters = pipeline.consume_all(pipeline.kafka["dlq_topic"], expect=20)
        assert len(letters) == 20
        for letter in letters:
            headers = dict(letter.headers())
            assert headers["caudal-dlq-reason"] == b"exporter_rejected"
            assert headers["caudal-dlq-status"] == b"400"
            assert b"backend says no" in headers["caudal-dlq-body"]
        sent = Counter(t for r in rejected.received for t in r.spans_by_trace())
        assert set(sent) == set(bad) and set(sent.values()) == {1}, "nothing retried"

        # Quota: 1,000 spans/s (plus the one-second burst), whole traces only.
        wait_for(
            lambda: (
                worker.total("caudal_spans_exported_total", exporter="metered")
                >= worker.total("caudal_decisions_total", tenant="metered", outcome="kept") * 10
            ),
            60,
            "metered exports",
        )
        received = metered.spans_by_trace()
        assert set(received.values()) == {10}
        rate = sum(received.values()) / 15
        print(f"metered tenant: {rate:.0f} spans/s received for a 1,000 spans/s quota")
        assert 900 <= rate <= 1100, f"metered tenant received {rate:.0f} spans/s"
        assert worker.total("caudal_quota_drops_total", tenant="metered") > 0

        # No e-mail address or card number ever reached a backend.
        for backend in (*http.values(), metered, rejected):
            for request in backend.received:
                assert EMAIL.encode() not in request.body
                assert CARD.encode() not in request.body
                assert b"<email>" in request.body
    finally:
        pipeline.stop()


def test_backend_outage_loses_nothing_and_does_not_delay_others(
    broker: LocalBroker, tmp_path: Path, backends
) -> None:
    # The default schedule's shape (5, 10, 20, 30 s, then the breaker's minute) on a shorter
    # clock: the same retries, doubling backoff up to a cap, breaker and probe, in under a
    # minute. The backend is down for 35 s from the first attempt; the probe comes at
    # 2 + 4 + 8 + 8 + 16 = 38 s.
    schedule = {
        "retry": {"initial_interval": "2s", "multiplier": 2, "max_interval": "8s"},
        "circuit_breaker": {"failure_threshold": 5, "open_duration": "16s"},
    }
    outage: dict[str, float] = {}

    def flaky(now: float) -> tuple[int, dict[str, str]]:
        outage.setdefault("start", now)
        return (503, {}) if now - outage["start"] < 35 else (200, {})

    down = backends("down", answer=flaky)
    healthy = backends("healthy")
    pipeline = Pipeline(
        broker,
        tmp_path,
        policies=KEEP_ALL,
        exporters={"down": exporter(down, **schedule), "healthy": exporter(healthy)},
        tenants={
            "acme": {"exporters": ["down"]},
            "globex": {"exporters": ["healthy"]},
            "default": {"exporters": ["healthy"]},
        },
        decision={"wait": "1s"},
    )
    rng = random.Random(9)
    first = {t: make_traces(rng, t, 200) for t in ("acme", "globex")}
    second = {t: make_traces(rng, t, 100) for t in ("acme", "globex")}
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        for payload in [*first["acme"].values(), *first["globex"].values()]:
            pipeline.produce(payload)
        pipeline.flush()
        wait_for(lambda: len(healthy.spans_by_trace()) == 200, 60, "globex's first traces")
        wait_for(lambda: "start" in outage, 30, "acme's first attempt")
        time.sleep(4)
        # While acme's backend is down, globex's new traces still flow at once.
        produced = time.monotonic()
        for payload in [*second["acme"].values(), *second["globex"].values()]:
            pipeline.produce(payload)
        pipeline.flush()
        wait_for(lambda: len(healthy.spans_by_trace()) == 300, 30, "globex during the outage")
        assert time.monotonic() - produced < 15
        assert worker.total("caudal_exporter_state", exporter="down", state="idle") == 0

        wait_for(lambda: len(down.spans_by_trace()) == 300, 240, "acme after the outage")
        received = down.spans_by_trace()
        assert set(received) == {*first["acme"], *second["acme"]}
        assert set(received.values()) == {10}, "nothing lost, nothing accepted twice"
        assert worker.total("caudal_circuit_breaker_opens_total", exporter="down") >= 1
        wait_for(
            lambda: worker.total("caudal_exporter_state", exporter="down", state="idle") == 1,
            10,
            "the breaker to close",
        )
        assert worker.total("caudal_export_retries_total", exporter="down") >= 4

        # The request log follows the schedule: 2, 4, 8, 8 s apart (the longest wait is 8 s),
        # then the breaker's 16 s, then a probe that succeeds.
        attempts = [r.at for r in down.received]
        gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
        for expected, gap in zip((2, 4, 8, 8), gaps, strict=False):
            assert expected * 0.9 <= gap <= expected * 1.5 + 2, gaps
        assert 15 <= gaps[4] <= 22, gaps
        assert down.received[5].status == 200
    finally:
        pipeline.stop()


def test_restart_during_outage_exports_the_backlog(
    broker: LocalBroker, tmp_path: Path, backends
) -> None:
    state = {"up": False}
    backend = backends("backend", answer=lambda now: (200 if state["up"] else 503, {}))
    fast_retry = {
        "retry": {"initial_interval": "500ms", "max_interval": "2s"},
        "circuit_breaker": {"open_duration": "3s", "reopen_duration": "3s"},
    }
    pipeline = Pipeline(
        broker,
        tmp_path,
        policies=KEEP_ALL,
        exporters={"backend": exporter(backend, **fast_retry)},
        tenants={"default": {"exporters": ["backend"]}},
        decision={"wait": "1s"},
    )
    traces = make_traces(random.Random(2), "acme", 100)
    try:
        worker = pipeline.start_worker()
        for payload in traces.values():
            pipeline.produce(payload)
        pipeline.flush()
        wait_for(lambda: len(backend.received) >= 3, 60, "failed attempts")
        assert worker.stop() == 0
        restarted = pipeline.start_worker()
        restarted.wait_ready()
        state["up"] = True
        wait_for(lambda: len(backend.spans_by_trace()) == 100, 60, "the backlog")
        assert set(backend.spans_by_trace()) == set(traces)
        assert set(backend.spans_by_trace().values()) == {10}
    finally:
        pipeline.stop()
