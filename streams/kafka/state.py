"""Partition-addressed access to a changelogged Faust table backed by RocksDB (rocksdict).

Faust's `table[key] = value` picks the partition from the event being processed, so it cannot be
used from the decision timer, which runs outside any event. Every trace already knows its
partition, so this adapter writes the partition's RocksDB database and the table's changelog
directly: the same two effects `table[key] = value` has, with the partition given explicitly.

The changelog records are produced with confluent-kafka rather than Faust's own producer: Faust
spends ~20 µs of Python per record, librdkafka ~2 µs, and the buffer writes several records per
trace. Faust's guarantee is kept: `bind_to_commits` makes every offset commit of the source
topic wait until the changelog records are acknowledged, as Faust's producer flush does.
Recovery, standby replicas and rebalancing stay Faust's. All RocksDB specifics live here; the
Faust internals it needs are in streams.kafka.faust_seam.

A partition's table is written only while this worker owns it (`writable`, from
streams.pipeline.handover.Ownership): a write to a partition that has been handed over is
refused with PartitionNotOwned, so a late write can never overwrite what the next owner
recovered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import rocksdict
from confluent_kafka import Consumer, KafkaError, TopicPartition

from streams.kafka import faust_seam
from streams.kafka.clients import DELIVERY_WAIT, ProducerLike, produce
from streams.kafka.faust_seam import TP

__all__ = [
    "ChangelogError",
    "ChangelogReader",
    "PartitionNotOwned",
    "RocksMemory",
    "Store",
    "TableStore",
    "bind_to_commits",
    "recover_to_true_end",
]

log = logging.getLogger(__name__)

# Faust keeps its own bookkeeping (the persisted changelog offset) in the same database.
_FAUST_METADATA = b"__faust\0"

# The changelog, not RocksDB's write-ahead log, is what makes the tables durable: a crash loses
# the memtable, including Faust's persisted-offset key written with it, so recovery replays
# the changelog from the last flushed offset. Skipping the WAL makes each write ~3x cheaper.
_NO_WAL = rocksdict.WriteOptions()
_NO_WAL.disable_wal = True  # type: ignore[assignment,method-assign]


class RocksMemory:
    """RocksDB's memory for every partition database of the worker's tables, bounded twice:
    one block cache (data blocks, and the index and filter blocks of every SST file, so they
    cannot grow with the data on disk) and one write buffer manager (all memtables). A partition
    database's memtable is a quarter of the budget; past the budget memtables are flushed, so
    buffered spans beyond it wait on disk instead of in memory.

    Writes never wait for that flush (no stall): with the write buffer manager shared by many
    partition databases, a stalled write waits for memory held by memtables of *other*
    databases, which only their own writes would flush. Under load, after a rebalance, a
    worker stalled that way forever, holding the interpreter lock: no logs, no heartbeats, no
    signal handling. The bound is therefore a flush trigger; memtables can pass it by what is
    written while a flush runs."""

    def __init__(self, block_cache: int, write_buffers: int, compression: str = "none") -> None:
        self.cache = rocksdict.Cache(block_cache)
        self.write_buffers = rocksdict.WriteBufferManager(write_buffers, False)
        self.memtable_size = max(write_buffers // 4, 256 * 1024)
        self.compression = compression

    def configure(self, options: rocksdict.Options) -> None:
        """Put a partition database's options under the shared bounds."""
        options.set_write_buffer_size(self.memtable_size)
        options.set_max_write_buffer_number(2)
        options.set_write_buffer_manager(self.write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        # A buffered span lives one decision window: compressing the table files it is flushed
        # to (RocksDB's default, snappy) took half the CPU of RocksDB's threads in a burst.
        options.set_compression_type(getattr(rocksdict.DBCompressionType, self.compression)())

    def usage(self) -> dict[str, int]:
        """Bytes in use now: `block_cache` and `memtables`."""
        return {"block_cache": self.cache.get_usage(), "memtables": self.write_buffers.get_usage()}


class ChangelogError(RuntimeError):
    """Changelog records were not acknowledged; source offsets must not be committed."""


class PartitionNotOwned(RuntimeError):
    """A write to a table partition this worker does not own (any more)."""


class Store(Protocol):
    """What the buffer and the decision cache need of a table: bytes by partition and key.
    TableStore is the one over Faust's RocksDB tables; tests use one over dicts."""

    topic: str

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]: ...

    def put(self, partition: int, key: bytes, value: bytes) -> None: ...

    def delete(self, partition: int, key: bytes) -> None: ...

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]: ...


def _always(partition: int) -> bool:
    return True


class TableStore:
    """Bytes → bytes access to one partition of a Faust table at a time."""

    def __init__(
        self,
        table: Any,
        producer: ProducerLike,
        writable: Callable[[int], bool] = _always,
        memory: RocksMemory | None = None,
    ) -> None:
        # A faust.Table created with store='rocksdb://' and key/value types bytes, and a
        # confluent_kafka.Producer for its changelog.
        self.table = table
        self.producer = producer
        self.writable = writable
        self.topic = faust_seam.changelog_topic(table)
        self._acked: dict[int, int] = {}
        self.failures = 0
        faust_seam.on_open_partition(table, lambda db: db.set_write_options(_NO_WAL))
        if memory is not None:
            faust_seam.on_rocksdb_options(table, memory.configure)

    def _db(self, partition: int) -> Any:
        return faust_seam.db_for_partition(self.table, partition)

    def _check(self, partition: int) -> None:
        if not self.writable(partition):
            raise PartitionNotOwned(f"{self.topic} partition {partition} is not owned here")

    def get(self, partition: int, key: bytes) -> bytes | None:
        """The stored value, or None."""
        value = self._db(partition).get(key)
        return bytes(value) if value is not None else None

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        """The stored values of `keys`, in order (one RocksDB multi-get)."""
        if not keys:
            return []
        return [bytes(v) if v is not None else None for v in self._db(partition)[keys]]

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        """Store a value and record it in the changelog (so the next owner recovers it)."""
        self._check(partition)
        # Changelog first: a record refused by the producer leaves the table unchanged.
        self._log(partition, key, value)
        self._db(partition).put(key, value)

    def delete(self, partition: int, key: bytes) -> None:
        """Remove a key and write its tombstone to the changelog."""
        self._check(partition)
        self._log(partition, key, None)
        self._db(partition).delete(key)

    def items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every key and value stored for a partition."""
        for key, value in self._db(partition).items():
            if not key.startswith(_FAUST_METADATA):
                yield bytes(key), bytes(value)

    def _log(self, partition: int, key: bytes, value: bytes | None) -> None:
        produce(
            self.producer,
            self.topic,
            key=key,
            value=value,
            partition=partition,
            on_delivery=self._acked_cb,
        )

    def _acked_cb(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures += 1
            return
        partition, offset = msg.partition(), msg.offset()
        if offset > self._acked.get(partition, -1):
            self._acked[partition] = offset

    def record_persisted_offsets(self) -> None:
        """Tell Faust which changelog offsets the local database holds (what its own producer
        callback does), so a restart on the same state directory replays only what is newer."""
        acked, self._acked = self._acked, {}
        for partition, offset in acked.items():
            if self.writable(partition):  # a handed-over partition's database is closed
                faust_seam.set_persisted_offset(self.table, self.topic, partition, offset)


def bind_to_commits(
    app: Any,
    producer: ProducerLike,
    stores: list[TableStore],
    others: Callable[[], int] = lambda: 0,
) -> None:
    """Make Faust's pre-commit producer flush also flush `producer` (and check the stores).

    Faust flushes its producer before committing source offsets so that table changes are in
    the changelog before the input that caused them is marked done; the changelog records of
    `stores` go through `producer`, so it has to be part of that flush. `others` counts the
    other records of `producer` that failed since the last flush (late spans, dead letters).

    A failure refuses the commit: the worker stops (Faust's commit fails) and the input is
    read again from the last commit, by this worker after a restart or by the next owner.
    Every record is sized under kafka.max_message_bytes, so only a broker failure that
    outlasts librdkafka's own retries (streams.kafka.clients.DELIVERY_TIMEOUT) gets here.
    """

    async def flush() -> None:
        remaining = await asyncio.to_thread(producer.flush, DELIVERY_WAIT)
        failures = sum(store.failures for store in stores) + others()
        for store in stores:
            store.failures = 0
        if remaining or failures:
            raise ChangelogError(
                f"{remaining} records unacknowledged, {failures} failed: "
                "not committing input offsets"
            )
        for store in stores:
            store.record_persisted_offsets()

    faust_seam.run_before_commit(app, flush)


def recover_to_true_end(app: Any, client_config: dict[str, Any], stores: list[TableStore]) -> None:
    """Make Faust's recovery read changelogs to their true end, fast.

    Recovery stops at the end offset the broker reports. Some Kafka-protocol brokers (tansu)
    report the base offset of the last record batch + 1 instead of its last offset + 1, which
    would stop recovery early and lose buffered traces. Reading the batch at the reported end
    gives the true end on every broker (on Apache Kafka it confirms the reported one).

    Faust then replays each newly assigned partition's changelog at about 10,000 records a
    second, so 50,000 buffered traces of three fragments took 16 s to hand over. Before Faust
    compares its persisted offsets with those ends, the active partitions of `stores` are
    restored here instead, with one confluent-kafka consumer and RocksDB write batches (about
    ten times faster); Faust finds them up to date and goes straight on.
    """
    reader = ChangelogReader(client_config)
    by_topic = {store.topic: store for store in stores}

    async def correct(ends: dict[TP, int]) -> Mapping[TP, int]:
        ends = await asyncio.to_thread(reader.true_ends, ends)
        for topic, store in by_topic.items():
            actives = set(faust_seam.assigned_actives(app, topic))
            wanted = {tp.partition: end for tp, end in ends.items() if tp.topic == topic}
            wanted = {p: end for p, end in wanted.items() if p in actives and end}
            if wanted:
                began = time.monotonic()
                restored = await asyncio.to_thread(reader.restore, store, wanted)
                for partition, offset in restored.items():
                    faust_seam.mark_restored(app, topic, partition, offset)
                if restored:
                    log.info(
                        "changelog restored topic=%s partitions=%s records=%d seconds=%.2f",
                        topic,
                        sorted(restored),
                        reader.applied,
                        time.monotonic() - began,
                    )
        return ends

    faust_seam.wrap_highwaters(app, correct)


class ChangelogReader:
    """Reads changelogs with one confluent-kafka consumer for the worker's life: their true
    end offsets, and table partitions restored up to them.

    One consumer, because a handover asks several times and a new consumer costs a
    connection and a metadata round trip (about a second) each time.
    """

    def __init__(self, client_config: dict[str, Any], timeout: float = 15.0) -> None:
        self.config = {
            **client_config,
            "group.id": "caudal-changelog-reader",
            "enable.auto.commit": False,
            # A start below the log's first offset (removed by retention) reads from the first.
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
        self.timeout = timeout
        self.consumer: Consumer | None = None
        self.lock = threading.Lock()
        self.applied = 0  # records applied by the last restore

    def _consumer(self) -> Consumer:
        if self.consumer is None:
            self.consumer = Consumer(self.config)
        return self.consumer

    def true_ends(self, ends: dict[TP, int]) -> dict[TP, int]:
        """`ends` with each reported end moved to one past the last record actually there."""
        probe = {tp: end for tp, end in ends.items() if end is not None and end > 0}
        if not probe:
            return ends
        starts = {(tp.topic, tp.partition): end - 1 for tp, end in probe.items()}
        for (topic, partition), last in self._read(starts, None).items():
            tp = TP(topic, partition)
            ends[tp] = max(ends[tp], last + 1)
        return ends

    def restore(self, store: TableStore, ends: Mapping[int, int]) -> dict[int, int]:
        """Apply a table's changelog to its partitions' databases, from the offset each holds
        up to `ends` (exclusive); the last offset applied per partition restored."""
        table, topic = store.table, store.topic
        starts = {}
        for partition, end in ends.items():
            held = faust_seam.persisted_offset(table, topic, partition)
            start = 0 if held is None else held + 1
            if start < end:
                starts[(topic, partition)] = start
        self.applied = 0
        if not starts:
            return {}
        batches: dict[int, rocksdict.WriteBatch] = {}

        def apply(msg: Any) -> None:
            partition = msg.partition()
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            value = msg.value()
            if value is None:
                batch.delete(msg.key())
            else:
                batch.put(msg.key(), value)
            self.applied += 1
            if len(batch) >= 10_000:
                faust_seam.db_for_partition(table, partition).write(batch)
                batches[partition] = rocksdict.WriteBatch(raw_mode=True)

        stop = {key: ends[key[1]] for key in starts}
        last = self._read(starts, apply, stop)
        for partition, batch in batches.items():
            faust_seam.db_for_partition(table, partition).write(batch)
        for (_, partition), offset in last.items():
            faust_seam.set_persisted_offset(table, topic, partition, offset)
        return {partition: offset for (_, partition), offset in last.items()}

    def _read(
        self,
        starts: dict[tuple[str, int], int],
        apply: Callable[[Any], None] | None,
        stop: Mapping[tuple[str, int], int] | None = None,
    ) -> dict[tuple[str, int], int]:
        """Read each partition from its start to its end (`stop`, exclusive, else the end the
        consumer finds); the last offset read per partition. ChangelogError if it takes longer
        than the timeout: recovering to a guessed end could lose buffered traces."""
        last: dict[tuple[str, int], int] = {}
        with self.lock:
            consumer = self._consumer()
            consumer.assign([TopicPartition(t, p, start) for (t, p), start in starts.items()])
            try:
                pending = set(starts)
                deadline = time.monotonic() + self.timeout
                while pending and time.monotonic() < deadline:
                    for msg in consumer.consume(5000, timeout=0.2):
                        key = (msg.topic(), msg.partition())
                        err = msg.error()
                        if err is not None:
                            if err.code() == KafkaError._PARTITION_EOF:
                                pending.discard(key)
                            continue
                        if key not in pending:
                            continue
                        offset = msg.offset()
                        assert offset is not None  # a record, not an event
                        if stop is not None and offset >= stop[key]:
                            pending.discard(key)
                            continue
                        if apply is not None:
                            apply(msg)
                        last[key] = offset
                        if stop is not None and offset + 1 >= stop[key]:
                            pending.discard(key)
            finally:
                consumer.unassign()
        if pending:
            raise ChangelogError(
                f"{sorted(pending)} not read to their end within {self.timeout:.0f}s"
            )
        return last
