"""Dead letters: a record Caudal cannot use goes to the dead-letter topic, with why and whence.

The original key, value and headers are kept so a dead letter can be inspected and replayed.
Every dead letter is counted (caudal_dead_letters_total{reason}); log lines are rate-limited, so
a flood of bad input never becomes a flood of log lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from streams.kafka.clients import ProducerLike, produce
from streams.ops.metrics import DEAD_LETTERS
from streams.wire.records import DEFAULT_MAX_MESSAGE_BYTES, RECORD_MARGIN, record_size

__all__ = [
    "DLQ_DETAIL_HEADER",
    "DLQ_HEADERS_DROPPED",
    "DLQ_PART_HEADER",
    "DLQ_REASON_HEADER",
    "send_dead_letter",
]

log = logging.getLogger(__name__)

DLQ_REASON_HEADER = "caudal-dlq-reason"
DLQ_DETAIL_HEADER = "caudal-dlq-detail"
DLQ_PART_HEADER = "caudal-dlq-part"  # i/n: a value too large for one record, in parts
DLQ_HEADERS_DROPPED = "caudal-dlq-headers-dropped"  # the original headers did not fit
_DETAIL_CHARS = 1000


def send_dead_letter(
    producer: ProducerLike,
    topic: str,
    value: bytes | None,
    *,
    reason: str,
    detail: str,
    key: bytes | None = None,
    origin: tuple[str, int, int] | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    on_delivery: Callable[[Any, Any], None] | None = None,
) -> None:
    """Send a message that cannot be used to the dead-letter topic, reason in its headers.

    The original key, value and headers are kept so the message can be inspected and replayed;
    `origin` is the (topic, partition, offset) it was read from. A value too large for one
    record (`max_bytes`) is sent in parts, each with a `caudal-dlq-part` header `i/n`: join
    their values in order to get it back.
    """
    out = [
        *headers,
        (DLQ_REASON_HEADER, reason.encode()),
        (DLQ_DETAIL_HEADER, detail[:_DETAIL_CHARS].encode("utf-8", "replace")),
    ]
    if origin is not None:
        source_topic, partition, offset = origin
        out += [
            ("caudal-dlq-topic", source_topic.encode()),
            ("caudal-dlq-partition", str(partition).encode()),
            ("caudal-dlq-offset", str(offset).encode()),
        ]
    if record_size(key, None, out) > max_bytes // 4:
        # Headers that could not travel with any part of the value: keep Caudal's own.
        out = [(k, v) for k, v in out[len(headers) :]] + [(DLQ_HEADERS_DROPPED, b"1")]
    budget = max_bytes - RECORD_MARGIN - record_size(key, None, out) - len(DLQ_PART_HEADER) - 24
    data = value or b""
    if len(data) <= budget:
        produce(producer, topic, value=value, key=key, headers=out, on_delivery=on_delivery)
    else:
        parts = [data[i : i + budget] for i in range(0, len(data), budget)]
        for i, part in enumerate(parts):
            part_headers = [*out, (DLQ_PART_HEADER, f"{i + 1}/{len(parts)}".encode())]
            produce(
                producer, topic, value=part, key=key, headers=part_headers, on_delivery=on_delivery
            )
    DEAD_LETTERS.labels(reason).inc()
    if _DEAD_LETTER_LOG.allow(time.monotonic()):
        where = {}
        if origin is not None:
            where = {"topic": origin[0], "partition": origin[1], "offset": origin[2]}
        suppressed = _DEAD_LETTER_LOG.take_suppressed()
        log.warning(
            "dead letter reason=%s detail=%r%s",
            reason,
            detail[:200],
            f" (and {suppressed} more not logged)" if suppressed else "",
            extra=where,
        )


class _LogBudget:
    """At most `burst` lines per `period` seconds; the rest are counted, not logged (a flood of
    bad input must not become a flood of log lines; caudal_dead_letters_total counts all)."""

    def __init__(self, burst: int, period: float) -> None:
        self.burst = burst
        self.period = period
        self.window_start = float("-inf")
        self.used = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if now - self.window_start >= self.period:
            self.window_start, self.used = now, 0
        if self.used < self.burst:
            self.used += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count


_DEAD_LETTER_LOG = _LogBudget(burst=10, period=10.0)
