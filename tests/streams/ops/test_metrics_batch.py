"""A histogram fed a batch of observations reads as one fed them one by one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from streams.ops.metrics import BatchHistogram


def test_a_batch_of_observations_lands_in_the_same_buckets_as_one_by_one() -> None:
    registry = CollectorRegistry()
    bounds = (0.1, 1, 5)
    batched = BatchHistogram("batched", "h", buckets=bounds, registry=registry)
    single = Histogram("single", "h", buckets=bounds, registry=registry)
    values = [0.0, 0.1, 0.10001, 1, 3, 5, 5.5, 100]
    batched.observe_many(values)
    for value in values:
        single.observe(value)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        [family] = [m for m in registry.collect() if m.name == name]
        return [
            (s.name[len(name) :], s.labels, s.value)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("batched") == samples("single")
