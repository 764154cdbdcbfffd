"""Hostile and broken input, built byte by byte."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

CASE_HEADER = "test-case"


def span(trace_id: bytes, n: int, *, error: bool = False, size: int = 0) -> Span:
    """Span `n` of a trace (span 0 is the root); `size` bytes of attribute padding."""
    result = Span(
        trace_id=trace_id,
        span_id=(n + 1).to_bytes(8, "big"),
        parent_span_id=b"" if n == 0 else (1).to_bytes(8, "big"),
        name=f"op-{n}",
        start_time_unix_nano=1_700_000_000_000_000_000 + n * 1000,
        end_time_unix_nano=1_700_000_000_000_000_000 + n * 1000 + 500,
    )
    if error:
        result.status.code = Status.STATUS_CODE_ERROR
    if size:
        result.attributes.append(KeyValue(key="pad", value=AnyValue(string_value="p" * size)))
    return result


def request(spans: Iterable[Span], service: str = "svc") -> ExportTraceServiceRequest:
    """One resource holding `spans`."""
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )


def valid(trace_id: bytes, spans: int = 3, **kwargs: object) -> bytes:
    """A whole trace in one message."""
    return request(span(trace_id, n, **kwargs) for n in range(spans)).SerializeToString()  # type: ignore[arg-type]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def deeply_nested(trace_id: bytes, depth: int) -> bytes:
    """A span whose attribute value nests `depth` key-value lists (protobuf allows 100)."""
    value = AnyValue(string_value="x").SerializeToString()
    for _ in range(depth):
        pair = _field(0x0A, b"k") + _field(0x12, value)  # KeyValue {key, value}
        value = _field(0x32, _field(0x0A, pair))  # AnyValue {kvlist_value {values}}
    attribute = _field(0x0A, b"deep") + _field(0x12, value)
    body = span(trace_id, 0).SerializeToString() + _field(0x4A, attribute)  # Span.attributes
    scope = _field(0x12, body)  # ScopeSpans.spans
    return _field(0x0A, _field(0x12, scope))  # request.resource_spans{scope_spans}


def invalid_utf8(trace_id: bytes) -> bytes:
    """A span name that is not UTF-8 (protobuf strings must be)."""
    good = request([span(trace_id, 0)]).SerializeToString()
    return good.replace(b"op-0", b"\xff\xfe\xfd\xfc")


def deep_json(depth: int) -> bytes:
    """OTLP/JSON whose attribute value nests `depth` levels (written out: too deep to encode)."""
    value = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth
    value += '{"stringValue": "x"}' + "}]}}" * depth
    span = f'{{"traceId": "{"ab" * 16}", "spanId": "{"cd" * 8}", "name": "deep", '
    span += f'"attributes": [{{"key": "deep", "value": {value}}}]}}'
    return f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span}]}}]}}]}}'.encode()


def json_trace(trace_id: bytes) -> bytes:
    """A valid one-span trace in OTLP/JSON."""
    doc = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id.hex(),
                                "spanId": "cd" * 8,
                                "name": "json",
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000000000500",
                            }
                        ]
                    }
                ]
            }
        ]
    }
    return json.dumps(doc).encode()


def garbage(rng: random.Random) -> bytes:
    """Bytes that do not parse as OTLP (checked)."""
    while True:
        value = b"\xff" + rng.randbytes(rng.randint(8, 300))
        try:
            ExportTraceServiceRequest.FromString(value)
        except Exception:
            return value
