"""``ema_throughput``: Refinery's EMA throughput sampler, keep about a number of traces per
second for the whole worker group, spread over keys by the log10 of their volume."""

from __future__ import annotations

from pydantic import Field

from policies.adaptive import (
    EmaCounts,
    EmaFields,
    KeyFields,
    RateTable,
    log_allocation,
    same_key,
    sampler_key,
)
from policies.model import Match, Policy, Verdict
from policies.trace import TraceView

__all__ = ["EmaThroughput", "EmaThroughputConfig"]


class EmaThroughputConfig(EmaFields):
    """Fields of ``ema_throughput`` (Refinery's ``EMAThroughputSampler``)."""

    goal_throughput_per_sec: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    """Traces kept per second by the whole worker group (each worker keeps its share)."""
    initial_sample_rate: float = Field(default=10.0, ge=1, allow_inf_nan=False)
    """Rate of every key before the first update."""


class EmaThroughput(Policy):
    """SAMPLED with probability 1 / the rate of the trace's key.

    As ``ema_dynamic``, but the rates are set so the traces kept per interval come to
    ``goal_throughput_per_sec`` × ``adjustment_interval`` × this worker's share of the
    group's partitions: N workers keep the goal together, not N times it (Refinery divides
    nothing and overshoots). The share follows every rebalance.
    """

    Config = EmaThroughputConfig

    def __init__(self, name: str, config: EmaThroughputConfig) -> None:
        super().__init__(name, config)
        self.key_config: KeyFields = config
        self.counts = EmaCounts(config)
        self.table = RateTable(name, config.initial_sample_rate)
        self.share = 1.0
        self._goal = config.goal_throughput_per_sec
        self._interval = config.adjustment_interval
        self._fields = tuple(config.key_fields)
        self._length = config.use_trace_length

    def set_share(self, share: float) -> None:
        """Keep `share` of the group's goal from the next update on."""
        self.share = share

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """See :meth:`evaluate_match`."""
        return self.evaluate_match(trace, now)[0]

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """Count the trace under its key, then keep it with the key's probability."""
        key = sampler_key(trace, self._fields, self._length)
        if self.counts.observe(key, now):
            goal_count = self._goal * self.share * self._interval
            self.table.set_rates(log_allocation(goal_count, self.counts.averages))
            self.table.default_rate = 1.0  # a key with no average yet has been rare
        return self.table.decide(key, trace.trace_id)

    def adopt(self, previous: Policy) -> bool | None:
        """Keep the counts and rates of the same sampler before a reload, if its key is the
        same; else start fresh."""
        if not isinstance(previous, type(self)) or not same_key(
            self.key_config, previous.key_config
        ):
            return False
        self.counts.take_over(previous.counts)
        self.table.take_over(previous.table)
        return True

    def probability(self) -> float:
        """Unknown in advance (it follows the traffic); each kept trace carries its own."""
        return 1.0

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED."""
        return False

    def keeps_state(self) -> bool:
        """Yes: counts and rates per key."""
        return True
