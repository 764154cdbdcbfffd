"""``probabilistic``: keep a fixed share of traces, chosen by a hash of the trace ID."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from policies.hashing import fnv1a_64, ratio_threshold
from policies.model import Chance, StatelessPolicy, Verdict
from policies.trace import TraceView

__all__ = ["DEFAULT_HASH_SALT", "Probabilistic", "ProbabilisticConfig"]

DEFAULT_HASH_SALT = "default-hash-seed"
"""The Collector's salt when ``hash_salt`` is empty; keeping it makes decisions agree."""


class ProbabilisticConfig(BaseModel):
    """Fields of ``probabilistic``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling_percentage: float = Field(ge=0, le=100, allow_inf_nan=False)
    """Share of traces to keep, in percent."""
    hash_salt: str = ""
    """Salt hashed before the trace ID; tiers that must decide independently use different
    salts. Empty means the Collector's default salt."""


class Probabilistic(StatelessPolicy):
    """SAMPLED when FNV-1a-64(salt + trace ID) <= MaxUint64 × sampling_percentage / 100.

    The Collector's algorithm bit for bit (``probabilistic.go``), so every worker, every
    restart and a Collector configured the same way all keep the same traces.
    """

    Config = ProbabilisticConfig

    def __init__(self, name: str, config: ProbabilisticConfig) -> None:
        super().__init__(name, config)
        salt = config.hash_salt or DEFAULT_HASH_SALT
        self._seed = fnv1a_64(salt.encode())
        # Go computes samplingPercentage / 100 in float64 first; so does Python's `/`.
        self._threshold = ratio_threshold(config.sampling_percentage / 100)
        self._probability = config.sampling_percentage / 100
        self._chance = Chance(self._probability, frozenset({self._seed}))

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Hash the trace ID and compare it with the precomputed threshold."""
        if fnv1a_64(trace.trace_id, self._seed) <= self._threshold:
            return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED

    def probability(self) -> float:
        """Return ``sampling_percentage / 100``."""
        return self._probability

    def chance(self, trace: TraceView, now: float) -> Chance:
        """Every trace has the same chance, drawn by the salt's hash: two ``probabilistic``
        policies with the same salt keep nested sets of traces."""
        return self._chance
