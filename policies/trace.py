"""The read-only view of one trace that every policy evaluates.

A :class:`TraceView` is built once per trace, at decision time, from the protobuf
``ResourceSpans`` buffered for it. Each fact policies ask about (time span, status codes,
services, root span, attribute values, ...) is computed on first use in one pass and kept,
so ten policies asking the same question cost one answer, and a configuration pays only
for the facts its policies read.

Reading protobuf objects is the expensive part in Python (upb builds a wrapper object for
every message touched, ~0.3-0.5 µs each), so the code below prefers C-level passes and
substring searches in the serialized trace over walking attribute lists.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate
from operator import attrgetter
from typing import Final

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

__all__ = ["SERVICE_NAME", "StringValueProbe", "TraceView", "any_value_to_python"]

SERVICE_NAME: Final = "service.name"

_start_of = attrgetter("start_time_unix_nano")
_end_of = attrgetter("end_time_unix_nano")


class TraceView:
    """All spans of one trace, with the facts policies ask about computed once.

    Build it with :meth:`from_resource_spans`. Read-only by contract: one view is shared
    by every policy of a decision. ``trace_id``, ``resource_spans``, ``spans`` and
    ``span_count`` are set at construction; the other properties on first access.
    """

    __slots__ = (
        "trace_id",
        "resource_spans",
        "spans",
        "span_count",
        "_start",
        "_end",
        "_status_codes",
        "_services",
        "_root_scanned",
        "_root_span",
        "_trace_state",
        "_byte_size",
        "_attributes",
        "_batch_blobs",
        "_holder_blobs",
    )

    def __init__(self, trace_id: bytes, resource_spans: Sequence[ResourceSpans]) -> None:
        """Collect the spans of ``resource_spans`` (only this trace's); prefer
        :meth:`from_resource_spans`."""
        batches = tuple(resource_spans)
        spans: list[Span] = []
        for batch in batches:
            for scope in batch.scope_spans:
                spans += scope.spans
        self.trace_id: Final = trace_id
        self.resource_spans: Final = batches
        # Holding the span wrappers keeps upb from rebuilding them for every later pass.
        self.spans: Final = tuple(spans)
        self.span_count: Final = len(spans)
        self._start = -1
        self._end = -1
        self._status_codes: frozenset[int] | None = None
        self._services: frozenset[str] | None = None
        self._root_scanned = False
        self._root_span: Span | None = None
        self._trace_state = ""
        self._byte_size = -1
        self._attributes: dict[str, tuple[object, ...]] | None = None
        self._batch_blobs: tuple[bytes, ...] | None = None
        self._holder_blobs: tuple[tuple[bytes, ...], bytes, list[int]] | None = None

    @classmethod
    def from_resource_spans(
        cls, trace_id: bytes, resource_spans: Sequence[ResourceSpans]
    ) -> TraceView:
        """Build the view of trace ``trace_id`` from the ``ResourceSpans`` holding its spans
        (several resources and several scopes each are fine)."""
        return cls(trace_id, resource_spans)

    @property
    def start_unix_nano(self) -> int:
        """The earliest span start (Unix ns), 0 without spans."""
        if self._start < 0:
            self._scan_times()
        return self._start

    @property
    def end_unix_nano(self) -> int:
        """The latest span end (Unix ns), 0 without spans."""
        if self._start < 0:
            self._scan_times()
        return self._end

    @property
    def duration_ns(self) -> int:
        """Latest span end minus earliest span start, in nanoseconds (0 without spans)."""
        if self._start < 0:
            self._scan_times()
        return self._end - self._start

    @property
    def status_codes(self) -> frozenset[int]:
        """The span status codes present (``Status.STATUS_CODE_*`` values)."""
        if self._status_codes is None:
            self._status_codes = frozenset([span.status.code for span in self.spans])
        return self._status_codes

    @property
    def has_error(self) -> bool:
        """Whether any span has status ``STATUS_CODE_ERROR``."""
        return Status.STATUS_CODE_ERROR in self.status_codes

    @property
    def services(self) -> frozenset[str]:
        """The ``service.name`` values of the trace's resources."""
        if self._services is None:
            names = set()
            for batch in self.resource_spans:
                for attribute in batch.resource.attributes:
                    if attribute.key == SERVICE_NAME:
                        names.add(attribute.value.string_value)
                        break
            names.discard("")
            self._services = frozenset(names)
        return self._services

    @property
    def root_span(self) -> Span | None:
        """The first span without a parent span ID, or ``None`` if the root never arrived."""
        if not self._root_scanned:
            self._scan_root_and_state()
        return self._root_span

    @property
    def trace_state(self) -> str:
        """The first non-empty W3C ``tracestate`` found on a span, or ``""``."""
        if not self._root_scanned:
            self._scan_root_and_state()
        return self._trace_state

    @property
    def byte_size(self) -> int:
        """The protobuf-encoded size of the trace's ``ResourceSpans`` in bytes."""
        if self._byte_size < 0:
            self._byte_size = sum(batch.ByteSize() for batch in self.resource_spans)
        return self._byte_size

    def attribute_values(self, key: str) -> tuple[object, ...]:
        """Return every value of attribute ``key`` on any resource or span of the trace.

        Resource values come first, then span values, in trace order, converted with
        :func:`any_value_to_python`. Computed on first request per key and kept.
        """
        cache = self._attributes
        if cache is None:
            cache = self._attributes = {}
        else:
            found = cache.get(key)
            if found is not None:
                return found
        values = self._collect_attribute(key)
        cache[key] = values
        return values

    def _scan_times(self) -> None:
        # Two C-level passes over held wrappers beat one Python loop reading both fields.
        if self.spans:
            self._start = min(map(_start_of, self.spans))
            self._end = max(map(_end_of, self.spans))
        else:
            self._start = self._end = 0

    def _scan_root_and_state(self) -> None:
        for span in self.spans:
            if self._root_span is None and not span.parent_span_id:
                self._root_span = span
            if not self._trace_state:
                self._trace_state = span.trace_state
        self._root_scanned = True

    def _collect_attribute(self, key: str) -> tuple[object, ...]:
        # The walk over KeyValue wrappers is narrowed by substring searches in the
        # serialized trace: whole batches first (cheap to encode, and usually enough to
        # prove the key absent), then single resources and spans. The encoded KeyValue.key
        # field (tag 0x0A, length, UTF-8) is always there verbatim when the key is (proto3
        # omits only the empty key), so no holder is missed; false positives (the same
        # bytes inside a value or an event) only cost a walk.
        raw = key.encode()
        if not raw:
            return _walk(key, self.resource_spans, self.spans)
        size = len(raw)
        pattern = b"\n" + (bytes((size,)) if size < 0x80 else _varint(size)) + raw
        if not self._encoding_contains((pattern,)):
            return ()
        resource_blobs, spans_blob, span_offsets = self._holders()
        batches = [
            batch
            for batch, blob in zip(self.resource_spans, resource_blobs, strict=True)
            if pattern in blob
        ]
        holders: list[Span] = []
        position = spans_blob.find(pattern)
        while position >= 0:
            index = bisect_right(span_offsets, position) - 1
            holders.append(self.spans[index])
            position = spans_blob.find(pattern, span_offsets[index + 1])
        return _walk(key, batches, holders)

    def _encoding_contains(self, patterns: Sequence[bytes]) -> bool:
        blobs = self._batch_blobs
        if blobs is None:
            blobs = self._batch_blobs = tuple([b.SerializeToString() for b in self.resource_spans])
        for blob in blobs:
            for pattern in patterns:
                if pattern in blob:
                    return True
        return False

    def _holders(self) -> tuple[tuple[bytes, ...], bytes, list[int]]:
        if self._holder_blobs is None:
            encoded_spans = [span.SerializeToString() for span in self.spans]
            self._holder_blobs = (
                tuple([b.resource.SerializeToString() for b in self.resource_spans]),
                b"".join(encoded_spans),
                [0, *accumulate(map(len, encoded_spans))],
            )
        return self._holder_blobs

    def __repr__(self) -> str:
        return f"TraceView(trace_id={self.trace_id.hex()}, spans={self.span_count})"


class StringValueProbe:
    """Answers "does attribute ``key`` have one of ``values``?" for many traces.

    Built once per policy. A check first searches the trace's encoding for the encoded
    ``KeyValue`` of each wanted pair: the common case (no match) is answered without
    walking a single attribute, and a hit is confirmed with
    :meth:`TraceView.attribute_values`. Empty values never match.
    """

    __slots__ = ("key", "values", "_patterns")

    def __init__(self, key: str, values: Iterable[str]) -> None:
        """Prepare the encoded form of ``key`` paired with each of ``values``."""
        self.key: Final = key
        self.values: Final = frozenset(value for value in values if value)
        self._patterns: Final = tuple(_encoded_pair(key, value) for value in self.values)

    def matches(self, trace: TraceView) -> bool:
        """Return True if a resource or span attribute ``key`` of ``trace`` is in ``values``."""
        if not self._patterns or not trace._encoding_contains(self._patterns):
            return False
        wanted = self.values
        return any(isinstance(v, str) and v in wanted for v in trace.attribute_values(self.key))


def any_value_to_python(value: AnyValue) -> object:
    """Convert an OTLP ``AnyValue`` to ``str``, ``int``, ``float``, ``bool``, ``bytes``,
    ``tuple`` (arrays), ``dict`` (key-value lists) or ``None`` (empty value)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple([any_value_to_python(v) for v in value.array_value.values])
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    if kind is None:
        return None
    scalar: object = getattr(value, kind)
    return scalar


def _walk(key: str, batches: Sequence[ResourceSpans], spans: Sequence[Span]) -> tuple[object, ...]:
    values: list[object] = []
    for batch in batches:
        _append_values(batch.resource.attributes, key, values)
    for span in spans:
        _append_values(span.attributes, key, values)
    return tuple(values)


def _append_values(attributes: Iterable[KeyValue], key: str, into: list[object]) -> None:
    for attribute in attributes:
        if attribute.key == key:
            into.append(any_value_to_python(attribute.value))


def _encoded_pair(key: str, value: str) -> bytes:
    # KeyValue{key = 1, value = 2} holding AnyValue{string_value = 1}, as upb serializes it;
    # proto3 leaves an empty key out of the encoding altogether.
    key_field = _length_delimited(1, key.encode()) if key else b""
    return key_field + _length_delimited(2, _length_delimited(1, value.encode()))


def _length_delimited(field: int, payload: bytes) -> bytes:
    return bytes(((field << 3) | 2,)) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
