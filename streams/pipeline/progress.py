"""Stream progress: when has a `caudal-spans` partition seen everything up to a given time?

A trace's decision window is measured on the input's own clock: it closes `decision.wait`
after the input timestamp of the trace's first record, and it is decided only once the
partition it lives on has received every input record stamped before that moment. A worker
that pauses (a rebalance, a recovery, a crash of the worker that was splitting part of the
input) therefore never decides a trace while its later spans still wait in Kafka; it decides
when the records have caught up. Deciding by wall clock, as the Collector and Refinery do, is
what cuts traces in two at every membership change.

The split stage knows how far it got on each input partition it owns: the largest input
timestamp it has produced there, or, once it has read the partition to its end, a moment before
it last looked. Every record it writes to a `caudal-spans` partition carries those claims in the
`caudal-progress` header, and every partition gets a record with the latest claims alone at
least every 200 ms. Because a claim travels in the partition it is
about, everything it covers is at lower offsets: a worker that has read the claim has read what
it covers. A partition's watermark is the least claim over all input partitions; the claim of
a newer assignment of an input partition (a higher epoch) replaces the older one, so the claims
of a split stage that died stay in force, and hold decisions back, until its input partitions
have a new owner.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError

__all__ = [
    "PROGRESS_HEADER",
    "Claims",
    "DirectClock",
    "PartitionClock",
    "SplitProgress",
    "decode_claims",
    "encode_claims",
]

PROGRESS_HEADER = "caudal-progress"

_HEAD = struct.Struct(">Hd")  # input partitions in all, epoch of the claimant's assignment
_CLAIM = struct.Struct(">Hd")  # input partition, claimed time

# (input partitions in all, epoch, {input partition: time})
Claims = tuple[int, float, dict[int, float]]


def encode_claims(total: int, epoch: float, claims: Mapping[int, float]) -> bytes:
    """The `caudal-progress` header value."""
    parts = [_HEAD.pack(total, epoch)]
    parts.extend(_CLAIM.pack(partition, at) for partition, at in sorted(claims.items()))
    return b"".join(parts)


def decode_claims(value: bytes) -> Claims:
    """Inverse of `encode_claims`; ValueError when the header is malformed."""
    if len(value) < _HEAD.size or (len(value) - _HEAD.size) % _CLAIM.size:
        raise ValueError(f"a {PROGRESS_HEADER} header of {len(value)} bytes")
    total, epoch = _HEAD.unpack_from(value)
    claims = {}
    for offset in range(_HEAD.size, len(value), _CLAIM.size):
        partition, at = _CLAIM.unpack_from(value, offset)
        if partition >= total:
            raise ValueError(f"claim for input partition {partition} of {total}")
        claims[partition] = at
    return total, epoch, claims


class SplitProgress:
    """What one split stage can vouch for, per input partition it owns (the split thread's)."""

    # A record stored at the broker reaches the consumer's queue within fetch.wait.max.ms
    # (100 ms, streams.pipeline.split) and a round trip. When a read returns with partitions
    # drained, they vouch only for what was stored this long before it returned: three times
    # that bound.
    IDLE_MARGIN = 0.3

    def __init__(self, total: int = 0) -> None:
        self.total = total
        self.epoch = 0.0
        self.claims: dict[int, float] = {}
        # Partitions whose end the consumer reached, with no record read since.
        self.at_end: set[int] = set()

    def assigned(self, partitions: Iterable[int], total: int, now: float) -> None:
        """A new assignment of input partitions: nothing is vouched for until it is read."""
        self.total = total
        self.epoch = now
        self.claims = {partition: 0.0 for partition in partitions}
        self.at_end = set()

    def revoked(self, partitions: Iterable[int]) -> None:
        """Partitions no longer read: nothing more is vouched for them."""
        for partition in partitions:
            self.claims.pop(partition, None)
            self.at_end.discard(partition)

    def read(self, messages: Iterable[Any]) -> None:
        """Note which partitions the consumer read to their end (librdkafka's end-of-partition
        events, in order with the records) and which have records again."""
        for message in messages:
            err = message.error()
            partition = message.partition()
            if err is None:
                self.at_end.discard(partition)
            elif err.code() == KafkaError._PARTITION_EOF and partition in self.claims:
                self.at_end.add(partition)

    def had_records(self, partitions: Iterable[int]) -> None:
        """`read` of records alone, no event among them: `partitions` have records again."""
        self.at_end.difference_update(partitions)

    def committed(self, stamps: Mapping[int, float], idle: Iterable[int], now: float) -> None:
        """A batch was produced (`stamps`: its largest input time per partition); `idle`
        partitions had been read to what the broker had when the read returned at `now`."""
        claims = self.claims
        for partition, stamp in stamps.items():
            if partition in claims:
                claims[partition] = max(claims[partition], min(stamp, now))
        for partition in idle:
            if partition in claims:
                claims[partition] = max(claims[partition], now - self.IDLE_MARGIN)

    def header(self) -> bytes | None:
        """The header every record to `caudal-spans` carries, None before any assignment."""
        if not self.claims:
            return None
        return encode_claims(self.total, self.epoch, self.claims)


class PartitionClock:
    """Per `caudal-spans` partition, the time up to which its input has been read.

    Fed from the buffer agent (`observe`, in offset order); read by the decision tick.
    """

    def __init__(self) -> None:
        # partition -> input partition -> (epoch, time)
        self._claims: dict[int, dict[int, tuple[float, float]]] = {}
        self._totals: dict[int, int] = {}
        self._marks: dict[int, float] = {}

    def observe(self, partition: int, header: bytes) -> None:
        """Apply the claims of one record; ValueError when the header is malformed."""
        total, epoch, claims = decode_claims(header)
        known = self._claims.setdefault(partition, {})
        if self._totals.get(partition, total) != total:
            known.clear()  # the input topic was repartitioned: start again
        self._totals[partition] = total
        for source, at in claims.items():
            held = known.get(source)
            if held is None or epoch > held[0] or (epoch == held[0] and at > held[1]):
                known[source] = (epoch, at)
        if len(known) == total:
            self._marks[partition] = min(at for _, at in known.values())

    def watermark(self, partition: int) -> float:
        """Every input record stamped before this time has been read (-inf: not known yet)."""
        return self._marks.get(partition, float("-inf"))

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer reads: their next owner learns their claims."""
        for partition in partitions:
            self._claims.pop(partition, None)
            self._totals.pop(partition, None)
            self._marks.pop(partition, None)


class DirectClock:
    """The watermark when the worker reads the input directly (no split stage to vouch).

    A partition has been read up to the latest input timestamp seen on it, or, while the
    worker has read everything the broker had at its last fetch (`caught_up`), up to a moment
    before now: data stored later than that could still be on its way in a fetch.
    """

    # Faust's consumer waits up to 1.5 s for data in a fetch; a round trip on top.
    FETCH_MARGIN = 2.0

    def __init__(self, caught_up: Callable[[int], bool]) -> None:
        self.caught_up = caught_up
        self._latest: dict[int, float] = {}

    def observe(self, partition: int, stamp: float) -> None:
        """A record stamped `stamp` (input time, seconds) was read from `partition`."""
        if stamp > self._latest.get(partition, float("-inf")):
            self._latest[partition] = stamp

    def watermark(self, partition: int) -> float:
        """Every input record stamped before this time has been read (-inf: not known yet)."""
        latest = self._latest.get(partition, float("-inf"))
        if self.caught_up(partition):
            return max(latest, time.time() - self.FETCH_MARGIN)
        return latest

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions this worker no longer reads."""
        for partition in partitions:
            self._latest.pop(partition, None)
