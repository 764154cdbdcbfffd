"""OTLP codecs: split by trace ID, fragment packing, OTLP/JSON."""

from __future__ import annotations

import json
import random

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from policies import flatten
from policies.flatten import single_trace
from policies.tracestate import compose
from streams.devtools.generate import build_trace
from streams.wire import otlp
from streams.wire.otlp import (
    BadInput,
    annotate_kept,
    decode_request,
    fragments_of,
    pack_index,
    request_to_json,
    split_by_trace,
    unpack_index,
)
from tests.policies.test_properties import MUTATIONS, mutated, rich_requests


def _spans(request: ExportTraceServiceRequest) -> list[tuple[str, bytes, bytes]]:
    return sorted(
        (rs.resource.attributes[0].value.string_value, span.trace_id, span.span_id)
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    )


def _mixed_request(seed: int, traces: int) -> ExportTraceServiceRequest:
    """Spans of several traces interleaved inside shared resource blocks."""
    rng = random.Random(seed)
    merged: dict[str, ResourceSpans] = {}
    for _ in range(traces):
        _, blocks = build_trace(rng, "ordinary", "t", 1, spans=rng.randint(1, 6))
        for rs in blocks:
            service = rs.resource.attributes[0].value.string_value
            target = merged.setdefault(service, ResourceSpans(resource=rs.resource))
            if not target.scope_spans:
                target.scope_spans.add(scope=rs.scope_spans[0].scope)
            target.scope_spans[0].spans.extend(rs.scope_spans[0].spans)
    return ExportTraceServiceRequest(resource_spans=list(merged.values()))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8))
def test_split_keeps_every_span_with_its_resource(seed: int, traces: int) -> None:
    request = _mixed_request(seed, traces)
    groups, invalid = split_by_trace(request)
    assert invalid is None
    value, index = pack_index(list(fragments_of(groups)))
    rebuilt = ExportTraceServiceRequest.FromString(value)
    assert _spans(rebuilt) == _spans(request)
    for trace_id, fragment in unpack_index(value, index):
        part = ExportTraceServiceRequest.FromString(fragment)
        assert {
            s.trace_id for rs in part.resource_spans for ss in rs.scope_spans for s in ss.spans
        } == {trace_id}


def test_invalid_trace_ids_are_separated() -> None:
    request = _mixed_request(1, 2)
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b"short"
    groups, invalid = split_by_trace(request)
    assert invalid is not None
    assert [
        s.trace_id for rs in invalid.resource_spans for ss in rs.scope_spans for s in ss.spans
    ] == [b"short"]
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    kept = sum(
        len(ss.spans) for blocks in groups.values() for rs in blocks for ss in rs.scope_spans
    )
    assert kept == total - 1


@given(st.binary(max_size=200))
def test_decoder_never_raises_anything_but_bad_input(data: bytes) -> None:
    try:
        split_by_trace(decode_request(data))
    except BadInput as exc:
        assert exc.reason in {"empty", "invalid_protobuf"}


def test_json_round_trip_uses_hex_ids() -> None:
    request = _mixed_request(3, 2)
    text = request_to_json(request)
    span = json.loads(text)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span["traceId"]) == 32 and int(span["traceId"], 16) >= 0
    back = decode_request(text.encode(), "otlp_json")
    assert _spans(back) == _spans(request)


def test_bad_json_and_bad_index() -> None:
    with pytest.raises(BadInput) as exc:
        decode_request(b"{not json", "otlp_json")
    assert exc.value.reason == "invalid_json"
    with pytest.raises(BadInput):
        list(unpack_index(b"abc", b"x" * 7))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_single_trace_agrees_with_the_split(seed: int, traces: int) -> None:
    request = _mixed_request(seed, traces)
    groups, invalid = split_by_trace(request)
    spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    expected = (next(iter(groups)), spans) if len(groups) == 1 and invalid is None else None
    single = single_trace(request.SerializeToString())
    assert (single and (single.trace_id, single.spans)) == expected


def test_single_trace_refuses_missing_zero_and_mixed_trace_ids() -> None:
    _, blocks = build_trace(random.Random(3), "ordinary", "t", 1, spans=3)
    request = ExportTraceServiceRequest(resource_spans=blocks)
    assert single_trace(request.SerializeToString()) is not None
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = b""
    assert single_trace(request.SerializeToString()) is None
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    assert single_trace(request.SerializeToString()) is None
    assert single_trace(b"\xff\xff not protobuf") is None
    assert single_trace(b"") is None  # no spans


@given(seed=st.integers(0, 10_000), traces=st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_annotating_kept_bytes_adds_two_attributes_and_a_threshold_and_changes_nothing_else(
    seed: int, traces: int
) -> None:
    request = _mixed_request(seed, traces)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.events.add(name="retry").attributes.add(key="attempt").value.int_value = 2
    span.links.add(trace_id=b"l" * 16, span_id=b"s" * 8)
    expected = ExportTraceServiceRequest()
    expected.CopyFrom(request)
    for rs in expected.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.attributes.add(key="sampling.policy").value.string_value = "slow"
                s.attributes.add(key="sampling.probability").value.double_value = 0.25
                s.trace_state = compose(s.trace_state, 0.25)  # ot=th:c first
    annotated = annotate_kept(request.SerializeToString(), "slow", 0.25)
    assert ExportTraceServiceRequest.FromString(annotated) == expected


@given(seed=st.integers(0, 10_000), traces=st.integers(1, 4), known=st.booleans())
@settings(max_examples=40, deadline=None)
def test_spans_without_a_tracestate_are_annotated_alike_without_being_parsed(
    seed: int, traces: int, known: bool
) -> None:
    request = _mixed_request(seed, traces)
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.trace_state = ""
    request.resource_spans[0].scope_spans[0].spans[0].events.add(name="retry")
    encoded = request.SerializeToString()
    parsed = annotate_kept(encoded, "vip-users", 0.5, known)
    appended = annotate_kept(encoded, "vip-users", 0.5, known, no_trace_state=True)
    result = ExportTraceServiceRequest.FromString(appended)
    assert result == ExportTraceServiceRequest.FromString(parsed)
    states = {
        s.trace_state for rs in result.resource_spans for ss in rs.scope_spans for s in ss.spans
    }
    assert states == ({compose("", 0.5)} if known else {""})


@pytest.mark.skipif(flatten.c_walk is None, reason="built without a C compiler")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rich_requests(), st.lists(MUTATIONS, max_size=2), st.booleans())
def test_annotating_in_c_gives_what_annotating_the_parsed_spans_gives(
    request: ExportTraceServiceRequest, mutations: list[tuple[int, int, bytes]], known: bool
) -> None:
    data = mutated(request.SerializeToString(), mutations)

    def annotated(in_c: bool) -> ExportTraceServiceRequest | str:
        with pytest.MonkeyPatch.context() as patch:
            if not in_c:
                patch.setattr(otlp, "c_walk", None)
            try:
                encoded = annotate_kept(data, "slow", 0.25, known, no_trace_state=True)
                return ExportTraceServiceRequest.FromString(encoded)
            except DecodeError:
                return "not OTLP"

    assert annotated(in_c=True) == annotated(in_c=False)


@pytest.mark.skipif(flatten.c_walk is None, reason="built without a C compiler")
@given(
    st.binary(max_size=300),
    st.lists(st.tuples(st.binary(min_size=16, max_size=16), st.integers(0, 130)), max_size=6),
    st.binary(max_size=3),
)
def test_an_index_is_read_in_c_as_without_it(
    value: bytes, entries: list[tuple[bytes, int]], junk: bytes
) -> None:
    index = b"".join(tid + size.to_bytes(4, "big") for tid, size in entries) + junk

    def read(in_c: bool) -> list[tuple[bytes, bytes]] | str:
        with pytest.MonkeyPatch.context() as patch:
            if not in_c:
                patch.setattr(otlp, "c_walk", None)
            try:
                return unpack_index(value, index)
            except BadInput as exc:
                return exc.reason

    assert read(in_c=True) == read(in_c=False)
