"""ema_dynamic: rare keys kept, common ones sampled, the average near the goal rate; the keep
is a hash of the trace ID; a reload that keeps the key keeps the rates."""

from __future__ import annotations

from collections import Counter

import pytest

from policies import PolicyConfigError, build_engine
from policies.builtin.ema_dynamic import EmaDynamic, EmaDynamicConfig
from tests.policies.adaptive_traffic import Traffic

COMMON = "/health"
RARE = [f"/rare/{i}" for i in range(200)]


def skewed() -> Traffic:
    # One key 90 % of the traces, 200 rare keys sharing the other 10 %.
    return Traffic({COMMON: 0.9} | {key: 0.1 / len(RARE) for key in RARE})


def sampler(**fields: object) -> EmaDynamic:
    config = EmaDynamicConfig.model_validate({"key_fields": ["http.route"]} | fields)
    return EmaDynamic("dynamic", config)


def test_rare_keys_are_kept_and_the_common_one_sampled_to_the_goal() -> None:
    policy = sampler(goal_sample_rate=10, adjustment_interval=15)
    seen: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    # 5 minutes at 400 traces/s; counted after the first interval (no rates before it).
    for key, now, trace in skewed().traces(400, 300):
        verdict, match = policy.evaluate_match(trace, now)
        if now < 15:
            continue
        seen[key] += 1
        if verdict.value == "sampled":
            kept[key] += 1
            assert match is not None and 0 < match.probability <= 1
    rare_shares = [kept[key] / seen[key] for key in RARE if seen[key]]
    assert min(rare_shares) >= 0.5, sorted(rare_shares)[:5]
    # The common key pays for the rare ones: with 10 % of the volume in rare keys kept
    # nearly whole, a 10 % average leaves it well under 1/10 (about 1/200 here).
    common_share = kept[COMMON] / seen[COMMON]
    assert 0 < common_share < 0.1 / 4, common_share
    overall = sum(kept.values()) / sum(seen.values())
    assert abs(overall - 0.1) <= 0.02, overall
    print(f"rare min {min(rare_shares):.3f} common {common_share:.4f} overall {overall:.4f}")


def test_the_same_trace_gets_the_same_decision_on_two_workers() -> None:
    first, second = sampler(), sampler()
    decisions = []
    for policy in (first, second):
        traffic = skewed()  # the same traces in the same order
        decisions.append([policy.evaluate(trace, now) for _, now, trace in traffic.traces(200, 60)])
    assert decisions[0] == decisions[1]
    assert first.part(0)[1].rates() == second.part(0)[1].rates()


def test_a_kept_trace_carries_its_keys_probability() -> None:
    engine = build_engine(
        [
            {
                "name": "dynamic",
                "type": "ema_dynamic",
                "key_fields": ["http.route"],
                "adjustment_interval": 5,
            }
        ]
    )
    probabilities = set()
    for _, now, trace in skewed().traces(400, 30):
        decision = engine.decide(trace, now)
        if decision.kept and now > 5:
            probabilities.add(round(decision.probability, 6))
    assert 1.0 in probabilities  # rare keys
    assert min(probabilities) < 0.1  # the common key


def test_a_reload_that_keeps_the_key_keeps_the_rates() -> None:
    entry = {
        "name": "dynamic",
        "type": "ema_dynamic",
        "key_fields": ["http.route"],
        "adjustment_interval": 5,
    }
    before = build_engine([entry])
    for _, now, trace in skewed().traces(400, 30):
        before.decide(trace, now)
    learned = before.policies[0].part(0)[1].rates()  # type: ignore[attr-defined]
    assert learned
    same_key = build_engine([entry | {"goal_sample_rate": 20}])
    assert same_key.adopt_state(before) == {"dynamic": True}
    assert same_key.policies[0].part(0)[1].rates() == learned  # type: ignore[attr-defined]
    other_key = build_engine([entry | {"key_fields": ["service.name"]}])
    assert other_key.adopt_state(before) == {"dynamic": False}
    assert other_key.policies[0].part(0)[1].rates() == {}  # type: ignore[attr-defined]


def test_a_sampler_without_a_key_is_rejected_with_its_path() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "dynamic", "type": "ema_dynamic"}])
    assert "key_fields" in str(caught.value)


@pytest.mark.parametrize("combiner", ["and", "composite"])
def test_inside_a_combining_policy_a_kept_trace_carries_its_keys_probability(
    combiner: str,
) -> None:
    sampler_entry = {
        "name": "dynamic",
        "type": "ema_dynamic",
        "key_fields": ["http.route"],
        "adjustment_interval": 5,
    }
    if combiner == "and":
        entry = {"name": "outer", "type": "and", "and_sub_policy": [sampler_entry]}
    else:
        entry = {
            "name": "outer",
            "type": "composite",
            "max_total_spans_per_second": 10**9,
            "policy_order": ["dynamic"],
            "composite_sub_policy": [sampler_entry],
            "rate_allocation": [{"policy": "dynamic", "percent": 100}],
        }
    engine = build_engine([entry])
    inner = build_engine([sampler_entry])  # the same sampler alone, fed the same traffic
    for _, now, trace in skewed().traces(400, 30):
        nested, alone = engine.decide(trace, now), inner.decide(trace, now)
        assert nested.kept == alone.kept
        assert nested.probability == pytest.approx(alone.probability)


def test_keys_seen_at_most_once_all_keep_everything() -> None:
    from policies.adaptive import log_allocation

    assert log_allocation(5.0, {"a": 1.0, "b": 0.5, "c": 1.0}) == {"a": 1.0, "b": 1.0, "c": 1.0}
