"""``and``: keep a trace only when every sub-policy would keep it.

The OpenTelemetry Collector's idiom for "everything else": an inverted ``string_attribute``
inside ``and`` only fails the ``and`` (NOT_SAMPLED), whereas on its own an inverted match that
does not sample drops the trace for every policy.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from policies.model import Policy, Verdict
from policies.trace import TraceView

__all__ = ["And", "AndConfig"]

_FAILS = frozenset({Verdict.NOT_SAMPLED, Verdict.INVERTED_NOT_SAMPLED, Verdict.DROPPED})


class AndConfig(BaseModel):
    """Fields of ``and``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    and_sub_policy: list[dict[str, Any]] = Field(min_length=1)
    """Sub-policies (``name``, ``type`` and the type's fields), all of which must keep."""


class And(Policy):
    """SAMPLED if no sub-policy says NOT_SAMPLED, INVERTED_NOT_SAMPLED or DROPPED."""

    Config = AndConfig
    sub_policies_field: ClassVar[str | None] = "and_sub_policy"

    def __init__(self, name: str, config: AndConfig) -> None:
        super().__init__(name, config)
        from policies.engine import build_engine  # the engine builds policies, this one too

        engine = build_engine(config.and_sub_policy)
        self._subs = tuple(p.evaluate for p in engine.policies)
        self._probability = 1.0
        for policy in engine.policies:
            self._probability *= policy.probability()

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Stop at the first sub-policy that would not keep the trace."""
        for evaluate in self._subs:
            if evaluate(trace, now) in _FAILS:
                return Verdict.NOT_SAMPLED
        return Verdict.SAMPLED

    def probability(self) -> float:
        """The product of the sub-policies' probabilities (independent draws)."""
        return self._probability
