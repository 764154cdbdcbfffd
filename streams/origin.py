"""Where a fragment's spans entered Caudal: its input partition and offset.

Kafka delivers at least once, twice over in Caudal: the split stage may split an input record
again after a crash between producing and committing (new `caudal-spans` records at new
offsets), and the buffer agent may read a `caudal-spans` record again after a crash or a
rebalance. Both copies carry the same origin, the input record the spans came from (the split
stage writes it per fragment in the `caudal-origin` header; a worker reading the input directly
takes the record's own). A trace remembers, per input partition, the highest offset it has
applied; a fragment at or below it is a copy and is skipped, so re-delivered and re-split spans
are never applied, exported or counted twice.

Packed as one integer (input partition << 48 | offset); a trace's applied origins are encoded
as 8 bytes per input partition its spans came from.
"""

from __future__ import annotations

import struct

__all__ = ["NO_ORIGIN", "add_origin", "covers", "decode_origins", "origin", "pack_origins"]

NO_ORIGIN = -1
_OFFSET_BITS = 48
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_ENTRY = struct.Struct(">Q")


def origin(partition: int, offset: int) -> int:
    """The origin of spans read from `offset` of input partition `partition`."""
    return (partition << _OFFSET_BITS) | (offset & _OFFSET_MASK)


def pack_origins(origins: list[int]) -> bytes:
    """The `caudal-origin` header: one origin per fragment of a record, in index order."""
    return b"".join(_ENTRY.pack(o) for o in origins)


def decode_origins(value: bytes, count: int) -> list[int]:
    """Inverse of `pack_origins`; ValueError unless it holds `count` origins."""
    if len(value) != count * _ENTRY.size:
        raise ValueError(f"{len(value)} bytes of origins for {count} fragments")
    return [o for (o,) in _ENTRY.iter_unpack(value)]


def covers(applied: bytes, fragment: int) -> bool:
    """Has a trace whose applied origins are `applied` already got `fragment`?"""
    if fragment == NO_ORIGIN:
        return False
    partition = fragment >> _OFFSET_BITS
    for (held,) in _ENTRY.iter_unpack(applied):
        if held >> _OFFSET_BITS == partition:
            return fragment <= held
    return False


def add_origin(applied: bytes, fragment: int) -> bytes:
    """`applied` with `fragment` applied (the highest offset per input partition is kept)."""
    if fragment == NO_ORIGIN:
        return applied
    partition = fragment >> _OFFSET_BITS
    entries = [held for (held,) in _ENTRY.iter_unpack(applied)]
    for i, held in enumerate(entries):
        if held >> _OFFSET_BITS == partition:
            entries[i] = max(held, fragment)
            break
    else:
        entries.append(fragment)
    return pack_origins(entries)
