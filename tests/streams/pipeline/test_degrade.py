"""Degradation levels: the rules that move the level, and deciding spans on arrival."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from policies import TraceView
from policies.builtin.probabilistic import Probabilistic, ProbabilisticConfig
from streams.config import DegradationConfig
from streams.devtools.generate import build_trace
from streams.pipeline.degrade import Degradation, LagClock, Pressure, shed_fragment

CALM = Pressure(lag_seconds=0.5, buffer_fill=0.1)
LAGGING = Pressure(lag_seconds=60, buffer_fill=0.1)


def controller(**overrides: object) -> Degradation:
    config = {"check_interval": 5, "recovery_period": 30, "sustain_checks": 2, **overrides}
    return Degradation(DegradationConfig.model_validate(config))


def run(degradation: Degradation, readings: list[Pressure], start: float = 0.0) -> list[int]:
    """Feed one reading per 5 s check; the level after each."""
    levels = []
    for i, reading in enumerate(readings):
        degradation.observe(reading, start + 5 * i)
        levels.append(degradation.level)
    return levels


def growing_lag(checks: int, start: float = 40.0) -> list[Pressure]:
    return [Pressure(lag_seconds=start + 5 * i, buffer_fill=0.1) for i in range(checks)]


def test_sustained_lag_growth_climbs_one_level_per_check_up_to_the_maximum() -> None:
    degradation = controller()
    # The first pressured check is not enough; the second starts the climb.
    assert run(degradation, growing_lag(7)) == [0, 1, 2, 3, 4, 4, 4]
    assert "consumer lag" in degradation.reason
    assert degradation.percentage() == 0.1


def test_a_single_spike_does_not_degrade() -> None:
    degradation = controller()
    assert run(degradation, [LAGGING, CALM, LAGGING, CALM, CALM]) == [0, 0, 0, 0, 0]


def test_lag_that_shrinks_is_recovery_not_pressure() -> None:
    degradation = controller()
    shrinking = [Pressure(lag_seconds=100 - 10 * i, buffer_fill=0.1) for i in range(6)]
    # Only the first reading (nothing to compare with) counts as growing.
    assert run(degradation, shrinking) == [0] * 6


def test_steps_down_one_level_per_recovery_period_and_climbs_again_at_once() -> None:
    degradation = controller(max_level=3)
    assert run(degradation, growing_lag(4)) == [0, 1, 2, 3]
    # 30 s recovery period, checks every 5 s: the first calm check starts the clock.
    levels = run(degradation, [CALM] * 14, start=20)
    assert levels == [3] * 6 + [2] * 6 + [1] * 2
    # Pressure again: no sustain period while degraded.
    degradation.observe(Pressure(lag_seconds=200, buffer_fill=0.1), 100)
    assert degradation.level == 2


def test_buffer_and_memory_pressure() -> None:
    degradation = controller()
    full = Pressure(lag_seconds=0, buffer_fill=0.95)
    assert run(degradation, [full, full]) == [0, 1]
    assert "buffer at 95%" in degradation.reason
    memory = controller()
    heavy = Pressure(lag_seconds=0, buffer_fill=0, memory_fill=0.97)
    assert run(memory, [heavy, heavy]) == [0, 1]
    assert "RSS" in memory.reason


def test_disabled_or_capped() -> None:
    assert run(controller(enabled=False), growing_lag(6))[-1] == 0
    assert run(controller(max_level=1), growing_lag(6))[-1] == 1


def test_lag_clock_keeps_the_oldest_age_until_taken() -> None:
    clock = LagClock()
    for age in (1.0, 7.5, 3.0):
        clock.note(age)
    assert clock.take() == 7.5
    assert clock.take() == 0.0


def fragment(kind: str, seed: int) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    trace_id, blocks = build_trace(rng, kind, "acme", 1_700_000_000_000_000_000)
    return trace_id, ExportTraceServiceRequest(resource_spans=blocks).SerializeToString()


def spans_of(encoded: bytes) -> list:
    request = ExportTraceServiceRequest.FromString(encoded)
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def attribute(span: object, key: str) -> object:
    for kv in span.attributes:  # type: ignore[attr-defined]
        if kv.key == key:
            return kv.value.string_value or kv.value.double_value
    return None


@pytest.mark.parametrize("percentage", [5.0, 1.0, 0.1])
def test_shed_keeps_whole_fragments_by_the_probabilistic_hash(percentage: float) -> None:
    policy = Probabilistic(
        "p", ProbabilisticConfig.model_validate({"sampling_percentage": percentage})
    )
    kept = 0
    for seed in range(4000):
        trace_id, data = fragment("ordinary", seed)
        result = shed_fragment(trace_id, data, percentage)
        view = TraceView.from_resource_spans(trace_id, [])
        expected = policy.evaluate(view, 0).name == "SAMPLED"
        assert (result.request is not None) == expected
        if result.request is not None:
            kept += 1
            spans = spans_of(result.request)
            assert len(spans) == result.kept_spans == 10
            assert {attribute(s, "sampling.policy") for s in spans} == {"degraded"}
            assert {attribute(s, "sampling.probability") for s in spans} == {percentage / 100}
        else:
            assert result.dropped_spans == 10
    assert kept == sum(
        policy.evaluate(TraceView.from_resource_spans(fragment("ordinary", s)[0], []), 0).name
        == "SAMPLED"
        for s in range(4000)
    )


def test_shed_keeps_every_error_span_with_probability_one() -> None:
    errors_kept = 0
    for seed in range(500):
        trace_id, data = fragment("error", seed)
        result = shed_fragment(trace_id, data, 0.1)
        assert result.request is not None, "an error span is never dropped"
        assert result.has_error
        spans = spans_of(result.request)
        errors = [s for s in spans if s.status.code == Status.STATUS_CODE_ERROR]
        assert len(errors) == 1
        if len(spans) == 1:  # kept for its status, not by the hash
            errors_kept += 1
            assert attribute(spans[0], "sampling.probability") == 1.0
            assert result.dropped_spans == 9
            request = ExportTraceServiceRequest.FromString(result.request)
            assert all(rs.scope_spans for rs in request.resource_spans)
    assert errors_kept >= 495


def test_consumer_lag_series_follow_the_assignment() -> None:
    from prometheus_client import REGISTRY

    from streams.ops.metrics import set_consumer_lag

    def series(topic: str) -> dict[str, float]:
        return {
            s.labels["partition"]: s.value
            for family in REGISTRY.collect()
            if family.name == "caudal_consumer_lag"
            for s in family.samples
            if s.labels["topic"] == topic
        }

    set_consumer_lag("in-test", {0: 5, 1: 7})
    set_consumer_lag("spans-test", {3: 1})
    set_consumer_lag("in-test", {1: 2})  # partition 0 moved to another worker
    assert series("in-test") == {"1": 2.0}
    assert series("spans-test") == {"3": 1.0}
