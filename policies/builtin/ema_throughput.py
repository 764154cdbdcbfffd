"""``ema_throughput``: Refinery's EMA throughput sampler, keep about a number of traces per
second for the whole worker group, spread over keys by the log10 of their volume."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from policies.adaptive import (
    EmaCounts,
    EmaFields,
    PartitionedSampler,
    RateTable,
    log_allocation,
    sampler_key,
)
from policies.model import Match, Verdict
from policies.trace import TraceView

__all__ = ["EmaThroughput", "EmaThroughputConfig"]


class EmaThroughputConfig(EmaFields):
    """Fields of ``ema_throughput`` (Refinery's ``EMAThroughputSampler``)."""

    goal_throughput_per_sec: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    """Traces kept per second by the whole worker group (each partition keeps its part)."""
    initial_sample_rate: float = Field(default=10.0, ge=1, allow_inf_nan=False)
    """Rate of every key before the first update."""


class EmaThroughput(PartitionedSampler[tuple[EmaCounts, RateTable]]):
    """SAMPLED with probability 1 / the rate of the trace's key.

    As ``ema_dynamic``, but each partition's rates are set so the traces it keeps per
    interval come to ``goal_throughput_per_sec`` × ``adjustment_interval`` / the number of
    partitions: the group keeps the goal together, however many workers share the partitions
    (Refinery's nodes each keep the whole goal and overshoot). Counts and rates are kept per
    partition and move with it, so a restart or a rebalance does not start from scratch.
    """

    Config = EmaThroughputConfig

    def __init__(self, name: str, config: EmaThroughputConfig) -> None:
        super().__init__(name, config)
        self.fields = config
        self._goal = config.goal_throughput_per_sec
        self._interval = config.adjustment_interval
        self._keys = tuple(config.key_fields)
        self._length = config.use_trace_length

    def _fresh(self) -> tuple[EmaCounts, RateTable]:
        return EmaCounts(self.fields), RateTable(self.name, self.fields.initial_sample_rate)

    def _dump(self, state: tuple[EmaCounts, RateTable]) -> dict[str, Any]:
        counts, table = state
        return {"counts": counts.dump(), "table": table.dump()}

    def _load(self, doc: Mapping[str, Any]) -> tuple[EmaCounts, RateTable]:
        counts, table = self._fresh()
        counts.load(doc["counts"])
        table.load(doc["table"])
        return counts, table

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """See :meth:`evaluate_match`."""
        return self.evaluate_match(trace, now)[0]

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """Count the trace under its key, then keep it with the key's probability."""
        key = sampler_key(trace, self._keys, self._length)
        counts, table = self.part(trace.partition)
        if counts.observe(key, now):
            goal_count = self._goal * self._interval / self.total
            table.set_rates(log_allocation(goal_count, counts.averages))
            table.default_rate = 1.0  # a key with no average yet has been rare
            self.dirty.add(trace.partition)
        return table.decide(key, trace.trace_id)

    def probability(self) -> float:
        """Unknown in advance (it follows the traffic); each kept trace carries its own."""
        return 1.0
