"""windowed_throughput: an equal share of the goal per key seen in the window."""

from __future__ import annotations

import pytest

from policies import PolicyConfigError, build_engine
from policies.builtin.windowed_throughput import (
    WindowedThroughput,
    WindowedThroughputConfig,
)
from tests.policies.adaptive_traffic import Traffic


def sampler(**fields: object) -> WindowedThroughput:
    config = WindowedThroughputConfig.model_validate({"key_fields": ["http.route"]} | fields)
    return WindowedThroughput("windowed", config)


def test_each_key_keeps_an_equal_share_of_the_goal() -> None:
    # Four keys, one of them 70 % of 1,000 traces/s; goal 100/s: 25/s per key at most.
    weights = {"/a": 0.7, "/b": 0.2, "/c": 0.08, "/d": 0.02}
    policy = sampler(goal_throughput_per_sec=100, update_frequency=1, lookback_frequency=10)
    kept: dict[str, int] = dict.fromkeys(weights, 0)
    seen: dict[str, int] = dict.fromkeys(weights, 0)
    for key, now, trace in Traffic(weights).traces(1000, 120):
        sampled = policy.evaluate(trace, now).value == "sampled"
        if now >= 10:
            seen[key] += 1
            kept[key] += sampled
    per_second = {key: kept[key] / 110 for key in weights}
    assert 22 <= per_second["/a"] <= 28 and 22 <= per_second["/b"] <= 28
    assert kept["/d"] == seen["/d"]  # 20/s is under its share: kept whole
    total = sum(per_second.values())
    assert total <= 100


def test_a_worker_owning_half_the_partitions_keeps_half_the_goal() -> None:
    policy = sampler(goal_throughput_per_sec=100)
    owned = frozenset(range(6))
    policy.set_partitions(owned, 12)
    kept = 0
    for _, now, trace in Traffic({"/a": 1.0}).traces(1000, 90, partitions=12):
        if trace.partition in owned:  # this worker reads only its partitions
            sampled = policy.evaluate(trace, now).value == "sampled"
            kept += sampled and now >= 30
    assert 45 <= kept / 60 <= 55


def test_a_lookback_shorter_than_a_step_is_rejected() -> None:
    with pytest.raises(PolicyConfigError) as caught:
        build_engine(
            [
                {
                    "name": "w",
                    "type": "windowed_throughput",
                    "key_fields": ["k"],
                    "update_frequency": 5,
                    "lookback_frequency": 1,
                }
            ]
        )
    assert "lookback_frequency" in str(caught.value)
