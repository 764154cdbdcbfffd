"""``latency``: keep slow traces, or traces whose duration falls in a band."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.model import Policy, Verdict
from policies.trace import TraceView

__all__ = ["Latency", "LatencyConfig"]


class LatencyConfig(BaseModel):
    """Fields of ``latency``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold_ms: int = Field(ge=0)
    """Keep traces lasting at least this long (exclusive lower bound when a band is set)."""
    upper_threshold_ms: int = Field(default=0, ge=0)
    """Inclusive upper bound of the band; 0 means no upper bound."""

    @model_validator(mode="after")
    def _band_is_not_empty(self) -> LatencyConfig:
        if 0 < self.upper_threshold_ms <= self.threshold_ms:
            raise ValueError(
                "upper_threshold_ms must be 0 (no upper bound) or greater than threshold_ms"
            )
        return self


class Latency(Policy):
    """SAMPLED when the trace duration (latest span end − earliest span start) qualifies.

    Without ``upper_threshold_ms``: duration >= ``threshold_ms``. With it, the Collector's
    band ``threshold_ms < duration <= upper_threshold_ms`` (``latency.go``: note the strict
    lower bound). Durations are whole milliseconds truncated toward zero, like Go's
    ``Duration.Milliseconds()``, so 4999.9 ms does not reach a 5000 ms threshold.
    """

    Config = LatencyConfig

    def __init__(self, name: str, config: LatencyConfig) -> None:
        super().__init__(name, config)
        self._lower = config.threshold_ms
        self._upper = config.upper_threshold_ms

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Compare the trace duration, computed once on the view, with the thresholds."""
        if not trace.span_count:
            return Verdict.NOT_SAMPLED
        duration_ns = trace.duration_ns
        if duration_ns >= 0:
            duration_ms = duration_ns // 1_000_000
        else:
            duration_ms = -(-duration_ns // 1_000_000)
        if self._upper == 0:
            sampled = duration_ms >= self._lower
        else:
            sampled = self._lower < duration_ms <= self._upper
        return Verdict.SAMPLED if sampled else Verdict.NOT_SAMPLED
