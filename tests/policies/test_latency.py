"""latency: trace duration (latest end - earliest start) against thresholds, as in OTel."""

from __future__ import annotations

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.latency import Latency, LatencyConfig
from tests.policies.traces import make_span, view


def latency(threshold_ms: int, upper_threshold_ms: int = 0) -> Latency:
    config = LatencyConfig(threshold_ms=threshold_ms, upper_threshold_ms=upper_threshold_ms)
    return Latency("slow", config)


def one_span_of(duration_ms: float) -> TraceView:
    return view(make_span(duration_ms=duration_ms))


@pytest.mark.parametrize(
    ("duration_ms", "verdict"),
    [
        (4999.999999, Verdict.NOT_SAMPLED),  # Go's Milliseconds() truncates: 4999
        (5000, Verdict.SAMPLED),  # the threshold itself is slow enough
        (5000.9, Verdict.SAMPLED),
        (60_000, Verdict.SAMPLED),
    ],
)
def test_without_upper_bound_samples_at_or_above_threshold(
    duration_ms: float, verdict: Verdict
) -> None:
    assert latency(5000).evaluate(one_span_of(duration_ms), 0.0) is verdict


@pytest.mark.parametrize(
    ("duration_ms", "verdict"),
    [
        (1000, Verdict.NOT_SAMPLED),  # the Collector's lower bound is exclusive with a band
        (1000.999, Verdict.NOT_SAMPLED),  # still 1000 whole milliseconds
        (1001, Verdict.SAMPLED),
        (2000, Verdict.SAMPLED),  # upper bound inclusive
        (2000.999, Verdict.SAMPLED),
        (2001, Verdict.NOT_SAMPLED),
    ],
)
def test_with_upper_bound_samples_inside_the_band(duration_ms: float, verdict: Verdict) -> None:
    assert latency(1000, 2000).evaluate(one_span_of(duration_ms), 0.0) is verdict


def test_duration_spans_from_earliest_start_to_latest_end() -> None:
    # Every span is short, but together they cover 5.5 s (the Collector's own test case).
    trace = view(
        make_span(start_ms=0, duration_ms=3000), make_span(start_ms=2500, duration_ms=3000)
    )
    assert latency(5000).evaluate(trace, 0.0) is Verdict.SAMPLED


def test_zero_threshold_samples_every_non_empty_trace() -> None:
    assert latency(0).evaluate(one_span_of(0), 0.0) is Verdict.SAMPLED
    empty = TraceView.from_resource_spans(b"", [])
    assert latency(0).evaluate(empty, 0.0) is Verdict.NOT_SAMPLED


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"threshold_ms": -1}, (0, "threshold_ms")),
        ({"threshold_ms": "slow"}, (0, "threshold_ms")),
        ({}, (0, "threshold_ms")),
        ({"threshold_ms": 10, "upper_threshold_ms": 10}, (0,)),
        ({"threshold_ms": 10, "upper_threshold_ms": -1}, (0, "upper_threshold_ms")),
    ],
)
def test_config_errors(fields: dict[str, object], location: tuple[object, ...]) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "slow", "type": "latency", **fields}])
    assert [loc for loc, _ in caught.value.errors] == [location]
