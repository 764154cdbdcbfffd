"""``ema_dynamic``: Refinery's EMA dynamic sampler, keep rare keys and sample common ones to
an average rate."""

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

__all__ = ["EmaDynamic", "EmaDynamicConfig"]


class EmaDynamicConfig(EmaFields):
    """Fields of ``ema_dynamic`` (Refinery's ``EMADynamicSampler``)."""

    goal_sample_rate: float = Field(default=10.0, ge=1, allow_inf_nan=False)
    """Keep about one trace in this many overall, spread by the log10 of each key's volume."""
    initial_sample_rate: float | None = Field(default=None, ge=1, allow_inf_nan=False)
    """Rate of a key without one yet: before the first update, and keys new after it. Unset:
    ``goal_sample_rate`` before the first update, then 1 for a new key (Refinery's choice: a
    key not seen before is rare). Set it to damp a wave of new keys."""


class EmaDynamic(PartitionedSampler[tuple[EmaCounts, RateTable]]):
    """SAMPLED with probability 1 / the rate of the trace's key.

    Every ``adjustment_interval`` the traces counted per key are folded into a moving average,
    and the rates are recomputed so the kept share of all traces is 1 / ``goal_sample_rate``:
    each key's goal is its log10 share, so a key seen 1,000 times keeps about three times as
    many traces as a key seen 10 times, and a key seen once keeps everything. The keep is a
    hash of the trace ID (see :mod:`policies.adaptive`), so every worker agrees on a rate.
    Counts and rates are kept per partition and move with it.
    """

    Config = EmaDynamicConfig

    def __init__(self, name: str, config: EmaDynamicConfig) -> None:
        super().__init__(name, config)
        self.fields = config
        self._initial = config.initial_sample_rate or config.goal_sample_rate
        self._new_key_rate = config.initial_sample_rate or 1.0
        self._goal = config.goal_sample_rate
        self._keys = tuple(config.key_fields)
        self._length = config.use_trace_length

    def _fresh(self) -> tuple[EmaCounts, RateTable]:
        return EmaCounts(self.fields), RateTable(self.name, self._initial)

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
            averages = counts.averages
            goal_count = sum(max(1.0, a) for a in averages.values()) / self._goal
            table.set_rates(log_allocation(goal_count, averages))
            table.default_rate = self._new_key_rate
            self.dirty.add(trace.partition)
        return table.decide(key, trace.trace_id)

    def probability(self) -> float:
        """The average probability aimed at; each kept trace carries its key's own."""
        return 1 / self._goal
