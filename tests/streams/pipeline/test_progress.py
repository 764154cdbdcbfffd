"""Progress claims: a partition's clock is the least claim over every input partition."""

from __future__ import annotations

import time

import pytest

from streams.pipeline.progress import (
    DirectClock,
    PartitionClock,
    SplitProgress,
    decode_claims,
    encode_claims,
)


def test_claims_round_trip() -> None:
    header = encode_claims(4, 12.5, {0: 100.0, 3: 99.5})
    assert decode_claims(header) == (4, 12.5, {0: 100.0, 3: 99.5})


@pytest.mark.parametrize("value", [b"", b"\x00", encode_claims(2, 1.0, {0: 1.0})[:-1]])
def test_malformed_claims_are_rejected(value: bytes) -> None:
    with pytest.raises(ValueError):
        decode_claims(value)


def test_claim_for_a_partition_beyond_the_total_is_rejected() -> None:
    with pytest.raises(ValueError):
        decode_claims(encode_claims(2, 1.0, {5: 1.0}))


def test_clock_waits_for_every_input_partition_then_takes_the_least() -> None:
    clock = PartitionClock()
    clock.observe(0, encode_claims(3, 1.0, {0: 50.0, 1: 40.0}))
    assert clock.watermark(0) == float("-inf"), "input partition 2 is not claimed yet"
    clock.observe(0, encode_claims(3, 2.0, {2: 45.0}))
    assert clock.watermark(0) == 40.0
    assert clock.watermark(1) == float("-inf"), "claims are per caudal-spans partition"


def test_a_dead_split_stage_holds_the_clock_until_its_partitions_have_a_new_owner() -> None:
    clock = PartitionClock()
    clock.observe(0, encode_claims(2, 1.0, {0: 10.0}))  # stage A owns input 0, then dies
    clock.observe(0, encode_claims(2, 1.5, {1: 30.0}))  # stage B goes on with input 1
    clock.observe(0, encode_claims(2, 1.5, {1: 60.0}))
    assert clock.watermark(0) == 10.0
    clock.observe(0, encode_claims(2, 3.0, {0: 0.0, 1: 61.0}))  # B now owns both, reads 0
    assert clock.watermark(0) == 0.0
    clock.observe(0, encode_claims(2, 3.0, {0: 62.0, 1: 62.0}))
    assert clock.watermark(0) == 62.0
    clock.observe(0, encode_claims(2, 1.0, {0: 99.0}))  # an older assignment's claim
    assert clock.watermark(0) == 62.0


def test_forgotten_partitions_start_again() -> None:
    clock = PartitionClock()
    clock.observe(2, encode_claims(1, 1.0, {0: 5.0}))
    clock.forget([2])
    assert clock.watermark(2) == float("-inf")


def test_split_progress_vouches_for_committed_and_idle_partitions() -> None:
    progress = SplitProgress()
    assert progress.header() is None
    progress.assigned([0, 1], total=3, now=100.0)
    progress.committed({0: 104.0}, idle=[1], now=105.0)
    total, epoch, claims = decode_claims(progress.header() or b"")
    assert (total, epoch) == (3, 100.0)
    assert claims == {0: 104.0, 1: 105.0 - SplitProgress.IDLE_MARGIN}
    progress.committed({0: 103.0, 2: 200.0}, idle=[], now=106.0)
    assert decode_claims(progress.header() or b"")[2][0] == 104.0, "claims never go back"
    progress.committed({0: 500.0}, idle=[], now=107.0)
    assert decode_claims(progress.header() or b"")[2][0] == 107.0, "no claim beyond now"


def test_direct_clock_follows_input_times_and_now_only_when_caught_up() -> None:
    caught_up = {0: False}
    clock = DirectClock(lambda partition: caught_up[partition])
    assert clock.watermark(0) == float("-inf")
    clock.observe(0, 100.0)
    clock.observe(0, 99.0)
    assert clock.watermark(0) == 100.0, "a backlog is measured by its own timestamps"
    caught_up[0] = True
    assert clock.watermark(0) >= time.time() - DirectClock.FETCH_MARGIN - 1
    clock.forget([0])
    caught_up[0] = False
    assert clock.watermark(0) == float("-inf")
