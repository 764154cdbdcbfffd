"""``bytes_limiting``: keep traces while a token bucket of bytes per second allows them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from policies.model import Policy, Verdict
from policies.trace import TraceView
from policies.trace_size import estimate_trace_size

__all__ = ["BytesLimiting", "BytesLimitingConfig"]

_INT64_MAX = (1 << 63) - 1


class BytesLimitingConfig(BaseModel):
    """Fields of ``bytes_limiting``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bytes_per_second: int = Field(ge=0, le=_INT64_MAX)
    """Rate at which the bucket refills, in bytes per second."""
    burst_capacity: int = Field(default=0, ge=0, le=_INT64_MAX)
    """Bucket size in bytes; 0 (the default) means twice ``bytes_per_second``."""


class BytesLimiting(Policy):
    """SAMPLED when the bucket holds at least the trace's size; the size is then taken out.

    As ``bytes_limiting.go``: a ``golang.org/x/time/rate`` limiter, ``AllowN(now, size)``,
    bit for bit (float64 tokens, starts full, refills continuously up to the burst capacity,
    a trace larger than the capacity never passes, a rate of 0 spends the initial burst once).
    The size is the Collector's estimate (:func:`~policies.trace_size.estimate_trace_size`),
    not the protobuf size. Stateful and per worker process, like ``rate_limiting``.
    """

    Config = BytesLimitingConfig

    def __init__(self, name: str, config: BytesLimitingConfig) -> None:
        super().__init__(name, config)
        self._rate = float(config.bytes_per_second)
        self._burst = config.burst_capacity or 2 * config.bytes_per_second
        self._tokens = 0.0
        self._last: int | None = None  # ns; None is Go's zero Time, long enough ago to be full

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Take the trace's estimated size out of the bucket if it is there."""
        if self._allow(round(now * 1e9), estimate_trace_size(trace)):
            return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED

    def _allow(self, now_ns: int, n: int) -> bool:
        if self._rate == 0:  # x/time/rate without refill: spend the burst itself, once
            if self._burst >= n:
                self._burst -= n
                return True
            return False
        # advance(): Go's zero Time is so long ago that Sub saturates at MaxInt64 ns; a clock
        # going back counts as no time passed.
        elapsed = _INT64_MAX if self._last is None else max(now_ns - self._last, 0)
        seconds = float(elapsed // 1_000_000_000) + float(elapsed % 1_000_000_000) / 1e9
        tokens = min(self._tokens + seconds * self._rate, float(self._burst)) - float(n)
        # reserveN(maxFutureReserve=0): allowed if no wait, the wait truncated to whole ns.
        if n <= self._burst and (tokens >= 0 or (-tokens / self._rate) * 1e9 < 1):
            self._last, self._tokens = now_ns, tokens
            return True
        return False

    def probability_known(self) -> bool:
        """No: a keep depends on the bytes kept per second before this trace."""
        return False

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED."""
        return False

    def keeps_state(self) -> bool:
        """Yes: the bucket."""
        return True
