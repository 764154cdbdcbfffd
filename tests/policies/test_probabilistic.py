"""probabilistic: the Collector's FNV-1a trace-ID hash and threshold, bit for bit."""

from __future__ import annotations

import math
import random

import pytest

from policies import PolicyConfigError, TraceView, Verdict, build_engine
from policies.builtin.probabilistic import Probabilistic, ProbabilisticConfig
from policies.hashing import fnv1a_64, ratio_threshold
from tests.policies.traces import make_span, view

MAX_UINT64 = 2**64 - 1


def reference_fnv1a_64(data: bytes) -> int:
    """FNV-1a 64 written out from the spec (isthe.com/chongo/tech/comp/fnv)."""
    hash_value = 0xCBF29CE484222325
    for octet in data:
        hash_value ^= octet
        hash_value = (hash_value * 0x100000001B3) % 2**64
    return hash_value


def reference_threshold(ratio: float) -> int:
    """uint64(big.Float(MaxUint64, prec 64) * ratio), with integers only."""
    mantissa, denominator = ratio.as_integer_ratio()
    numerator = MAX_UINT64 * mantissa
    excess = numerator.bit_length() - 64
    if excess > 0:  # round the product to 64 significant bits, ties to even
        quotient, remainder = divmod(numerator, 1 << excess)
        half = 1 << (excess - 1)
        if remainder > half or (remainder == half and quotient % 2 == 1):
            quotient += 1
        numerator = quotient << excess
    return min(numerator // denominator, MAX_UINT64)


def reference_sampled(trace_id: bytes, percentage: float, salt: str = "default-hash-seed") -> bool:
    return reference_fnv1a_64(salt.encode() + trace_id) <= reference_threshold(percentage / 100)


def probabilistic(percentage: float, salt: str = "") -> Probabilistic:
    config = ProbabilisticConfig(sampling_percentage=percentage, hash_salt=salt)
    return Probabilistic("random", config)


def trace_of(trace_id: bytes) -> TraceView:
    return view(make_span(trace_id=trace_id), trace_id=trace_id)


def test_fnv1a_64_known_vectors() -> None:
    for data, expected in [
        (b"", 0xCBF29CE484222325),
        (b"a", 0xAF63DC4C8601EC8C),
        (b"foobar", 0x85944171F73967E8),
    ]:
        assert reference_fnv1a_64(data) == expected
        assert fnv1a_64(data) == expected
    salted = b"default-hash-seed" + bytes(range(16))
    assert fnv1a_64(bytes(range(16)), fnv1a_64(b"default-hash-seed")) == reference_fnv1a_64(salted)


def test_threshold_rounds_like_go_big_float_not_float64() -> None:
    # float64(MaxUint64) is 2**64, so float arithmetic would give 2**63 here.
    assert ratio_threshold(0.5) == 2**63 - 1
    assert ratio_threshold(0.25) == 2**62 - 1
    assert ratio_threshold(1.0) == MAX_UINT64
    assert ratio_threshold(0.0) == 0
    for percentage in [0.0001, 0.01, 1, 5, 10, 25, 33, 33.3, 50, 66.6, 90, 99.99, 100]:
        assert ratio_threshold(percentage / 100) == reference_threshold(percentage / 100)


@pytest.mark.parametrize("salt", ["", "tier-2"])
@pytest.mark.parametrize("percentage", [1, 10, 33, 50, 99])
def test_decisions_match_the_reference_on_fixed_ids(salt: str, percentage: float) -> None:
    policy = probabilistic(percentage, salt)
    rng = random.Random(percentage)
    for _ in range(200):
        trace_id = rng.randbytes(16)
        expected = reference_sampled(trace_id, percentage, salt or "default-hash-seed")
        verdict = policy.evaluate(trace_of(trace_id), 0.0)
        assert verdict is (Verdict.SAMPLED if expected else Verdict.NOT_SAMPLED)


def test_known_trace_id_vector() -> None:
    trace_id = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
    hash_value = reference_fnv1a_64(b"default-hash-seed" + trace_id)
    assert hash_value == 0xDBCF64D5420F4CAD  # at 85.86 % of the hash range
    # Kept exactly when the percentage's threshold reaches this trace's hash.
    cut = hash_value / MAX_UINT64 * 100
    assert probabilistic(min(100, cut + 0.01)).evaluate(trace_of(trace_id), 0) is Verdict.SAMPLED
    assert probabilistic(max(0, cut - 0.01)).evaluate(trace_of(trace_id), 0) is Verdict.NOT_SAMPLED


def binomial_bound(n: int, p: float) -> float:
    """Half-width of a two-sided 99.9 % normal-approximation interval for a count."""
    return 3.29 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("percentage", [1, 10, 33, 50, 90])
def test_rate_on_random_trace_ids(percentage: float) -> None:
    policy = probabilistic(percentage)
    rng = random.Random(2024)
    n = 20_000
    kept = sum(
        policy.evaluate(trace_of(rng.randbytes(16)), 0.0) is Verdict.SAMPLED for _ in range(n)
    )
    p = percentage / 100
    assert abs(kept - n * p) <= binomial_bound(n, p)


def test_zero_and_hundred_percent() -> None:
    rng = random.Random(1)
    ids = [rng.randbytes(16) for _ in range(500)]
    assert all(probabilistic(100).evaluate(trace_of(i), 0) is Verdict.SAMPLED for i in ids)
    assert all(probabilistic(0).evaluate(trace_of(i), 0) is Verdict.NOT_SAMPLED for i in ids)


def test_probability_is_the_percentage() -> None:
    assert probabilistic(12.5).probability() == 0.125


@pytest.mark.parametrize("percentage", [-1, 100.5, "lots", float("nan"), None])
def test_rejects_percentages_outside_0_100(percentage: object) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine([{"name": "p", "type": "probabilistic", "sampling_percentage": percentage}])
    assert [loc for loc, _ in caught.value.errors] == [(0, "sampling_percentage")]
