"""``latency``: keep slow traces, or traces whose duration falls in a band."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.model import StatelessPolicy, Verdict
from policies.trace import TraceView

__all__ = ["Latency", "LatencyConfig"]

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


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


class Latency(StatelessPolicy):
    """SAMPLED when the trace duration (latest span end − earliest span start) qualifies.

    Without ``upper_threshold_ms``: duration >= ``threshold_ms``. With it, the Collector's
    band ``threshold_ms < duration <= upper_threshold_ms`` (note the strict lower bound).
    Durations are whole milliseconds truncated toward zero, like Go's ``Milliseconds()``.
    As in ``latency.go``, the duration is checked span by span while the earliest start and
    latest end grow, so a band matches if the duration passed through it at some span; when
    every span has both times this equals checking the whole trace's duration, except that a
    band can match a trace that later grew past its upper bound.
    """

    Config = LatencyConfig

    def __init__(self, name: str, config: LatencyConfig) -> None:
        super().__init__(name, config)
        self._lower = config.threshold_ms
        self._upper = config.upper_threshold_ms

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Compare the trace duration, computed once on the view, with the thresholds."""
        start, end, complete = trace.time_bounds()
        if not complete:
            return self._replay(trace)
        if not end:
            return Verdict.NOT_SAMPLED  # no spans
        # Times only widen the trace span by span: the final duration decides, unless it
        # is above a band (it may have passed through the band) and the steps are replayed.
        # Complete times are below 2**63: no int64 wrap-around, only truncation.
        delta = end - start
        final = delta // 1_000_000 if delta >= 0 else -(-delta // 1_000_000)
        if self._upper == 0:
            return Verdict.SAMPLED if final >= self._lower else Verdict.NOT_SAMPLED
        if final <= self._upper:
            return Verdict.SAMPLED if self._lower < final else Verdict.NOT_SAMPLED
        return self._replay(trace)

    def _qualifies(self, duration_ms: int) -> bool:
        if self._upper == 0:
            return duration_ms >= self._lower
        return self._lower < duration_ms <= self._upper

    def _replay(self, trace: TraceView) -> Verdict:
        # latency.go verbatim: a zero minimum or maximum is replaced by the next span's time.
        low = high = 0
        for start, end in trace.span_times():
            if low == 0 or start < low:
                low = start
            if high == 0 or end > high:
                high = end
            if self._qualifies(_duration_ms(low, high)):
                return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED


def _duration_ms(start: int, end: int) -> int:
    # pcommon.Timestamp.AsTime reads the uint64 as int64 nanoseconds; Time.Sub saturates.
    delta = _signed(end) - _signed(start)
    delta = min(max(delta, _INT64_MIN), _INT64_MAX)
    return delta // 1_000_000 if delta >= 0 else -(-delta // 1_000_000)


def _signed(timestamp: int) -> int:
    return timestamp - (1 << 64) if timestamp >= 1 << 63 else timestamp
