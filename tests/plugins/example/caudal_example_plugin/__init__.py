"""An example policy plugin: keep traces in which a span answered with an HTTP error status.

Installed as a package, it registers itself under the entry-point group `caudal.policies`
(see pyproject.toml), so a config can say `type: http_status`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from policies import Policy, TraceView, Verdict

__all__ = ["HttpStatus", "HttpStatusConfig"]


class HttpStatusConfig(BaseModel):
    """Fields of `http_status`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_status: int = Field(default=500, ge=100, le=599)
    """Keep traces with a span whose `http.response.status_code` is at least this."""
    key: str = "http.response.status_code"


class HttpStatus(Policy):
    """SAMPLED if any span's HTTP status code is at least `min_status`."""

    Config = HttpStatusConfig

    def __init__(self, name: str, config: HttpStatusConfig) -> None:
        super().__init__(name, config)
        self._key = config.key
        self._min = config.min_status

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Look at the attribute values the trace view collected once."""
        for value in trace.attribute_values(self._key):
            if isinstance(value, int) and not isinstance(value, bool) and value >= self._min:
                return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED
