"""Dropped decisions at 24 bytes each: 64-bit hashes of trace keys in an open-addressing table.

A late span of a dropped trace needs one answer, "dropped", so the decision cache keeps no
more than a hash of the trace key for it: the table holds each hash in an 8-byte slot (at most
half full, so a lookup touches one or two slots) and a ring of the same hashes in the order
they came, 8 bytes more, for first-in first-out eviction. The hash is the interpreter's own
(SipHash) of the key, 64 bits: with 500,000 decisions held, a key never decided matches one by
chance with probability 500,000 / 2^64 ≈ 3 × 10^-14 per lookup, which would drop the spans of
a trace not yet decided (one in a hundred years at 10,000 new traces a second). Hashes are
never stored or sent anywhere, so the process's hash seed does not matter.

`DroppedSet` is the C type of `streams.pipeline._dropped` where a C compiler built it (a probe
in Python costs about a microsecond, and a full table evicts a hash for each one added, once
per dropped trace), else `PythonDroppedSet`; both keep the same slots in the same order.
"""

from __future__ import annotations

from array import array
from typing import Final

__all__ = ["BYTES_PER_DECISION", "DroppedSet", "PythonDroppedSet", "key_hash"]

_MASK64: Final = (1 << 64) - 1
BYTES_PER_DECISION: Final = 24  # two table slots (half full) and one ring slot


def key_hash(key: bytes) -> int:
    """The 64-bit hash of a trace key (never 0, the empty slot)."""
    return (hash(key) & _MASK64) or 1


class PythonDroppedSet:
    """Hashes of trace keys, first in first out, at most `limit` of them."""

    __slots__ = ("limit", "mask", "table", "ring", "inserted", "evicted")

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        size = 1 << max(4, (2 * max(self.limit, 1) - 1).bit_length())  # at least 2 × limit
        self.mask = size - 1
        self.table = array("Q", bytes(8 * size))
        self.ring = array("Q", bytes(8 * max(self.limit, 1)))
        self.inserted = 0  # hashes ever put in the ring; the next goes to inserted % limit
        self.evicted = 0  # hashes ever taken out of it, oldest first

    def __len__(self) -> int:
        return self.inserted - self.evicted

    @property
    def nbytes(self) -> int:
        """Memory held by the table and the ring."""
        return self.table.itemsize * len(self.table) + self.ring.itemsize * len(self.ring)

    def __contains__(self, hashed: object) -> bool:
        table, mask = self.table, self.mask
        at = hashed & mask  # type: ignore[operator]
        while True:
            held = table[at]
            if held == hashed:
                return True
            if not held:
                return False
            at = (at + 1) & mask

    def add(self, hashed: int) -> None:
        """Hold `hashed` (a `key_hash`), evicting the oldest when full; one already held keeps
        its place."""
        if not self.limit:
            return
        table, mask = self.table, self.mask
        at = hashed & mask
        while held := table[at]:  # one probe: the first empty slot is where it goes
            if held == hashed:
                return
            at = (at + 1) & mask
        if self.inserted - self.evicted >= self.limit:
            self.evict(1)  # may empty a slot nearer home (hashes move back): probe again
            at = hashed & mask
            while table[at]:
                at = (at + 1) & mask
        table[at] = hashed
        self.ring[self.inserted % self.limit] = hashed
        self.inserted += 1

    def evict(self, count: int) -> None:
        """Let go of the `count` oldest hashes."""
        for _ in range(min(count, len(self))):
            self.discard(self.ring[self.evicted % self.limit])
            self.evicted += 1

    def discard(self, hashed: int) -> None:
        """Take `hashed` out of the table (its ring slot stays, and goes with its turn)."""
        table, mask = self.table, self.mask
        at = hashed & mask
        while True:
            held = table[at]
            if not held:
                return
            if held == hashed:
                break
            at = (at + 1) & mask
        # Linear probing: move back every later hash of the run that may sit in the hole.
        hole, probe = at, at
        while True:
            probe = (probe + 1) & mask
            held = table[probe]
            if not held:
                break
            home = held & mask
            # `held` may move to the hole if its home is not in (hole, probe], cyclically.
            if (probe - home) & mask >= (probe - hole) & mask:
                table[hole] = held
                hole = probe
        table[hole] = 0


try:
    from streams.pipeline._dropped import DroppedSet as _NativeDroppedSet
except ImportError:  # built without a C compiler
    DroppedSet: type[PythonDroppedSet] | type[_NativeDroppedSet] = PythonDroppedSet
else:
    DroppedSet = _NativeDroppedSet
