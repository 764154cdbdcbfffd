"""Degradation levels: shed load in announced steps under sustained pressure, recover by itself.

- 0: normal tail sampling.
- 1: larger batches; optional work (experiment RED metrics) off.
- 2, 3, 4: no tail buffering for new traces. Each span is decided on arrival: kept when its
  trace ID hashes under `level_percentages` (5 %, 1 %, 0.1 % by default), and every span of
  status ERROR is kept whatever the hash says. The hash is the `probabilistic` policy's, so
  every worker keeps the same traces, and a trace kept at 1 % is also kept at 5 %.
  Traces already buffered when the level rose are still buffered and decided by the policies.

Pressure is read every `check_interval`: the records being read are older than `max_lag` and
getting older (the consumer falls further behind), the buffer is over `buffer_fill` of
`decision.max_traces`, or RSS is over `memory_fill` of `health.memory_limit`. From level 0 the
pressure must last `sustain_checks` checks; once degraded, each pressured check climbs one level
at once. Each `recovery_period` without pressure steps one level down.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from policies.builtin.probabilistic import DEFAULT_HASH_SALT
from policies.hashing import fnv1a_64, ratio_threshold
from streams.config import DegradationConfig
from streams.ops.metrics import DEGRADATION_CHANGES, DEGRADATION_LEVEL
from streams.wire.otlp import annotate_kept

__all__ = [
    "DEGRADED_POLICY",
    "Degradation",
    "LagClock",
    "Pressure",
    "ShedDecision",
    "batch_factor",
    "optional_work",
    "shed_fragment",
]

log = logging.getLogger(__name__)

DEGRADED_POLICY = "degraded"
FIRST_SHEDDING_LEVEL = 2


_SEED = fnv1a_64(DEFAULT_HASH_SALT.encode())


def batch_factor(level: int) -> int:
    """How many times larger batches are at `level` (1 and up: four times)."""
    return 4 if level else 1


def optional_work(level: int) -> bool:
    """Whether optional work (experiment metrics) runs at `level`: at level 0 only."""
    return level == 0


class LagClock:
    """The oldest record age seen since the last check, fed by every consuming thread."""

    def __init__(self) -> None:
        self._oldest = 0.0
        self._lock = threading.Lock()

    def note(self, age: float) -> None:
        """A record was read `age` seconds after it was written."""
        if age > self._oldest:
            with self._lock:
                self._oldest = max(self._oldest, age)

    def take(self) -> float:
        """The oldest age since the last call (0 when nothing was read), and start again."""
        with self._lock:
            oldest, self._oldest = self._oldest, 0.0
        return oldest


@dataclass(frozen=True)
class Pressure:
    """One reading of what drives the level."""

    lag_seconds: float
    buffer_fill: float
    memory_fill: float | None = None


class Degradation:
    """The current level and the rules that move it (pure: readings and `now` come in)."""

    def __init__(self, config: DegradationConfig) -> None:
        self.config = config
        self.level = 0
        self.reason = "normal"
        self._streak = 0
        self._calm_since: float | None = None
        self._last_lag = 0.0
        DEGRADATION_LEVEL.set(0)

    def batch_factor(self) -> int:
        """How many times larger batches are (level 1 and up)."""
        return batch_factor(self.level)

    def optional_work(self) -> bool:
        """Whether optional work (experiment metrics) runs: at level 0 only."""
        return optional_work(self.level)

    def percentage(self) -> float | None:
        """Trace-ID sampling percentage of the current level, None below level 2."""
        if self.level < FIRST_SHEDDING_LEVEL:
            return None
        return self.config.level_percentages[self.level - FIRST_SHEDDING_LEVEL]

    def pressure_reasons(self, reading: Pressure, last_lag: float) -> list[str]:
        """Why the reading counts as pressure (empty: calm), given the previous lag reading."""
        config = self.config
        reasons = []
        growing = reading.lag_seconds >= last_lag
        if reading.lag_seconds > config.max_lag and growing:
            reasons.append(f"consumer lag {reading.lag_seconds:.0f}s and growing")
        if reading.buffer_fill > config.buffer_fill:
            reasons.append(f"buffer at {reading.buffer_fill:.0%} of decision.max_traces")
        if reading.memory_fill is not None and reading.memory_fill > config.memory_fill:
            reasons.append(f"RSS at {reading.memory_fill:.0%} of health.memory_limit")
        return reasons

    def observe(self, reading: Pressure, now: float) -> bool:
        """Apply one reading; True when the level changed (logged and exported)."""
        if not self.config.enabled:
            return False
        reasons = self.pressure_reasons(reading, self._last_lag)
        self._last_lag = reading.lag_seconds
        if reasons:
            self._streak += 1
            self._calm_since = None
            climb = self.level > 0 or self._streak >= self.config.sustain_checks
            if climb and self.level < self.config.max_level:
                return self._move(+1, "; ".join(reasons))
            return False
        self._streak = 0
        if self._calm_since is None:
            self._calm_since = now
        elif self.level > 0 and now - self._calm_since >= self.config.recovery_period:
            self._calm_since = now
            return self._move(-1, f"no pressure for {self.config.recovery_period:.0f}s")
        return False

    def _move(self, step: int, reason: str) -> bool:
        before = self.level
        self.level += step
        self.reason = reason
        DEGRADATION_LEVEL.set(self.level)
        DEGRADATION_CHANGES.labels("up" if step > 0 else "down").inc()
        percentage = self.percentage()
        log.warning(
            "degradation level changed from=%d to=%d reason=%r sampling=%s",
            before,
            self.level,
            reason,
            "tail" if percentage is None else f"{percentage:g}%+errors",
        )
        return True


@dataclass(frozen=True, slots=True)
class ShedDecision:
    """What degraded mode keeps of one fragment: the request to export (or None) and counts."""

    request: bytes | None  # serialized, its spans annotated
    kept_spans: int
    dropped_spans: int
    has_error: bool = False


def shed_fragment(trace_id: bytes, fragment: bytes, percentage: float) -> ShedDecision:
    """Decide one trace fragment on arrival: all of it by the trace-ID hash, else its errors.

    Kept spans carry `sampling.policy = degraded` and their true inclusion probability: the
    level's percentage for spans kept by the hash, 1.0 for error spans kept for their status.
    """
    probability = percentage / 100
    request = ExportTraceServiceRequest.FromString(fragment)
    if fnv1a_64(trace_id, _SEED) <= _threshold(probability):
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        error = any(s.status.code == Status.STATUS_CODE_ERROR for s in spans)
        return ShedDecision(
            annotate_kept(fragment, DEGRADED_POLICY, probability), len(spans), 0, error
        )
    kept = dropped = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            errors = [s for s in ss.spans if s.status.code == Status.STATUS_CODE_ERROR]
            dropped += len(ss.spans) - len(errors)
            kept += len(errors)
            if len(errors) < len(ss.spans):
                del ss.spans[:]
                ss.spans.extend(errors)
    if not kept:
        return ShedDecision(None, 0, dropped)
    # Resource and scope blocks left without spans are harmless in OTLP; drop them anyway so
    # backends do not see empty entries.
    for rs in list(request.resource_spans):
        for ss in [ss for ss in rs.scope_spans if not ss.spans]:
            rs.scope_spans.remove(ss)
        if not rs.scope_spans:
            request.resource_spans.remove(rs)
    encoded = annotate_kept(request.SerializeToString(), DEGRADED_POLICY, 1.0)
    return ShedDecision(encoded, kept, dropped, True)


@functools.cache
def _threshold(probability: float) -> int:
    # Exact big-number arithmetic: computed once per level, not per fragment.
    return ratio_threshold(probability)
