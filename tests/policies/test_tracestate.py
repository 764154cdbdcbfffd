"""ot=th thresholds: the specification's examples, composition with a head sampler's
threshold, erasure where the probability is unknown."""

from __future__ import annotations

import pytest

from policies.tracestate import compose, probability_of, threshold_hex


@pytest.mark.parametrize(
    ("probability", "precision", "expected"),
    [
        (1.0, 4, "0"),
        (0.5, 4, "8"),
        (0.25, 4, "c"),
        (0.01, 6, "fd70a4"),
        (0.01, 4, "fd71"),
        (1 / 3, 4, "aaab"),
        (0.1, 4, "e666"),
        (2**-56, 4, "ffffffffffffff"),
    ],
)
def test_thresholds_match_the_specification(
    probability: float, precision: int, expected: str
) -> None:
    assert threshold_hex(probability, precision) == expected


@pytest.mark.parametrize("probability", [1.0, 0.5, 0.1, 0.01, 0.001, 1e-6, 0.999, 0.3])
def test_the_implied_probability_is_the_configured_one(probability: float) -> None:
    implied = probability_of(threshold_hex(probability))
    assert implied == pytest.approx(probability, rel=0.005)


def test_a_keep_composes_with_a_head_samplers_threshold() -> None:
    # Head-sampled at 50 % (th:8), kept by the tail at 10 %: 5 % in all.
    state = compose("vendor=a,ot=th:8;rv:0123456789abcd", 0.1)
    member, vendor = state.split(",")
    assert vendor == "vendor=a"
    fields = member.removeprefix("ot=").split(";")
    assert fields[1] == "rv:0123456789abcd"  # other ot sub-keys kept
    assert probability_of(fields[0].removeprefix("th:")) == pytest.approx(0.05, rel=0.005)


def test_an_unknown_probability_erases_the_threshold() -> None:
    assert compose("ot=th:8;p:3,vendor=a", None) == "ot=p:3,vendor=a"
    assert compose("ot=th:8", None) == ""
    assert compose("vendor=a", None) == "vendor=a"


def test_an_empty_tracestate_gets_the_threshold_alone() -> None:
    assert compose("", 1.0) == "ot=th:0"
    assert compose("", 0.5) == "ot=th:8"


def test_a_malformed_threshold_is_dropped_not_composed() -> None:
    assert compose("ot=th:zz", 0.5) == ""


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_a_probability_outside_0_1_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        threshold_hex(bad)
