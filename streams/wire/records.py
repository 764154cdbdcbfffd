"""What fits in a Kafka record, and which caudal-spans partition a trace goes to.

Every record Caudal writes stays under `kafka.max_message_bytes` (Kafka's `max.message.bytes`,
1 MiB by default), with RECORD_MARGIN left for the record batch's own framing. One trace's
spans of one input record make one fragment, or several parts when they are too large for one
record (streams.wire.origin numbers the parts).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from streams.wire.origin import with_part
from streams.wire.otlp import split_request

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RECORD_MARGIN",
    "fit_fragments",
    "fragment_budget",
    "partition_for",
    "record_size",
]

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
RECORD_MARGIN = 1024
# Room kept in every caudal-spans record for its headers besides the per-fragment index and
# origin entries (tenant, progress claims), and in every buffered fragment's changelog record
# for its key and prefix (streams.pipeline.buffer.FRAGMENT_OVERHEAD).
_HEADER_RESERVE = 64 * 1024


def partition_for(trace_id: bytes, partitions: int) -> int:
    """The `caudal-spans` partition of a trace: the same answer in every process and release."""
    return zlib.crc32(trace_id) % partitions


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """What a record counts against a message size limit, before RECORD_MARGIN."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)


def fragment_budget(max_message_bytes: int) -> int:
    """The largest fragment that fits a caudal-spans record and a changelog record."""
    return max_message_bytes - RECORD_MARGIN - _HEADER_RESERVE


def fit_fragments(
    blocks: list[ResourceSpans], source: int, budget: int
) -> tuple[list[tuple[bytes, int]], ExportTraceServiceRequest | None]:
    """One trace's spans of one input record as fragments of at most `budget` bytes, each with
    its origin (several parts of `source` when it is too large for one); and the spans too
    large for any record, or None."""
    request = ExportTraceServiceRequest(resource_spans=blocks)
    fragment = request.SerializeToString()
    if len(fragment) <= budget:
        return [(fragment, source)], None
    parts, too_large = split_request(request, budget)
    return [(value, with_part(source, i)) for i, (value, _) in enumerate(parts)], too_large
