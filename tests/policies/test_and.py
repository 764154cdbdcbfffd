"""and: every sub-policy must keep; an inverted match inside only fails the `and`."""

from __future__ import annotations

import random

import pytest

from policies import PolicyConfigError, Verdict, build_engine
from streams.config import DEFAULT_POLICIES
from tests.policies.traces import batch, make_span, view

# The default rules' baseline: `and`[not VIP, probabilistic 10 %], under another name.
NOT_VIP_TEN_PERCENT = {**DEFAULT_POLICIES[-1], "name": "rest"}


def trace_ids(n: int, seed: int = 1) -> list[bytes]:
    """``n`` random trace IDs, the same on every run: a share test checks the rule, not luck."""
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


def vip(trace_id: bytes, tier: str = "vip"):
    span = make_span(attributes={"user.tier": tier})
    return view(batch([span], {"service.name": "web"}), trace_id=trace_id)


def test_inverted_sub_policy_fails_only_the_and() -> None:
    engine = build_engine(
        [
            {"name": "vip", "type": "string_attribute", "key": "user.tier", "values": ["vip"]},
            NOT_VIP_TEN_PERCENT,
        ]
    )
    decision = engine.decide(vip(trace_ids(1)[0]), 0.0)
    assert decision.kept and decision.policy == "vip"
    rest = engine.policies[1]
    assert rest.evaluate(vip(trace_ids(1)[0]), 0.0) is Verdict.NOT_SAMPLED
    assert rest.probability() == pytest.approx(0.1)


def test_rest_is_kept_at_its_sub_policy_rate() -> None:
    engine = build_engine([NOT_VIP_TEN_PERCENT])
    # Random IDs: like the Collector's, the hash is meant for random trace IDs, not counters.
    ids = trace_ids(20_000)
    kept = sum(engine.decide(vip(t, "basic"), 0.0).kept for t in ids)
    assert abs(kept - 2000) <= 3.29 * (20_000 * 0.1 * 0.9) ** 0.5 + 1
    assert not any(engine.decide(vip(t), 0.0).kept for t in ids[:2000])


def test_default_rules_keep_vip_at_half() -> None:
    engine = build_engine(DEFAULT_POLICIES)
    ids = trace_ids(20_000)
    kept = [engine.decide(vip(t), 0.0) for t in ids]
    share = sum(d.kept for d in kept) / len(ids)
    assert abs(share - 0.5) <= 3.29 * (0.25 / len(ids)) ** 0.5
    assert {d.policy for d in kept if d.kept} == {"vip-users"}
    assert {d.probability for d in kept if d.kept} == {0.5}


def test_sub_policy_errors_carry_their_path() -> None:
    bad = {"name": "b", "type": "and", "and_sub_policy": [{"name": "x", "type": "latency"}]}
    with pytest.raises(PolicyConfigError) as exc:
        build_engine([bad])
    assert [loc for loc, _ in exc.value.errors] == [(0, "and_sub_policy", 0, "threshold_ms")]


def test_probability_is_the_product_with_sub_sample_percentages() -> None:
    entry = {
        "name": "both",
        "type": "and",
        "and_sub_policy": [
            {"name": "tenth", "type": "probabilistic", "sampling_percentage": 10},
            {"name": "half-of-all", "type": "always_sample", "sample_percentage": 50},
        ],
    }
    engine = build_engine([entry])
    assert engine.policies[0].probability() == pytest.approx(0.05)
    kept = [engine.decide(vip(t), 0.0) for t in trace_ids(4000)]
    assert all(d.probability == pytest.approx(0.05) for d in kept if d.kept)
    assert abs(sum(d.kept for d in kept) - 200) <= 3.29 * (4000 * 0.05 * 0.95) ** 0.5 + 1


def test_state_follows_the_sub_policies() -> None:
    rest = build_engine([NOT_VIP_TEN_PERCENT]).policies[0]
    assert not rest.keeps_state() and not rest.may_veto()
    limited = {
        "name": "limited",
        "type": "and",
        "and_sub_policy": [{"name": "r", "type": "rate_limiting", "spans_per_second": 5}],
    }
    assert build_engine([limited]).policies[0].keeps_state()
