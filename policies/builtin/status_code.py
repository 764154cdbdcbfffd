"""``status_code``: keep traces with a span whose status is one of the configured codes."""

from __future__ import annotations

from typing import Literal

from opentelemetry.proto.trace.v1.trace_pb2 import Status
from pydantic import BaseModel, ConfigDict, Field

from policies.model import Policy, Verdict
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


class StatusCode(Policy):
    """SAMPLED if any span's status code is in ``status_codes``, else NOT_SAMPLED."""

    Config = StatusCodeConfig

    def __init__(self, name: str, config: StatusCodeConfig) -> None:
        super().__init__(name, config)
        self._codes = frozenset(_CODES[code] for code in config.status_codes)

    def evaluate(self, trace: TraceView, now: float) -> Verdict:
        """Compare the trace's status codes (collected once on the view) with the wanted ones."""
        if self._codes.isdisjoint(trace.status_codes):
            return Verdict.NOT_SAMPLED
        return Verdict.SAMPLED
