"""Synthetic keyed traffic for the adaptive samplers: one template request per key, a fresh
random trace ID per trace (the samplers read the key's attribute and hash the trace ID)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from policies import TraceView
from tests.policies.traces import batch, make_span


def template(route: str) -> bytes:
    """A 3-span request whose spans carry ``http.route = route``."""
    spans = [make_span(attributes={"http.route": route}, start_ms=i) for i in range(3)]
    return ExportTraceServiceRequest(resource_spans=[batch(spans)]).SerializeToString()


class Traffic:
    """Traces of a few keys, mixed by weight, at a fixed rate of decision time."""

    def __init__(self, weights: dict[str, float], seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.keys = list(weights)
        self.weights = list(weights.values())
        self.templates = {key: template(key) for key in self.keys}

    def traces(
        self, per_second: float, seconds: float, start: float = 0.0, partitions: int = 1
    ) -> Iterator[tuple[str, float, TraceView]]:
        """(key, decision time, view) for `per_second` × `seconds` traces, each on the
        partition (of `partitions`) its trace ID picks."""
        count = round(per_second * seconds)
        keys = self.rng.choices(self.keys, self.weights, k=count)
        for i, key in enumerate(keys):
            trace_id = self.rng.randbytes(16)
            view = TraceView.from_request(trace_id, self.templates[key])
            view.partition = int.from_bytes(trace_id[:4], "big") % partitions
            yield key, start + i / per_second, view
