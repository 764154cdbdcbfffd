"""ema_throughput: a group of workers keeps its goal together, each its share of the
partitions; rates follow the traffic; a reload that keeps the key keeps the rates."""

from __future__ import annotations

import pytest

from policies import build_engine
from policies.builtin.ema_throughput import EmaThroughput, EmaThroughputConfig
from tests.policies.adaptive_traffic import Traffic

WEIGHTS = {"/cart": 0.6, "/search": 0.3, "/login": 0.09} | {f"/rare/{i}": 0.0005 for i in range(20)}


def sampler(**fields: object) -> EmaThroughput:
    config = EmaThroughputConfig.model_validate({"key_fields": ["http.route"]} | fields)
    return EmaThroughput("throughput", config)


@pytest.mark.parametrize("workers", [1, 3])
def test_the_group_keeps_its_goal_not_a_multiple_of_it(workers: int) -> None:
    # 2,000 traces/s on 12 partitions spread over the workers, 5 minutes.
    partitions = 12
    group = [sampler(goal_throughput_per_sec=100) for _ in range(workers)]
    for w, policy in enumerate(group):
        policy.set_partitions(frozenset(range(w, partitions, workers)), partitions)
    kept = 0
    seconds = 300
    for _, now, trace in Traffic(WEIGHTS).traces(2000, seconds, partitions=partitions):
        policy = group[trace.partition % workers]
        kept += policy.evaluate(trace, now).value == "sampled"
    per_second = kept / seconds
    assert 90 <= per_second <= 110, per_second
    print(f"{workers} worker(s): {per_second:.1f} traces/s kept")


def test_the_rates_follow_a_change_of_traffic() -> None:
    policy = sampler(goal_throughput_per_sec=50, adjustment_interval=5)
    traffic = Traffic(WEIGHTS)

    def kept_per_second(rate: float, seconds: float, start: float) -> float:
        kept = sum(
            policy.evaluate(trace, now).value == "sampled"
            for _, now, trace in traffic.traces(rate, seconds, start)
        )
        return kept / seconds

    kept_per_second(500, 30, 0)
    assert 40 <= kept_per_second(500, 60, 30) <= 60
    # Traffic quadruples: within a few intervals (bursts update early) the goal holds again.
    kept_per_second(2000, 20, 90)
    assert 40 <= kept_per_second(2000, 60, 110) <= 60


def test_a_worker_owning_a_quarter_of_the_partitions_keeps_a_quarter() -> None:
    engine = build_engine(
        [
            {
                "name": "tp",
                "type": "ema_throughput",
                "key_fields": ["http.route"],
                "goal_throughput_per_sec": 100,
                "adjustment_interval": 5,
            }
        ]
    )
    owned = frozenset({0, 1, 2})
    engine.set_partitions(owned, 12)
    kept = 0
    for _, now, trace in Traffic(WEIGHTS).traces(1000, 65, partitions=12):
        if trace.partition in owned:  # this worker reads only its partitions
            decision = engine.decide(trace, now)
            kept += decision.kept and now >= 5  # after the first interval
    assert 22.5 <= kept / 60 <= 27.5  # a quarter of the goal


def test_a_reload_that_keeps_the_key_keeps_the_rates() -> None:
    entry = {
        "name": "tp",
        "type": "ema_throughput",
        "key_fields": ["http.route"],
        "adjustment_interval": 5,
    }
    before = build_engine([entry])
    for _, now, trace in Traffic(WEIGHTS).traces(500, 30):
        before.decide(trace, now)
    after = build_engine([entry | {"goal_throughput_per_sec": 200}])
    assert after.adopt_state(before) == {"tp": True}
    assert after.policies[0].part(0)[1].rates() == before.policies[0].part(0)[1].rates()  # type: ignore[attr-defined]
