"""The C walk (policies._wire) against the protobuf parses it stands in for.

A fact it gives must be the fact the parses give, on any request; bytes the parses reject (or
read in an unusual way) it must leave to them (None).
"""

from __future__ import annotations

import re

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from policies import TraceView, flatten
from policies import trace as trace_module
from policies.flatten import SingleTrace, length_delimited, single_trace
from policies.hashing import python_fnv1a_64
from policies.trace import StringValueProbe, encoded_pattern
from tests.policies.test_properties import MUTATIONS, STRINGS, TRACES, mutated, rich_requests

wire = pytest.importorskip("policies._wire", reason="built without a C compiler")

PROBES = [StringValueProbe(key, ["vip", "payments", "v"]) for key in ("user.tier", "k", "")]
# Every probe's entries, as a walk looks for them all at once.
ENTRIES = tuple(entry for probe in PROBES for entry in probe._listed)


def parsed_facts(request: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, ...]:
    """The facts as the parses give them (the walk switched off)."""
    with monkeypatch.context() as patch:
        patch.setattr(trace_module, "walk_facts", None)
        patch.setattr(trace_module, "walk_entries", None)
        view = TraceView.from_request(b"\x01" * 16, request)
        mask = sum(1 << code for code in view._set_codes())
        return (
            view.span_count,
            *view.time_bounds(),
            mask,
            view._code_count,
            len(view.trace_states),
            view.has_root,
            view.orphan_span_count,
            found_bits(request, ENTRIES),
        )


def found_bits(request: bytes, entries: tuple[bytes, ...]) -> int:
    """Bit i set when `entries[i]` is a resource or span attribute, as the parses find it."""
    view = TraceView.from_request(b"\x01" * 16, request)
    view._raw_attributes()  # decoded: the set of entries answers
    return sum(
        1 << i for i, entry in enumerate(entries) if view.has_attribute_entry(frozenset({entry}))
    )


def entries_found(request: bytes, probe: StringValueProbe) -> bool:
    view = TraceView.from_request(b"\x01" * 16, request)
    view._raw_attributes()  # decoded: the set of entries answers
    return view.has_attribute_entry(probe._entries)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(TRACES)
def test_the_walk_gives_the_facts_the_parses_give(
    trace: tuple[bytes, list[ResourceSpans]],
) -> None:
    trace_id, batches = trace
    request = ExportTraceServiceRequest(resource_spans=batches).SerializeToString()
    with pytest.MonkeyPatch.context() as monkeypatch:
        expected = parsed_facts(request, monkeypatch)
    assert wire.trace_facts(request, ENTRIES) == expected
    for probe in PROBES:
        assert wire.has_attribute_entry(request, probe._listed) == entries_found(request, probe)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(TRACES, st.lists(MUTATIONS, min_size=1, max_size=3))
def test_broken_bytes_are_left_to_the_parser_or_read_as_it_reads_them(
    trace: tuple[bytes, list[ResourceSpans]], mutations: list[tuple[int, int, bytes]]
) -> None:
    trace_id, batches = trace
    request = mutated(
        ExportTraceServiceRequest(resource_spans=batches).SerializeToString(), mutations
    )
    facts = wire.trace_facts(request, ENTRIES)
    if facts is None:
        return  # left to the parser, which reads it or raises DecodeError
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert parsed_facts(request, monkeypatch) == facts  # the parser reads it, the same
    for probe in PROBES:
        assert wire.has_attribute_entry(request, probe._listed) == entries_found(request, probe)


@st.composite
def family_trees(draw: st.DrawFn) -> bytes:
    """A request whose spans name each other as parents, or IDs not in the trace; few spans or
    many, IDs of 8 bytes or (rarely) of other lengths."""
    length = draw(st.sampled_from([8, 8, 8, 4, 16]))
    ids = draw(st.lists(st.binary(min_size=length, max_size=length), min_size=1, max_size=40))
    spans = []
    for span_id in ids:
        parent = draw(
            st.one_of(st.just(b""), st.sampled_from(ids), st.binary(min_size=1, max_size=9))
        )
        spans.append(Span(span_id=span_id, parent_span_id=parent, start_time_unix_nano=1))
    batch = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    return ExportTraceServiceRequest(resource_spans=[batch]).SerializeToString()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(family_trees())
def test_the_walk_counts_the_orphans_the_parses_count(request: bytes) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        expected = parsed_facts(request, monkeypatch)
    assert wire.trace_facts(request, ENTRIES) == expected


def _request_of(span: bytes) -> bytes:
    """A request holding one span given as its encoded fields."""
    return length_delimited(1, length_delimited(2, length_delimited(2, span)))


def test_unusual_shapes_are_left_to_the_parser() -> None:
    span = Span(span_id=b"\x01" * 8, start_time_unix_nano=5, end_time_unix_nano=9)
    span.status.code = 2
    batch = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    request = ExportTraceServiceRequest(resource_spans=[batch]).SerializeToString()
    assert wire.trace_facts(request) == (1, 5, 9, True, 0b100, 1, 0, True, 0, 0)
    unusual = {
        "a status code outside the enum": request.replace(b"\x18\x02", b"\x18\x05"),
        "a start time as a varint": _request_of(b"\x12\x08" + b"\x01" * 8 + b"\x38\x05"),
        "a truncated request": request[:-1],
    }
    for what, data in unusual.items():
        assert wire.trace_facts(data) is None, what
    # A tracestate that is not ASCII: the parser checks its UTF-8, not the walk.
    span.trace_state = "é=1"
    batch = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    odd = ExportTraceServiceRequest(resource_spans=[batch]).SerializeToString()
    assert wire.trace_facts(odd) is None
    view = TraceView.from_request(b"\x01" * 16, odd)
    assert view.trace_states == ("é=1",) and view.has_error and view.span_count == 1


@given(st.binary(max_size=40), st.integers(0, 2**64 - 1))
def test_the_hash_is_the_python_hash(data: bytes, seed: int) -> None:
    assert wire.fnv1a_64(data, seed) == python_fnv1a_64(data, seed)
    assert wire.fnv1a_64(data) == python_fnv1a_64(data)


@given(st.binary(max_size=200), st.lists(STRINGS.map(str.encode), max_size=3))
def test_the_literal_search_is_the_regex_search(data: bytes, needles: list[bytes]) -> None:
    needles = [n for n in needles if n]  # an empty alternative matches anywhere: not a probe
    pattern = encoded_pattern(needles) if needles else re.compile(b"(?!)")
    assert wire.contains_any(data, tuple(needles)) == (pattern.search(data) is not None)


def test_wrong_argument_types_raise_type_errors() -> None:
    for call in (
        lambda: wire.has_attribute_entry(b"", [b"x"]),
        lambda: wire.has_attribute_entry(b"", (1,)),
        lambda: wire.contains_any(b"", [b"x"]),
        lambda: wire.fnv1a_64(b"", -1),
    ):
        with pytest.raises((TypeError, OverflowError)):
            call()


def parsed_single_trace(request: bytes) -> SingleTrace | None:
    """single_trace as the parses read it (the walk switched off)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flatten, "c_walk", None)
        return single_trace(request)


ONE_TRACE_ID = st.sampled_from([b"\x07" * 16, bytes(16), b"\x07" * 15, b""])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(TRACES, ONE_TRACE_ID, st.lists(MUTATIONS, max_size=2))
def test_the_walk_reads_a_single_trace_as_the_parses_do(
    trace: tuple[bytes, list[ResourceSpans]],
    trace_id: bytes,
    mutations: list[tuple[int, int, bytes]],
) -> None:
    _, batches = trace
    request = ExportTraceServiceRequest(resource_spans=batches)
    spans = [s for b in request.resource_spans for sc in b.scope_spans for s in sc.spans]
    for span in spans[1:] if spans and trace_id == b"" else spans:
        span.trace_id = trace_id  # one ID for all, or for all but the first
    data = mutated(request.SerializeToString(), mutations)
    found = wire.single_trace(data)
    if found is not None:
        expected = parsed_single_trace(data)
        assert (SingleTrace(*found) if found else None) == expected
    assert single_trace(data) == parsed_single_trace(data)
    # The same answer from the pass that checks every byte, where it vouches for them.
    checked = wire.checked_single_trace(data)
    if not mutations:
        assert checked is not None
    if checked is not None:
        assert (SingleTrace(*checked) if checked else None) == parsed_single_trace(data)
        ExportTraceServiceRequest.FromString(data)  # vouched: the parser reads it


def test_a_request_that_is_not_bytes_is_left_to_the_parser() -> None:
    span = Span(trace_id=b"\x07" * 16, span_id=b"\x01" * 8, start_time_unix_nano=5)
    batch = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    request = ExportTraceServiceRequest(resource_spans=[batch]).SerializeToString()
    for other in (bytearray(request), memoryview(request)):
        assert wire.trace_facts(other) is None
        assert wire.single_trace(other) is None
        assert wire.has_attribute_entry(other, (b"x",)) is None
        assert wire.contains_any(other, (b"\x01" * 8,))
        view = TraceView.from_request(b"\x07" * 16, other)  # type: ignore[arg-type]
        assert view.span_count == 1 and view.has_root and view.start_unix_nano == 5
    assert single_trace(bytearray(request)) == (b"\x07" * 16, 1, [])  # type: ignore[arg-type]


# As MUTATIONS, and bytes that break UTF-8 (a lone continuation byte, an overlong or surrogate
# lead, a byte that never occurs) written over one byte.
UTF8_BREAKERS = st.tuples(
    st.integers(0, 10_000),
    st.just(1),
    st.sampled_from([b"\x80", b"\xc0", b"\xe0", b"\xed", b"\xff"]),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(rich_requests(), st.lists(st.one_of(MUTATIONS, UTF8_BREAKERS), max_size=3))
def test_the_check_vouches_only_for_bytes_the_parser_reads(
    request: ExportTraceServiceRequest, mutations: list[tuple[int, int, bytes]]
) -> None:
    data = mutated(request.SerializeToString(), mutations)
    count = wire.check_request(data)
    assert (wire.checked_single_trace(data) is None) == (count is None)  # the same check
    if not mutations:
        assert count == flatten.request_span_count(data)  # the plain shape: vouched
    if count is None:
        return  # left to the parser, which reads it or raises DecodeError
    assert count == flatten.request_span_count(data)
    ExportTraceServiceRequest.FromString(data)  # raises if the check was wrong


@pytest.mark.parametrize(
    "odd",
    [
        b"\xc3\xa9",
        b"\xe2\x82\xac",
        b"\xf0\x9f\x98\x80",
        b"\x80",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xff",
    ],
)
def test_the_check_reads_utf8_at_every_place_in_a_name(odd: bytes) -> None:
    # Valid and broken sequences at each place of names of 0-24 ASCII bytes (the check reads
    # ASCII eight bytes at a time): it vouches exactly when the parser reads the name.
    for length in range(25):
        for at in range(length + 1):
            name = b"n" * at + odd + b"n" * (length - at)
            data = _request_of(length_delimited(5, name))
            try:
                ExportTraceServiceRequest.FromString(data)
                parses = True
            except DecodeError:
                parses = False
            assert (wire.check_request(data) == 1) == parses, (name, parses)


def test_the_check_leaves_unusual_shapes_to_the_parser() -> None:
    span = Span(span_id=b"\x01" * 8, name="n", dropped_attributes_count=3)
    request = _request_of(span.SerializeToString())
    assert wire.check_request(request) == 1
    deep = AnyValue(string_value="x")
    for _ in range(40):
        deep = AnyValue(array_value=ArrayValue(values=[deep]))
    unusual = {
        "a length not in its shortest form": _request_of(b"\x2a\x81\x00n"),
        "a varint not in its shortest form": _request_of(b"\x50\x83\x00"),
        "a known field with another wire type": _request_of(b"\x2d\x00\x00\x00\x00"),
        "an unknown group": _request_of(b"\xfb\x01\xfc\x01"),
        "a name that is not UTF-8": _request_of(b"\x2a\x01\xff"),
        "values nested deeper than the check reads": _request_of(
            Span(attributes=[KeyValue(key="k", value=deep)]).SerializeToString()
        ),
        "a truncated request": request[:-1],
    }
    for what, data in unusual.items():
        assert wire.check_request(data) is None, what
    assert wire.check_request(bytearray(request)) is None  # type: ignore[arg-type]
    # What the parser reads of them is its own affair; what it rejects raises.
    with pytest.raises(DecodeError):
        flatten.checked_span_count(unusual["a name that is not UTF-8"])
    assert flatten.checked_span_count(unusual["an unknown group"]) == 1


def _tiered(tier: str) -> bytes:
    span = Span(span_id=b"\x01" * 8, start_time_unix_nano=5, end_time_unix_nano=9)
    span.attributes.add(key="user.tier", value=AnyValue(string_value=tier))
    batch = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    return ExportTraceServiceRequest(resource_spans=[batch]).SerializeToString()


def test_the_walk_answers_the_probes_and_a_probe_it_did_not_look_for_asks_the_trace() -> None:
    gold = StringValueProbe("user.tier", ["gold"])
    view = TraceView.from_request(b"\x01" * 16, _tiered("platinum"))
    assert view.span_count == 1  # walked, looking for the entries of every probe so far
    assert gold._bits and not gold.matches(view)
    # A probe made after the walk (a reload): its entry was not looked for; the trace answers.
    platinum = StringValueProbe("user.tier", ["platinum"])
    assert platinum._reach > view._looked_for
    assert platinum.matches(view)
    assert platinum.matches(TraceView.from_request(b"\x01" * 16, _tiered("platinum")))
    assert not platinum.matches(TraceView.from_request(b"\x01" * 16, _tiered("gold")))


def test_a_probe_past_the_walks_64_entries_asks_the_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace_module, "_WALKED_ENTRIES", tuple(b"%d" % i for i in range(64)))
    copper = StringValueProbe("user.tier", ["copper"])
    assert copper._bits == 0
    assert copper.matches(TraceView.from_request(b"\x01" * 16, _tiered("copper")))
    assert not copper.matches(TraceView.from_request(b"\x01" * 16, _tiered("tin")))
    with pytest.raises(ValueError):
        wire.trace_facts(_tiered("tin"), (b"x",) * 65)
