"""``span_count``: keep traces whose number of spans falls in a range."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from policies.model import StatelessPolicy, Verdict
from policies.trace import TraceView

__all__ = ["SpanCount", "SpanCountConfig"]

_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1


class SpanCountConfig(BaseModel):
    """Fields of ``span_count``, as in the OTel Collector (32-bit integers there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_spans: int = Field(default=0, ge=_INT32_MIN, le=_INT32_MAX)
    """Keep traces with at least this many spans (inclusive)."""
    max_spans: int = Field(default=0, ge=_INT32_MIN, le=_INT32_MAX)
    """Keep traces with at most this many spans (inclusive); 0 means no upper bound."""


class SpanCount(StatelessPolicy):
    """SAMPLED when ``min_spans <= span count`` and, unless ``max_spans`` is 0,
    ``span count <= max_spans`` (``span_count_sampler.go``).

    The count is every span buffered for the trace when it is decided. With the defaults
    (both 0) every trace is kept, an empty one too, as in the Collector; a ``max_spans``
    below ``min_spans`` keeps none.
    """

    Config = SpanCountConfig

    def __init__(self, name: str, config: SpanCountConfig) -> None:
        super().__init__(name, config)
        self._min = config.min_spans
        self._max = config.max_spans

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Compare the span count with the bounds."""
        count = trace.span_count
        if count >= self._min and (self._max == 0 or count <= self._max):
            return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED
