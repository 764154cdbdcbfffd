"""Build OTLP protobuf traces for policy tests, without an SDK or a broker."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from policies import TraceView

__all__ = [
    "BASE_NS",
    "ERROR",
    "OK",
    "TRACE_ID",
    "UNSET",
    "any_value",
    "batch",
    "make_span",
    "shop_trace",
    "view",
]

TRACE_ID = bytes(range(1, 17))
BASE_NS = 1_700_000_000_000_000_000
UNSET, OK, ERROR = Status.STATUS_CODE_UNSET, Status.STATUS_CODE_OK, Status.STATUS_CODE_ERROR

_span_ids = itertools.count(1)


def any_value(value: object) -> AnyValue:
    """Encode a Python value as an OTLP AnyValue (bool before int: bool is an int)."""
    out = AnyValue()
    if isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list | tuple):
        out.array_value.values.extend(any_value(v) for v in value)
    elif isinstance(value, dict):
        out.kvlist_value.values.extend(
            KeyValue(key=k, value=any_value(v)) for k, v in value.items()
        )
    elif value is not None:
        raise TypeError(f"cannot encode {value!r}")
    return out


def _attributes(attributes: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def make_span(
    *,
    start_ms: float = 0,
    duration_ms: float = 1,
    status: int = UNSET,
    attributes: Mapping[str, object] | None = None,
    parent: bytes = b"\x00\x00\x00\x00\x00\x00\x00\x01",
    trace_state: str = "",
    trace_id: bytes = TRACE_ID,
    name: str = "op",
) -> Span:
    """One span starting ``start_ms`` after BASE_NS; ``parent=b""`` makes it a root."""
    start = BASE_NS + round(start_ms * 1_000_000)
    span = Span(
        trace_id=trace_id,
        span_id=next(_span_ids).to_bytes(8, "big"),
        parent_span_id=parent,
        name=name,
        start_time_unix_nano=start,
        end_time_unix_nano=start + round(duration_ms * 1_000_000),
        trace_state=trace_state,
        attributes=_attributes(attributes or {}),
    )
    if status != UNSET:
        span.status.code = status  # type: ignore[assignment]
    return span


def batch(
    spans: Sequence[Span],
    resource: Mapping[str, object] | None = None,
    scopes: int = 1,
) -> ResourceSpans:
    """A ResourceSpans of ``spans`` spread round-robin over ``scopes`` ScopeSpans."""
    groups = [ScopeSpans(spans=spans[i::scopes]) for i in range(scopes)]
    resource = {"service.name": "checkout"} if resource is None else resource
    return ResourceSpans(resource=Resource(attributes=_attributes(resource)), scope_spans=groups)


def view(*items: Span | ResourceSpans, trace_id: bytes = TRACE_ID) -> TraceView:
    """A TraceView of the given ResourceSpans, loose spans going into one default batch."""
    loose = [item for item in items if isinstance(item, Span)]
    batches = [item for item in items if isinstance(item, ResourceSpans)]
    if loose:
        batches.append(batch(loose))
    return TraceView.from_resource_spans(trace_id, batches)


def shop_trace(
    trace_id: bytes, *, error: bool = False, slow: bool = False, tier: str = "free"
) -> ResourceSpans:
    """A realistic 10-span trace (~1.4 kB encoded, like the project's benchmark traffic)."""
    spans = [
        make_span(
            trace_id=trace_id,
            parent=b"" if i == 0 else b"\x00\x00\x00\x00\x00\x00\x00\x01",
            name=f"GET /cart/{i}",
            start_ms=i,
            duration_ms=3000 if slow and i == 0 else 5,
            status=ERROR if error and i == 6 else UNSET,
            attributes={"http.request.method": "GET", "http.route": "/cart/{id}"}
            | ({"user.tier": tier} if i == 0 else {}),
        )
        for i in range(10)
    ]
    resource = {
        "service.name": "checkout",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.language": "python",
        "host.name": "web-1",
    }
    out = batch(spans, resource)
    # Parsed from bytes, as the decision timer sees traces coming out of the buffer.
    return ResourceSpans.FromString(out.SerializeToString())
