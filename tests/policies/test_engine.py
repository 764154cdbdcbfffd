"""PolicyEngine: OTel precedence, sample_percentage, and build_engine's error report."""

from __future__ import annotations

import math
import random
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from policies import (
    Decision,
    Policy,
    PolicyConfigError,
    PolicyEngine,
    TraceView,
    Verdict,
    build_engine,
)
from tests.policies.traces import ERROR, make_span, shop_trace, view

S, N = Verdict.SAMPLED, Verdict.NOT_SAMPLED
IS, INS, D = Verdict.INVERTED_SAMPLED, Verdict.INVERTED_NOT_SAMPLED, Verdict.DROPPED


class FixedConfig(BaseModel):
    """Fields of the test plugin."""

    model_config = ConfigDict(extra="forbid")
    verdict: Verdict = Verdict.SAMPLED
    probability: float = 1.0


class Fixed(Policy):
    """A plugin returning a configured verdict, counting its calls."""

    Config: ClassVar[type[BaseModel]] = FixedConfig

    def __init__(self, name: str, config: FixedConfig) -> None:
        super().__init__(name, config)
        self.verdict = config.verdict
        self._probability = config.probability
        self.calls = 0

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        self.calls += 1
        return self.verdict

    def probability(self) -> float:
        return self._probability


class Broken(Policy):
    """A plugin that fails on every trace."""

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        raise RuntimeError("boom")


FIXED = f"{__name__}:Fixed"
TRACE = view(make_span())


def engine_of(*verdicts: Verdict, percentages: dict[str, float] | None = None) -> PolicyEngine:
    policies = [Fixed(f"p{i}", FixedConfig(verdict=v)) for i, v in enumerate(verdicts)]
    return PolicyEngine(policies, percentages)


@pytest.mark.parametrize(
    ("verdicts", "kept_by"),
    [
        ((S,), "p0"),
        ((N, S, S), "p1"),  # the first policy that sampled, in configuration order
        ((N, N), None),
        ((), None),
        ((S, D), None),  # drop beats everything
        ((D, S, IS), None),
        ((S, INS), None),  # an inverted non-match vetoes a keep
        ((INS, IS), None),
        ((IS,), "p0"),
        ((IS, S), "p1"),  # a plain keep is reported before an inverted one
        ((IS, N), None),  # the Collector keeps an inverted keep only without a NOT_SAMPLED
        ((IS, N, S), "p2"),
        ((N, IS, IS), None),
        ((IS, IS), "p0"),
    ],
)
def test_precedence_follows_the_collector(
    verdicts: tuple[Verdict, ...], kept_by: str | None
) -> None:
    decision = engine_of(*verdicts).decide(TRACE, 0.0)
    if kept_by is None:
        assert decision == Decision(kept=False, policy=None, probability=0.0)
    else:
        assert decision == Decision(kept=True, policy=kept_by, probability=1.0)


def test_every_policy_is_evaluated_until_a_drop() -> None:
    engine = engine_of(N, S, IS, D, S)
    engine.decide(TRACE, 0.0)
    assert [p.calls for p in engine.policies if isinstance(p, Fixed)] == [1, 1, 1, 1, 0]


def test_probability_is_the_policys_times_its_sample_percentage() -> None:
    engine = build_engine(
        [
            {"name": "none", "type": "status_code", "status_codes": ["ERROR"]},
            {"name": "tenth", "type": "probabilistic", "sampling_percentage": 100},
            {"name": "all", "type": "always_sample"},
        ]
    )
    assert engine.decide(TRACE, 0.0) == Decision(True, "tenth", 1.0)
    engine = build_engine(
        [
            {"name": "weighted", "type": FIXED, "probability": 0.2, "sample_percentage": 100},
            {"name": "all", "type": "always_sample", "sample_percentage": 50},
        ]
    )
    # Either could keep the trace, by independent draws: 1 - 0.8 * 0.5.
    assert engine.decide(TRACE, 0.0) == Decision(True, "weighted", 1 - 0.8 * 0.5)
    assert engine_of(S, percentages={"p0": 100}).decide(TRACE, 0).probability == 1.0


def reference_fnv1a_64(data: bytes) -> int:
    hash_value = 0xCBF29CE484222325
    for octet in data:
        hash_value = ((hash_value ^ octet) * 0x100000001B3) % 2**64
    return hash_value


def ids(n: int, seed: int = 11) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


def kept_ids(engine: PolicyEngine, trace_ids: list[bytes]) -> set[bytes]:
    return {
        trace_id
        for trace_id in trace_ids
        if engine.decide(view(make_span(trace_id=trace_id), trace_id=trace_id), 0.0).kept
    }


def within(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 3.29 * math.sqrt(n * p * (1 - p))


def test_sample_percentage_is_a_deterministic_hash_of_name_and_trace_id() -> None:
    entry = {"name": "vip", "type": "always_sample", "sample_percentage": 30}
    trace_ids = ids(2000)
    kept = kept_ids(build_engine([entry]), trace_ids)
    # Another worker, or the same one after a restart, keeps exactly the same traces.
    assert kept_ids(build_engine([entry]), trace_ids) == kept
    threshold = int((2**64 - 1) * 0.3)  # close enough to the exact threshold for random IDs
    assert kept == {i for i in trace_ids if reference_fnv1a_64(b"vip" + i) <= threshold}
    decision = build_engine([entry]).decide(
        view(make_span(trace_id=min(kept)), trace_id=min(kept)), 0
    )
    assert decision == Decision(True, "vip", 0.3)


@pytest.mark.parametrize("percentage", [5, 50, 80])
def test_sample_percentage_rate(percentage: float) -> None:
    n = 20_000
    engine = build_engine(
        [{"name": "vip", "type": "always_sample", "sample_percentage": percentage}]
    )
    assert within(len(kept_ids(engine, ids(n))), n, percentage / 100)


def test_sample_percentages_of_different_policies_are_independent() -> None:
    n = 20_000
    trace_ids = ids(n, seed=5)
    first = kept_ids(
        build_engine([{"name": "a", "type": "always_sample", "sample_percentage": 50}]), trace_ids
    )
    second = kept_ids(
        build_engine([{"name": "b", "type": "always_sample", "sample_percentage": 50}]), trace_ids
    )
    assert within(len(first & second), n, 0.25)


def test_sample_percentage_also_thins_inverted_keeps() -> None:
    trace_ids = ids(4000)
    engine = engine_of(IS, percentages={"p0": 25})
    assert within(len(kept_ids(engine, trace_ids)), 4000, 0.25)
    # A thinned-out keep counts as NOT_SAMPLED, so it also blocks other inverted keeps.
    engine = engine_of(IS, IS, percentages={"p0": 25})
    assert within(len(kept_ids(engine, trace_ids)), 4000, 0.25)


def test_failing_policy_is_ignored_and_counted() -> None:
    engine = PolicyEngine([Broken("broken", Broken.Config()), Fixed("ok", FixedConfig())])
    assert engine.decide(TRACE, 0.0) == Decision(True, "ok", 1.0)
    engine.decide(TRACE, 0.0)
    assert engine.evaluation_errors == {"broken": 2}


def test_three_bad_policies_give_three_errors_with_locations() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine(
            [
                {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
                {"name": "slow", "type": "latency", "threshold_ms": "soon"},
                {"name": "fine", "type": "always_sample"},
                {
                    "name": "vip",
                    "type": "string_attribute",
                    "key": "tier",
                    "values": ["v"],
                    "sample_percentage": 0,
                },
                {"name": "rand", "type": "probabilistic", "sampling_percentage": 5, "salt": "x"},
            ]
        )
    errors = caught.value.errors
    assert [loc for loc, _ in errors] == [
        (1, "threshold_ms"),
        (3, "sample_percentage"),
        (4, "salt"),
    ]
    assert str(caught.value).splitlines() == [
        "policies.1.threshold_ms: Input should be a valid integer,"
        " unable to parse string as an integer",
        "policies.3.sample_percentage: Input should be greater than 0",
        "policies.4.salt: Extra inputs are not permitted",
    ]


def test_every_kind_of_entry_error_is_collected() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine(
            [
                {"name": "a", "type": "always_sample"},
                {"name": "a", "type": "always_sample"},
                {"type": "always_sample"},
                {"name": "x"},
                "not a mapping",
                {"name": "y", "type": "no_such_policy"},
                {"name": "z", "type": "latency", "latency": {"threshold_ms": 1}, "threshold_ms": 2},
                {"name": "w", "type": "latency", "latency": "fast"},
            ]
        )
    locations = [loc for loc, _ in caught.value.errors]
    assert locations == [
        (1, "name"),
        (2, "name"),
        (3, "type"),
        (4,),
        (5, "type"),
        (6, "threshold_ms"),
        (7, "latency"),
    ]
    messages = dict(caught.value.errors)
    assert "duplicate policy name 'a' (policy 0)" in messages[(1, "name")]
    # Built-ins listed by name (plugins installed in the environment may sit among them).
    assert (
        "installed: always_sample, and, boolean_attribute, bytes_limiting" in messages[(5, "type")]
    )
    assert "go under 'latency'" in messages[(6, "threshold_ms")]


def test_otel_nested_form_is_accepted_unchanged() -> None:
    # A policy list copied from an OTel Collector tail_sampling config.
    engine = build_engine(
        [
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {
                "name": "slow",
                "type": "latency",
                "latency": {"threshold_ms": 5000, "upper_threshold_ms": 10000},
            },
            {"name": "rand", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}},
            {"name": "all", "type": "always_sample"},
        ]
    )
    assert [type(p).__name__ for p in engine.policies] == [
        "StatusCode",
        "Latency",
        "Probabilistic",
        "AlwaysSample",
    ]
    assert engine.decide(view(make_span(status=ERROR)), 0.0).policy == "errors"


def test_nested_errors_carry_the_type_key_in_their_location() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "slow", "type": "latency", "latency": {"threshold_ms": -5}}])
    assert str(caught.value) == (
        "policies.0.latency.threshold_ms: Input should be greater than or equal to 0"
    )


def test_engine_rejects_duplicate_names_and_bad_percentages() -> None:
    with pytest.raises(PolicyConfigError):
        PolicyEngine([Fixed("a", FixedConfig()), Fixed("a", FixedConfig())])
    with pytest.raises(PolicyConfigError):
        engine_of(S, percentages={"p0": 0})
    with pytest.raises(PolicyConfigError):
        engine_of(S, percentages={"other": 50})


def test_the_five_product_rules() -> None:
    engine = build_engine(
        [
            {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
            {"name": "slow", "type": "latency", "threshold_ms": 2000},
            {
                "name": "critical",
                "type": "string_attribute",
                "key": "service.name",
                "values": ["checkout"],
            },
            {
                "name": "vip",
                "type": "string_attribute",
                "key": "user.tier",
                "values": ["vip"],
                "sample_percentage": 50,
            },
            {"name": "rand", "type": "probabilistic", "sampling_percentage": 10},
        ]
    )
    trace_id = bytes(16)
    trace = TraceView.from_resource_spans(trace_id, [shop_trace(trace_id, error=True, slow=True)])
    assert engine.decide(trace, 0.0) == Decision(True, "errors", 1.0)
    trace = TraceView.from_resource_spans(trace_id, [shop_trace(trace_id, slow=True)])
    assert engine.decide(trace, 0.0) == Decision(True, "slow", 1.0)
    trace = TraceView.from_resource_spans(trace_id, [shop_trace(trace_id)])
    assert engine.decide(trace, 0.0) == Decision(True, "critical", 1.0)


class QuietConfig(BaseModel):
    """Fields of the plugin below."""

    model_config = ConfigDict(extra="forbid")
    verdict: Verdict = Verdict.SAMPLED
    veto: bool = False
    state: bool = False


class Quiet(Policy):
    """A plugin declaring whether it may veto or keeps state, counting its calls."""

    Config: ClassVar[type[BaseModel]] = QuietConfig

    def __init__(self, name: str, config: QuietConfig) -> None:
        super().__init__(name, config)
        self.config_ = config
        self.calls = 0

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        self.calls += 1
        return self.config_.verdict

    def may_veto(self) -> bool:
        return self.config_.veto

    def keeps_state(self) -> bool:
        return self.config_.state


def quiet(index: int, verdict: Verdict, veto: bool = False, state: bool = False) -> Quiet:
    return Quiet(f"q{index}", QuietConfig(verdict=verdict, veto=veto, state=state))


def test_stops_at_the_first_keep_when_nothing_later_can_change_it() -> None:
    engine = PolicyEngine([quiet(0, N), quiet(1, S), quiet(2, S), quiet(3, N)])
    assert engine.decide(TRACE, 0.0) == Decision(True, "q1", 1.0)
    assert [p.calls for p in engine.policies if isinstance(p, Quiet)] == [1, 1, 0, 0]
    # A later policy that may veto, or that keeps state, is still evaluated.
    for later in (quiet(2, IS, veto=True), quiet(2, N, state=True)):
        engine = PolicyEngine([quiet(0, S), quiet(1, N), later])
        engine.decide(TRACE, 0.0)
        assert later.calls == 1


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.sampled_from(list(Verdict)), st.booleans(), st.booleans()), max_size=6)
)
def test_decisions_equal_the_collectors_combination_of_all_verdicts(
    specs: list[tuple[Verdict, bool, bool]],
) -> None:
    # A plugin must declare may_veto() to return the vetoing verdicts.
    specs = [(v, veto or v in (INS, D), state) for v, veto, state in specs]
    engine = PolicyEngine([quiet(i, *spec) for i, spec in enumerate(specs)])
    verdicts = [v for v, _, _ in specs]
    first = {v: f"q{verdicts.index(v)}" for v in reversed(verdicts)}
    if D in first or INS in first:
        expected = Decision(False, None, 0.0)
    elif S in first:
        expected = Decision(True, first[S], 1.0)
    elif IS in first and N not in first:
        expected = Decision(True, first[IS], 1.0)
    else:
        expected = Decision(False, None, 0.0)
    assert engine.decide(TRACE, 0.0) == expected


def test_drop_policies_run_first_so_dropped_traces_spend_no_budget() -> None:
    engine = build_engine(
        [
            {"name": "budget", "type": "rate_limiting", "spans_per_second": 15},
            {
                "name": "no-tests",
                "type": "drop",
                "drop_sub_policy": [
                    {"name": "test", "type": "string_attribute", "key": "test", "values": ["1"]}
                ],
            },
        ]
    )
    test_trace = view(*(make_span(attributes={"test": "1"}) for _ in range(10)))
    real_trace = view(*(make_span() for _ in range(10)))
    assert engine.decide(test_trace, 5.0) == Decision(False, None, 0.0)
    # Had "budget" seen the dropped trace first, 10 + 10 spans would exceed 15.
    assert engine.decide(real_trace, 5.0) == Decision(True, "budget", 1.0, None, False)


def test_nested_sample_percentage_and_sub_policy_in_decisions() -> None:
    engine = build_engine(
        [
            {
                "name": "c",
                "type": "composite",
                "sample_percentage": 20,
                "max_total_spans_per_second": 100,
                "composite_sub_policy": [
                    {"name": "tenth", "type": "probabilistic", "sampling_percentage": 10},
                    {"name": "rest", "type": "always_sample", "sample_percentage": 50},
                ],
                "rate_allocation": [
                    {"policy": "tenth", "percent": 50},
                    {"policy": "rest", "percent": 50},
                ],
            }
        ]
    )
    found = set()
    for index, trace_id in enumerate(ids(3000, seed=3)):
        decision = engine.decide(view(make_span(trace_id=trace_id), trace_id=trace_id), index)
        if decision.kept:
            found.add((decision.sub_policy, round(decision.probability, 6)))
    # The composite's probability is its matching sub-policy's, times both percentages.
    assert found == {("tenth", 0.02), ("rest", 0.1)}
