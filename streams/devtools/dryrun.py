"""`caudal decide`: apply the configured policies to captured traces, offline.

Reads OTLP traces from files or stdin (OTLP/JSON, one request per file or one per line as the
file exporter writes; or protobuf `ExportTraceServiceRequest`, one per file or length-delimited),
groups spans by trace ID across all inputs, and prints one JSON line per trace with the decision
the worker would take: the same tenant resolution, the same policy sets, the same engine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO

from google.protobuf.internal.decoder import _DecodeVarint
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from policies import TraceView
from policies.tracestate import threshold_hex
from streams.config import Settings
from streams.pipeline.decide import PolicySets
from streams.pipeline.route import TenantResolver
from streams.wire.otlp import BadInput, decode_request, split_by_trace

__all__ = ["decide_inputs", "read_requests"]


def read_requests(data: bytes, source: str) -> Iterator[ExportTraceServiceRequest]:
    """Every request in one input, whatever of the supported encodings it uses."""
    text = data.lstrip()
    if text.startswith(b"{"):
        try:
            yield decode_request(text, "otlp_json")
            return
        except BadInput:
            pass  # JSON lines: one request per line
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield decode_request(line, "otlp_json")
                except BadInput as exc:
                    raise BadInput(exc.reason, f"{source}:{number}: {exc.detail}") from exc
        return
    try:
        single = ExportTraceServiceRequest.FromString(data)
        if single.resource_spans:
            yield single
            return
    except DecodeError:
        pass
    yield from _length_delimited(data, source)


def _length_delimited(data: bytes, source: str) -> Iterator[ExportTraceServiceRequest]:
    pos = 0
    while pos < len(data):
        try:
            length, start = _DecodeVarint(data, pos)
            end = start + length
            if end > len(data):
                raise DecodeError("truncated")
            yield ExportTraceServiceRequest.FromString(data[start:end])
        except (DecodeError, IndexError) as exc:
            raise BadInput(
                "invalid_protobuf", f"{source}: not OTLP/JSON nor protobuf at byte {pos}: {exc}"
            ) from exc
        pos = end


def decide_inputs(
    settings: Settings, inputs: Iterable[tuple[str, bytes]], out: IO[str] = sys.stdout
) -> int:
    """Decide every trace found in `inputs` ((name, bytes) pairs); return how many."""
    traces: dict[bytes, list[ResourceSpans]] = {}
    for source, data in inputs:
        for request in read_requests(data, source):
            groups, _invalid = split_by_trace(request)
            for trace_id, blocks in groups.items():
                traces.setdefault(trace_id, []).extend(blocks)
    resolver = TenantResolver.from_settings(settings)
    policy_sets = PolicySets.from_settings(settings)
    no_headers = resolver.hints({})  # files carry no Kafka headers
    now = time.time()
    for trace_id, blocks in traces.items():
        tenant = resolver.resolve(no_headers, blocks)
        view = TraceView.from_resource_spans(trace_id, blocks)
        decision = policy_sets.for_tenant(tenant).decide(view, now)
        record = {
            "trace_id": trace_id.hex(),
            "tenant": tenant,
            "decision": "kept" if decision.kept else "dropped",
            "policy": decision.policy,
            "probability": decision.probability,
            # The W3C tracestate threshold kept spans get (ot=th:...), None without one.
            "threshold": (
                threshold_hex(decision.probability)
                if decision.kept and decision.probability_known and decision.probability > 0
                else None
            ),
        }
        out.write(json.dumps(record) + "\n")
    return len(traces)
