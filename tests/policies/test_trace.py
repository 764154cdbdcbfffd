"""TraceView: facts computed once from OTLP protobuf, and attribute lookups."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from policies import TraceView, any_value_to_python
from policies.trace import StringValueProbe
from tests.policies.traces import BASE_NS, ERROR, OK, TRACE_ID, any_value, batch, make_span, view


def test_facts_span_resources_and_scopes() -> None:
    first = batch(
        [make_span(start_ms=10, duration_ms=5), make_span(start_ms=0, duration_ms=3)],
        resource={"service.name": "cart"},
        scopes=2,
    )
    second = batch(
        [make_span(start_ms=2, duration_ms=40, status=ERROR), make_span(status=OK)],
        resource={"service.name": "payments"},
    )
    trace = TraceView.from_resource_spans(TRACE_ID, [first, second])
    assert trace.trace_id == TRACE_ID
    assert trace.resource_spans == (first, second)
    assert trace.span_count == 4
    assert trace.start_unix_nano == BASE_NS
    assert trace.end_unix_nano == BASE_NS + 42_000_000
    assert trace.duration_ns == 42_000_000
    assert trace.has_error
    assert trace.status_codes == {ERROR, OK, 0}
    assert trace.services == {"cart", "payments"}
    assert trace.byte_size == first.ByteSize() + second.ByteSize()


def test_empty_trace() -> None:
    trace = TraceView.from_resource_spans(TRACE_ID, [])
    assert trace.span_count == 0
    assert (trace.start_unix_nano, trace.end_unix_nano, trace.duration_ns) == (0, 0, 0)
    assert trace.status_codes == frozenset()
    assert not trace.has_error
    assert trace.root_span is None
    assert trace.trace_state == ""
    assert trace.services == frozenset()
    assert trace.byte_size == 0
    assert trace.attribute_values("service.name") == ()


def test_root_span_and_trace_state() -> None:
    child = make_span(trace_state="")
    root = make_span(parent=b"", trace_state="")
    other = make_span(trace_state="vendor=1")
    trace = view(child, root, other)
    assert trace.root_span is not None
    assert trace.root_span.span_id == root.span_id
    assert trace.trace_state == "vendor=1"
    assert view(child).root_span is None


def test_services_ignore_missing_empty_and_non_string_names() -> None:
    trace = TraceView.from_resource_spans(
        TRACE_ID,
        [
            batch([make_span()], resource={"host.name": "a"}),
            batch([make_span()], resource={"service.name": ""}),
            batch([make_span()], resource={"service.name": 7}),
            batch([make_span()], resource={"service.name": "auth"}),
        ],
    )
    assert trace.services == {"auth"}


def test_attribute_values_from_resources_then_spans_converted() -> None:
    trace = TraceView.from_resource_spans(
        TRACE_ID,
        [
            batch(
                [
                    make_span(attributes={"k": 1}),
                    make_span(attributes={"other": "x"}),
                    make_span(attributes={"k": [1, "a"], "z": 0}),
                ],
                resource={"k": "res"},
            ),
            batch([make_span(attributes={"k": {"a": True}}), make_span(attributes={"k": 2.5})]),
        ],
    )
    assert trace.attribute_values("k") == ("res", 1, (1, "a"), {"a": True}, 2.5)
    assert trace.attribute_values("missing") == ()


def test_attribute_values_are_computed_once_per_key() -> None:
    trace = view(make_span(attributes={"k": "v"}))
    first = trace.attribute_values("k")
    assert trace.attribute_values("k") is first


def test_attribute_lookup_ignores_events_links_and_look_alike_values() -> None:
    span = make_span(attributes={"note": "k", "blob": b"\n\x01k\x12\x03\n\x01v"})
    span.events.add(name="e", attributes=[KeyValue(key="k", value=any_value("v"))])
    span.links.add(trace_id=TRACE_ID, attributes=[KeyValue(key="k", value=any_value("v"))])
    trace = view(span)
    assert trace.attribute_values("k") == ()
    assert not StringValueProbe("k", ["v"]).matches(trace)


def test_attribute_lookup_edge_keys() -> None:
    long_key = "x" * 300  # its length needs a two-byte varint
    trace = view(make_span(attributes={"": "empty-key", long_key: "long", "naïve.ключ": "utf8"}))
    assert trace.attribute_values("") == ("empty-key",)
    assert trace.attribute_values(long_key) == ("long",)
    assert trace.attribute_values("naïve.ключ") == ("utf8",)
    assert StringValueProbe("", ["empty-key"]).matches(trace)  # proto3 encodes no empty key
    assert StringValueProbe(long_key, ["long"]).matches(trace)


def test_string_value_probe() -> None:
    trace = view(
        batch([make_span(attributes={"user.tier": "vip", "n": 5})], resource={"team": "a"})
    )
    assert StringValueProbe("user.tier", ["free", "vip"]).matches(trace)
    assert StringValueProbe("team", ["a"]).matches(trace)
    assert not StringValueProbe("user.tier", ["free"]).matches(trace)
    assert not StringValueProbe("n", ["5"]).matches(trace)
    assert not StringValueProbe("user.tier", [""]).matches(trace)
    assert not StringValueProbe("user.tier", ["vip"]).matches(view(make_span()))


def test_string_value_probe_ignores_values_inside_arrays() -> None:
    trace = view(make_span(attributes={"tags": ["vip"]}))
    assert not StringValueProbe("tags", ["vip"]).matches(trace)


def test_any_value_to_python_scalars_and_empty() -> None:
    assert any_value_to_python(AnyValue()) is None
    assert any_value_to_python(any_value("s")) == "s"
    assert any_value_to_python(any_value(True)) is True
    assert any_value_to_python(any_value(-3)) == -3
    assert any_value_to_python(any_value(0.5)) == 0.5
    assert any_value_to_python(any_value(b"\x00")) == b"\x00"


def test_view_keeps_spans_in_trace_order() -> None:
    spans = [make_span(name=f"s{i}") for i in range(3)]
    trace = view(*spans)
    assert [s.name for s in trace.spans] == ["s0", "s1", "s2"]
    assert all(isinstance(s, Span) for s in trace.spans)


def test_encoded_is_the_batches_back_to_back() -> None:
    first, second = batch([make_span()]), batch([make_span(), make_span()])
    trace = TraceView.from_resource_spans(TRACE_ID, [first, second])
    assert trace.encoded == first.SerializeToString() + second.SerializeToString()
    assert trace.byte_size == len(trace.encoded)


def test_span_times_in_trace_order_and_completeness() -> None:
    trace = view(make_span(start_ms=5, duration_ms=1), make_span(start_ms=0, duration_ms=2))
    assert trace.times_complete
    assert trace.span_times() == (
        (BASE_NS + 5_000_000, BASE_NS + 6_000_000),
        (BASE_NS, BASE_NS + 2_000_000),
    )
    zero = Span(start_time_unix_nano=0, end_time_unix_nano=BASE_NS)
    trace = view(make_span(), zero)
    assert not trace.times_complete
    assert trace.start_unix_nano == 0  # a span without a start counts as 0
    assert trace.span_times()[1] == (0, BASE_NS)
    late = Span(start_time_unix_nano=1 << 63, end_time_unix_nano=(1 << 63) + 1)
    assert not view(late).times_complete  # beyond int64 nanoseconds


def test_trace_states_and_status_lookups() -> None:
    trace = view(
        make_span(trace_state="a=1"), make_span(), make_span(trace_state="b=2", status=ERROR)
    )
    assert trace.trace_states == ("a=1", "b=2")
    assert trace.has_status(ERROR) and trace.has_status(0) and not trace.has_status(OK)
    # An attribute encoding like a status code (int value 2) must not fool the search.
    decoy = view(make_span(attributes={"n": 2}))
    assert not decoy.has_status(ERROR) and decoy.status_codes == {0}
    assert view(make_span(status=OK)).status_codes == {OK}


def test_orphan_spans_are_those_whose_parent_never_arrived() -> None:
    root = make_span(parent=b"")
    child = make_span(parent=root.span_id)
    grandchild = make_span(parent=child.span_id)
    lost = make_span(parent=b"\xff" * 8)
    assert view(root, child, grandchild).orphan_span_count == 0
    assert view(root, child, grandchild, lost).orphan_span_count == 1
    # Without the root, its child is an orphan too; the root itself never is.
    assert view(child, grandchild, lost).orphan_span_count == 2
