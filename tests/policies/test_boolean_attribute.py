"""boolean_attribute: a boolean attribute equal to `value`, as the Collector reads it."""

from __future__ import annotations

from typing import Any

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.boolean_attribute import BooleanAttribute, BooleanAttributeConfig
from tests.policies.traces import batch, make_span, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED
IS, INS = Verdict.INVERTED_SAMPLED, Verdict.INVERTED_NOT_SAMPLED


def boolean(**fields: Any) -> BooleanAttribute:
    return BooleanAttribute("bool", BooleanAttributeConfig.model_validate({"key": "k", **fields}))


def with_value(value: object) -> TraceView:
    return view(make_span(attributes={"k": value}))


@pytest.mark.parametrize(
    ("wanted", "value", "verdict"),
    [
        (True, True, S),
        (True, False, N),
        (False, False, S),
        (False, True, N),
        (True, "true", N),  # a string is not a boolean...
        (False, "true", S),  # ...and reads as false, as pdata's Value.Bool() does
        (False, 1, S),
        (False, None, S),
        (True, 1, N),
    ],
)
def test_value_match(wanted: bool, value: object, verdict: Verdict) -> None:
    assert boolean(value=wanted).evaluate(with_value(value), 0.0) is verdict


def test_missing_attribute_never_matches_even_false() -> None:
    assert boolean(value=False).evaluate(view(make_span()), 0.0) is N
    assert boolean(value=True).evaluate(TraceView.from_resource_spans(b"", []), 0.0) is N


def test_resource_or_any_span() -> None:
    trace = view(
        batch([make_span(attributes={"k": False})], resource={"k": True}),
        batch([make_span(), make_span(attributes={"k": False})]),
    )
    assert boolean(value=True).evaluate(trace, 0.0) is S
    assert boolean(value=False).evaluate(trace, 0.0) is S


@pytest.mark.parametrize(
    ("value", "verdict"),
    [(True, INS), (False, IS), ("yes", IS), (None, IS)],
)
def test_invert_match(value: object, verdict: Verdict) -> None:
    trace = with_value(value) if value is not None else view(make_span())
    assert boolean(value=True, invert_match=True).evaluate(trace, 0.0) is verdict


def test_value_defaults_to_false_and_must_be_a_boolean() -> None:
    assert boolean().evaluate(with_value(False), 0.0) is S
    entry = {"name": "b", "type": "boolean_attribute", "key": "k", "value": "yes"}
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([entry])
    assert [loc for loc, _ in caught.value.errors] == [(0, "value")]
