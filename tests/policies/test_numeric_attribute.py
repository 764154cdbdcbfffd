"""numeric_attribute: an integer attribute in [min_value, max_value], as the Collector reads it."""

from __future__ import annotations

from typing import Any

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.numeric_attribute import NumericAttribute, NumericAttributeConfig
from tests.policies.traces import batch, make_span, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED
IS, INS = Verdict.INVERTED_SAMPLED, Verdict.INVERTED_NOT_SAMPLED


def numeric(**fields: Any) -> NumericAttribute:
    return NumericAttribute("num", NumericAttributeConfig.model_validate({"key": "k", **fields}))


def with_value(value: object) -> TraceView:
    return view(make_span(attributes={"k": value}))


@pytest.mark.parametrize(
    ("value", "verdict"),
    [(49, N), (50, S), (75, S), (100, S), (101, N)],  # both bounds inclusive
)
def test_bounds_are_inclusive(value: int, verdict: Verdict) -> None:
    assert numeric(min_value=50, max_value=100).evaluate(with_value(value), 0.0) is verdict


@pytest.mark.parametrize(
    ("fields", "value", "verdict"),
    [
        ({"min_value": 400}, 10**18, S),  # max 0: no upper bound
        ({"min_value": 400}, 399, N),
        ({"max_value": 10}, -(2**63), S),  # min 0: no lower bound, negatives included
        ({"min_value": 0, "max_value": 10}, -5, S),  # an explicit 0 is no bound too
        ({"max_value": -1}, 0, N),
    ],
)
def test_zero_bound_means_unbounded(fields: dict[str, int], value: int, verdict: Verdict) -> None:
    assert numeric(**fields).evaluate(with_value(value), 0.0) is verdict


@pytest.mark.parametrize("value", ["7", 7.0, True, b"7", [7], {"x": 7}, None])
def test_non_integer_values_count_as_zero(value: object) -> None:
    # pdata Value.Int() is 0 for other types: in a range holding 0 they match.
    assert numeric(min_value=-1, max_value=1).evaluate(with_value(value), 0.0) is S
    assert numeric(min_value=5, max_value=9).evaluate(with_value(value), 0.0) is N


def test_resource_attribute_and_any_span_match() -> None:
    trace = view(
        batch([make_span(attributes={"k": 1})], resource={"k": 500}),
        batch([make_span(attributes={"k": 2}), make_span(attributes={"k": 300})]),
    )
    assert numeric(min_value=500).evaluate(trace, 0.0) is S  # from the resource
    assert numeric(min_value=250, max_value=350).evaluate(trace, 0.0) is S  # third span
    assert numeric(min_value=600).evaluate(trace, 0.0) is N


@pytest.mark.parametrize(
    ("trace", "verdict"),
    [
        (with_value(75), INS),  # a value in range vetoes
        (with_value(10), IS),
        (view(make_span()), IS),  # no attribute: no match
        (TraceView.from_resource_spans(b"", []), IS),
    ],
)
def test_invert_match(trace: TraceView, verdict: Verdict) -> None:
    assert numeric(min_value=50, max_value=100, invert_match=True).evaluate(trace, 0.0) is verdict


def test_missing_attribute_and_empty_trace() -> None:
    assert numeric(min_value=1).evaluate(view(make_span(attributes={"other": 5})), 0.0) is N
    assert numeric(min_value=1).evaluate(TraceView.from_resource_spans(b"", []), 0.0) is N


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"key": "k"}, (0, "numeric_attribute")),  # no bound at all: never usable
        ({"key": "k", "min_value": 0, "max_value": 0}, (0, "numeric_attribute")),
        ({"min_value": 1}, (0, "numeric_attribute", "key")),
        ({"key": "k", "min_value": 2**63}, (0, "numeric_attribute", "min_value")),
        ({"key": "k", "max_value": "many"}, (0, "numeric_attribute", "max_value")),
    ],
)
def test_config_errors(fields: dict[str, object], location: tuple[object, ...]) -> None:
    entry = {"name": "n", "type": "numeric_attribute", "numeric_attribute": fields}
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([entry])
    assert [loc for loc, _ in caught.value.errors] == [location]


def test_only_inverted_may_veto() -> None:
    assert not numeric(min_value=1).may_veto()
    assert numeric(min_value=1, invert_match=True).may_veto()
    assert not numeric(min_value=1).keeps_state()
