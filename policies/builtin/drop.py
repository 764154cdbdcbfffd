"""``drop``: drop a trace, whatever every other policy says, when all sub-policies match."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from policies.engine import build_sub_policies
from policies.model import Policy, Verdict
from policies.trace import TraceView

__all__ = ["Drop", "DropConfig"]

_NO_MATCH = (Verdict.NOT_SAMPLED, Verdict.INVERTED_NOT_SAMPLED)  # a tuple: see policies.model


class DropConfig(BaseModel):
    """Fields of ``drop``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_sub_policy: list[dict[str, Any]] = Field(min_length=1)
    """Sub-policies (``name``, ``type`` and the type's fields), all of which must match."""


class Drop(Policy):
    """DROPPED if no sub-policy says NOT_SAMPLED or INVERTED_NOT_SAMPLED, else NOT_SAMPLED.

    As ``drop.go``: sub-policies run in order and the first that does not match ends the
    evaluation; SAMPLED and INVERTED_SAMPLED count as matches. DROPPED beats every other
    verdict, so the engine evaluates ``drop`` policies before all others (``processor.go``)
    and stops at the first drop. A sub-policy's ``sample_percentage`` thins its matches.
    """

    Config = DropConfig
    sub_policies_field: ClassVar[str | None] = "drop_sub_policy"
    evaluated_first: ClassVar[bool] = True

    def __init__(self, name: str, config: DropConfig) -> None:
        super().__init__(name, config)
        self.sub_policies = build_sub_policies(config.drop_sub_policy)
        self._subs = tuple(sub.evaluate for sub in self.sub_policies)

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Stop at the first sub-policy that does not match."""
        for evaluate in self._subs:
            if evaluate(trace, now) in _NO_MATCH:
                return Verdict.NOT_SAMPLED
        return Verdict.DROPPED

    def may_veto(self) -> bool:
        """Yes: DROPPED."""
        return True

    def keeps_state(self) -> bool:
        """Whether a sub-policy keeps state."""
        return any(sub.policy.keeps_state() for sub in self.sub_policies)
