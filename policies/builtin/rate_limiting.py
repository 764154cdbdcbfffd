"""``rate_limiting``: keep traces until a number of spans per second is reached."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from policies.model import Policy, Verdict
from policies.trace import TraceView

__all__ = ["RateLimiting", "RateLimitingConfig"]


class RateLimitingConfig(BaseModel):
    """Fields of ``rate_limiting``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spans_per_second: int = Field(ge=0, le=(1 << 63) - 1)
    """Spans kept per second; a trace that would reach this number is not kept."""


class RateLimiting(Policy):
    """SAMPLED while the spans kept in the current second stay below ``spans_per_second``.

    The Collector's per-second counter (``rate_limiting.go`` before it moved to a token
    bucket): the counter restarts whenever the Unix second of ``now`` changes; a trace is kept
    if counter + its span count is *strictly* below the limit, and only kept traces count. So
    ``spans_per_second: 10`` never keeps a 10-span trace. Stateful: the verdict depends on the
    traces decided before by this worker, and the limit applies per worker process.
    """

    Config = RateLimitingConfig

    def __init__(self, name: str, config: RateLimitingConfig) -> None:
        super().__init__(name, config)
        self._limit = config.spans_per_second
        self._second = 0
        self._spans = 0

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Count the trace's spans against this second's budget."""
        second = math.floor(now)
        if second != self._second:
            self._second = second
            self._spans = 0
        spans = self._spans + trace.span_count
        if spans < self._limit:
            self._spans = spans
            return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED

    def probability_known(self) -> bool:
        """No: a keep depends on the spans kept per second before this trace."""
        return False

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED."""
        return False

    def keeps_state(self) -> bool:
        """Yes: the spans kept in the current second."""
        return True
