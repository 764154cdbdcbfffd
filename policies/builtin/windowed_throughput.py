"""``windowed_throughput``: Refinery's windowed throughput sampler, an equal share of a
traces-per-second goal for every key seen in a sliding window."""

from __future__ import annotations

import math
from collections import deque

from pydantic import Field, model_validator

from policies.adaptive import KeyFields, RateTable, same_key, sampler_key
from policies.model import Match, Policy, Verdict
from policies.trace import TraceView

__all__ = ["WindowedThroughput", "WindowedThroughputConfig"]


class WindowedThroughputConfig(KeyFields):
    """Fields of ``windowed_throughput`` (Refinery's ``WindowedThroughputSampler``)."""

    goal_throughput_per_sec: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    """Traces kept per second by the whole worker group (each worker keeps its share)."""
    update_frequency: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """Seconds between two recomputations of the rates (and the window's step)."""
    lookback_frequency: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Seconds of traffic the rates are computed from (default 30 × ``update_frequency``)."""

    @model_validator(mode="after")
    def _window(self) -> WindowedThroughputConfig:
        lookback = self.lookback_frequency
        if lookback is not None and lookback < self.update_frequency:
            raise ValueError("lookback_frequency must be at least update_frequency")
        return self


class WindowedThroughput(Policy):
    """SAMPLED with probability 1 / the rate of the trace's key.

    Traces are counted per key in steps of ``update_frequency``; at each step the counts of
    the last ``lookback_frequency`` seconds are summed and the goal of that window
    (``goal_throughput_per_sec`` × lookback × this worker's share of the group) is split
    equally among the keys seen: a key under its share keeps everything, a key over it keeps
    its share. A key not in the window has rate 1. Stateful, per worker; the share follows
    every rebalance.
    """

    Config = WindowedThroughputConfig

    def __init__(self, name: str, config: WindowedThroughputConfig) -> None:
        super().__init__(name, config)
        self.key_config: KeyFields = config
        self.table = RateTable(name, 1.0)
        self.share = 1.0
        self._goal = config.goal_throughput_per_sec
        self._step = config.update_frequency
        lookback = config.lookback_frequency or 30 * config.update_frequency
        self._steps = max(1, round(lookback / config.update_frequency))
        self._max_keys = config.max_keys
        self._fields = tuple(config.key_fields)
        self._length = config.use_trace_length
        self.window: deque[tuple[int, dict[str, float]]] = deque()  # (step number, counts)
        self._current_step: int | None = None

    def set_share(self, share: float) -> None:
        """Keep `share` of the group's goal from the next step on."""
        self.share = share

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """See :meth:`evaluate_match`."""
        return self.evaluate_match(trace, now)[0]

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """Count the trace under its key, then keep it with the key's probability."""
        step = math.floor(now / self._step)
        if step != self._current_step:
            self._advance(step)
        key = sampler_key(trace, self._fields, self._length)
        counts = self.window[-1][1]
        if key in counts or len(counts) < self._max_keys:
            counts[key] = counts.get(key, 0.0) + 1.0
        return self.table.decide(key, trace.trace_id)

    def _advance(self, step: int) -> None:
        # The rates of the new step come from the steps before it, at most `_steps` of them.
        window = self.window
        while window and window[0][0] < step - self._steps:
            window.popleft()
        totals: dict[str, float] = {}
        for _, counts in window:
            for key, count in counts.items():
                totals[key] = totals.get(key, 0.0) + count
        if totals:
            covered = (step - max(window[0][0], step - self._steps)) * self._step
            per_key = self._goal * self.share * covered / len(totals)
            self.table.set_rates({k: max(1.0, c / per_key) for k, c in totals.items()})
        else:
            self.table.set_rates({})
        window.append((step, {}))
        self._current_step = step

    def adopt(self, previous: Policy) -> bool | None:
        """Keep the window and rates of the same sampler before a reload, if its key is the
        same; else start fresh."""
        if not isinstance(previous, type(self)) or not same_key(
            self.key_config, previous.key_config
        ):
            return False
        self.window = deque((step, dict(counts)) for step, counts in previous.window)
        self._current_step = previous._current_step
        self.table.take_over(previous.table)
        return True

    def probability(self) -> float:
        """Unknown in advance (it follows the traffic); each kept trace carries its own."""
        return 1.0

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED."""
        return False

    def keeps_state(self) -> bool:
        """Yes: counts per key over the window."""
        return True
