"""Tenant resolution, quotas and redaction."""

from __future__ import annotations

import hashlib

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

from streams.config import RedactionConfig, validate_mapping
from streams.pipeline.redact import MASK, Redactor
from streams.pipeline.route import (
    TenantResolver,
    TenantRoutes,
    TokenBucket,
    _string_attribute,
    parse_baggage,
)
from tests.policies.test_properties import MUTATIONS, mutated


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def block(resource: dict[str, str], span_attrs: dict[str, str] | None = None) -> ResourceSpans:
    rs = ResourceSpans(resource=Resource(attributes=[kv(k, v) for k, v in resource.items()]))
    span = rs.scope_spans.add().spans.add(trace_id=b"t" * 16, span_id=b"s" * 8)
    span.attributes.extend(kv(k, v) for k, v in (span_attrs or {}).items())
    return rs


def test_baggage_header_parsing() -> None:
    assert parse_baggage(b"tenant=acme%20co;p=1, user=x") == {"tenant": "acme co", "user": "x"}


def test_sources_in_order_first_present_wins() -> None:
    resolver = TenantResolver(["header:x-tenant-id", "resource:tenant.id", "baggage:tenant"], "d")
    assert (
        resolver.resolve(resolver.hints({"x-tenant-id": b"h"}), [block({"tenant.id": "r"})]) == "h"
    )
    assert resolver.resolve(resolver.hints({}), [block({"tenant.id": "r"})]) == "r"
    hints = resolver.hints({"baggage": b"tenant=b"})
    assert resolver.resolve(hints, [block({})]) == "b"
    assert resolver.resolve(resolver.hints({}), [block({}, {"tenant": "s"})]) == "s"
    assert resolver.resolve(resolver.hints({}), [block({})]) == "d"


def test_span_attributes_are_read_from_the_encoded_request_only_when_needed() -> None:
    resolver = TenantResolver(["resource:tenant.id", "baggage:tenant"], "d")
    spans_say = ExportTraceServiceRequest(resource_spans=[block({}, {"tenant": "s"})])
    request = spans_say.SerializeToString()
    assert resolver.resolve_encoded(resolver.no_hints, [], request) == "s"
    resource = KeyValue(key="tenant.id", value=AnyValue(string_value="r")).SerializeToString()
    assert resolver.resolve_encoded(resolver.no_hints, [resource], request) == "r"
    assert resolver.resolve_encoded(resolver.no_hints, [resource], b"\xff not OTLP") == "r"


def test_token_bucket_admits_whole_traces() -> None:
    bucket = TokenBucket(rate=100, burst=100)
    assert bucket.take(60, now=0.0)
    assert not bucket.take(60, now=0.0)  # 40 left: the trace is refused whole
    assert bucket.take(60, now=0.2)  # 40 + 20 refilled


def test_routes_quota_unknown_and_errors_only() -> None:
    settings = validate_mapping(
        {
            "unknown_tenant": "drop",
            "tenants": {
                "default": {"exporters": ["file"]},
                "small": {"exporters": ["file"], "quota_spans_per_second": 10},
                "soft": {
                    "exporters": ["file"],
                    "quota_spans_per_second": 10,
                    "quota_action": "errors_only",
                },
            },
        }
    )
    routes = TenantRoutes(settings)
    assert routes.admit("stranger", 5, False, 0.0) == "unknown_tenant"
    assert routes.label("stranger") == "default"
    assert routes.admit("small", 10, False, 0.0) is None
    assert routes.admit("small", 1, False, 0.0) == "quota"
    assert routes.admit("soft", 10, False, 0.0) is None
    assert routes.admit("soft", 5, True, 0.0) is None  # over quota, but it has an error
    assert routes.admit("soft", 5, False, 0.0) == "quota"
    routes.set_share(0.5)  # half the partitions: half the rate
    assert routes.buckets["small"].rate == 5


def test_redaction_on_resource_span_and_event_attributes() -> None:
    redactor = Redactor(
        RedactionConfig.model_validate(
            {
                "rules": [
                    {"key": "user.email", "action": "hash"},
                    {"key_regex": "^http\\.request\\.header\\.", "action": "delete"},
                    {"key": "user.name", "action": "mask"},
                ],
                "values": [
                    {"pattern": "[\\w.+-]+@[\\w-]+\\.[\\w.]+", "replacement": "<email>"},
                    {"pattern": "\\b(?:\\d[ -]?){13,16}\\b", "replacement": "<card>"},
                ],
                "hash_salt": "s",
            }
        )
    )
    rs = block(
        {"host.owner": "ops@example.com"},
        {
            "user.email": "a@b.io",
            "http.request.header.cookie": "secret",
            "user.name": "Ann",
            "note": "paid with 4111 1111 1111 1111",
        },
    )
    span: Span = rs.scope_spans[0].spans[0]
    span.events.add(name="e").attributes.append(kv("msg", "mail me at x@y.org"))
    request = ExportTraceServiceRequest(resource_spans=[rs])
    redactor.apply(request)
    rs = request.resource_spans[0]  # the request holds its own copy
    span = rs.scope_spans[0].spans[0]
    attrs = {a.key: a.value.string_value for a in span.attributes}
    assert attrs["user.email"] == hashlib.sha256(b"sa@b.io").hexdigest()
    assert "http.request.header.cookie" not in attrs
    assert attrs["user.name"] == MASK
    assert attrs["note"] == "paid with <card>"
    assert span.events[0].attributes[0].value.string_value == "mail me at <email>"
    assert rs.resource.attributes[0].value.string_value == "<email>"


def test_a_trace_larger_than_the_burst_is_admitted_when_the_bucket_is_full() -> None:
    bucket = TokenBucket(rate=100, burst=100)
    assert bucket.take(500, now=0.0), "full: admitted, the bucket goes into debt"
    assert not bucket.take(1, now=3.0)  # -400 + 300
    assert not bucket.take(500, now=4.0), "not full again yet"
    assert bucket.take(500, now=5.0)


def test_unknown_tenants_each_get_their_own_bucket() -> None:
    settings = validate_mapping(
        {"tenants": {"default": {"exporters": ["file"], "quota_spans_per_second": 10}}}
    )
    routes = TenantRoutes(settings)
    assert routes.admit("stranger-1", 10, False, 0.0) is None
    assert routes.admit("stranger-2", 10, False, 0.0) is None, "not stranger-1's quota"
    assert routes.admit("default", 10, False, 0.0) is None, "nor the default tenant's"
    assert routes.admit("stranger-1", 10, False, 0.0) == "quota"


def test_untrusted_headers_name_no_tenant() -> None:
    resolver = TenantResolver(["header:x-tenant-id", "resource:tenant.id"], "d", False)
    hints = resolver.hints({"x-tenant-id": b"forged"})
    assert resolver.resolve(hints, [block({"tenant.id": "r"})]) == "r"
    assert resolver.resolve(hints, [block({})]) == "d"


def parsed_string_attribute(entries: list[bytes], key: str) -> str | None:
    """What the parser says: the first non-empty string value of `key` among the entries that
    hold its bytes (an entry that does not parse raises, as it does for the resolver)."""
    for entry in entries:
        if key.encode() in entry:
            kv = KeyValue.FromString(entry)
            if kv.key == key and kv.value.string_value:
                return str(kv.value.string_value)
    return None


KEYS = st.sampled_from(["tenant.id", "tenant", "t", "tenant.idx", "ténant", "k" * 130])
VALUES = st.one_of(
    st.text(max_size=140).map(lambda text: AnyValue(string_value=text)),
    st.integers(-(2**63), 2**63 - 1).map(lambda number: AnyValue(int_value=number)),
    st.just(AnyValue()),
)


# Valid fields after an entry's own: an unknown one, a second value (merged into the first),
# a second key (which wins).
TAILS = st.sampled_from([b"", b"\x18\x01", b"\x12\x00", b"\x12\x02\x0a\x00", b"\x0a\x01t"])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(KEYS, VALUES, TAILS), min_size=1, max_size=4),
    KEYS,
    st.lists(MUTATIONS, max_size=2),
)
def test_tenant_attribute_read_without_the_parser_agrees_with_it(
    pairs: list[tuple[str, AnyValue, bytes]], key: str, mutations: list[tuple[int, int, bytes]]
) -> None:
    entries = [KeyValue(key=k, value=v).SerializeToString() + tail for k, v, tail in pairs]
    entries[0] = mutated(entries[0], mutations)
    try:
        expected = parsed_string_attribute(entries, key)
    except DecodeError:
        with pytest.raises(DecodeError):
            _string_attribute(entries, key)
        return
    assert _string_attribute(entries, key) == expected
