"""``string_attribute``: keep (or, inverted, veto) traces by a string attribute's value."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from policies.model import StatelessPolicy, Verdict
from policies.trace import StringValueProbe, TraceView

__all__ = ["StringAttribute", "StringAttributeConfig"]

_DEFAULT_CACHE_SIZE = 128  # the Collector's size when cache_max_size <= 0


class StringAttributeConfig(BaseModel):
    """Fields of ``string_attribute``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    """Attribute key, looked up on span and resource attributes."""
    enabled_regex_matching: bool = False
    """Treat ``values`` as regular expressions (unanchored search, as Go's MatchString)."""
    values: list[str]
    """Exact values (or patterns) that match."""
    cache_max_size: int = Field(default=0, ge=0)
    """Size of the per-policy cache of regex results; 0 means 128."""
    invert_match: bool = False
    """Return the Collector's inverted verdicts: a match vetoes the trace."""

    @field_validator("values")
    @classmethod
    def _patterns_compile(cls, values: list[str], info: ValidationInfo) -> list[str]:
        # enabled_regex_matching is declared before values so it is validated first.
        if info.data.get("enabled_regex_matching"):
            for index, pattern in enumerate(values):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"values[{index}] {pattern!r} is not a regex: {exc}") from exc
        return values


class StringAttribute(StatelessPolicy):
    """Match string values of attribute ``key`` against ``values``.

    Not inverted: SAMPLED if any value matches, else NOT_SAMPLED. Inverted: a match gives
    INVERTED_NOT_SAMPLED (drop, whatever else says keep), no match INVERTED_SAMPLED. Empty
    and non-string values never match, as the Collector skips them on spans.
    """

    Config = StringAttributeConfig

    def __init__(self, name: str, config: StringAttributeConfig) -> None:
        super().__init__(name, config)
        self._invert = config.invert_match
        # Exact values are probed in the encoded trace; patterns need the decoded values.
        self._matches: Callable[[TraceView], bool]
        if config.enabled_regex_matching:
            searches = tuple(re.compile(value).search for value in config.values)
            size = config.cache_max_size or _DEFAULT_CACHE_SIZE
            search = functools.lru_cache(maxsize=size)(
                lambda value: any(search(value) for search in searches)
            )
            key = config.key

            def matches(trace: TraceView) -> bool:
                return any(
                    isinstance(value, str) and value and search(value)
                    for value in trace.attribute_values(key)
                )

            self._matches = matches
        else:
            self._matches = StringValueProbe(config.key, config.values).matches
        if config.invert_match:
            self._verdicts = (Verdict.INVERTED_SAMPLED, Verdict.INVERTED_NOT_SAMPLED)
        else:
            self._verdicts = (Verdict.NOT_SAMPLED, Verdict.SAMPLED)

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Match the values of ``key`` on the trace's resources and spans."""
        return self._verdicts[self._matches(trace)]

    def may_veto(self) -> bool:
        """With ``invert_match``: a match gives INVERTED_NOT_SAMPLED."""
        return self._invert
