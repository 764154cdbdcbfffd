"""Experiment RED metrics, counted on every span before sampling.

A span takes part in an experiment when it carries `experiment.id` and `experiment.variant`
(span attributes, which is also where OpenTelemetry's baggage span processors copy W3C baggage
entries; else resource attributes). Each such span counts as one request of its service, an
error when its status is ERROR, and its duration goes into a histogram. Because this runs before
any sampling decision, A/B comparisons do not depend on what was kept.

Label values come from clients, so the series are bounded: only experiments in `allow` (when
set), and at most `max_series` (experiment, variant, service) combinations per process; spans
beyond that are counted in `caudal_experiment_series_dropped_total`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Status

from streams.config import ExperimentsConfig
from streams.ops.metrics import (
    EXPERIMENT_DURATION,
    EXPERIMENT_ERRORS,
    EXPERIMENT_REQUESTS,
    EXPERIMENT_SERIES_DROPPED,
)

__all__ = ["ExperimentMeter"]


_ERROR = Status.STATUS_CODE_ERROR
_Series = tuple[str, str, str]


class ExperimentMeter:
    """Counts experiment spans of the traffic a process reads (thread-safe)."""

    def __init__(self, config: ExperimentsConfig) -> None:
        self.config = config
        self.id_key = config.id_attribute
        self.variant_key = config.variant_attribute
        # Spans without the variant attribute's key bytes are not looked at span by span.
        self.marker = config.variant_attribute.encode()
        self.allow = frozenset(config.allow)
        self.enabled = config.enabled
        self._series: dict[_Series, tuple[object, object, object]] = {}
        self._lock = threading.Lock()

    def may_apply(self, raw: bytes) -> bool:
        """Cheap test on a message's bytes: can it hold experiment spans at all?"""
        return self.enabled and self.marker in raw

    def observe(self, blocks: Iterable[ResourceSpans]) -> None:
        """Count the experiment spans of some resource blocks."""
        for rs in blocks:
            default_id, default_variant, service = _strings(
                rs.resource.attributes, self.id_key, self.variant_key, "service.name"
            )
            service = service or "unknown"
            for ss in rs.scope_spans:
                for span in ss.spans:
                    experiment, variant = _strings(span.attributes, self.id_key, self.variant_key)
                    experiment = experiment or default_id
                    variant = variant or default_variant
                    if experiment and variant:
                        self._count(experiment, variant, service, span)

    def _count(self, experiment: str, variant: str, service: str, span: object) -> None:
        key = (experiment, variant, service)
        metrics = self._series.get(key)
        if metrics is None:
            metrics = self._admit(key)
            if metrics is None:
                EXPERIMENT_SERIES_DROPPED.inc()
                return
        requests, errors, duration = metrics
        requests.inc()  # type: ignore[attr-defined]
        if span.status.code == _ERROR:  # type: ignore[attr-defined]
            errors.inc()  # type: ignore[attr-defined]
        elapsed = span.end_time_unix_nano - span.start_time_unix_nano  # type: ignore[attr-defined]
        duration.observe(max(0, elapsed) / 1e9)  # type: ignore[attr-defined]

    def _admit(self, key: _Series) -> tuple[object, object, object] | None:
        if self.allow and key[0] not in self.allow:
            return None
        with self._lock:
            metrics = self._series.get(key)
            if metrics is None:
                if len(self._series) >= self.config.max_series:
                    return None
                metrics = self._series[key] = (
                    EXPERIMENT_REQUESTS.labels(*key),
                    EXPERIMENT_ERRORS.labels(*key),
                    EXPERIMENT_DURATION.labels(*key),
                )
            return metrics


def _strings(attributes: Iterable[object], *keys: str) -> tuple[str, ...]:
    """String values of some attribute keys, in the order asked ('' when absent)."""
    values = dict.fromkeys(keys, "")
    for kv in attributes:
        key = kv.key  # type: ignore[attr-defined]
        if key in values:
            values[key] = kv.value.string_value  # type: ignore[attr-defined]
    return tuple(values.values())
