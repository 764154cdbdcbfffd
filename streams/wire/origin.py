"""Where a fragment's spans entered Caudal: its input partition, offset and part.

Kafka delivers at least once, twice over in Caudal: the split stage may split an input record
again after a crash between producing and committing (new `caudal-spans` records at new
offsets), and the buffer agent may read a `caudal-spans` record again after a crash or a
rebalance. Both copies carry the same origin, the input record the spans came from (the split
stage writes it per fragment in the `caudal-origin` header; a worker reading the input directly
takes the record's own). A trace remembers, per input partition, the highest origin it has
applied; a fragment at or below it is a copy and is skipped, so re-delivered and re-split spans
are never applied, exported or counted twice.

One trace's spans of one input record make one fragment, unless it is too large for a Kafka
record (`kafka.max_message_bytes`): then it is cut into parts, numbered from 0, which travel in
order on one partition. An origin orders by (offset, part) within an input partition.

Packed as one integer (partition << 64 | offset << 16 | part); encoded as 12 bytes (`>HQH`) in
headers, in buffered fragments and in a trace's applied origins (one entry per input partition).
"""

from __future__ import annotations

import struct

__all__ = [
    "ENTRY_BYTES",
    "NO_ORIGIN",
    "add_origin",
    "covers",
    "decode_origin",
    "decode_origins",
    "encode_origin",
    "origin",
    "pack_origins",
    "with_part",
]

NO_ORIGIN = -1
_ENTRY = struct.Struct(">HQH")
ENTRY_BYTES = _ENTRY.size
_NONE = b"\xff" * ENTRY_BYTES  # NO_ORIGIN, encoded
_POSITION = (1 << 64) - 1  # offset and part
_OFFSET = (1 << 48) - 1
_LEGACY = struct.Struct(">Q")


def origin(partition: int, offset: int, part: int = 0) -> int:
    """The origin of part `part` of spans read from `offset` of input partition `partition`."""
    return (partition << 64) | (offset << 16) | part


def with_part(source: int, part: int) -> int:
    """The origin of part `part` of the spans of `source` (NO_ORIGIN stays NO_ORIGIN)."""
    return source if source == NO_ORIGIN else (source & ~0xFFFF) | part


def encode_origin(source: int) -> bytes:
    """12 bytes for one origin."""
    if source == NO_ORIGIN:
        return _NONE
    return _ENTRY.pack(source >> 64, (source >> 16) & _OFFSET, source & 0xFFFF)


def decode_origin(data: bytes | memoryview, at: int = 0) -> int:
    """Inverse of `encode_origin`, reading 12 bytes at `at`."""
    if data[at : at + ENTRY_BYTES] == _NONE:
        return NO_ORIGIN
    partition, offset, part = _ENTRY.unpack_from(data, at)
    return origin(partition, offset, part)


def pack_origins(origins: list[int]) -> bytes:
    """The `caudal-origin` header: one origin per fragment of a record, in index order."""
    return b"".join([encode_origin(o) for o in origins])


def decode_origins(value: bytes, count: int) -> list[int]:
    """Inverse of `pack_origins`; ValueError unless it holds `count` origins."""
    if len(value) == count * ENTRY_BYTES:
        return [
            NO_ORIGIN
            if (p, o, part) == (0xFFFF, 0xFFFFFFFFFFFFFFFF, 0xFFFF)
            else (p << 64) | (o << 16) | part
            for p, o, part in _ENTRY.iter_unpack(value)
        ]  # `origin`, inline: this runs once per fragment read
    if len(value) == count * _LEGACY.size:
        # Written by a split stage of the release before parts (partition << 48 | offset).
        return [origin(o >> 48, o & ((1 << 48) - 1)) for (o,) in _LEGACY.iter_unpack(value)]
    raise ValueError(f"{len(value)} bytes of origins for {count} fragments")


def covers(applied: bytes, fragment: int) -> bool:
    """Has a trace whose applied origins are `applied` already got `fragment`?"""
    if fragment == NO_ORIGIN or not applied:
        return False
    partition = fragment >> 64
    for i in range(0, len(applied), ENTRY_BYTES):
        held = decode_origin(applied, i)
        if held >> 64 == partition:
            return fragment & _POSITION <= held & _POSITION
    return False


def add_origin(applied: bytes, fragment: int) -> bytes:
    """`applied` with `fragment` applied (the highest origin per input partition is kept)."""
    if fragment == NO_ORIGIN:
        return applied
    if not applied:  # a trace's first fragment
        return encode_origin(fragment)
    partition = fragment >> 64
    entries = [decode_origin(applied, i) for i in range(0, len(applied), ENTRY_BYTES)]
    for i, held in enumerate(entries):
        if held >> 64 == partition:
            entries[i] = max(held, fragment)
            break
    else:
        entries.append(fragment)
    return pack_origins(entries)
