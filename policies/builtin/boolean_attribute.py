"""``boolean_attribute``: keep (or, inverted, veto) traces by a boolean attribute's value."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictBool

from policies.model import StatelessPolicy, Verdict, match_verdict
from policies.trace import TraceView

__all__ = ["BooleanAttribute", "BooleanAttributeConfig"]


class BooleanAttributeConfig(BaseModel):
    """Fields of ``boolean_attribute``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    """Attribute key, looked up on span and resource attributes."""
    value: StrictBool = False
    """The value that matches (``true`` or ``false``); false when left out, as in Go."""
    invert_match: bool = False
    """Return the Collector's inverted verdicts: a matching value vetoes the trace."""


class BooleanAttribute(StatelessPolicy):
    """Match the values of attribute ``key`` against ``value``.

    As ``boolean_tag_filter.go``: a value that is not a boolean reads as ``false`` (pdata's
    ``Value.Bool()``), so ``value: false`` matches any non-boolean value of the key, while a
    missing attribute never matches. Not inverted: SAMPLED if any value matches, else
    NOT_SAMPLED. Inverted: a match gives INVERTED_NOT_SAMPLED, none INVERTED_SAMPLED.
    """

    Config = BooleanAttributeConfig

    def __init__(self, name: str, config: BooleanAttributeConfig) -> None:
        super().__init__(name, config)
        self._key = config.key
        self._value = config.value
        self._invert = config.invert_match

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Look for a matching value among the attribute's values, computed once on the view."""
        wanted = self._value
        matched = any((value is True) is wanted for value in trace.attribute_values(self._key))
        return match_verdict(matched, self._invert)

    def may_veto(self) -> bool:
        """With ``invert_match``: a match gives INVERTED_NOT_SAMPLED."""
        return self._invert
