"""``and``: keep a trace only when every sub-policy would keep it.

The OpenTelemetry Collector's idiom for "everything else": an inverted ``string_attribute``
inside ``and`` only fails the ``and`` (NOT_SAMPLED), whereas on its own an inverted match that
does not sample drops the trace for every policy.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from policies.engine import build_sub_policies
from policies.model import NO_CHANCE, Chance, Match, Policy, Verdict
from policies.trace import TraceView

__all__ = ["And", "AndConfig"]

# A tuple: `in` by identity, no Enum.__hash__ call (see policies.model).
_FAILS = (Verdict.NOT_SAMPLED, Verdict.INVERTED_NOT_SAMPLED, Verdict.DROPPED)
# How many combinations of sub-policy chances an ``and`` keeps (see ``And.chance``).
_COMBINED_KEPT = 256


def _all_of(chances: list[Chance]) -> Chance:
    """The chance that every one of `chances` keeps the trace: of chances drawing the same
    hashes, only the smallest counts (their keeps are nested)."""
    smallest: dict[frozenset[int], float] = {}
    for chance in chances:
        known = smallest.get(chance.draws, 1.0)
        smallest[chance.draws] = min(known, chance.probability)
    probability = 1.0
    for value in smallest.values():
        probability *= value
    return Chance(probability, frozenset().union(*smallest))


class AndConfig(BaseModel):
    """Fields of ``and``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    and_sub_policy: list[dict[str, Any]] = Field(min_length=1)
    """Sub-policies (``name``, ``type`` and the type's fields), all of which must keep."""


class And(Policy):
    """SAMPLED if no sub-policy says NOT_SAMPLED, INVERTED_NOT_SAMPLED or DROPPED.

    Sub-policies run in order and the first failing one ends the evaluation (``and.go``); an
    error in a sub-policy is an error of the ``and``. A sub-policy's ``sample_percentage``
    applies before the ``and`` sees its verdict.
    """

    Config = AndConfig
    sub_policies_field: ClassVar[str | None] = "and_sub_policy"

    def __init__(self, name: str, config: AndConfig) -> None:
        super().__init__(name, config)
        self.sub_policies = build_sub_policies(config.and_sub_policy)
        self._subs = tuple(sub.evaluate for sub in self.sub_policies)
        self._chances = tuple(sub.chance for sub in self.sub_policies)
        self._combined: dict[tuple[int, ...], tuple[list[Chance], Chance]] = {}
        self._probability = 1.0
        for sub in self.sub_policies:
            self._probability *= sub.probability

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Stop at the first sub-policy that would not keep the trace."""
        for evaluate in self._subs:
            if evaluate(trace, now) in _FAILS:
                return Verdict.NOT_SAMPLED
        return Verdict.SAMPLED

    def probability_known(self) -> bool:
        """Whether every sub-policy's probability is known."""
        return all(sub.policy.probability_known() for sub in self.sub_policies)

    def explains_match(self) -> bool:
        """Only when a sub-policy knows its probability per trace (an adaptive sampler)."""
        return any(sub.policy.explains_match() for sub in self.sub_policies)

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """As :meth:`evaluate`; a keep's probability is the product of this trace's
        sub-policy probabilities."""
        probability = 1.0
        for sub in self.sub_policies:
            verdict, chance = sub.match(trace, now)
            if verdict in _FAILS:
                return Verdict.NOT_SAMPLED, None
            probability *= chance
        return Verdict.SAMPLED, Match(None, probability)

    def chance(self, trace: TraceView, now: float) -> Chance:
        """The product of the sub-policies' chances on this trace; of sub-policies drawing
        the same hash, only the smallest counts (their keeps are nested)."""
        chances = []
        for chance_of in self._chances:
            chance = chance_of(trace, now)
            if chance.probability <= 0:
                return NO_CHANCE
            chances.append(chance)
        # Sub-policies mostly answer with the same Chance objects trace after trace (a
        # constant draw, a certain match): their combination is kept, by identity. The kept
        # entry holds the chances, so the identities it is filed under stay theirs.
        key = tuple(map(id, chances))
        known = self._combined.get(key)
        if known is not None:
            return known[1]
        combined = _all_of(chances)
        if len(self._combined) >= _COMBINED_KEPT:
            self._combined.clear()
        self._combined[key] = (chances, combined)
        return combined

    def probability(self) -> float:
        """The product of the sub-policies' probabilities (independent draws)."""
        return self._probability

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED, whatever the sub-policies say."""
        return False

    def keeps_state(self) -> bool:
        """Whether a sub-policy keeps state (it is evaluated until one fails)."""
        return any(sub.policy.keeps_state() for sub in self.sub_policies)
