"""trace_state: `key=value` in a span's W3C tracestate, parsed as OpenTelemetry Go parses it."""

from __future__ import annotations

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.trace_state import TraceState, TraceStateConfig, tracestate_value
from tests.policies.traces import make_span, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED


def trace_state(key: str, *values: str) -> TraceState:
    return TraceState("ts", TraceStateConfig(key=key, values=list(values)))


def with_states(*states: str) -> TraceView:
    return view(*(make_span(trace_state=state) for state in states))


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        ("vendor=gold", S),
        ("a=1,vendor=gold,b=2", S),
        ("a=1 , vendor=gold\t", S),  # blanks around members are trimmed
        ("vendor=golden", N),  # exact value match
        ("vendor= gold", N),  # leading blanks belong to the value
        ("xvendor=gold", N),
        ("vendor=gold,vendor=gold", N),  # duplicate keys: invalid tracestate
        ("vendor =gold", N),  # trailing blank in a key: invalid
        ("Vendor=gold", N),  # keys are lower case
        ("vendor=gold,bad", N),  # a member without '=': invalid
        ("vendor=gold,a=b=c", N),  # '=' is not allowed in values
        (",,vendor=gold,", S),  # empty members are skipped
        ("", N),
    ],
)
def test_matches_key_value_of_a_valid_tracestate(state: str, verdict: Verdict) -> None:
    assert trace_state("vendor", "gold", "silver").evaluate(with_states(state), 0.0) is verdict


def test_any_span_may_match() -> None:
    trace = with_states("", "other=1", "vendor=silver")
    assert trace_state("vendor", "gold", "silver").evaluate(trace, 0.0) is S
    assert trace_state("vendor", "gold").evaluate(trace, 0.0) is N
    assert trace_state("vendor", "gold").evaluate(TraceView.from_resource_spans(b"", []), 0.0) is N


def test_multi_tenant_keys_and_member_limit() -> None:
    assert trace_state("tenant@sys", "v").evaluate(with_states("tenant@sys=v"), 0.0) is S
    assert trace_state("1a@sys", "v").evaluate(with_states("1a@sys=v"), 0.0) is S
    assert trace_state("1a", "v").evaluate(with_states("1a=v"), 0.0) is N  # simple keys: a-z first
    assert (
        trace_state("t@toolongsystemid", "v").evaluate(with_states("t@toolongsystemid=v"), 0) is N
    )
    members = ",".join(f"k{i}=v" for i in range(31))
    assert trace_state("vendor", "x").evaluate(with_states(f"{members},vendor=x"), 0.0) is S
    too_many = ",".join(f"k{i}=v" for i in range(32))
    assert trace_state("vendor", "x").evaluate(with_states(f"{too_many},vendor=x"), 0.0) is N


def test_values_that_cannot_fit_are_dropped_like_the_collector() -> None:
    long_value = "v" * 250  # len("vendor") + 250 >= 256
    assert trace_state("vendor", long_value).evaluate(with_states(f"vendor={long_value}"), 0) is N
    assert trace_state("vendor", "").evaluate(with_states("vendor="), 0.0) is N


@pytest.mark.parametrize(
    ("state", "value"),
    [
        ("a=1", "1"),
        ("b=2", ""),
        ("a=1,a=2", None),
        ("a=" + "x" * 256, "x" * 256),
        ("a=" + "x" * 257, None),
        ("a=x ", "x"),
        ("a=x y", "x y"),
        ("a=é", None),  # values are printable ASCII
        ("a" + "b" * 256 + "=1", None),  # simple keys: at most 256 characters
        ("a" + "b" * 255 + "=1", ""),
    ],
)
def test_tracestate_value(state: str, value: str | None) -> None:
    assert tracestate_value(state, "a") == value


def test_config_requires_key_and_values() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "t", "type": "trace_state", "trace_state": {"key": "k"}}])
    assert [loc for loc, _ in caught.value.errors] == [(0, "trace_state", "values")]
