"""Partition-addressed access to a changelogged Faust table backed by RocksDB (rocksdict).

Faust's `table[key] = value` picks the partition from the event being processed, so it cannot be
used from the decision timer, which runs outside any event. Every trace already knows its
partition, so this adapter writes the partition's RocksDB database and the table's changelog
directly: the same two effects `table[key] = value` has, with the partition given explicitly.
Recovery, standby replicas and rebalancing stay Faust's. All RocksDB specifics live here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["TableStore"]

# Faust keeps its own bookkeeping (the persisted changelog offset) in the same database.
_FAUST_METADATA = b"__faust\0"


class TableStore:
    """Bytes → bytes access to one partition of a Faust table at a time."""

    def __init__(self, table: Any) -> None:
        # A faust.Table created with store='rocksdb://' and key/value types bytes.
        self.table = table

    def _db(self, partition: int) -> Any:
        # faust.stores.rocksdb.Store keeps one rocksdict.Rdict per partition.
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The stored value, or None."""
        value = self._db(partition).get(key)
        return bytes(value) if value is not None else None

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Store a value and record it in the changelog (so the next owner recovers it)."""
        self._db(partition).put(key, value)
        self.table.send_changelog(partition, key, value, "raw", "raw")

    def delete(self, partition: int, key: bytes) -> None:
        """Remove a key and write its tombstone to the changelog."""
        self._db(partition).delete(key)
        self.table.send_changelog(partition, key, None, "raw", "raw")

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value stored for a partition."""
        db = self._db(partition)
        for key, value in db.items():
            if not key.startswith(_FAUST_METADATA):
                yield bytes(key), bytes(value)
