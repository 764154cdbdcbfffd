"""``windowed_throughput``: Refinery's windowed throughput sampler, an equal share of a
traces-per-second goal for every key seen in a sliding window."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, model_validator

from policies.adaptive import KeyFields, PartitionedSampler, RateTable, sampler_key
from policies.model import Match, Verdict
from policies.trace import TraceView

__all__ = ["WindowedThroughput", "WindowedThroughputConfig"]


class WindowedThroughputConfig(KeyFields):
    """Fields of ``windowed_throughput`` (Refinery's ``WindowedThroughputSampler``)."""

    goal_throughput_per_sec: float = Field(default=100.0, gt=0, allow_inf_nan=False)
    """Traces kept per second by the whole worker group (each partition keeps its part)."""
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


@dataclass
class Window:
    """One partition's counts per step (oldest first) and the rates they gave."""

    table: RateTable
    steps: deque[tuple[int, dict[str, float]]] = field(default_factory=deque)
    current: int | None = None


class WindowedThroughput(PartitionedSampler[Window]):
    """SAMPLED with probability 1 / the rate of the trace's key.

    Traces are counted per key in steps of ``update_frequency``; at each step the counts of
    the last ``lookback_frequency`` seconds are summed and the goal of that window
    (``goal_throughput_per_sec`` × lookback / the number of partitions, per partition) is
    split equally among the keys seen: a key under its share keeps everything, a key over it
    keeps its share. A key not in the window has rate 1. Counts and rates are kept per
    partition and move with it.
    """

    Config = WindowedThroughputConfig

    def __init__(self, name: str, config: WindowedThroughputConfig) -> None:
        super().__init__(name, config)
        self._goal = config.goal_throughput_per_sec
        self._step = config.update_frequency
        lookback = config.lookback_frequency or 30 * config.update_frequency
        self._steps = max(1, round(lookback / config.update_frequency))
        self._max_keys = config.max_keys

    def _fresh(self) -> Window:
        return Window(RateTable(self.name, 1.0))

    def _dump(self, state: Window) -> dict[str, Any]:
        steps = [[step, counts] for step, counts in state.steps]
        return {"steps": steps, "current": state.current, "table": state.table.dump()}

    def _table(self, state: Window) -> RateTable:
        return state.table

    def _load(self, doc: Mapping[str, Any]) -> Window:
        window = self._fresh()
        for step, counts in doc["steps"]:
            window.steps.append((int(step), {str(k): float(v) for k, v in counts.items()}))
        current = doc["current"]
        window.current = None if current is None else int(current)
        window.table.load(doc["table"])
        return window

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """See :meth:`evaluate_match`."""
        return self.evaluate_match(trace, now)[0]

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """Count the trace under its key, then keep it with the key's probability."""
        window = self.part(trace.partition)
        step = math.floor(now / self._step)
        if step != window.current:
            self._advance(window, step)
            self.dirty.add(trace.partition)
        key = sampler_key(trace, self._keys, self._length)
        counts = window.steps[-1][1]
        if key in counts or len(counts) < self._max_keys:
            counts[key] = counts.get(key, 0.0) + 1.0
        return window.table.decide(key, trace.trace_id)

    def _advance(self, window: Window, step: int) -> None:
        # The rates of the new step come from the steps before it, at most `_steps` of them.
        steps = window.steps
        while steps and steps[0][0] < step - self._steps:
            steps.popleft()
        totals: dict[str, float] = {}
        for _, counts in steps:
            for key, count in counts.items():
                totals[key] = totals.get(key, 0.0) + count
        if totals:
            covered = (step - max(steps[0][0], step - self._steps)) * self._step
            per_key = self._goal / self.total * covered / len(totals)
            window.table.set_rates({k: max(1.0, c / per_key) for k, c in totals.items()})
        else:
            window.table.set_rates({})
        steps.append((step, {}))
        window.current = step

    def probability(self) -> float:
        """Unknown in advance (it follows the traffic); each kept trace carries its own."""
        return 1.0
