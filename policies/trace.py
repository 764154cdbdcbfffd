"""The read-only view of one trace that every policy evaluates.

A :class:`TraceView` is built once per trace, at decision time, from the protobuf
``ResourceSpans`` buffered for it. Each fact policies ask about (span count, time span,
status codes, attribute values, ...) is computed on first use and kept, so ten policies asking
the same question cost one answer, and a configuration pays only for the facts its policies read.

Touching protobuf objects from Python is the expensive part (upb builds a wrapper for every
message touched, 0.3-1 µs each; walking a 10-span trace costs ~10 µs). So the view serializes
its batches once (~1 µs per batch) and answers from the bytes with C-level work only: regex
searches prove an attribute value or a status absent (the common case), and
:mod:`policies.flatten` folds every span into one message in a single parse for times, status
codes, trace states and the encoded attribute entries. Only rare questions (``spans``,
``root_span``, spans with zero times) walk the protobuf.

A view of a request (what a worker decides on) goes one step further when the optional C
module ``policies._wire`` is built: one walk of the bytes answers the span count, the time
bounds, the status codes, the root, the orphans and which of the string probes' attribute
entries the trace holds, all together (~1.5 µs for 10 spans against ~10 µs for the parses
and lists), and the parses run only for other attribute questions and bytes the walk leaves
to the parser.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Final

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status, TracesData

from policies.flatten import (
    c_walk,
    count_spans,
    encode,
    flatten,
    flatten_request,
    length_delimited,
    request_batches,
    request_span_count,
)

# The C functions, or None where policies._wire is not built: walk_facts (the facts of a
# request), walk_entries (an attribute entry of a request) and find_any (literals in bytes).
walk_facts = c_walk.trace_facts if c_walk else None
walk_entries = c_walk.has_attribute_entry if c_walk else None
find_any = c_walk.contains_any if c_walk else None

__all__ = [
    "SERVICE_NAME",
    "StringValueProbe",
    "TraceView",
    "any_value_to_python",
    "encoded_pattern",
]

SERVICE_NAME: Final = "service.name"

_INT64_LIMIT: Final = 1 << 63
_UNSET: Final = Status.STATUS_CODE_UNSET
_ERROR: Final = Status.STATUS_CODE_ERROR
# Status-code sets by the bit mask policies._wire gives (bit n: code n present).
_CODE_SETS: Final = tuple(
    frozenset(code for code in (0, 1, 2) if mask >> code & 1) for mask in range(8)
)
# The encoded Status.code field (tag 3, varint) for each non-default code; proto3 always
# writes it when the code is set, so its absence from the bytes proves no span has that code.
_CODE_FIELD: Final = {code: re.compile(re.escape(bytes((0x18, code)))) for code in (1, 2)}


# The encoded attribute entries the string probes look for, in the order of their bits in the
# walk's answer (policies._wire.trace_facts): one walk of a trace answers every probe. Entries
# are only ever added (the probes of a reloaded configuration mostly bring the same ones), up
# to the walk's 64; a probe with an entry beyond them asks the trace as before.
_WALKED_ENTRIES: tuple[bytes, ...] = ()
_WALKED_MAX: Final = 64
_ENTRIES_LOCK: Final = threading.Lock()


def _entry_bits(entries: Iterable[bytes]) -> tuple[int, int]:
    """The bits of `entries` in the walk's answer, and how many entries a walk must have
    looked for to hold them all; (0, 0) when they do not all fit."""
    global _WALKED_ENTRIES
    with _ENTRIES_LOCK:
        listed = list(_WALKED_ENTRIES)
        bits = 0
        for entry in entries:
            if entry not in listed:
                if len(listed) == _WALKED_MAX:
                    return 0, 0
                listed.append(entry)
            bits |= 1 << listed.index(entry)
        _WALKED_ENTRIES = tuple(listed)
        return bits, bits.bit_length()


class TraceView:
    """All spans of one trace, with the facts policies ask about computed once.

    Build it with :meth:`from_resource_spans`, or from bytes: :meth:`from_batches` (the
    encoded batches) or :meth:`from_request` (an encoded request holding them); then nothing
    is parsed into protobuf objects unless a policy walks ``spans``.
    Read-only by contract: one view is shared by every policy of a decision. Every member but
    ``trace_id`` is computed on first access and kept.
    """

    __slots__ = (
        "trace_id",
        "partition",
        "_resource_spans",
        "_batches",
        "_request",
        "_encoded",
        "_flat_trace",
        "_flat_span",
        "_span_count",
        "_spans",
        "_times",
        "_codes",
        "_code_count",
        "_status_codes",
        "_root_scanned",
        "_root_span",
        "_raw",
        "_entries",
        "_values",
        "_searched",
        "_services",
        "_walked",
        "_states",
        "_root",
        "_orphans",
        "_matched",
        "_looked_for",
    )

    def __init__(
        self,
        trace_id: bytes,
        resource_spans: Sequence[ResourceSpans] | None = None,
        batches: Sequence[bytes] | None = None,
        request: bytes | None = None,
    ) -> None:
        """Keep ``resource_spans``, the encoded ``batches`` or an encoded ``request`` (only
        this trace's); prefer :meth:`from_resource_spans`, :meth:`from_batches` and
        :meth:`from_request`."""
        self.trace_id: Final = trace_id
        self.partition = 0
        """The ``caudal-spans`` partition the trace was buffered on (set by the worker; 0
        elsewhere): policies with state per partition count and decide it there."""
        self._resource_spans = None if resource_spans is None else tuple(resource_spans)
        self._batches = None if batches is None else tuple(batches)
        self._request = request
        self._encoded: bytes | None = request if batches is None else b"".join(batches)
        self._flat_trace: Any = None
        self._flat_span: Any = None
        self._span_count = -1
        self._spans: tuple[Span, ...] | None = None
        self._times: tuple[int, int, bool] | None = None
        self._codes: frozenset[int] | None = None
        self._code_count = 0
        self._status_codes: frozenset[int] | None = None
        self._root_scanned = False
        self._root_span: Span | None = None
        self._raw: tuple[list[bytes], list[bytes]] | None = None
        self._entries: frozenset[bytes] | None = None
        self._values: dict[str, tuple[object, ...]] | None = None
        self._searched: dict[re.Pattern[bytes], bool] = {}
        self._services: frozenset[str] | None = None
        # _states, _root, _orphans, _matched and _looked_for are set by the walk, and read
        # only after it.
        self._walked: bool | None = None

    @classmethod
    def from_resource_spans(
        cls, trace_id: bytes, resource_spans: Sequence[ResourceSpans]
    ) -> TraceView:
        """Build the view of trace ``trace_id`` from the ``ResourceSpans`` holding its spans
        (several resources and several scopes each are fine)."""
        return cls(trace_id, resource_spans)

    @classmethod
    def from_batches(cls, trace_id: bytes, batches: Sequence[bytes]) -> TraceView:
        """Build the view from encoded ``ResourceSpans`` (see
        :func:`policies.flatten.request_batches`), as a buffer holds them."""
        return cls(trace_id, batches=batches)

    @classmethod
    def from_request(cls, trace_id: bytes, request: bytes) -> TraceView:
        """Build the view from an encoded ``ExportTraceServiceRequest`` (or ``TracesData``)
        holding only this trace's spans: a buffered trace's fragments, back to back."""
        return cls(trace_id, None, None, request)  # positional: a third cheaper per view

    @property
    def resource_spans(self) -> tuple[ResourceSpans, ...]:
        """The trace's batches as protobuf objects (parsed on first use from encoded ones)."""
        batches = self._resource_spans
        if batches is None:
            if self._request is not None:
                batches = tuple(TracesData.FromString(self._request).resource_spans)
            else:
                parse = ResourceSpans.FromString
                batches = tuple([parse(b) for b in self._batches or ()])
            self._resource_spans = batches
        return batches

    @property
    def _has_batches(self) -> bool:
        if self._request is not None:
            return bool(self._request)
        if self._batches is not None:
            return bool(self._batches)
        return bool(self._resource_spans)

    @property
    def encoded(self) -> bytes:
        """The bytes C-level searches run on (computed once): the batches serialized back to
        back, or the encoded request holding them. The request's own framing between batches
        can add a match but never hide one, so a search that finds nothing proves absence."""
        encoded = self._encoded
        if encoded is None:
            encoded = self._encoded = encode(self.resource_spans)
        return encoded

    @property
    def span_count(self) -> int:
        """The number of spans."""
        if self._span_count < 0 and not self._walk():
            if not self._has_batches:
                self._span_count = 0
            elif self._request is not None:
                self._span_count = request_span_count(self._request)
            else:
                self._span_count = count_spans(self.encoded)
        return self._span_count

    @property
    def spans(self) -> tuple[Span, ...]:
        """Every span, in trace order (batch, scope, span). Walks the protobuf: slow."""
        if self._spans is None:
            spans: list[Span] = []
            for batch in self.resource_spans:
                for scope in batch.scope_spans:
                    spans += scope.spans
            self._spans = tuple(spans)
        return self._spans

    def time_bounds(self) -> tuple[int, int, bool]:
        """``(start_unix_nano, end_unix_nano, times_complete)`` in one call."""
        times = self._times
        if times is None:
            times = self._times = self._compute_times()
        return times

    @property
    def start_unix_nano(self) -> int:
        """The earliest span start (Unix ns; 0 if a span has none), 0 without spans."""
        return self.time_bounds()[0]

    @property
    def end_unix_nano(self) -> int:
        """The latest span end (Unix ns), 0 without spans."""
        return self.time_bounds()[1]

    @property
    def duration_ns(self) -> int:
        """Latest span end minus earliest span start, in nanoseconds (0 without spans)."""
        start, end, _ = self.time_bounds()
        return end - start

    @property
    def times_complete(self) -> bool:
        """Whether every span has both times, non-zero and below 2**63 ns (year 2262): then
        the running earliest start and latest end only widen the trace span by span."""
        return self.time_bounds()[2]

    def span_times(self) -> tuple[tuple[int, int], ...]:
        """``(start, end)`` of every span in trace order, zeros included."""
        if self.times_complete and self._has_batches:
            span = self._span()
            return tuple(zip(span.start_time_unix_nano, span.end_time_unix_nano, strict=True))
        return tuple([(s.start_time_unix_nano, s.end_time_unix_nano) for s in self.spans])

    @property
    def status_codes(self) -> frozenset[int]:
        """The span status codes present (``Status.STATUS_CODE_*`` values)."""
        if self._status_codes is None:
            codes = self._set_codes()
            unset = self._code_count < self.span_count
            self._status_codes = codes | {_UNSET} if unset else codes
        return self._status_codes

    def has_status(self, code: int) -> bool:
        """Whether any span has status ``code``; cheap when the answer is no."""
        if code == _UNSET:
            return _UNSET in self.status_codes
        codes = self._codes
        if codes is None and self._walk():
            codes = self._codes
        if codes is None and self._flat_span is None:
            field = _CODE_FIELD.get(code)
            if field is not None and field.search(self.encoded) is None:
                return False
        return code in (codes if codes is not None else self._set_codes())

    @property
    def has_error(self) -> bool:
        """Whether any span has status ``STATUS_CODE_ERROR``."""
        return self.has_status(_ERROR)

    @property
    def services(self) -> frozenset[str]:
        """The non-empty string ``service.name`` values of the trace's resources."""
        if self._services is None:
            field = _key_field(SERVICE_NAME)
            entries = [kv for kv in self._raw_attributes()[0] if kv.startswith(field)]
            values = [_parse_key_value(kv).value for kv in entries]
            names = {v.string_value for v in values if v.WhichOneof("value") == "string_value"}
            names.discard("")
            self._services = frozenset(names)
        return self._services

    @property
    def root_span(self) -> Span | None:
        """The first span without a parent span ID, or ``None`` if the root never arrived."""
        if not self._root_scanned:
            self._root_span = next((s for s in self.spans if not s.parent_span_id), None)
            self._root_scanned = True
        return self._root_span

    @property
    def has_root(self) -> bool:
        """Whether a span without a parent span ID arrived (cheap: no protobuf walk)."""
        if self._walk():
            return self._root
        if not self._has_batches:
            return False
        return len(self._span().parent_span_id) < self.span_count

    @property
    def orphan_span_count(self) -> int:
        """Spans whose parent span ID names no span of this trace (the parent never arrived)."""
        if self._walk():
            return self._orphans
        if not self._has_batches:
            return 0
        span = self._span()
        ids = set(span.span_id[:])  # a slice is copied in C: a third cheaper than iterating
        parents = span.parent_span_id[:]
        if ids.issuperset(parents):  # the common case, decided in C
            return 0
        return sum(1 for parent in parents if parent not in ids)

    @property
    def trace_states(self) -> tuple[str, ...]:
        """The non-empty W3C ``tracestate`` values of the spans, in trace order."""
        if not self._has_batches or (self._walk() and not self._states):
            return ()
        return tuple(self._span().trace_state)

    @property
    def trace_state(self) -> str:
        """The first non-empty W3C ``tracestate`` found on a span, or ``""``."""
        states = self.trace_states
        return states[0] if states else ""

    @property
    def byte_size(self) -> int:
        """The protobuf-encoded size of the trace's ``ResourceSpans`` in bytes."""
        if self._request is not None:
            return sum(map(len, request_batches(self._request)))
        return len(self.encoded)

    def attribute_values(self, key: str) -> tuple[object, ...]:
        """Return every value of attribute ``key`` on any resource or span of the trace.

        Resource values come first, then span values, in trace order, converted with
        :func:`any_value_to_python`. Event and link attributes do not count. Computed on first
        request per key and kept; a key absent from the encoded trace costs one search.
        """
        values = self._values
        if values is None:
            values = self._values = {}
        found = values.get(key)
        if found is None:
            found = values[key] = self._collect(key)
        return found

    def may_contain(
        self, pattern: re.Pattern[bytes], literals: tuple[bytes, ...] | None = None
    ) -> bool:
        """Whether ``pattern`` matches in :attr:`encoded`; False proves its bytes absent.

        A compiled regex (an alternation for several byte strings) searches faster than
        ``bytes in bytes`` for the short needles of encoded fields. Given the ``literals``
        the pattern is an alternation of (see :func:`encoded_pattern`), they are searched
        with ``memmem`` instead, 4-5x faster again, when ``policies._wire`` is built.
        Answers are kept per pattern (``re.compile`` returns the same object for the same
        pattern).
        """
        found = self._searched.get(pattern)
        if found is None:
            encoded = self._encoded
            if encoded is None:
                encoded = self.encoded
            if literals is not None and find_any is not None:
                found = find_any(encoded, literals)
            else:
                found = pattern.search(encoded) is not None
            self._searched[pattern] = found
        return found

    def has_attribute_entry(
        self, entries: frozenset[bytes], listed: tuple[bytes, ...] | None = None
    ) -> bool:
        """Whether a resource or span attribute is encoded exactly as one of ``entries``
        (encoded ``KeyValue`` messages, see :class:`StringValueProbe`). Given the same
        entries ``listed`` in a tuple, a request not yet decoded is answered by one walk of
        its bytes (``policies._wire``, ~1 µs) instead of the decoding (~7 µs for 10 spans)."""
        known = self._entries
        request = self._request
        if known is None and listed and walk_entries and request is not None:
            found = walk_entries(request, listed)
            if found is not None:
                return found
        if known is None:
            resource, span = self._raw_attributes()
            known = self._entries = frozenset(resource).union(span)
        return not known.isdisjoint(entries)

    @property
    def decoded(self) -> bool:
        """Whether the flattened decoding is done (then attribute lookups are set lookups)."""
        return self._flat_trace is not None

    def _collect(self, key: str) -> tuple[object, ...]:
        if not key:
            # proto3 omits an empty key: such an entry does not start with the key field.
            resource, span = self._raw_attributes()
            found = [kv for kv in (*resource, *span) if not kv.startswith(b"\n")]
        else:
            field = _key_field(key)
            # The key field comes first in an entry; its absence from the whole encoding
            # proves the key absent without decoding anything.
            if field not in self.encoded:
                return ()
            resource, span = self._raw_attributes()
            found = [kv for kv in resource if kv.startswith(field)]
            found += [kv for kv in span if kv.startswith(field)]
        return tuple([any_value_to_python(_parse_key_value(kv).value) for kv in found])

    def _raw_attributes(self) -> tuple[list[bytes], list[bytes]]:
        # Each entry is one encoded KeyValue, exactly as it sits in a Resource or a Span.
        raw = self._raw
        if raw is None:
            if self._has_batches:
                flat = self._flat()
                raw = (flat.resource.attributes[:], self._span().attributes[:])
            else:
                raw = ([], [])
            self._raw = raw
        return raw

    def _flat(self) -> Any:
        flat = self._flat_trace
        if flat is None:
            if self._request is not None:
                flat = self._flat_trace = flatten_request(self._request)
            else:
                flat = self._flat_trace = flatten(self.encoded)
        return flat

    def _span(self) -> Any:
        # The merged span of flatten(): every span field as a list, in trace order.
        span = self._flat_span
        if span is None:
            span = self._flat_span = self._flat().scope_spans.spans
        return span

    def _set_codes(self) -> frozenset[int]:
        # The non-UNSET codes (proto3 omits UNSET), and how many spans have one.
        codes = self._codes
        if codes is None and self._walk():
            return self._codes  # type: ignore[return-value]  # set by the walk
        if codes is None:
            listed = self._span().status.code[:] if self._has_batches else []
            self._code_count = len(listed)
            codes = self._codes = frozenset(listed)
        return codes

    def _walk(self) -> bool:
        """Take the facts of a request from one walk of its bytes (``policies._wire``), once,
        with the string probes' entries found; False when there is none: no C module, no
        request, or bytes left to the parser."""
        walked = self._walked
        if walked is None:
            facts = None
            entries = _WALKED_ENTRIES
            if walk_facts is not None and self._request is not None:
                facts = walk_facts(self._request, entries)
            walked = self._walked = facts is not None
            if facts is not None:
                count, start, end, complete, mask, code_count, states, root, orphans, found = facts
                self._span_count, self._times = count, (start, end, complete)
                self._codes, self._code_count = _CODE_SETS[mask], code_count
                self._states, self._root, self._orphans = states, root, orphans
                self._matched, self._looked_for = found, len(entries)
        return walked

    def _compute_times(self) -> tuple[int, int, bool]:
        if self._walk():
            return self._times  # type: ignore[return-value]  # set by the walk
        count = self.span_count
        if count == 0:
            return 0, 0, True
        span = self._span()
        # Slicing copies a repeated field to a list in C; min() on the field itself is 3x slower.
        starts = span.start_time_unix_nano[:]
        ends = span.end_time_unix_nano[:]
        if len(starts) == count and len(ends) == count:
            start, end = min(starts), max(ends)
            return start, end, end < _INT64_LIMIT and max(starts) < _INT64_LIMIT
        return (min(starts) if len(starts) == count else 0), max(ends, default=0), False

    def __repr__(self) -> str:
        if self._request is not None:
            batches = len(request_batches(self._request))
        elif self._batches is not None:
            batches = len(self._batches)
        else:
            batches = len(self.resource_spans)
        return f"TraceView(trace_id={self.trace_id.hex()}, batches={batches})"


class StringValueProbe:
    """Answers "does attribute ``key`` have one of ``values``?" for many traces.

    Built once per policy, it holds the encoded ``KeyValue`` of each wanted pair, as upb
    writes a string attribute (key field, then an ``AnyValue`` holding only the string). An
    attribute matches when its encoding equals one of them: a whole-entry comparison against
    the trace's attribute entries, after a search of the encoded trace has ruled out the
    common case (no such bytes at all). Empty values never match. The one attribute this
    misses is one whose ``KeyValue`` or ``AnyValue`` carries fields unknown to this OTLP
    version (they would change the encoding).
    """

    __slots__ = ("key", "values", "_pattern", "_entries", "_listed", "_bits", "_reach")

    def __init__(self, key: str, values: Iterable[str]) -> None:
        """Prepare the encoded form of ``key`` paired with each of ``values``."""
        self.key: Final = key
        self.values: Final = frozenset(value for value in values if value)
        entries = sorted(_encoded_pair(key, value) for value in self.values)
        self._pattern: Final = encoded_pattern(entries) if entries else None
        self._entries: Final = frozenset(entries)
        self._listed: Final = tuple(entries)
        # Where the trace's walk answers for these entries (see _entry_bits).
        self._bits, self._reach = _entry_bits(entries)

    def matches(self, trace: TraceView) -> bool:
        """Return True if a resource or span attribute ``key`` of ``trace`` is in ``values``."""
        # Whole attribute entries are compared, which ignores the same bytes met elsewhere
        # (inside an event, a link, another value). One search of the trace's bytes first
        # settles the common case, no such bytes at all, even once the trace is decoded: it
        # costs less than gathering every attribute entry into a set.
        pattern = self._pattern
        if pattern is None:
            return False
        walked = trace._walked
        if walked is None:
            walked = trace._walk()
        if walked and self._bits and trace._looked_for >= self._reach:
            return trace._matched & self._bits != 0  # the walk compared every entry
        found = trace._searched.get(pattern)  # may_contain's answer, kept on the view
        if found is None:
            found = trace.may_contain(pattern, self._listed)
        return found and trace.has_attribute_entry(self._entries, self._listed)


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


def encoded_pattern(needles: Iterable[bytes]) -> re.Pattern[bytes]:
    """A regex finding any of ``needles`` (byte strings) for :meth:`TraceView.may_contain`."""
    return re.compile(b"|".join(re.escape(needle) for needle in needles))


_parse_key_value: Final = KeyValue.FromString


def _key_field(key: str) -> bytes:
    return length_delimited(1, key.encode())


def _encoded_pair(key: str, value: str) -> bytes:
    # KeyValue{key = 1, value = 2} holding AnyValue{string_value = 1}, as upb serializes it;
    # proto3 leaves an empty key out of the encoding altogether.
    key_field = _key_field(key) if key else b""
    return key_field + length_delimited(2, length_delimited(1, value.encode()))
