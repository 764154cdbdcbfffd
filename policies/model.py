"""The policy plugin API: what a policy returns (:class:`Verdict`), what it is (:class:`Policy`),
and what the engine concludes for a trace (:class:`Decision`)."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import ClassVar, Final

from pydantic import BaseModel, ConfigDict

from policies.hashing import fnv1a_64
from policies.trace import TraceView

__all__ = [
    "CERTAIN",
    "NO_CHANCE",
    "Chance",
    "Decision",
    "Match",
    "NoFields",
    "Policy",
    "StatelessPolicy",
    "Verdict",
    "keep_chance",
    "match_verdict",
]


class Verdict(enum.Enum):
    """One policy's answer for one trace, with the OpenTelemetry Collector's meanings."""

    SAMPLED = "sampled"
    """Keep the trace."""
    NOT_SAMPLED = "not_sampled"
    """No reason to keep the trace; another policy may still keep it."""
    INVERTED_SAMPLED = "inverted_sampled"
    """An ``invert_match`` policy found no match: keep, unless some policy said NOT_SAMPLED."""
    INVERTED_NOT_SAMPLED = "inverted_not_sampled"
    """An ``invert_match`` policy found a match: drop, whatever the other policies say."""
    DROPPED = "dropped"
    """Drop the trace, whatever the other policies say (the ``drop`` policy)."""


def match_verdict(matched: bool, invert: bool) -> Verdict:
    """The verdict of an attribute policy: SAMPLED on a match; with ``invert_match`` (as the
    Collector), a match is INVERTED_NOT_SAMPLED and no match INVERTED_SAMPLED."""
    if invert:
        return Verdict.INVERTED_NOT_SAMPLED if matched else Verdict.INVERTED_SAMPLED
    return Verdict.SAMPLED if matched else Verdict.NOT_SAMPLED


# Verdict sets are tuples: `in` finds a member by identity, where a set would call
# Enum.__hash__, a Python function (~0.3 µs a call on the decision path).
_KEEPS: Final = (Verdict.SAMPLED, Verdict.INVERTED_SAMPLED)


class NoFields(BaseModel):
    """The configuration of a policy that takes no fields of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Match:
    """Which sub-policy made a combining policy (``composite``) keep a trace."""

    sub_policy: str | None
    """The sub-policy's name; None when the policy itself chose the probability (the adaptive
    samplers keep each trace with the probability of its key)."""
    probability: float
    """The probability with which such a trace is kept (a sub-policy's ``probability()``
    times its ``sample_percentage``)."""


@dataclass(frozen=True, slots=True)
class Chance:
    """How likely a policy is to keep a trace over its random draws (hashes of the trace ID),
    everything else about the trace being given: a policy that keeps 10 % of the VIP traces
    has a chance of 0.1 on a VIP trace, whether or not its draw kept this one, and of 0 on any
    other trace."""

    probability: float
    draws: frozenset[int] = frozenset()
    """The hashes drawn, by their seed (the FNV-1a state after the salt): policies that draw
    the same hash keep nested sets of traces; different hashes draw independently."""


NO_CHANCE: Final = Chance(0.0)
CERTAIN: Final = Chance(1.0)


class Policy(abc.ABC):
    """A sampling rule, configured once and then asked about every trace.

    Subclasses set ``Config`` to a pydantic model of their own fields (the engine handles the
    common ``name``, ``type`` and ``sample_percentage``), accept an instance of it in
    ``__init__`` and precompute there whatever ``evaluate`` needs. ``evaluate`` must be a
    function of the trace, ``now`` and the policy's own state: no clock, no I/O, no logging.
    """

    Config: ClassVar[type[BaseModel]] = NoFields
    sub_policies_field: ClassVar[str | None] = None
    """The config field holding nested policies, if any: their errors are reported under it."""
    evaluated_first: ClassVar[bool] = False
    """Evaluate before all other policies (``drop``), as the Collector orders drop policies."""

    def __init__(self, name: str, config: BaseModel) -> None:
        self.name = name
        self.config = config

    @abc.abstractmethod
    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Return this policy's verdict on ``trace``; ``now`` is the decision time (Unix s)."""

    def probability(self) -> float:
        """Return the probability with which a SAMPLED verdict of this policy keeps a trace.

        Written on kept spans as ``sampling.probability`` so a backend can weight its counts.
        """
        return 1.0

    def probability_known(self) -> bool:
        """Whether :meth:`probability` is the real chance of a keep. Policies whose keeps
        depend on the traffic decided before (``rate_limiting``, ``bytes_limiting``,
        ``composite``) say False: their kept spans carry no ``ot=th`` threshold."""
        return True

    def evaluate_match(self, trace: TraceView, now: float) -> tuple[Verdict, Match | None]:
        """Like :meth:`evaluate`, also giving the probability behind a SAMPLED verdict (and
        the sub-policy that matched, for a combining policy).

        Policies whose probability is known only per trace override it: ``composite`` (it
        depends on the matching sub-policy) and the adaptive samplers (on the trace's key);
        the engine then reports that probability. See :meth:`explains_match`.
        """
        return self.evaluate(trace, now), None

    def draws_at_random(self) -> bool:
        """Whether a keep of this policy is drawn at random (by a hash of the trace ID), so a
        trace it did not keep may still have had a chance (see :meth:`chance`). By default,
        whether its probability is below 1 or it explains its matches."""
        return self.probability() < 1 or self.explains_match()

    def chance(self, trace: TraceView, now: float) -> Chance:
        """The probability that this policy keeps `trace`, over its random draws only (see
        :class:`Chance`); must change no state. The engine asks it of the other policies when
        a trace was kept by a draw, to write the trace's real inclusion probability.

        The default: for a stateless policy, its verdict (a keep has :meth:`probability`,
        drawn by the hash of the policy's name); for one that keeps state (rate limits,
        ``composite``), no chance: its keeps depend on the traffic before, not on the trace,
        and are not counted. Policies that draw at random override it (``probabilistic``,
        ``and``, the adaptive samplers).
        """
        if self.keeps_state():
            return NO_CHANCE
        if self.evaluate(trace, now) not in _KEEPS:
            return NO_CHANCE
        return keep_chance(self)

    def explains_match(self) -> bool:
        """Whether the engine must ask :meth:`evaluate_match` rather than :meth:`evaluate`:
        by default, whether the class overrides it. ``and`` says so only when a sub-policy
        does, so the common ``and`` costs nothing more."""
        return type(self).evaluate_match is not Policy.evaluate_match

    def set_partitions(self, owned: frozenset[int], total: int) -> None:
        """The ``caudal-spans`` partitions this worker owns, of `total`; called on every
        rebalance. Policies with state per partition (the adaptive samplers) drop what they
        no longer own and divide goals of the whole group by `total`. The default passes it
        on to the sub-policies of a combining policy (its ``sub_policies``).
        """
        for sub in getattr(self, "sub_policies", ()):
            sub.policy.set_partitions(owned, total)

    def state(self, partition: int) -> bytes | None:
        """Learned state of `partition` to store, if it changed since last asked (the worker
        keeps it in the changelogged ``decisions`` table, so it moves with the partition and
        survives restarts). The default keeps none."""
        return None

    def restore(self, partition: int, data: bytes) -> bool:
        """Continue `partition` from a stored :meth:`state`; whether it could."""
        return False

    def adopt(self, previous: Policy) -> bool | None:
        """Take over the learned state of `previous`, the policy of the same name in the
        configuration this one replaces (a reload). Return True if it did, False if it keeps
        state but starts fresh (say, the sampler's key changed), None if it has nothing to
        take over (the default)."""
        return None

    def may_veto(self) -> bool:
        """Whether :meth:`evaluate` can return INVERTED_NOT_SAMPLED or DROPPED.

        With :meth:`keeps_state`, lets the engine stop at the first keep when no later policy
        can change the decision. True is the safe default; built-ins say exactly.
        """
        return True

    def keeps_state(self) -> bool:
        """Whether :meth:`evaluate` changes state that later decisions read (rate limits).

        Such a policy is evaluated for every trace, as the Collector does. True is the safe
        default; built-ins say exactly.
        """
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, config={self.config!r})"


class StatelessPolicy(Policy):
    """A policy that keeps no state and never vetoes (SAMPLED or NOT_SAMPLED only): the engine
    may skip it once a trace is kept. Policies with ``invert_match`` override ``may_veto``."""

    def may_veto(self) -> bool:
        """Never: SAMPLED or NOT_SAMPLED."""
        return False

    def keeps_state(self) -> bool:
        """No state."""
        return False


def keep_chance(policy: Policy) -> Chance:
    """The default :meth:`Policy.chance` of a trace that `policy` keeps: its probability,
    drawn by the hash of its name."""
    probability = policy.probability()
    if probability >= 1:
        return CERTAIN
    return Chance(probability, frozenset({fnv1a_64(policy.name.encode())}))


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's conclusion for one trace.

    ``policy`` is the first policy (in configuration order) whose verdict kept the trace and
    ``probability`` the chance with which such a trace is kept: that policy's probability times
    its ``sample_percentage``, or, when other policies could have kept it too, the chance that
    any of them does (see ``Policy.chance``); ``None`` and ``0.0`` when the trace is dropped.
    ``sub_policy`` names the sub-policy of a ``composite`` that matched, else ``None``.
    """

    kept: bool
    policy: str | None
    probability: float
    sub_policy: str | None = None
    probability_known: bool = True
    """False when the deciding policy cannot state its probability (a rate or byte limit):
    kept spans then carry no ``ot=th`` threshold."""
