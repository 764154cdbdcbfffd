"""The probability written on a kept trace is its real inclusion probability when several
policies could have kept it: a backend that weights each kept trace by 1 / probability must
count the traffic right."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from policies import PolicyEngine, TraceView, build_engine
from policies.engine import inclusion
from policies.model import Chance
from tests.policies.traces import ERROR, make_span, view

VIP = {"name": "vip", "type": "string_attribute", "key": "user.tier", "values": ["vip"]}
TRACES = 20_000


def traces(
    attributes: Mapping[str, object], count: int = TRACES, status: int = 0
) -> list[TraceView]:
    rng = random.Random(7)
    out = []
    for _ in range(count):
        trace_id = rng.randbytes(16)
        root = make_span(attributes=attributes, parent=b"", trace_id=trace_id, status=status)
        out.append(view(root, trace_id=trace_id))
    return out


def kept_share_and_probabilities(
    engine: PolicyEngine, views: Sequence[TraceView]
) -> tuple[float, set[float]]:
    decisions = [engine.decide(trace, 0.0) for trace in views]
    kept = [d for d in decisions if d.kept]
    return len(kept) / len(views), {round(d.probability, 9) for d in kept}


def test_a_vip_trace_that_a_share_of_all_traces_could_also_keep_reports_both() -> None:
    engine = build_engine(
        [
            {**VIP, "sample_percentage": 50},
            {"name": "ten-percent", "type": "probabilistic", "sampling_percentage": 10},
        ]
    )
    share, probabilities = kept_share_and_probabilities(engine, traces({"user.tier": "vip"}))
    assert probabilities == {0.55}  # 1 - 0.5 * 0.9, whichever policy kept it
    assert share == pytest.approx(0.55, abs=0.015)  # 4 standard deviations
    share, probabilities = kept_share_and_probabilities(engine, traces({"user.tier": "free"}))
    assert probabilities == {0.1}
    assert share == pytest.approx(0.1, abs=0.01)


def test_policies_drawing_the_same_hash_keep_nested_sets() -> None:
    # The same (default) salt: every trace the 10 % keeps, the 50 % keeps too.
    engine = build_engine(
        [
            {"name": "half", "type": "probabilistic", "sampling_percentage": 50},
            {"name": "tenth", "type": "probabilistic", "sampling_percentage": 10},
        ]
    )
    share, probabilities = kept_share_and_probabilities(engine, traces({}))
    assert probabilities == {0.5}
    assert share == pytest.approx(0.5, abs=0.015)


def test_different_salts_draw_independently() -> None:
    engine = build_engine(
        [
            {"name": "half", "type": "probabilistic", "sampling_percentage": 50, "hash_salt": "a"},
            {"name": "tenth", "type": "probabilistic", "sampling_percentage": 10, "hash_salt": "b"},
        ]
    )
    share, probabilities = kept_share_and_probabilities(engine, traces({}))
    assert probabilities == {0.55}
    assert share == pytest.approx(0.55, abs=0.015)


def test_a_rule_later_in_order_that_always_keeps_the_trace_makes_it_certain() -> None:
    engine = build_engine(
        [
            {"name": "tenth", "type": "probabilistic", "sampling_percentage": 10},
            {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
        ]
    )
    decisions = [engine.decide(t, 0.0) for t in traces({}, 2_000, status=ERROR)]
    by_draw = [d for d in decisions if d.policy == "tenth"]
    assert by_draw  # the draw kept some before the error rule was reached
    assert {d.probability for d in decisions} == {1.0}


def test_an_and_of_a_filter_and_a_draw_counts_only_where_the_filter_holds() -> None:
    engine = build_engine(
        [
            {"name": "tenth", "type": "probabilistic", "sampling_percentage": 10, "hash_salt": "x"},
            {
                "name": "vip-half",
                "type": "and",
                "and_sub_policy": [
                    VIP,
                    {"name": "half", "type": "probabilistic", "sampling_percentage": 50},
                ],
            },
        ]
    )
    _, probabilities = kept_share_and_probabilities(engine, traces({"user.tier": "free"}, 2_000))
    assert probabilities == {0.1}
    share, probabilities = kept_share_and_probabilities(engine, traces({"user.tier": "vip"}))
    assert probabilities == {0.55}
    assert share == pytest.approx(0.55, abs=0.015)


def test_an_adaptive_sampler_beside_a_share_reports_the_key_rate_combined() -> None:
    engine = build_engine(
        [
            {"name": "fifth", "type": "probabilistic", "sampling_percentage": 20},
            # Before its first update every key has the goal rate: 1 in 10.
            {"name": "dyn", "type": "ema_dynamic", "key_fields": ["user.tier"]},
        ]
    )
    share, probabilities = kept_share_and_probabilities(engine, traces({"user.tier": "free"}))
    assert probabilities == {0.28}  # 1 - 0.8 * 0.9
    assert share == pytest.approx(0.28, abs=0.015)


def test_inclusion_combines_nested_and_independent_draws() -> None:
    assert inclusion([]) == 0.0
    assert inclusion([Chance(0.3, frozenset({1}))]) == 0.3
    assert inclusion([Chance(0.3, frozenset({1})), Chance(0.6, frozenset({1}))]) == 0.6
    both = inclusion([Chance(0.5, frozenset({1})), Chance(0.5, frozenset({2}))])
    assert both == pytest.approx(0.75)
    assert inclusion([Chance(0.2, frozenset({1})), Chance(1.0)]) == 1.0
