"""composite: sub-policies in order, each with a per-second share of the span budget."""

from __future__ import annotations

from typing import Any

import pytest

from policies import Decision, PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.composite import Composite
from tests.policies.traces import ERROR, make_span, view

T0 = 1_700_000_000.0


def composite(total: int, allocation: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": "budget",
        "type": "composite",
        "composite": {
            "max_total_spans_per_second": total,
            "policy_order": ["errors", "everything"],
            "composite_sub_policy": [
                {
                    "name": "errors",
                    "type": "status_code",
                    "status_code": {"status_codes": ["ERROR"]},
                },
                {"name": "everything", "type": "always_sample", **extra},
            ],
            "rate_allocation": [
                {"policy": name, "percent": percent}
                for name, percent in (allocation or {"errors": 60, "everything": 40}).items()
            ],
        },
    }


def spans(n: int, status: int = 0) -> TraceView:
    return view(*(make_span(status=status) for _ in range(n)))


def test_budgets_from_percentages() -> None:
    policy = build_engine([composite(100)]).policies[0]
    assert isinstance(policy, Composite)
    assert policy.budgets == (60, 40)
    policy = build_engine([composite(10, {"errors": 0, "everything": 33})]).policies[0]
    assert isinstance(policy, Composite)
    assert policy.budgets == (5, 3)  # 0 % means an equal share; int() truncates 3.3
    policy = build_engine([composite(100, {"errors": 50, "typo": 50})]).policies[0]
    assert isinstance(policy, Composite)
    assert policy.budgets == (50, 0)  # no allocation, no budget; unknown names are ignored


def test_first_keeping_sub_policy_spends_its_own_budget_only() -> None:
    engine = build_engine([composite(100)])
    decide = engine.decide
    # 40 spans/s for "everything": four 10-span traces, then refused.
    assert [decide(spans(10), T0).kept for _ in range(5)] == [True] * 4 + [False]
    # Errors match "errors" first and use their own 60: unused budget is not shared.
    assert [decide(spans(20, ERROR), T0).kept for _ in range(4)] == [True] * 3 + [False]
    # A trace over budget is refused without charging it; a smaller one still fits.
    engine = build_engine([composite(100)])
    assert engine.decide(spans(35), T0).kept
    assert not engine.decide(spans(10), T0).kept
    assert engine.decide(spans(5), T0).kept


def test_budget_resets_when_now_crosses_a_second() -> None:
    engine = build_engine([composite(100)])
    assert engine.decide(spans(40), T0 + 0.1).kept
    assert not engine.decide(spans(1), T0 + 0.999).kept
    assert engine.decide(spans(40), T0 + 1.0).kept
    assert not engine.decide(spans(1), T0 + 1.5).kept
    assert engine.decide(spans(1), T0 + 2.25).kept


def test_sub_policy_budget_is_also_capped_by_the_total() -> None:
    engine = build_engine([composite(10, {"errors": 300, "everything": 300})])
    assert engine.decide(spans(10), T0).kept
    assert not engine.decide(spans(1), T0).kept
    # Each sub-policy is compared with the total on its own, as composite.go does.
    assert engine.decide(spans(10, ERROR), T0).kept


def test_decision_names_the_sub_policy_and_its_probability() -> None:
    engine = build_engine([composite(100)])
    assert engine.decide(spans(1, ERROR), T0) == Decision(True, "budget", 1.0, "errors", False)
    assert engine.decide(spans(1), T0) == Decision(True, "budget", 1.0, "everything", False)
    # A sub-policy's sample_percentage thins its keeps and scales its probability.
    thinned = build_engine([composite(1000, sample_percentage=50)])
    decisions = {
        thinned.decide(view(make_span(trace_id=bytes([i] * 16)), trace_id=bytes([i] * 16)), T0)
        for i in range(40)
    }
    assert decisions == {
        Decision(True, "budget", 0.5, "everything", False),
        Decision(False, None, 0.0),
    }
    probabilistic = build_engine(
        [
            {
                "name": "budget",
                "type": "composite",
                "sample_percentage": 50,
                "max_total_spans_per_second": 1000,
                "composite_sub_policy": [
                    {"name": "all", "type": "probabilistic", "sampling_percentage": 100}
                ],
                "rate_allocation": [{"policy": "all", "percent": 100}],
            }
        ]
    )
    trace_id = bytes(16)
    decision = probabilistic.decide(view(make_span(trace_id=trace_id), trace_id=trace_id), T0)
    assert decision in (Decision(True, "budget", 0.5, "all", False), Decision(False, None, 0.0))


def test_never_inverted_and_stateful() -> None:
    policy = build_engine([composite(100)]).policies[0]
    assert policy.evaluate(spans(1), T0) is Verdict.SAMPLED
    assert policy.keeps_state() and not policy.may_veto()


def test_sub_policy_errors_carry_their_path() -> None:
    bad = {
        "name": "c",
        "type": "composite",
        "max_total_spans_per_second": 10,
        "composite_sub_policy": [
            {"name": "a", "type": "always_sample"},
            {"name": "slow", "type": "latency", "threshold_ms": "soon"},
        ],
    }
    entries: list[dict[str, Any]] = [{"name": f"p{i}", "type": "always_sample"} for i in range(3)]
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([*entries, bad])
    assert str(caught.value).startswith("policies.3.composite_sub_policy.1.threshold_ms: ")
    nested = composite(10)
    nested["composite"]["composite_sub_policy"][0]["status_code"] = {"status_codes": ["BAD"]}
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([nested])
    locations = [loc for loc, _ in caught.value.errors]
    assert locations == [
        (0, "composite", "composite_sub_policy", 0, "status_code", "status_codes", 0)
    ]
