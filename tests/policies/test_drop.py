"""drop: DROPPED when every sub-policy matches; evaluated first and beats every keep."""

from __future__ import annotations

import pytest

from policies import Decision, PolicyConfigError, Verdict, build_engine
from tests.policies.traces import ERROR, batch, make_span, view

HEALTH_CHECKS = {
    "name": "no-health-checks",
    "type": "drop",
    "drop": {
        "drop_sub_policy": [
            {
                "name": "health-route",
                "type": "string_attribute",
                "string_attribute": {"key": "http.route", "values": ["/healthz", "/readyz"]},
            },
            {"name": "fast", "type": "latency", "latency": {"threshold_ms": 0}},
        ]
    },
}


def health(status: int = 0) -> object:
    return view(batch([make_span(attributes={"http.route": "/healthz"}, status=status)]))


def test_drops_when_all_sub_policies_match_whatever_else_keeps() -> None:
    engine = build_engine(
        [
            {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
            {"name": "all", "type": "always_sample"},
            HEALTH_CHECKS,  # listed last, evaluated first
        ]
    )
    assert engine.decide(health(status=ERROR), 0.0) == Decision(False, None, 0.0)
    assert engine.decide(view(make_span(status=ERROR)), 0.0) == Decision(True, "errors", 1.0)


def test_one_sub_policy_not_matching_gives_not_sampled() -> None:
    engine = build_engine([HEALTH_CHECKS])
    drop = engine.policies[0]
    assert drop.evaluate(health(), 0.0) is Verdict.DROPPED
    assert drop.evaluate(view(make_span(attributes={"http.route": "/cart"})), 0.0) is (
        Verdict.NOT_SAMPLED
    )


def test_inverted_sampled_counts_as_a_match_and_inverted_not_sampled_does_not() -> None:
    def drop_unless(tier: str) -> dict[str, object]:
        return {
            "name": "drop-non-vip",
            "type": "drop",
            "drop_sub_policy": [
                {
                    "name": "not-tier",
                    "type": "string_attribute",
                    "key": "user.tier",
                    "values": [tier],
                    "invert_match": True,
                }
            ],
        }

    trace = view(make_span(attributes={"user.tier": "free"}))
    assert build_engine([drop_unless("vip")]).policies[0].evaluate(trace, 0.0) is Verdict.DROPPED
    policy = build_engine([drop_unless("free")]).policies[0]
    assert policy.evaluate(trace, 0.0) is Verdict.NOT_SAMPLED


def test_a_drop_that_does_not_match_still_blocks_inverted_keeps() -> None:
    # A non-matching drop answers NOT_SAMPLED, which (as in the Collector) cancels keeps
    # that come only from inverted matches.
    inverted_keep = {
        "name": "not-vip",
        "type": "string_attribute",
        "key": "user.tier",
        "values": ["vip"],
        "invert_match": True,
    }
    trace = view(make_span(attributes={"http.route": "/cart"}))
    assert build_engine([inverted_keep]).decide(trace, 0.0).kept
    assert not build_engine([inverted_keep, HEALTH_CHECKS]).decide(trace, 0.0).kept


def test_sub_policy_errors_carry_their_path() -> None:
    bad = {
        "name": "d",
        "type": "drop",
        "drop": {"drop_sub_policy": [{"name": "a", "type": "always_sample"}, {"name": "x"}]},
    }
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "ok", "type": "always_sample"}, bad])
    assert [loc for loc, _ in caught.value.errors] == [(1, "drop", "drop_sub_policy", 1, "type")]
    assert str(caught.value).startswith("policies.1.drop.drop_sub_policy.1.type:")
