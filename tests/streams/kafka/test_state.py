"""The table store: changelog before the database, no write to a partition handed over, and
no input offset committed before every changelog record is acknowledged."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import rocksdict
from faust.stores.rocksdb import RocksDBOptions

from streams.kafka import faust_seam, state
from streams.kafka.state import (
    ChangelogError,
    PartitionNotOwned,
    RocksMemory,
    TableStore,
    bind_to_commits,
)


class FaustStore:
    """What Faust's RocksDB store offers the seam: a database per partition and the persisted
    changelog offsets (kept in the database under Faust's metadata prefix)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbs: dict[int, rocksdict.Rdict] = {}
        self.offsets: dict[Any, int] = {}
        self.rocksdb_options = RocksDBOptions(use_rocksdict=True)

    def _open_for_partition(self, partition: int) -> rocksdict.Rdict:
        return self.rocksdb_options.open(self.root / f"p{partition}")

    def _db_for_partition(self, partition: int) -> rocksdict.Rdict:
        if partition not in self.dbs:
            self.dbs[partition] = self._open_for_partition(partition)
        return self.dbs[partition]

    def persisted_offset(self, tp: Any) -> int | None:
        return self.offsets.get(tp)

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.offsets[tp] = offset


class Producer:
    """Records produced; `refuse` makes produce raise (a record librdkafka will not take)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.refuse = False
        self.unacknowledged = 0

    def produce(self, topic: str, **record: Any) -> None:
        if self.refuse:
            raise ValueError("refused")
        self.records.append({"topic": topic, **record})

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return self.unacknowledged

    def acknowledge(self, store: TableStore, error: object = None) -> None:
        for i, record in enumerate(self.records):
            message = SimpleNamespace(
                partition=lambda r=record: r["partition"], offset=lambda i=i: i
            )
            store._acked_cb(error, message)


def make_store(
    tmp_path: Path, owned: set[int] | None = None, memory: RocksMemory | None = None
) -> tuple[TableStore, Producer]:
    table = SimpleNamespace(
        changelog_topic=SimpleNamespace(get_topic_name=lambda: "caudal-traces-changelog"),
        data=FaustStore(tmp_path),
    )
    producer = Producer()
    writable = (lambda p: p in owned) if owned is not None else (lambda p: True)
    return TableStore(table, producer, writable, memory), producer


def test_memtables_of_all_partitions_stay_near_the_write_buffer_budget(tmp_path: Path) -> None:
    budget = 4 * 1024 * 1024
    memory = RocksMemory(block_cache=1024 * 1024, write_buffers=budget)
    store, _ = make_store(tmp_path, memory=memory)
    rng, written, peak = random.Random(7), [], 0
    for i in range(48 * 16):  # 48 MiB of incompressible values over four partitions
        partition, key, value = i % 4, i.to_bytes(8, "big"), rng.randbytes(64 * 1024)
        store.put(partition, key, value)
        written.append((partition, key, value))
        peak = max(peak, memory.usage()["memtables"])
    # Past the budget memtables are flushed; writes do not wait for the flush (a stall
    # shared by many databases can last forever), so they pass it by what arrives while the
    # flush runs, not by the 44 MiB Faust's defaults would have kept in memtables ...
    assert peak <= 2 * budget
    assert memory.usage()["block_cache"] <= 1024 * 1024
    # ... and everything is still there, read back from disk through the shared cache.
    assert all(store.get(p, k) == v for p, k, v in written[::97])


@pytest.mark.parametrize(
    ("compression", "written"),
    [("none", "kNoCompression"), ("lz4", "kLZ4Compression"), ("zstd", "kZSTD")],
)
def test_table_files_are_compressed_as_configured(
    tmp_path: Path, compression: str, written: str
) -> None:
    memory = RocksMemory(1024 * 1024, 4 * 1024 * 1024, compression)
    store, _ = make_store(tmp_path, memory=memory)
    store.put(0, b"k", b"v" * 4096)
    options = sorted((tmp_path / "p0").glob("OPTIONS-*"))[-1].read_text().splitlines()
    assert f"compression={written}" in [line.strip() for line in options]


def test_table_files_an_earlier_release_compressed_are_still_read(tmp_path: Path) -> None:
    # Releases before `worker.rocksdb.compression` wrote snappy; each block names its own.
    earlier, _ = make_store(tmp_path, memory=RocksMemory(1024 * 1024, 4 * 1024 * 1024, "snappy"))
    values = {i.to_bytes(4, "big"): bytes([i % 251]) * 3000 for i in range(300)}
    for key, value in values.items():
        earlier.put(0, key, value)
    earlier.table.data.dbs[0].flush()  # into a table file, not only the memtable
    earlier.table.data.dbs.pop(0).close()
    assert list((tmp_path / "p0").glob("*.sst"))
    now, _ = make_store(tmp_path, memory=RocksMemory(1024 * 1024, 4 * 1024 * 1024, "none"))
    assert all(now.get(0, key) == value for key, value in values.items())
    options = sorted((tmp_path / "p0").glob("OPTIONS-*"))[-1].read_text()
    assert "compression=kNoCompression" in options  # reopened as this release opens it


def test_a_put_goes_to_the_changelog_then_the_partitions_database(tmp_path: Path) -> None:
    store, producer = make_store(tmp_path)
    store.put(2, b"k", b"v")
    assert producer.records == [
        {
            "topic": "caudal-traces-changelog",
            "key": b"k",
            "value": b"v",
            "partition": 2,
            "on_delivery": store._acked_cb,
        }
    ]
    assert store.get(2, b"k") == b"v" and store.get(1, b"k") is None
    store.delete(2, b"k")
    assert producer.records[-1]["value"] is None  # a tombstone
    assert store.get(2, b"k") is None


def test_a_record_the_producer_refuses_leaves_the_table_unchanged(tmp_path: Path) -> None:
    store, producer = make_store(tmp_path)
    store.put(0, b"k", b"old")
    producer.refuse = True
    with pytest.raises(ValueError):
        store.put(0, b"k", b"new")
    with pytest.raises(ValueError):
        store.delete(0, b"k")
    assert store.get(0, b"k") == b"old"


def test_no_write_to_a_partition_handed_over(tmp_path: Path) -> None:
    store, producer = make_store(tmp_path, owned={0})
    store.put(0, b"k", b"v")
    with pytest.raises(PartitionNotOwned, match="partition 1"):
        store.put(1, b"k", b"v")
    with pytest.raises(PartitionNotOwned):
        store.delete(1, b"k")
    assert len(producer.records) == 1 and store.get(1, b"k") is None


def test_reads_skip_fausts_own_keys_and_keep_order(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path)
    store.put(0, b"a", b"1")
    store.put(0, b"b", b"2")
    faust_seam.db_for_partition(store.table, 0).put(b"__faust\0offset", b"7")
    assert list(store.items(0)) == [(b"a", b"1"), (b"b", b"2")]
    assert store.get_many(0, [b"b", b"missing", b"a"]) == [b"2", None, b"1"]
    assert store.get_many(0, []) == []


def commit_flush(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], Awaitable[None]]]:
    flushes: list[Callable[[], Awaitable[None]]] = []
    monkeypatch.setattr(state.faust_seam, "run_before_commit", lambda app, f: flushes.append(f))
    return flushes


def test_a_commit_waits_for_the_changelog_and_records_what_the_database_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = commit_flush(monkeypatch)
    store, producer = make_store(tmp_path, owned={0, 1})
    bind_to_commits(object(), producer, [store])
    for partition in (0, 1, 0):
        store.put(partition, b"k", b"v")
    producer.acknowledge(store)
    asyncio.run(flushes[0]())
    offsets = {tp.partition: offset for tp, offset in store.table.data.offsets.items()}
    assert offsets == {0: 2, 1: 1}  # the highest acknowledged offset per partition


def test_a_failed_or_unacknowledged_record_refuses_the_commit_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes = commit_flush(monkeypatch)
    store, producer = make_store(tmp_path)
    others = [1]
    bind_to_commits(object(), producer, [store], others=lambda: others.pop() if others else 0)
    store.put(0, b"k", b"v")
    producer.acknowledge(store, error="broker down")
    # One changelog record and one other record (a late span, a dead letter) failed.
    with pytest.raises(ChangelogError, match="2 failed"):
        asyncio.run(flushes[0]())
    assert store.table.data.offsets == {}, "nothing recorded as held after a failure"
    producer.unacknowledged = 3
    with pytest.raises(ChangelogError, match="3 records unacknowledged"):
        asyncio.run(flushes[0]())
    producer.unacknowledged = 0
    asyncio.run(flushes[0]())  # failures are counted once: the next commit goes through
