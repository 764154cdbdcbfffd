"""The policy engine: builds the configured policies once, then decides every trace.

Combination follows the OpenTelemetry Collector (``processor.go``, ``makeDecision``):
any DROPPED drops the trace; else any INVERTED_NOT_SAMPLED drops it; else any SAMPLED keeps
it; else an INVERTED_SAMPLED keeps it only if no policy said NOT_SAMPLED; else it is
dropped. As in the Collector, ``drop`` policies are evaluated before all others and a drop
ends the evaluation. Caudal adds ``sample_percentage`` on any policy (nested ones too),
applied to its keep verdicts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from policies.errors import ErrorLocation, PolicyConfigError
from policies.hashing import fnv1a_64, ratio_threshold
from policies.model import NO_CHANCE, Chance, Decision, Match, Policy, Verdict, keep_chance
from policies.registry import load_policy_class
from policies.trace import TraceView

__all__ = [
    "PolicyConfigError",
    "PolicyEngine",
    "PolicySettings",
    "SubPolicy",
    "build_engine",
    "build_sub_policies",
    "inclusion",
]

_SAMPLED: Final = Verdict.SAMPLED
_NOT_SAMPLED: Final = Verdict.NOT_SAMPLED
_INVERTED_SAMPLED: Final = Verdict.INVERTED_SAMPLED
_INVERTED_NOT_SAMPLED: Final = Verdict.INVERTED_NOT_SAMPLED
_DROPPED_VERDICT: Final = Verdict.DROPPED
_DROPPED: Final = Decision(kept=False, policy=None, probability=0.0)

Evaluate = Callable[[TraceView, float], Verdict]
EvaluateMatch = Callable[[TraceView, float], tuple[Verdict, float]]
ChanceOf = Callable[[TraceView, float], Chance]


class PolicySettings(BaseModel):
    """The keys every policy entry has, whatever its type."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    """Unique name, written on kept spans as ``sampling.policy``."""
    type: str = Field(min_length=1)
    """Built-in or plugin type name, or ``package.module:ClassName``."""
    sample_percentage: float = Field(default=100.0, gt=0, le=100, allow_inf_nan=False)
    """Keep only this share of the traces the policy would keep, chosen by trace ID."""


_SETTINGS_KEYS: Final = frozenset(PolicySettings.model_fields)


@dataclass(frozen=True, slots=True)
class SubPolicy:
    """A policy nested in ``and``, ``drop`` or ``composite`` (see :func:`build_sub_policies`)."""

    policy: Policy
    evaluate: Evaluate
    """The policy's ``evaluate`` with its ``sample_percentage`` applied (a thinned-out keep
    becomes NOT_SAMPLED), as the engine applies it to top-level policies."""
    probability: float
    """``policy.probability()`` times its ``sample_percentage`` / 100."""
    match: EvaluateMatch
    """Like ``evaluate``, also giving this trace's probability of a keep (``probability``
    unless the policy explains its matches per trace)."""
    chance: ChanceOf
    """The policy's ``chance`` with its ``sample_percentage`` applied (one more draw)."""

    @property
    def name(self) -> str:
        """The sub-policy's name."""
        return self.policy.name


class _Explained:
    """Adapts a policy overriding ``evaluate_match``: keeps the last match for the decision."""

    __slots__ = ("policy", "share", "match")

    def __init__(self, policy: Policy, share: float) -> None:
        self.policy = policy
        self.share = share
        self.match: Match | None = None

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        verdict, self.match = self.policy.evaluate_match(trace, now)
        return verdict

    def decision(self) -> Decision:
        match, share, known = self.match, self.share, self.policy.probability_known()
        if match is None:
            probability = self.policy.probability() * share
            return Decision(True, self.policy.name, probability, None, known)
        probability = match.probability * share
        return Decision(True, self.policy.name, probability, match.sub_policy, known)


# One evaluation step: evaluate, sample_percentage seed and threshold (None at 100 %), the
# decision if it keeps (or the adapter that makes it), whether no later policy needs to run
# once this one kept the trace, the policy name for error counts, and its place.
_Slot = tuple[Evaluate, int, "int | None", "Decision | _Explained", bool, str, int]
# For the inclusion probability of a trace kept by a draw: the policy's chance (None for one
# that can veto: its keeps are conditional on the others), and whether it draws at random.
_Chancer = tuple["ChanceOf | None", bool]


def inclusion(chances: Iterable[Chance]) -> float:
    """The probability that at least one of `chances` keeps the trace. Chances drawn from the
    same hashes keep nested sets (the largest counts); different hashes draw independently.
    Exact for policies that draw one hash each; for ones that share only some of their
    hashes (``and`` of two draws beside one of them), the independent estimate."""
    largest: dict[frozenset[int], float] = {}
    for chance in chances:
        if chance.probability >= 1:
            return 1.0
        if chance.probability > 0:
            known = largest.get(chance.draws, 0.0)
            largest[chance.draws] = max(known, chance.probability)
    if len(largest) <= 1:
        return max(largest.values(), default=0.0)  # exactly, not 1 - (1 - p)
    missed = 1.0
    for probability in largest.values():
        missed *= 1 - probability
    return 1 - missed


class PolicyEngine:
    """Evaluates every policy on a trace and combines the verdicts into a :class:`Decision`.

    Holds no clock and no I/O; ``decide`` gives the same answer for the same trace on every
    worker (``sample_percentage`` hashes the trace ID), except for the rate-limiting policies,
    whose answer depends on the traces decided before. A policy that raises is ignored for that
    trace, as the Collector ignores evaluation errors, and counted in ``evaluation_errors``
    (policy name -> count) for metrics. Once a trace is kept, policies that can neither veto
    nor keep state are skipped: they cannot change the decision.
    """

    __slots__ = (
        "policies",
        "sample_percentages",
        "evaluation_errors",
        "_slots",
        "_chancers",
        "_kept_chances",
        "_known",
        "_stateful",
    )

    def __init__(
        self, policies: Sequence[Policy], sample_percentages: Mapping[str, float] | None = None
    ) -> None:
        """Use ``policies`` in this order (``drop`` first); ``sample_percentages`` maps policy
        names to percentages in (0, 100] (100 when absent). Prefer :func:`build_engine`."""
        percentages = dict(sample_percentages or {})
        errors = _check_engine_inputs(policies, percentages)
        if errors:
            raise PolicyConfigError(errors)
        self.policies: Final = tuple(policies)
        self.sample_percentages: Final = {p.name: percentages.get(p.name, 100.0) for p in policies}
        self.evaluation_errors: dict[str, int] = {}
        ordered = [p for p in policies if p.evaluated_first]
        ordered += [p for p in policies if not p.evaluated_first]
        needed = [p.may_veto() or p.keeps_state() for p in ordered]
        slots: list[_Slot] = []
        chancers: list[_Chancer] = []
        for index, policy in enumerate(ordered):
            percentage = self.sample_percentages[policy.name]
            threshold = None if percentage >= 100 else ratio_threshold(percentage / 100)
            share = percentage / 100
            evaluate: Evaluate = policy.evaluate
            kept: Decision | _Explained
            if policy.explains_match():
                kept = _Explained(policy, share)
                evaluate = kept.evaluate
            else:
                probability = policy.probability() * share
                known = policy.probability_known()
                kept = Decision(True, policy.name, probability, None, known)
            seed = fnv1a_64(policy.name.encode())
            last = not any(needed[index + 1 :])
            slots.append((evaluate, seed, threshold, kept, last, policy.name, index))
            chance = None if policy.may_veto() else _chanced(policy, percentage)
            chancers.append((chance, policy.draws_at_random() or threshold is not None))
        self._slots: Final = tuple(slots)
        self._chancers: Final = tuple(chancers)
        self._kept_chances: Final = tuple(
            _kept_chance(policy, self.sample_percentages[policy.name]) for policy in ordered
        )
        self._known: Final = {p.name: p.probability_known() for p in policies}
        # The policies (nested ones too, by path) that keep learned state per partition.
        self._stateful: Final = tuple(
            (path, p) for path, p in _named(policies) if type(p).state is not Policy.state
        )

    def decide(self, trace: TraceView, now: float) -> Decision:
        """Evaluate the policies on ``trace`` at time ``now`` (Unix seconds) and decide."""
        sampled: Decision | _Explained | None = None
        inverted: Decision | _Explained | None = None
        not_sampled = vetoed = False
        keeper = 0
        for evaluate, seed, threshold, kept, last, name, index in self._slots:
            try:
                verdict = evaluate(trace, now)
            except Exception:
                self.evaluation_errors[name] = self.evaluation_errors.get(name, 0) + 1
                continue
            if verdict is _SAMPLED or verdict is _INVERTED_SAMPLED:
                # sample_percentage: hash(name + trace ID) so policies draw independently.
                if threshold is not None and fnv1a_64(trace.trace_id, seed) > threshold:
                    not_sampled = True
                elif verdict is _SAMPLED:
                    if sampled is None:
                        sampled = kept
                        keeper = index
                        if last:
                            break
                elif inverted is None:
                    inverted = kept
            elif verdict is _NOT_SAMPLED:
                not_sampled = True
            elif verdict is _INVERTED_NOT_SAMPLED:
                vetoed = True
            elif verdict is _DROPPED_VERDICT:
                return _DROPPED  # nothing can undo a drop; the Collector stops here too
            else:
                self.evaluation_errors[name] = self.evaluation_errors.get(name, 0) + 1
        if vetoed:
            return _DROPPED
        if sampled is not None:
            decision = sampled if isinstance(sampled, Decision) else sampled.decision()
            if decision.probability < 1 and len(self._chancers) > 1:
                return self._included(trace, now, decision, keeper)
            return decision
        if inverted is not None and not not_sampled:
            return inverted if isinstance(inverted, Decision) else inverted.decision()
        return _DROPPED

    def _included(self, trace: TraceView, now: float, decision: Decision, keeper: int) -> Decision:
        """`decision`, kept by a draw, with the probability that any policy keeps the trace:
        a VIP trace kept by a 50 % rule that a 10 % rule for all traces could also have kept
        has 1 − 0.5 × 0.9 = 0.55, not 0.5. Policies before the keeper that draw nothing did
        not keep the trace and are not asked again."""
        chances = []
        for index, (chance, draws) in enumerate(self._chancers):
            if index == keeper:
                chances.append(self._keeper_chance(trace, now, decision, keeper))
            elif chance is not None and (index > keeper or draws):
                try:
                    chances.append(chance(trace, now))
                except Exception:
                    name = self._slots[index][5]
                    self.evaluation_errors[name] = self.evaluation_errors.get(name, 0) + 1
        probability = inclusion(chances)
        if probability == decision.probability:
            return decision
        return dataclasses.replace(decision, probability=probability)

    def _keeper_chance(
        self, trace: TraceView, now: float, decision: Decision, keeper: int
    ) -> Chance:
        """The keeping policy's chance: its own account of its draws, or, for a policy that
        gives none (a plugin), the decision's probability drawn by its name's hash."""
        chance = self._chancers[keeper][0]
        kept = self._kept_chances[keeper]
        try:
            if kept is not None:
                found = kept
            else:
                found = chance(trace, now) if chance is not None else NO_CHANCE
        except Exception:
            found = NO_CHANCE
        if math.isclose(found.probability, decision.probability, rel_tol=1e-9):
            return found
        return Chance(decision.probability, frozenset({self._slots[keeper][1]}))

    def adopt_state(self, previous: PolicyEngine) -> dict[str, bool]:
        """Hand each policy the learned state of the policy of the same name in `previous`
        (see ``Policy.adopt``), nested ones by their path (``outer/inner``). Returns, per
        policy path that keeps state, whether it took it over."""
        before = dict(_named(previous.policies))
        outcome: dict[str, bool] = {}
        for path, policy in _named(self.policies):
            old = before.get(path)
            if old is not None:
                adopted = policy.adopt(old)
                if adopted is not None:
                    outcome[path] = adopted
        return outcome

    def probability_known(self, name: str) -> bool:
        """Whether the keeps of the top-level policy `name` have a known probability (True
        for a name this engine does not have)."""
        return self._known.get(name, True)

    def set_partitions(self, owned: frozenset[int], total: int) -> None:
        """Tell every policy the partitions this worker owns (see ``Policy.set_partitions``)."""
        for policy in self.policies:
            policy.set_partitions(owned, total)

    def states(self, partition: int) -> dict[str, bytes]:
        """Per policy path (``outer/inner`` for nested ones), the state of `partition` that
        changed since last asked."""
        out = {}
        for path, policy in self._stateful:
            data = policy.state(partition)
            if data is not None:
                out[path] = data
        return out

    def restore(self, partition: int, states: Mapping[str, bytes]) -> dict[str, bool]:
        """Hand each policy its stored state of `partition`; per path, whether it took it."""
        by_path = dict(_named(self.policies))
        return {
            path: by_path[path].restore(partition, data)
            for path, data in states.items()
            if path in by_path
        }

    def __repr__(self) -> str:
        return f"PolicyEngine(policies={[p.name for p in self.policies]!r})"


def _named(policies: Sequence[Policy], prefix: str = "") -> list[tuple[str, Policy]]:
    named: list[tuple[str, Policy]] = []
    for policy in policies:
        path = f"{prefix}{policy.name}"
        named.append((path, policy))
        subs = getattr(policy, "sub_policies", ())
        named += _named([sub.policy for sub in subs], f"{path}/")
    return named


def build_engine(raw: Sequence[Mapping[str, object]]) -> PolicyEngine:
    """Validate a policy list (the ``policies:`` section) and build its engine.

    Each entry has ``name``, ``type``, optional ``sample_percentage`` and the type's own
    fields, either beside them or, as the OTel Collector writes them, under a key named
    after the type (``{name: slow, type: latency, latency: {threshold_ms: 5000}}``).
    Raises :class:`PolicyConfigError` with every problem in every entry.
    """
    built = _build_policies(raw)
    return PolicyEngine([p for p, _ in built], {p.name: pct for p, pct in built})


def build_sub_policies(raw: Sequence[Mapping[str, object]]) -> tuple[SubPolicy, ...]:
    """Validate and build the nested policy list of a combining policy.

    Entries are written as in :func:`build_engine` (``sample_percentage`` included). Raises
    :class:`PolicyConfigError` with locations relative to the list; the engine prefixes them
    with the combining policy's location and its ``sub_policies_field``.
    """
    subs = []
    for policy, percentage in _build_policies(raw):
        probability = policy.probability() * percentage / 100
        thinned = _thinned(policy, percentage)
        matched = _matched(policy, percentage, thinned)
        subs.append(SubPolicy(policy, thinned, probability, matched, _chanced(policy, percentage)))
    return tuple(subs)


def _thin(base: Chance, share: float, seed: frozenset[int]) -> Chance:
    # sample_percentage: one more draw, by the hash of the policy's name.
    if base.probability <= 0:
        return NO_CHANCE
    return Chance(base.probability * share, base.draws | seed)


def _chanced(policy: Policy, percentage: float) -> ChanceOf:
    chance = policy.chance
    if percentage >= 100:
        return chance
    share = percentage / 100
    seed = frozenset({fnv1a_64(policy.name.encode())})

    def thinned(trace: TraceView, now: float) -> Chance:
        return _thin(chance(trace, now), share, seed)

    return thinned


def _kept_chance(policy: Policy, percentage: float) -> Chance | None:
    """The chance of a trace `policy` keeps, when it is the same for every such trace: the
    policy answers with the default ``Policy.chance``, keeps no state and explains no match
    (so its keep, asked again, would give ``keep_chance``). None otherwise."""
    stateless = not policy.keeps_state() and not policy.explains_match()
    if type(policy).chance is not Policy.chance or not stateless:
        return None
    chance = keep_chance(policy)
    if percentage >= 100:
        return chance
    return _thin(chance, percentage / 100, frozenset({fnv1a_64(policy.name.encode())}))


def _matched(policy: Policy, percentage: float, thinned: Evaluate) -> EvaluateMatch:
    share = percentage / 100
    probability = policy.probability() * share
    if not policy.explains_match():

        def static(trace: TraceView, now: float) -> tuple[Verdict, float]:
            return thinned(trace, now), probability

        return static
    explain = policy.evaluate_match
    seed = fnv1a_64(policy.name.encode())
    threshold = None if percentage >= 100 else ratio_threshold(share)

    def explained(trace: TraceView, now: float) -> tuple[Verdict, float]:
        verdict, match = explain(trace, now)
        if verdict is _SAMPLED or verdict is _INVERTED_SAMPLED:
            if threshold is not None and fnv1a_64(trace.trace_id, seed) > threshold:
                return _NOT_SAMPLED, 0.0
            return verdict, (match.probability if match else policy.probability()) * share
        return verdict, 0.0

    return explained


def _thinned(policy: Policy, percentage: float) -> Evaluate:
    evaluate = policy.evaluate
    if percentage >= 100:
        return evaluate
    seed = fnv1a_64(policy.name.encode())
    threshold = ratio_threshold(percentage / 100)

    def thinned(trace: TraceView, now: float) -> Verdict:
        verdict = evaluate(trace, now)
        if verdict is _SAMPLED or verdict is _INVERTED_SAMPLED:
            if fnv1a_64(trace.trace_id, seed) > threshold:
                return _NOT_SAMPLED
        return verdict

    return thinned


def _build_policies(raw: Sequence[Mapping[str, object]]) -> list[tuple[Policy, float]]:
    errors: list[tuple[ErrorLocation, str]] = []
    built: list[tuple[Policy, float]] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name:
            if name in first_index:
                message = f"duplicate policy name {name!r} (policy {first_index[name]})"
                errors.append(((index, "name"), message))
            first_index.setdefault(name, index)
        one = _build_one(index, entry, errors)
        if one is not None:
            built.append(one)
    if errors:
        raise PolicyConfigError(errors)
    return built


def _build_one(
    index: int, entry: object, errors: list[tuple[ErrorLocation, str]]
) -> tuple[Policy, float] | None:
    if not isinstance(entry, Mapping):
        errors.append(((index,), "Input should be a valid dictionary"))
        return None
    before = len(errors)
    try:
        settings = PolicySettings.model_validate(
            {k: v for k, v in entry.items() if k in _SETTINGS_KEYS}
        )
    except ValidationError as exc:
        _extend(errors, (index,), exc)
        settings = None
    policy_class: type[Policy] | None = None
    type_name = entry.get("type")
    if isinstance(type_name, str) and type_name:
        try:
            policy_class = load_policy_class(type_name)
        except PolicyConfigError as exc:
            errors.extend(((index, "type", *loc), msg) for loc, msg in exc.errors)
    if policy_class is None or not isinstance(type_name, str):
        return None
    fields, prefix = _policy_fields(index, type_name, entry, errors)
    try:
        config = policy_class.Config.model_validate(fields)
    except ValidationError as exc:
        _extend(errors, (index, *prefix), exc)
        return None
    if settings is None or len(errors) > before:
        return None
    try:
        policy = policy_class(settings.name, config)
    except PolicyConfigError as exc:  # nested policies (``and``) report their own locations
        nested = (*prefix, policy_class.sub_policies_field or "")
        errors.extend(((index, *nested, *loc), msg) for loc, msg in exc.errors)
        return None
    except Exception as exc:  # a plugin's constructor can fail in any way; report it
        errors.append(((index,), f"cannot create {type_name!r} policy: {exc}"))
        return None
    return policy, settings.sample_percentage


def _policy_fields(
    index: int, type_name: str, entry: Mapping[str, object], errors: list[tuple[ErrorLocation, str]]
) -> tuple[object, tuple[str, ...]]:
    rest = {k: v for k, v in entry.items() if k not in _SETTINGS_KEYS}
    if type_name not in rest:
        return rest, ()
    nested = rest.pop(type_name)
    for key in rest:
        message = f"Extra inputs are not permitted (fields of {type_name} go under {type_name!r})"
        errors.append(((index, key), message))
    return nested, (type_name,)


def _extend(
    errors: list[tuple[ErrorLocation, str]], prefix: ErrorLocation, exc: ValidationError
) -> None:
    errors.extend(((*prefix, *error["loc"]), error["msg"]) for error in exc.errors())


def _check_engine_inputs(
    policies: Sequence[Policy], percentages: Mapping[str, float]
) -> list[tuple[ErrorLocation, str]]:
    errors: list[tuple[ErrorLocation, str]] = []
    seen: set[str] = set()
    for index, policy in enumerate(policies):
        if policy.name in seen:
            errors.append(((index, "name"), f"duplicate policy name {policy.name!r}"))
        seen.add(policy.name)
    for name, percentage in percentages.items():
        if name not in seen:
            errors.append(((), f"sample_percentage given for unknown policy {name!r}"))
        elif not 0 < percentage <= 100:
            errors.append(((), f"sample_percentage of {name!r} must be in (0, 100]"))
    return errors
