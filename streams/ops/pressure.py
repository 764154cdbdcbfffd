"""The worker's periodic checks: consumer lag, health state, and the pressure that moves the
degradation levels (streams.pipeline.degrade)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.kafka import faust_seam
from streams.ops.health import Health, release_free_memory, rss_bytes
from streams.ops.metrics import set_consumer_lag
from streams.pipeline.degrade import Degradation, LagClock, Pressure

__all__ = ["PressureMonitor", "consumer_lags"]


def consumer_lags(app: Any, topic: str, offsets: dict[int, int]) -> dict[int, int]:
    """Records behind per assigned partition of `topic` (exported as caudal_consumer_lag)."""
    lags = {}
    for tp in faust_seam.assignment(app, topic):
        highwater = faust_seam.highwater(app, tp)
        if highwater is None:
            continue
        read = offsets.get(tp.partition)
        lags[tp.partition] = max(0, highwater - (read + 1 if read is not None else 0))
    set_consumer_lag(topic, lags)
    return lags


@dataclass
class PressureMonitor:
    """Reads the pressure every `degradation.check_interval` and feeds the degradation levels:
    the age of the records being read (`lag`), the buffer's fill and the RSS."""

    app: Any
    source_topic: str
    read_offsets: Callable[[], dict[int, int]]
    health: Health
    degradation: Degradation
    lag: LagClock
    buffered: Callable[[], int]
    max_traces: int
    memory_limit: int

    async def check_pressure(self) -> None:
        """The check-pressure timer."""
        release_free_memory()
        lags = consumer_lags(self.app, self.source_topic, self.read_offsets())
        self.health.consumer_lag = lags
        if not self.health.ready:
            self.lag.take()
            return
        limit = self.memory_limit
        self.degradation.observe(
            Pressure(
                lag_seconds=self.lag.take(),
                buffer_fill=self.buffered() / self.max_traces,
                memory_fill=rss_bytes() / limit if limit else None,
            ),
            time.time(),
        )

    async def evaluate_health(self) -> None:
        """The evaluate-health timer."""
        self.health.evaluate()
