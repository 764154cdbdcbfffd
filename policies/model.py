"""The policy plugin API: what a policy returns (:class:`Verdict`), what it is (:class:`Policy`),
and what the engine concludes for a trace (:class:`Decision`)."""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from policies.trace import TraceView

__all__ = ["Decision", "NoFields", "Policy", "Verdict"]


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


class NoFields(BaseModel):
    """The configuration of a policy that takes no fields of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(abc.ABC):
    """A sampling rule, configured once and then asked about every trace.

    Subclasses set ``Config`` to a pydantic model of their own fields (the engine handles the
    common ``name``, ``type`` and ``sample_percentage``), accept an instance of it in
    ``__init__`` and precompute there whatever ``evaluate`` needs. ``evaluate`` must be a pure
    function of the trace and ``now``: no clock, no I/O, no logging.
    """

    Config: ClassVar[type[BaseModel]] = NoFields
    sub_policies_field: ClassVar[str | None] = None
    """The config field holding nested policies, if any: their errors are reported under it."""

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, config={self.config!r})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's conclusion for one trace.

    ``policy`` is the first policy (in configuration order) whose verdict kept the trace and
    ``probability`` the chance with which it keeps such a trace (its own probability times its
    ``sample_percentage``); both are ``None`` and ``0.0`` when the trace is dropped.
    """

    kept: bool
    policy: str | None
    probability: float
