"""``status_code``: keep traces with a span whose status is one of the configured codes."""

from __future__ import annotations

from typing import Literal

from opentelemetry.proto.trace.v1.trace_pb2 import Status
from pydantic import BaseModel, ConfigDict, Field

from policies.model import StatelessPolicy, Verdict
from policies.trace import TraceView

__all__ = ["StatusCode", "StatusCodeConfig"]

StatusName = Literal["OK", "ERROR", "UNSET"]


class StatusCodeConfig(BaseModel):
    """Fields of ``status_code``, as in the OTel Collector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status_codes: list[StatusName] = Field(min_length=1)
    """Span status codes that make a trace worth keeping, e.g. ``[ERROR]``."""


_CODES: dict[StatusName, int] = {
    "UNSET": Status.STATUS_CODE_UNSET,
    "OK": Status.STATUS_CODE_OK,
    "ERROR": Status.STATUS_CODE_ERROR,
}


class StatusCode(StatelessPolicy):
    """SAMPLED if any span's status code is in ``status_codes``, else NOT_SAMPLED."""

    Config = StatusCodeConfig

    def __init__(self, name: str, config: StatusCodeConfig) -> None:
        super().__init__(name, config)
        # UNSET (0) last: OK and ERROR are answered by a search, UNSET needs the span count.
        self._codes = tuple(sorted({_CODES[code] for code in config.status_codes}, reverse=True))

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Ask the view for each wanted code (a cheap search proves OK or ERROR absent)."""
        for code in self._codes:
            if trace.has_status(code):
                return Verdict.SAMPLED
        return Verdict.NOT_SAMPLED
