"""``ema_throughput``: Refinery's EMA throughput sampler, keep about a number of traces per
second for the whole worker group, spread over keys by the log10 of their volume."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from policies.adaptive import EmaFields, EmaSampler

__all__ = ["EmaThroughput", "EmaThroughputConfig"]


class EmaThroughputConfig(EmaFields):
    """Fields of ``ema_throughput`` (Refinery's ``EMAThroughputSampler``)."""

    goal_throughput_per_sec: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    """Traces kept per second by the whole worker group (each partition keeps its part)."""
    initial_sample_rate: float = Field(default=10.0, ge=1, allow_inf_nan=False)
    """Rate of every key before the first update."""


class EmaThroughput(EmaSampler):
    """SAMPLED with probability 1 / the rate of the trace's key.

    As ``ema_dynamic``, but each partition's rates are set so the traces it keeps per
    interval come to ``goal_throughput_per_sec`` × ``adjustment_interval`` / the number of
    partitions: the group keeps the goal together, however many workers share the partitions
    (Refinery's nodes each keep the whole goal and overshoot). Counts and rates are kept per
    partition and move with it, so a restart or a rebalance does not start from scratch.
    """

    Config = EmaThroughputConfig

    def __init__(self, name: str, config: EmaThroughputConfig) -> None:
        self._per_interval = config.goal_throughput_per_sec * config.adjustment_interval
        self._initial = config.initial_sample_rate
        super().__init__(name, config)

    def goal_count(self, averages: Mapping[str, float]) -> float:
        """This partition's part of the goal over one interval."""
        return self._per_interval / self.total

    def initial_rate(self) -> float:
        """`initial_sample_rate`."""
        return self._initial

    def probability(self) -> float:
        """Unknown in advance (it follows the traffic); each kept trace carries its own."""
        return 1.0
