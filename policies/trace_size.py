"""The size of a trace as the OTel Collector's ``bytes_limiting`` policy estimates it.

Not the protobuf size (:attr:`TraceView.byte_size`): ``calculateTraceSize`` in
``bytes_limiting.go`` adds fixed costs per resource, scope, span, event and link to the
lengths of their strings and attribute keys and values. Reproduced exactly so a
``bytes_per_second`` budget means the same in Caudal and in a Collector. It walks every
span, event and link (slow in Python), so only ``bytes_limiting`` asks for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from policies.trace import TraceView

__all__ = ["estimate_trace_size"]

_RESOURCE = 4  # dropped_attributes_count
_SCOPE = 4  # dropped_attributes_count, plus name and version lengths
_SPAN = 68  # IDs 16+8+8, times 8+8, kind 4, status code 4, three dropped counts 12
_EVENT = 12  # time 8, dropped_attributes_count 4
_LINK = 28  # IDs 16+8, dropped_attributes_count 4
_FIXED_VALUE = {"int_value": 8, "double_value": 8, "bool_value": 1}


def estimate_trace_size(trace: TraceView) -> int:
    """``calculateTraceSize`` of the trace's spans, in bytes."""
    size = 0
    for batch in trace.resource_spans:
        size += _RESOURCE + _attributes_size(batch.resource.attributes)
        for scope_spans in batch.scope_spans:
            scope = scope_spans.scope
            size += _SCOPE + _utf8(scope.name) + _utf8(scope.version)
            size += _attributes_size(scope.attributes)
            for span in scope_spans.spans:
                size += _SPAN + _utf8(span.name) + _utf8(span.trace_state)
                size += _utf8(span.status.message) + _attributes_size(span.attributes)
                for event in span.events:
                    size += _EVENT + _utf8(event.name) + _attributes_size(event.attributes)
                for link in span.links:
                    size += _LINK + _utf8(link.trace_state) + _attributes_size(link.attributes)
    return size


def _attributes_size(attributes: Iterable[KeyValue]) -> int:
    return sum(_utf8(kv.key) + _value_size(kv.value) for kv in attributes)


def _value_size(value: AnyValue) -> int:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return _utf8(value.string_value)
    if kind == "bytes_value":
        return len(value.bytes_value)
    if kind == "kvlist_value":
        return _attributes_size(value.kvlist_value.values)
    if kind == "array_value":
        return sum(_value_size(v) for v in value.array_value.values)
    return _FIXED_VALUE.get(kind or "", 0)  # an empty value counts 0


def _utf8(text: str) -> int:
    return len(text.encode())
