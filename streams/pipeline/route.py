"""Routing: which tenant a trace belongs to, and what a tenant's kept traces go through.

Tenant sources (`tenant_from`), in order, the first present wins:
- `header:NAME`: a Kafka header of the input message (the ingest gateway sets `x-tenant-id`);
- `resource:ATTRIBUTE`: a string resource attribute such as `tenant.id`;
- `baggage:ENTRY`: a W3C baggage entry, from the message's `baggage` header, else from a span
  attribute of that name (where a BaggageSpanProcessor copied the entry onto spans).
"""

from __future__ import annotations

import functools
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from policies.flatten import c_walk, encode, flatten, flatten_request
from streams.config import Settings
from streams.pipeline.redact import Redactor

__all__ = ["TenantResolver", "TenantRoutes", "TokenBucket", "parse_baggage"]


def parse_baggage(header: bytes | str) -> dict[str, str]:
    """Entries of a W3C `baggage` header (`k1=v1,k2=v2;prop`), values percent-decoded."""
    text = header.decode("utf-8", "replace") if isinstance(header, bytes) else header
    entries = {}
    for member in text.split(","):
        pair = member.split(";", 1)[0]
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            entries[key.strip()] = urllib.parse.unquote(value.strip())
    return entries


def _string_attribute(entries: Sequence[bytes], key: str) -> str | None:
    """The first non-empty string value of attribute `key` among encoded `KeyValue`s."""
    needle = key.encode()
    return _find_string(entries, key, needle, _plain_head(needle))


def _find_string(
    entries: Sequence[bytes], key: str, needle: bytes, head: bytes | None
) -> str | None:
    """`_string_attribute`, given the key encoded (`needle`) and its `_plain_head`."""
    if head is not None and c_walk is not None and type(entries) is list:
        # The same reading in C; False where an entry holding the key needs the parser.
        found = c_walk.plain_string_attribute(entries, head)
        if found is not False:
            return found  # type: ignore[return-value]  # str or None, not True
    for entry in entries:
        if needle in entry:  # most entries are ruled out without being parsed
            value = None
            if head is not None and entry.startswith(head):
                value = _plain_string(entry, len(head))
            if value is None:
                kv = KeyValue.FromString(entry)
                if kv.key != key:
                    continue
                value = str(kv.value.string_value)
            if value:
                return value
    return None


@functools.lru_cache(maxsize=64)
def _plain_head(key: bytes) -> bytes | None:
    """How upb begins a `KeyValue` of `key`: the key field, then the tag of the value field
    (None for a key of 128 bytes or more, always left to the parser)."""
    return b"\n" + bytes((len(key),)) + key + b"\x12" if len(key) < 0x80 else None


def _plain_string(entry: bytes, at: int) -> str | None:
    """The value of a `KeyValue` whose value field starts at `at` and is an `AnyValue` holding
    a string alone, shorter than 126 bytes (a tenant name), read without the parser; None for
    any other shape, which the parser reads."""
    size = len(entry) - at - 1  # the AnyValue's length, then its string's
    if not 2 <= size < 0x80 or entry[at : at + 3] != bytes((size, 0x0A, size - 2)):
        return None
    try:
        return entry[at + 3 :].decode()
    except UnicodeDecodeError:
        return None


class TenantResolver:
    """Resolve a tenant from the configured sources; `default` when none is present.

    `trust_headers=False` skips the `header:` sources (an input topic untrusted producers can
    write: a forged x-tenant-id must not reach another tenant's backends).
    """

    def __init__(self, sources: Sequence[str], default: str, trust_headers: bool = True) -> None:
        self.default = default
        # Per source, in order: its kind, its name, and the name as an attribute lookup needs it.
        self._sources = [
            (kind, name, name.encode(), _plain_head(name.encode()))
            for kind, _, name in (s.partition(":") for s in sources)
            if trust_headers or kind != "header"
        ]
        self.no_hints: Final = self.hints({})  # a message without headers

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantResolver:
        """The resolver `tenant_from`, `default_tenant` and `kafka.trust_tenant_headers` say."""
        return cls(
            settings.tenant_from, settings.default_tenant, settings.kafka.trust_tenant_headers
        )

    def hints(self, headers: Mapping[str, bytes]) -> list[str | None]:
        """What the message's headers say, per source (computed once per message)."""
        baggage: dict[str, str] | None = None
        hints: list[str | None] = []
        for kind, name, _, _ in self._sources:
            value: str | None = None
            if kind == "header":
                raw = headers.get(name)
                # Undecodable bytes stay visible (as surrogates): such a name is refused
                # (streams.wire.tracekey.tenant_problem), never turned into another tenant's.
                value = raw.decode("utf-8", "surrogateescape") if raw else None
            elif kind == "baggage":
                if baggage is None:
                    raw = headers.get("baggage")
                    baggage = parse_baggage(raw) if raw else {}
                value = baggage.get(name) or None
            hints.append(value)
        return hints

    def resolve(self, hints: Sequence[str | None], blocks: Sequence[ResourceSpans]) -> str:
        """Tenant of a trace given its message's hints and its resource blocks."""
        flat = flatten(encode(blocks))
        return self.resolve_encoded(
            hints, flat.resource.attributes, lambda: flat.scope_spans.spans.attributes
        )

    def resolve_encoded(
        self,
        hints: Sequence[str | None],
        resource_attributes: Sequence[bytes],
        span_attributes: Callable[[], Sequence[bytes]] | bytes,
    ) -> str:
        """Tenant of a trace given its message's hints and its attributes (encoded
        `KeyValue`s, in trace order: see policies.flatten). The spans' are read only when a
        source needs them: from the encoded request `span_attributes`, or by calling it."""
        for (kind, name, needle, head), hint in zip(self._sources, hints, strict=True):
            if hint:
                return hint
            if kind == "resource":
                entries = resource_attributes
            elif kind == "baggage":
                entries = (
                    flatten_request(span_attributes).scope_spans.spans.attributes
                    if isinstance(span_attributes, bytes)
                    else span_attributes()
                )
            else:
                continue
            found = _find_string(entries, name, needle, head)
            if found:
                return found
        return self.default


class TokenBucket:
    """Spans per second with a burst; a trace is admitted whole or not at all.

    A trace larger than the burst is admitted when the bucket is full, and the bucket goes
    into debt by the difference: over time the tenant still gets its rate, and no trace is
    refused for its size alone.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated: float | None = None

    def take(self, spans: int, now: float) -> bool:
        """Admit `spans` if the bucket holds that many tokens (time `now`, Unix seconds)."""
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= min(spans, self.burst):
            self.tokens -= spans
            return True
        return False


# Quota buckets of tenants not named in `tenants`, each drawing on the default tenant's quota
# on its own; beyond this many, the least recently used bucket is dropped (it starts full if
# that tenant comes back).
MAX_UNKNOWN_BUCKETS = 10_000


class TenantRoutes:
    """Per-tenant rules applied to kept traces: known tenants, quotas, redaction.

    Quotas are per tenant across all workers. Each worker owns a share of the `caudal-spans`
    partitions and trace IDs spread evenly over them, so a worker admits `quota × share`
    spans per second, where share = its partitions / all partitions (updated on rebalance).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default = settings.default_tenant
        self.drop_unknown = settings.unknown_tenant == "drop"
        global_redactor = Redactor(settings.redaction)
        self.redactors = {
            name: Redactor(tenant.redaction) if tenant.redaction else global_redactor
            for name, tenant in settings.tenants.items()
        }
        self.global_redactor = global_redactor
        self.share = 1.0
        self.buckets: dict[str, TokenBucket] = {}
        self.unknown_buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.set_share(1.0)

    def set_share(self, share: float) -> None:
        """Scale the quotas to this worker's share of the partitions."""
        self.share = share
        self.buckets = {}
        self.unknown_buckets = OrderedDict()
        for name in self.settings.tenants:
            bucket = self._new_bucket(name)
            if bucket is not None:
                self.buckets[name] = bucket

    def _new_bucket(self, route_name: str) -> TokenBucket | None:
        tenant = self.settings.tenants.get(route_name)
        if tenant is None or not tenant.quota_spans_per_second:
            return None
        rate = tenant.quota_spans_per_second * self.share
        burst = (tenant.quota_burst_spans or tenant.quota_spans_per_second) * self.share
        return TokenBucket(rate, max(burst, 1.0))

    def _bucket(self, tenant: str, known: bool) -> TokenBucket | None:
        if known:
            return self.buckets.get(tenant)
        bucket = self.unknown_buckets.get(tenant)
        if bucket is not None:
            self.unknown_buckets.move_to_end(tenant)
            return bucket
        bucket = self._new_bucket(self.default)
        if bucket is not None:
            self.unknown_buckets[tenant] = bucket
            if len(self.unknown_buckets) > MAX_UNKNOWN_BUCKETS:
                self.unknown_buckets.popitem(last=False)
        return bucket

    def label(self, tenant: str) -> str:
        """The tenant name used in metric labels (see Settings.tenant_label)."""
        return self.settings.tenant_label(tenant)

    def admit(self, tenant: str, spans: int, has_error: bool, now: float) -> str | None:
        """None if a kept trace goes on to export, else why not (`unknown_tenant`, `quota`)."""
        known = tenant in self.settings.tenants
        if not known and self.drop_unknown:
            return "unknown_tenant"
        bucket = self._bucket(tenant, known)
        if bucket is None or bucket.take(spans, now):
            return None
        route = self.settings.tenants[tenant if known else self.default]
        if route.quota_action == "errors_only" and has_error:
            return None
        return "quota"

    def redact(self, tenant: str, request: bytes) -> bytes:
        """A serialized request with the tenant's redaction (or the global one) applied; parsed
        only when there is a redaction to apply."""
        redactor = self.redactors.get(tenant, self.global_redactor)
        if not redactor.active:
            return request
        parsed = ExportTraceServiceRequest.FromString(request)
        redactor.apply(parsed)
        return parsed.SerializeToString()  # type: ignore[no-any-return]
