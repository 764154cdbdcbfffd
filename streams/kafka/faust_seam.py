"""Every use of Faust's internals, in one place, checked when a worker starts.

Caudal drives Faust further than its public API goes: it writes table partitions from the
decision timer (outside any event), flushes its own changelog producer inside Faust's
pre-commit flush, reads changelogs to their true end, and runs its handover before Faust's
revoke. Each of those touches an attribute Faust does not promise to keep. They are all here,
and `check_faust` names the first one missing, so a Faust upgrade that moved one fails at start
with that name instead of losing traces at the first rebalance.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
from aiokafka.consumer.group_coordinator import GroupCoordinator
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.recovery import Recovery
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

__all__ = [
    "FaustSeamError",
    "TP",
    "assigned_actives",
    "assignment",
    "changelog_topic",
    "check_faust",
    "commit_processed",
    "db_for_partition",
    "highwater",
    "limit_fetch_wait",
    "mark_restored",
    "on_open_partition",
    "on_rocksdb_options",
    "run_before_commit",
    "run_before_revoke",
    "persisted_offset",
    "set_persisted_offset",
    "watch_heartbeats",
    "wrap_highwaters",
]

# (owner, attribute) pairs this module relies on.
_REQUIRED = (
    (RocksDBOptions, "as_options"),
    (RocksDBStore, "_db_for_partition"),
    (RocksDBStore, "_open_for_partition"),
    (RocksDBStore, "set_persisted_offset"),
    (RocksDBStore, "persisted_offset"),
    (RocksDBStore, "revoke_partitions"),
    (faust.App, "_on_partitions_revoked"),
    (faust.App, "_new_consumer"),
    (Recovery, "on_recovery_completed"),
    (AIOKafkaConsumerThread, "_consumer"),
    (AIOKafkaConsumerThread, "_create_worker_consumer"),
    (GroupCoordinator, "_do_heartbeat"),
)


class FaustSeamError(RuntimeError):
    """The installed Faust lacks an internal Caudal relies on."""


def check_faust(required: Iterable[tuple[object, str]] = _REQUIRED) -> None:
    """Raise FaustSeamError naming the first internal that is missing."""
    for owner, name in required:
        if not hasattr(owner, name):
            owner_name = getattr(owner, "__qualname__", repr(owner))
            raise FaustSeamError(
                f"faust-streaming {faust.__version__} has no {owner_name}.{name}; "
                "Caudal supports faust-streaming 0.15 (see pyproject.toml)"
            )


def changelog_topic(table: Any) -> str:
    """The name of a table's changelog topic."""
    return str(table.changelog_topic.get_topic_name())


def db_for_partition(table: Any, partition: int) -> Any:
    """The rocksdict.Rdict of one partition of a table (opened by Faust if need be).

    Never keep the result: Faust closes a revoked partition's database by dropping its last
    reference, and a reference kept elsewhere keeps RocksDB's lock, so the partition cannot be
    opened again when it comes back.
    """
    return table.data._db_for_partition(partition)


def on_open_partition(table: Any, configure: Callable[[Any], None]) -> None:
    """Call `configure(db)` on every partition database Faust opens for `table`."""
    store = table.data
    open_db = store._open_for_partition

    def open_and_configure(partition: int) -> Any:
        db = open_db(partition)
        configure(db)
        return db

    store._open_for_partition = open_and_configure


def on_rocksdb_options(table: Any, configure: Callable[[Any], None]) -> None:
    """Call `configure(options)` on the rocksdict.Options Faust opens each of `table`'s
    partition databases with (Faust's own are per database: a 2 GiB block cache and three
    64 MiB memtables each)."""
    rocksdb_options = table.data.rocksdb_options
    as_options = rocksdb_options.as_options

    def configured() -> Any:
        options = as_options()
        configure(options)
        return options

    rocksdb_options.as_options = configured


def persisted_offset(table: Any, topic: str, partition: int) -> int | None:
    """The changelog offset a partition's local database holds (None: nothing yet)."""
    value = table.data.persisted_offset(TP(topic, partition))
    return None if value is None else int(value)


def set_persisted_offset(table: Any, topic: str, partition: int, offset: int) -> None:
    """Record the changelog offset a partition's local database holds (Faust's own key)."""
    table.data.set_persisted_offset(TP(topic, partition), offset)


def mark_restored(app: faust.App, topic: str, partition: int, offset: int) -> None:
    """Tell Faust's recovery that a changelog partition is applied up to `offset`, so it
    replays only what comes after (it read the persisted offsets before the restore)."""
    offsets = getattr(app.tables.recovery, "active_offsets", None)  # type: ignore[attr-defined]
    if offsets is None:
        raise FaustSeamError("faust.tables.recovery.Recovery has no active_offsets")
    tp = TP(topic, partition)
    offsets[tp] = max(offsets.get(tp) or -1, offset)


def run_before_commit(app: faust.App, flush: Callable[[], Awaitable[None]]) -> None:
    """Run `flush` inside Faust's producer flush, which precedes every offset commit and the
    flush of a revoke: what `flush` waits for is durable before input offsets are committed."""
    faust_flush = app.producer.flush

    async def flush_all() -> None:
        await faust_flush()
        await flush()

    app.producer.flush = flush_all  # type: ignore[method-assign]


def run_before_revoke(
    app: faust.App,
    before: Callable[[set[TP]], Awaitable[None]],
    after: Callable[[set[TP]], Awaitable[None]],
) -> None:
    """Run `before(revoked)` first when partitions are revoked and `after(revoked)` once
    Faust's own revoke (wait for in-flight events, flush) is done. Must be called before the
    app's consumer is created: the consumer keeps the callback it was created with."""
    if getattr(app, "_consumer", None) is not None:
        raise FaustSeamError("run_before_revoke must be called before the consumer exists")
    faust_revoke = app._on_partitions_revoked

    async def revoke(revoked: set[TP]) -> None:
        await before(revoked)
        try:
            await faust_revoke(revoked)
        finally:
            await after(revoked)

    app._on_partitions_revoked = revoke  # type: ignore[method-assign]


def limit_fetch_wait(app: faust.App, seconds: float) -> None:
    """Make the worker's group consumer wait at most `seconds` for data in a fetch.

    Faust fixes it at 1.5 s, and a broker answers a connection's requests in order: every
    end-offset or earliest-offset request of a recovery waited behind an idle fetch, about
    1.5 s each, four or five of them per handover.
    """
    thread = app.consumer._thread  # type: ignore[attr-defined]
    create = thread._create_worker_consumer

    def create_with_limit(transport: Any) -> Any:
        consumer = create(transport)
        consumer._fetch_max_wait_ms = int(seconds * 1000)
        return consumer

    thread._create_worker_consumer = create_with_limit


def wrap_highwaters(
    app: faust.App, correct: Callable[[dict[TP, int]], Awaitable[Mapping[TP, int]]]
) -> None:
    """Pass the end offsets Faust's recovery reads through `correct` first."""
    reported = app.consumer.highwaters

    async def highwaters(*tps: TP) -> Mapping[TP, int]:
        return await correct(dict(await reported(*tps)))

    app.consumer.highwaters = highwaters  # type: ignore[method-assign]


def watch_heartbeats(app: faust.App, on_success: Callable[[float], None]) -> bool:
    """Call `on_success(sent)` (time.monotonic() when it was sent) for every heartbeat the group
    coordinator accepted. False when the consumer is not running yet; idempotent."""
    consumer = getattr(app.consumer, "_thread", None)
    consumer = getattr(consumer, "_consumer", None)
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return False
    if getattr(coordinator, "_caudal_watched", False):
        return True
    beat = coordinator._do_heartbeat

    async def watched() -> bool:
        sent = time.monotonic()
        ok = bool(await beat())
        if ok:
            on_success(sent)
        return ok

    coordinator._do_heartbeat = watched
    coordinator._caudal_watched = True
    return True


async def commit_processed(app: faust.App, topic: str, offsets: Mapping[int, int]) -> bool:
    """Commit `offsets` (partition -> next offset to read) of `topic` with the worker's group
    consumer, from inside a revoke: the membership is still valid until the revoke returns.
    Faust's own commit cannot: it forgets a revoked partition's acknowledged offsets before
    the revoke starts. False (logged by the caller) when the group refused it."""
    from aiokafka.structs import OffsetAndMetadata
    from aiokafka.structs import TopicPartition as KafkaTP

    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._consumer
    if consumer is None or not offsets:
        return False
    wanted = {KafkaTP(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}

    async def commit() -> None:
        await consumer.commit(wanted)

    try:
        await thread.call_thread(commit)
    except Exception:
        return False
    return True


def assigned_actives(app: faust.App, topic: str) -> list[int]:
    """Partitions of `topic` this worker is the active owner of, in order."""
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)


def assignment(app: faust.App, topic: str) -> list[TP]:
    """The consumer's current assignment on `topic` (empty between assignments)."""
    try:
        return [tp for tp in app.consumer.assignment() if tp.topic == topic]
    except Exception:  # no consumer yet, or between assignments
        return []


def highwater(app: faust.App, tp: TP) -> int | None:
    """The end offset the consumer last saw for `tp`, None if unknown."""
    try:
        value = app.consumer.highwater(tp)
    except Exception:
        return None
    return None if value is None or value < 0 else int(value)
