"""string_attribute: exact or regex values of a span or resource attribute, maybe inverted."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.string_attribute import StringAttribute, StringAttributeConfig
from tests.policies.traces import any_value, batch, make_span, view


def string_policy(**fields: Any) -> StringAttribute:
    return StringAttribute("attr", StringAttributeConfig.model_validate(fields))


PAYMENTS = view(batch([make_span(attributes={"http.route": "/pay"})], {"service.name": "payments"}))


@pytest.mark.parametrize("regex", [False, True])
@pytest.mark.parametrize(
    ("key", "values", "verdict"),
    [
        ("service.name", ["payments", "auth"], Verdict.SAMPLED),  # resource attribute
        ("http.route", ["/pay"], Verdict.SAMPLED),  # span attribute
        ("service.name", ["auth"], Verdict.NOT_SAMPLED),
        ("missing", ["payments"], Verdict.NOT_SAMPLED),
    ],
)
def test_matches_span_and_resource_attributes(
    regex: bool, key: str, values: list[str], verdict: Verdict
) -> None:
    policy = string_policy(key=key, values=values, enabled_regex_matching=regex)
    assert policy.evaluate(PAYMENTS, 0.0) is verdict


@pytest.mark.parametrize(
    ("key", "values", "verdict"),
    [
        ("service.name", ["payments"], Verdict.INVERTED_NOT_SAMPLED),  # a match vetoes
        ("service.name", ["auth"], Verdict.INVERTED_SAMPLED),
        ("missing", ["payments"], Verdict.INVERTED_SAMPLED),  # no attribute: no match
    ],
)
def test_invert_match_gives_the_collectors_inverted_verdicts(
    key: str, values: list[str], verdict: Verdict
) -> None:
    for regex in (False, True):
        policy = string_policy(
            key=key, values=values, invert_match=True, enabled_regex_matching=regex
        )
        assert policy.evaluate(PAYMENTS, 0.0) is verdict


def test_regex_is_an_unanchored_search_like_go_matchstring() -> None:
    assert (
        string_policy(key="service.name", values=["pay"], enabled_regex_matching=True).evaluate(
            PAYMENTS, 0.0
        )
        is Verdict.SAMPLED
    )
    anchored = string_policy(key="service.name", values=["^pay$"], enabled_regex_matching=True)
    assert anchored.evaluate(PAYMENTS, 0.0) is Verdict.NOT_SAMPLED
    exact = string_policy(key="service.name", values=["pay"])
    assert exact.evaluate(PAYMENTS, 0.0) is Verdict.NOT_SAMPLED


def test_regex_results_stay_right_past_the_cache_size() -> None:
    policy = string_policy(key="k", values=["^a+$"], enabled_regex_matching=True, cache_max_size=1)
    for value, verdict in [("aa", Verdict.SAMPLED), ("ab", Verdict.NOT_SAMPLED)] * 3:
        assert policy.evaluate(view(make_span(attributes={"k": value})), 0.0) is verdict


@pytest.mark.parametrize("regex", [False, True])
def test_non_string_and_empty_values_never_match(regex: bool) -> None:
    trace = view(make_span(attributes={"n": 5, "flag": True, "tags": ["x"], "empty": ""}))
    for key, values in [("n", ["5"]), ("flag", ["true"]), ("tags", ["x"]), ("empty", [""])]:
        policy = string_policy(key=key, values=values, enabled_regex_matching=regex)
        assert policy.evaluate(trace, 0.0) is Verdict.NOT_SAMPLED
    regex_any = string_policy(key="empty", values=[".*"], enabled_regex_matching=True)
    assert regex_any.evaluate(trace, 0.0) is Verdict.NOT_SAMPLED


def test_event_attributes_do_not_count() -> None:
    span = make_span()
    span.events.add(name="e", attributes=[KeyValue(key="k", value=any_value("v"))])
    assert string_policy(key="k", values=["v"]).evaluate(view(span), 0.0) is Verdict.NOT_SAMPLED


def test_trace_without_spans_or_resources() -> None:
    empty = TraceView.from_resource_spans(b"", [])
    assert string_policy(key="k", values=["v"]).evaluate(empty, 0.0) is Verdict.NOT_SAMPLED
    inverted = string_policy(key="k", values=["v"], invert_match=True)
    assert inverted.evaluate(empty, 0.0) is Verdict.INVERTED_SAMPLED


def test_invalid_regex_is_reported_at_values() -> None:
    entry = {
        "name": "re",
        "type": "string_attribute",
        "string_attribute": {"key": "k", "values": ["ok", "("], "enabled_regex_matching": True},
    }
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([entry])
    [(location, message)] = caught.value.errors
    assert location == (0, "string_attribute", "values")
    assert "values[1] '('" in message


def test_invalid_regex_is_fine_when_matching_exactly() -> None:
    build_engine([{"name": "x", "type": "string_attribute", "key": "k", "values": ["("]}])
