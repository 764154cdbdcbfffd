"""``always_sample``: keep every trace (handy to check the pipeline end to end)."""

from __future__ import annotations

from policies.model import NoFields, StatelessPolicy, Verdict
from policies.trace import TraceView

__all__ = ["AlwaysSample", "AlwaysSampleConfig"]


class AlwaysSampleConfig(NoFields):
    """``always_sample`` takes no fields."""


class AlwaysSample(StatelessPolicy):
    """Return SAMPLED for every trace."""

    Config = AlwaysSampleConfig

    def __init__(self, name: str, config: AlwaysSampleConfig) -> None:
        super().__init__(name, config)

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Return SAMPLED."""
        return Verdict.SAMPLED
