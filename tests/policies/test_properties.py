"""Property tests: arbitrary traces never break the view or the engine."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from policies import TraceView, Verdict, any_value_to_python, build_engine
from policies.builtin.latency import Latency, LatencyConfig
from policies.flatten import request_batches
from policies.trace import StringValueProbe
from tests.policies.traces import any_value

# Few keys and values so that collisions (and look-alike bytes) actually happen.
KEYS = st.sampled_from(["", "k", "service.name", "user.tier", "x" * 130, "\n\x01k"])
STRINGS = st.sampled_from(["", "v", "vip", "payments", "k", "\n\x01k\x12\x03\n\x01v"])
SCALARS = st.one_of(STRINGS, st.integers(-3, 3), st.booleans(), st.floats(allow_nan=False))
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=2), st.dictionaries(STRINGS, SCALARS, max_size=2)
)
ATTRIBUTES = st.lists(st.tuples(KEYS, VALUES), max_size=4)


def key_values(pairs: list[tuple[str, object]]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in pairs]


@st.composite
def spans(draw: st.DrawFn) -> Span:
    start = draw(st.integers(0, 2**63))
    span = Span(
        trace_id=draw(st.binary(min_size=16, max_size=16)),
        span_id=draw(st.binary(min_size=8, max_size=8)),
        parent_span_id=draw(st.sampled_from([b"", b"\x00" * 7 + b"\x01"])),
        trace_state=draw(st.sampled_from(["", "a=1"])),
        start_time_unix_nano=start,
        end_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        attributes=key_values(draw(ATTRIBUTES)),
    )
    span.status.code = draw(st.sampled_from([0, 1, 2]))
    if draw(st.booleans()):
        span.events.add(name="e", attributes=key_values(draw(ATTRIBUTES)))
    return span


@st.composite
def resource_spans(draw: st.DrawFn) -> ResourceSpans:
    scopes = [
        ScopeSpans(spans=draw(st.lists(spans(), max_size=3)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    resource = Resource(attributes=key_values(draw(ATTRIBUTES)))
    return ResourceSpans(resource=resource, scope_spans=scopes)


TRACES = st.tuples(st.binary(min_size=16, max_size=16), st.lists(resource_spans(), max_size=3))


# Every kind of field the check reads: strings beyond ASCII, events, links, nested values,
# the scope, schema URLs, flags and dropped counts.
TEXT = st.sampled_from(["", "v", "é", "日本", "😀", "\x00", "x" * 200])


@st.composite
def nested_values(draw: st.DrawFn, depth: int = 0) -> AnyValue:
    kinds = ["string", "bool", "int", "double", "bytes"] + (
        ["array", "kvlist"] if depth < 3 else []
    )
    kind = draw(st.sampled_from(kinds))
    value = AnyValue()
    if kind == "string":
        value.string_value = draw(TEXT)
    elif kind == "bool":
        value.bool_value = draw(st.booleans())
    elif kind == "int":
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "double":
        value.double_value = draw(st.floats())
    elif kind == "bytes":
        value.bytes_value = draw(st.binary(max_size=4))
    elif kind == "array":
        value.array_value.values.extend(draw(st.lists(nested_values(depth + 1), max_size=2)))
    else:
        for _ in range(draw(st.integers(0, 2))):
            value.kvlist_value.values.add(key=draw(TEXT), value=draw(nested_values(depth + 1)))
    return value


RICH_ATTRIBUTES = st.lists(
    st.builds(lambda k, v: KeyValue(key=k, value=v), TEXT, nested_values()), max_size=3
)


@st.composite
def rich_spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(st.binary(min_size=16, max_size=16)),
        span_id=draw(st.binary(min_size=8, max_size=8)),
        name=draw(TEXT),
        trace_state=draw(TEXT),
        kind=draw(st.integers(0, 5)),
        flags=draw(st.integers(0, 2**32 - 1)),
        start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        end_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        attributes=draw(RICH_ATTRIBUTES),
        dropped_attributes_count=draw(st.integers(0, 2**32 - 1)),
    )
    for _ in range(draw(st.integers(0, 2))):
        span.events.add(name=draw(TEXT), time_unix_nano=7, attributes=draw(RICH_ATTRIBUTES))
    for _ in range(draw(st.integers(0, 1))):
        span.links.add(trace_id=b"\x02" * 16, trace_state=draw(TEXT))
    span.status.code = draw(st.integers(0, 2))
    span.status.message = draw(TEXT)
    return span


@st.composite
def rich_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        batch = request.resource_spans.add(schema_url=draw(TEXT))
        batch.resource.attributes.extend(draw(RICH_ATTRIBUTES))
        for _ in range(draw(st.integers(0, 2))):
            scope = batch.scope_spans.add(schema_url=draw(TEXT))
            scope.scope.name = draw(TEXT)
            scope.spans.extend(draw(st.lists(rich_spans(), max_size=3)))
    return request


# Where to cut, how many bytes, and what to put in their place.
MUTATIONS = st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.binary(max_size=3))


def mutated(data: bytes, mutations: list[tuple[int, int, bytes]]) -> bytes:
    """`data` with each mutation's bytes cut out and others put in their place."""
    out = bytearray(data)
    for at, cut, insert in mutations:
        at = at % (len(out) + 1)
        out[at : at + cut] = insert
    return bytes(out)


ENGINE = build_engine(
    [
        {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
        {"name": "slow", "type": "latency", "threshold_ms": 2000, "upper_threshold_ms": 90000},
        {
            "name": "critical",
            "type": "string_attribute",
            "key": "service.name",
            "values": ["payments"],
        },
        {
            "name": "not-vip",
            "type": "string_attribute",
            "key": "user.tier",
            "values": ["v.p"],
            "enabled_regex_matching": True,
            "invert_match": True,
            "sample_percentage": 50,
        },
        {"name": "rand", "type": "probabilistic", "sampling_percentage": 20},
    ]
)


def naive_values(batches: list[ResourceSpans], key: str) -> list[object]:
    found = [
        any_value_to_python(a.value) for b in batches for a in b.resource.attributes if a.key == key
    ]
    for batch in batches:
        for scope in batch.scope_spans:
            for span in scope.spans:
                found += [any_value_to_python(a.value) for a in span.attributes if a.key == key]
    return found


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(TRACES)
def test_decide_is_deterministic_and_well_formed(trace: tuple[bytes, list[ResourceSpans]]) -> None:
    trace_id, batches = trace
    first = ENGINE.decide(TraceView.from_resource_spans(trace_id, batches), 0.0)
    again = ENGINE.decide(TraceView.from_resource_spans(trace_id, batches), 1e9)
    assert first == again
    assert first.kept == (first.policy is not None)
    assert (0 < first.probability <= 1) if first.kept else first.probability == 0.0


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(TRACES, KEYS, STRINGS)
def test_view_agrees_with_a_naive_walk(
    trace: tuple[bytes, list[ResourceSpans]], key: str, wanted: str
) -> None:
    trace_id, batches = trace
    view = TraceView.from_resource_spans(trace_id, batches)
    all_spans = [s for b in batches for sc in b.scope_spans for s in sc.spans]
    assert view.span_count == len(all_spans)
    assert view.start_unix_nano == min((s.start_time_unix_nano for s in all_spans), default=0)
    assert view.end_unix_nano == max((s.end_time_unix_nano for s in all_spans), default=0)
    assert view.status_codes == {s.status.code for s in all_spans}
    expected = naive_values(batches, key)
    assert list(view.attribute_values(key)) == expected
    probe = StringValueProbe(key, [wanted])
    assert probe.matches(view) == (
        bool(wanted) and wanted in [v for v in expected if isinstance(v, str)]
    )


def go_latency(all_spans: list[Span], lower: int, upper: int) -> bool:
    """latency.go, line by line, with Go's int64 time arithmetic."""

    def signed(ts: int) -> int:
        return ts - (1 << 64) if ts >= 1 << 63 else ts

    low = high = 0
    for span in all_spans:
        if low == 0 or span.start_time_unix_nano < low:
            low = span.start_time_unix_nano
        if high == 0 or span.end_time_unix_nano > high:
            high = span.end_time_unix_nano
        delta = max(-(1 << 63), min((1 << 63) - 1, signed(high) - signed(low)))
        ms = abs(delta) // 1_000_000 * (1 if delta >= 0 else -1)  # Milliseconds() truncates
        if (ms >= lower) if upper == 0 else (lower < ms <= upper):
            return True
    return False


LATENCIES = [
    Latency("l", LatencyConfig(threshold_ms=t, upper_threshold_ms=u))
    for t, u in [(0, 0), (1000, 0), (1000, 5000), (0, 1)]
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(TRACES)
def test_facts_and_latency_agree_with_a_naive_walk(
    trace: tuple[bytes, list[ResourceSpans]],
) -> None:
    trace_id, batches = trace
    view = TraceView.from_resource_spans(trace_id, batches)
    all_spans = [s for b in batches for sc in b.scope_spans for s in sc.spans]
    assert view.span_times() == tuple(
        (s.start_time_unix_nano, s.end_time_unix_nano) for s in all_spans
    )
    assert view.trace_states == tuple(s.trace_state for s in all_spans if s.trace_state)
    for code in (0, 1, 2):
        assert view.has_status(code) == any(s.status.code == code for s in all_spans)
    services = {
        a.value.string_value
        for b in batches
        for a in b.resource.attributes
        if a.key == "service.name" and a.value.WhichOneof("value") == "string_value"
    }
    assert view.services == services - {""}
    for policy in LATENCIES:
        config = policy.config
        assert isinstance(config, LatencyConfig)
        expected = go_latency(all_spans, config.threshold_ms, config.upper_threshold_ms)
        assert (policy.evaluate(view, 0.0) is Verdict.SAMPLED) == expected


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(TRACES)
def test_views_of_the_encoded_batches_and_request_agree_with_one_of_the_objects(
    trace: tuple[bytes, list[ResourceSpans]],
) -> None:
    trace_id, batches = trace
    request = ExportTraceServiceRequest(resource_spans=batches).SerializeToString()
    encoded = request_batches(request)
    from_bytes = TraceView.from_batches(trace_id, encoded)
    from_request = TraceView.from_request(trace_id, request)
    from_objects = TraceView.from_resource_spans(trace_id, batches)
    assert ENGINE.decide(from_bytes, 0.0) == ENGINE.decide(from_objects, 0.0)
    assert ENGINE.decide(from_request, 0.0) == ENGINE.decide(from_objects, 0.0)
    assert from_request.byte_size == from_bytes.byte_size == from_objects.byte_size
    all_spans = [s for b in batches for sc in b.scope_spans for s in sc.spans]
    ids = {s.span_id for s in all_spans}
    for view in (from_bytes, from_request, from_objects):
        assert view.span_count == len(all_spans)
        assert view.has_root == any(not s.parent_span_id for s in all_spans)
        assert view.has_root == (view.root_span is not None)
        assert view.orphan_span_count == sum(
            1 for s in all_spans if s.parent_span_id and s.parent_span_id not in ids
        )
    assert from_bytes.resource_spans == from_request.resource_spans == tuple(batches)
