"""``ema_dynamic``: Refinery's EMA dynamic sampler, keep rare keys and sample common ones to
an average rate."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from policies.adaptive import EmaFields, EmaSampler

__all__ = ["EmaDynamic", "EmaDynamicConfig"]


class EmaDynamicConfig(EmaFields):
    """Fields of ``ema_dynamic`` (Refinery's ``EMADynamicSampler``)."""

    goal_sample_rate: float = Field(default=10.0, ge=1, allow_inf_nan=False)
    """Keep about one trace in this many overall, spread by the log10 of each key's volume."""
    initial_sample_rate: float | None = Field(default=None, ge=1, allow_inf_nan=False)
    """Rate of a key without one yet: before the first update, and keys new after it. Unset:
    ``goal_sample_rate`` before the first update, then 1 for a new key (Refinery's choice: a
    key not seen before is rare). Set it to damp a wave of new keys."""


class EmaDynamic(EmaSampler):
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
        self._goal = config.goal_sample_rate
        self._initial = config.initial_sample_rate
        super().__init__(name, config)

    def goal_count(self, averages: Mapping[str, float]) -> float:
        """One in `goal_sample_rate` of the traces counted."""
        return sum(max(1.0, a) for a in averages.values()) / self._goal

    def initial_rate(self) -> float:
        """`initial_sample_rate`, else `goal_sample_rate`."""
        return self._initial or self._goal

    def new_key_rate(self) -> float:
        """`initial_sample_rate`, else 1 (a new key is rare)."""
        return self._initial or 1.0

    def probability(self) -> float:
        """The average probability aimed at; each kept trace carries its key's own."""
        return 1 / self._goal
