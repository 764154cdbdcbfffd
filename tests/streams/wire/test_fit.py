"""Records that fit: large traces are cut into parts under the message size limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from streams.wire.origin import origin
from streams.wire.otlp import split_request
from streams.wire.records import fit_fragments


def big_request(sizes: list[list[int]]) -> ExportTraceServiceRequest:
    """One resource per entry of `sizes`, one span per size (bytes of attribute)."""
    request = ExportTraceServiceRequest()
    n = 0
    for r, spans in enumerate(sizes):
        resource = Resource(attributes=[KeyValue(key="r", value=AnyValue(string_value=str(r)))])
        rs = request.resource_spans.add(resource=resource)
        ss = rs.scope_spans.add()
        for size in spans:
            n += 1
            span = ss.spans.add(trace_id=b"t" * 16, span_id=n.to_bytes(8, "big"))
            span.attributes.add(key="pad", value=AnyValue(string_value="p" * size))
    return request


def span_ids(request: ExportTraceServiceRequest) -> list[bytes]:
    return [s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3000), min_size=1, max_size=20), min_size=1, max_size=5))
def test_parts_fit_and_keep_every_span_in_order(sizes: list[list[int]]) -> None:
    request = big_request(sizes)
    parts, too_large = split_request(request, budget=4096)
    assert too_large is None
    assert all(len(value) <= 4096 for value, _ in parts)
    rebuilt = ExportTraceServiceRequest.FromString(b"".join(value for value, _ in parts))
    assert span_ids(rebuilt) == span_ids(request)
    assert [n for _, n in parts] == [
        len(span_ids(ExportTraceServiceRequest.FromString(v))) for v, _ in parts
    ]
    # Each span keeps its resource.
    for rs in rebuilt.resource_spans:
        assert rs.resource.attributes[0].key == "r"


def test_a_span_too_large_for_any_part_is_set_apart() -> None:
    request = big_request([[100, 10_000, 100]])
    parts, too_large = split_request(request, budget=4096)
    assert too_large is not None and len(span_ids(too_large)) == 1
    assert sum(n for _, n in parts) == 2


def test_fragments_of_one_input_record_get_part_numbers() -> None:
    request = big_request([[3000] * 10])
    fragments, too_large = fit_fragments(list(request.resource_spans), origin(2, 7), 8192)
    assert too_large is None and len(fragments) == 5  # two spans a part
    assert [where for _, where in fragments] == [origin(2, 7, part) for part in range(5)]
    small, _ = fit_fragments(list(big_request([[10]]).resource_spans), origin(2, 8), 8192)
    assert [where for _, where in small] == [origin(2, 8)]
