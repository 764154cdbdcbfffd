"""``numeric_attribute``: keep (or, inverted, veto) traces by an integer attribute's range."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.model import StatelessPolicy, Verdict, match_verdict
from policies.trace import TraceView

__all__ = ["NumericAttribute", "NumericAttributeConfig"]

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class NumericAttributeConfig(BaseModel):
    """Fields of ``numeric_attribute``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    """Attribute key, looked up on span and resource attributes."""
    min_value: int = Field(default=0, ge=_INT64_MIN, le=_INT64_MAX)
    """Inclusive lower bound; 0 (the default) means no lower bound, as in the Collector."""
    max_value: int = Field(default=0, ge=_INT64_MIN, le=_INT64_MAX)
    """Inclusive upper bound; 0 (the default) means no upper bound, as in the Collector."""
    invert_match: bool = False
    """Return the Collector's inverted verdicts: a value in range vetoes the trace."""

    @model_validator(mode="after")
    def _has_a_bound(self) -> NumericAttributeConfig:
        if self.min_value == 0 and self.max_value == 0:
            # The Collector builds no evaluator for this (it logs "At least one of minValue
            # or maxValue must be set"), so the policy could never work: say so at start.
            raise ValueError("set min_value or max_value (0 means no bound on that side)")
        return self


class NumericAttribute(StatelessPolicy):
    """Match the values of attribute ``key`` against ``[min_value, max_value]``.

    As ``numeric_tag_filter.go``: a bound of 0 is no bound (``processor.go`` passes only
    non-zero bounds, the filter uses MinInt64 / MaxInt64 for the others), so ``min_value: 0``
    also admits negative values; bounds are inclusive; a value that is not an integer (string,
    double, bool, ...) counts as 0, as pdata's ``Value.Int()`` returns 0 for them. Not inverted:
    SAMPLED if any value is in range, else NOT_SAMPLED. Inverted: a value in range gives
    INVERTED_NOT_SAMPLED, none (or no attribute at all) INVERTED_SAMPLED.
    """

    Config = NumericAttributeConfig

    def __init__(self, name: str, config: NumericAttributeConfig) -> None:
        super().__init__(name, config)
        self._key = config.key
        self._low = config.min_value or _INT64_MIN
        self._high = config.max_value or _INT64_MAX
        self._invert = config.invert_match

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Look for a value in range among the attribute's values, computed once on the view."""
        low, high = self._low, self._high
        matched = any(
            low <= (value if type(value) is int else 0) <= high
            for value in trace.attribute_values(self._key)
        )
        return match_verdict(matched, self._invert)

    def may_veto(self) -> bool:
        """With ``invert_match``: a value in range gives INVERTED_NOT_SAMPLED."""
        return self._invert
