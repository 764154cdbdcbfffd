"""An adaptive sampler's learned state is stored per partition in the decisions table, so a
restart (or the partition's next owner) continues from it instead of from scratch."""

from __future__ import annotations

import logging

import pytest

from streams.config import Settings
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache, PolicySets
from streams.pipeline.route import TenantRoutes
from streams.wire.tracekey import trace_key
from tests.policies.adaptive_traffic import Traffic
from tests.streams.pipeline.test_buffer import MemoryStore
from tests.streams.pipeline.test_quarantine import Producer

SAMPLER = {
    "name": "tp",
    "type": "ema_throughput",
    "key_fields": ["http.route"],
    "goal_throughput_per_sec": 20,
    "adjustment_interval": 5,
}
PARTITIONS = 4


def worker(
    buffer_store: MemoryStore, decision_store: MemoryStore, sampler: dict[str, object]
) -> Decider:
    settings = Settings.model_validate({"policies": [sampler]})
    buffer = TraceBuffer(buffer_store, wait=1.0, max_traces=100_000)  # type: ignore[arg-type]
    cache = DecisionCache(decision_store, kept=100_000, dropped=100_000, ttl=600.0)  # type: ignore[arg-type]
    decider = Decider(
        PolicySets.from_settings(settings),
        TenantRoutes(settings),
        buffer,
        cache,
        Producer(),
        "sampled",
        "dlq",
    )
    decider.policy_sets.set_partitions(frozenset(range(PARTITIONS)), PARTITIONS)
    return decider


def run(decider: Decider, seconds: int, start: float) -> None:
    """200 traces/s through the buffer, decided one second after they arrive."""
    traffic = Traffic({"/a": 0.7, "/b": 0.25, "/c": 0.05}, seed=int(start))
    pending = list(traffic.traces(200, seconds, start, partitions=PARTITIONS))
    for second in range(seconds):
        for _, now, trace in pending[second * 200 : (second + 1) * 200]:
            key = trace_key(trace.trace_id, "default")
            decider.buffer.append(trace.partition, key, trace.encoded, now)
        now = start + second + 1.5
        decider.complete(decider.decide_due(now, 100_000), now)


def rates(decider: Decider) -> dict[int, dict[str, float]]:
    policy = decider.policy_sets.default.policies[0]
    return {p: policy.part(p)[1].rates() for p in range(PARTITIONS)}  # type: ignore[attr-defined]


def test_a_restarted_worker_continues_from_the_stored_rates() -> None:
    buffer_store, decision_store = MemoryStore(), MemoryStore()
    first = worker(buffer_store, decision_store, SAMPLER)
    run(first, 30, 1000.0)
    learned = rates(first)
    assert all(learned.values()), "every partition learned rates"
    # A new process on the same tables (as after a restart, or on the partition's next
    # owner once the changelog is restored).
    second = worker(buffer_store, decision_store, SAMPLER)
    second.cache.rebuild(range(PARTITIONS))
    second.settle_recovered(range(PARTITIONS), [], [])
    assert rates(second) == learned
    fresh = worker(MemoryStore(), MemoryStore(), SAMPLER)
    assert not any(rates(fresh).values()), "without the stored state it starts from scratch"


def test_state_stored_for_another_key_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    buffer_store, decision_store = MemoryStore(), MemoryStore()
    run(worker(buffer_store, decision_store, SAMPLER), 30, 1000.0)
    other = worker(buffer_store, decision_store, SAMPLER | {"key_fields": ["service.name"]})
    other.cache.rebuild(range(PARTITIONS))
    with caplog.at_level(logging.WARNING):
        other.settle_recovered(range(PARTITIONS), [], [])
    assert not any(rates(other).values())
    assert "policy state not restored" in caplog.text


def test_the_stored_state_is_not_taken_for_a_decision() -> None:
    buffer_store, decision_store = MemoryStore(), MemoryStore()
    first = worker(buffer_store, decision_store, SAMPLER)
    run(first, 20, 1000.0)
    second = worker(buffer_store, decision_store, SAMPLER)
    unused = second.cache.rebuild(range(PARTITIONS))
    assert not [key for _, key in unused if key.startswith(b"\xffA")]
    decided = len(first.cache)
    assert decided > 3800
    assert len(second.cache) == decided


def test_a_tenants_own_sampler_keeps_its_own_state() -> None:
    settings = Settings.model_validate(
        {
            "policies": [SAMPLER],
            "exporters": {"out": {"type": "file", "path": "/tmp/caudal-state-test"}},
            "tenants": {
                "default": {"exporters": ["out"]},
                "a:b": {
                    "exporters": ["out"],
                    "policies": [SAMPLER | {"goal_throughput_per_sec": 5}],
                },
            },
        }
    )
    sets = PolicySets.from_settings(settings)
    sets.set_partitions(frozenset({0}), 1)
    for engine in (sets.default, sets.by_tenant["a:b"]):
        for _, now, trace in Traffic({"/a": 1.0}).traces(100, 12):
            engine.decide(trace, now)
    stored = sets.states(0)
    assert sorted(stored) == ["\x00tp", "a:b\x00tp"]
    again = PolicySets.from_settings(settings)
    again.restore(0, stored)
    for tenant in ("", "a:b"):
        before = sets._engines()[tenant].policies[0].part(0)[1].rates()  # type: ignore[attr-defined]
        after = again._engines()[tenant].policies[0].part(0)[1].rates()  # type: ignore[attr-defined]
        assert before and after == before
