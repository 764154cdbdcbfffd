"""rate_limiting: spans kept per Unix second of `now`, strictly below the limit."""

from __future__ import annotations

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.rate_limiting import RateLimiting, RateLimitingConfig
from tests.policies.traces import make_span, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED
T0 = 1_700_000_000.0


def rate(spans_per_second: int) -> RateLimiting:
    return RateLimiting("rate", RateLimitingConfig(spans_per_second=spans_per_second))


def spans(n: int) -> TraceView:
    return view(*(make_span() for _ in range(n)))


def test_budget_is_strictly_below_the_limit() -> None:
    policy = rate(10)
    assert policy.evaluate(spans(4), T0) is S  # 4 < 10
    assert policy.evaluate(spans(5), T0 + 0.5) is S  # 9 < 10
    assert policy.evaluate(spans(1), T0 + 0.9) is N  # 10 is not below 10
    assert rate(10).evaluate(spans(10), T0) is N  # a trace of exactly the limit never passes


def test_refused_traces_do_not_count_and_smaller_ones_still_fit() -> None:
    policy = rate(10)
    assert policy.evaluate(spans(6), T0) is S
    assert policy.evaluate(spans(5), T0) is N
    assert policy.evaluate(spans(3), T0) is S


def test_budget_restarts_each_unix_second() -> None:
    policy = rate(10)
    assert policy.evaluate(spans(9), T0 + 0.99) is S
    assert policy.evaluate(spans(9), T0 + 0.999) is N
    assert policy.evaluate(spans(9), T0 + 1.0) is S  # a new second
    assert policy.evaluate(spans(9), T0 + 0.5) is S  # any change of second resets, even back


def test_empty_trace_and_zero_limit() -> None:
    assert rate(1).evaluate(TraceView.from_resource_spans(b"", []), T0) is S  # 0 < 1
    assert rate(0).evaluate(TraceView.from_resource_spans(b"", []), T0) is N


def test_state_and_config() -> None:
    assert rate(5).keeps_state() and not rate(5).may_veto()
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "r", "type": "rate_limiting", "rate_limiting": {}}])
    assert [loc for loc, _ in caught.value.errors] == [(0, "rate_limiting", "spans_per_second")]
