"""``composite``: sub-policies in order, each with its own share of a spans-per-second budget."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from policies.engine import build_sub_policies
from policies.model import Match, Policy, Verdict
from policies.trace import TraceView

__all__ = ["Composite", "CompositeConfig", "RateAllocation"]

_INT64_MAX = (1 << 63) - 1


class RateAllocation(BaseModel):
    """One ``rate_allocation`` entry: a sub-policy's share of the total budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str
    """The sub-policy's name."""
    percent: int = Field(default=0, ge=-_INT64_MAX, le=_INT64_MAX)
    """Share of ``max_total_spans_per_second``; 0 or less means an equal share."""


class CompositeConfig(BaseModel):
    """Fields of ``composite``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_total_spans_per_second: int = Field(ge=0, le=_INT64_MAX)
    """The budget, in spans per second, that ``rate_allocation`` divides."""
    policy_order: list[str] = []
    """Accepted for compatibility and ignored, as by the Collector: sub-policies are
    evaluated in ``composite_sub_policy`` order."""
    composite_sub_policy: list[dict[str, Any]] = Field(min_length=1)
    """Sub-policies (``name``, ``type`` and the type's fields)."""
    rate_allocation: list[RateAllocation] = []
    """Budget shares by sub-policy name; a sub-policy without one gets no budget."""


class Composite(Policy):
    """The first sub-policy that keeps the trace (SAMPLED or INVERTED_SAMPLED) decides it:
    SAMPLED if that sub-policy has budget left this second, else NOT_SAMPLED.

    As ``composite.go`` and ``composite_helper.go``: each sub-policy's budget is
    ``int(percent / 100 × max_total_spans_per_second)``, or ``int(max_total / number of
    sub-policies)`` for a percent of 0 or less; a sub-policy missing from ``rate_allocation``
    gets 0 and keeps no trace that has spans; names in ``rate_allocation`` that match no
    sub-policy are ignored. Budget not used by one sub-policy is not lent to another. A trace
    is kept if the sub-policy's spans this second plus the trace's spans stay within both its
    budget and ``max_total_spans_per_second`` (each sub-policy's own count is compared with
    the total, so the sum of all may exceed it, as in the Collector). Counters restart when
    the Unix second of ``now`` changes. The kept trace reports the sub-policy
    (:class:`~policies.model.Match`) and its probability. Stateful, per worker process.
    """

    Config = CompositeConfig
    sub_policies_field: ClassVar[str | None] = "composite_sub_policy"

    def __init__(self, name: str, config: CompositeConfig) -> None:
        super().__init__(name, config)
        self.sub_policies = build_sub_policies(config.composite_sub_policy)
        total = config.max_total_spans_per_second
        # Go's float64 arithmetic, step by step, then int64() truncation.
        equal_share = float(total) / float(len(config.composite_sub_policy))
        shares: dict[str, float] = {}
        for allocation in config.rate_allocation:
            percent = allocation.percent
            share = (float(percent) / 100) * float(total) if percent > 0 else equal_share
            shares[allocation.policy] = share
        self.budgets = tuple(int(shares.get(sub.name, 0.0)) for sub in self.sub_policies)
        self._total = total
        self._subs = tuple(
            (sub.match, budget, sub.name)
            for sub, budget in zip(self.sub_policies, self.budgets, strict=True)
        )
        self._second = 0
        self._spent = [0] * len(self._subs)

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """See :meth:`evaluate_match`."""
        return self.evaluate_match(trace, now)[0]

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """Find the first sub-policy that keeps the trace and charge its budget."""
        second = math.floor(now)
        if second != self._second:
            self._second = second
            self._spent = [0] * len(self._subs)
        for index, (evaluate, budget, name) in enumerate(self._subs):
            verdict, probability = evaluate(trace, now)
            if verdict is Verdict.SAMPLED or verdict is Verdict.INVERTED_SAMPLED:
                spans = self._spent[index] + trace.span_count
                if spans <= budget and spans <= self._total:
                    self._spent[index] = spans
                    return Verdict.SAMPLED, Match(name, probability)
                # Over budget: not kept, and nothing charged, so a smaller trace may still fit.
                return Verdict.NOT_SAMPLED, None
        return Verdict.NOT_SAMPLED, None

    def probability_known(self) -> bool:
        """No: a keep depends on the sub-policy budgets before this trace."""
        return False

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED."""
        return False

    def keeps_state(self) -> bool:
        """Yes: the spans each sub-policy kept this second."""
        return True
