"""How a partition changes hands: ownership, the decision tick, revoke and recovery.

The protocol (README, "How a partition changes hands"):
- Revoke begins: every partition stops being *owned* at once, before Faust's revoke runs: no
  new decision starts. A decision batch already under way finishes (its kept traces are
  produced; its decisions and tombstones are written) while the partitions are *draining*,
  then Faust waits for in-flight events and flushes the changelog producer, so everything this
  worker did is in the changelog before the group moves on. After that nothing of the revoked
  partitions may be written (streams.kafka.state refuses it).
- Assignment: the queues, decisions and progress claims of partitions that went elsewhere are
  dropped; Faust closes their databases (nothing here keeps a handle) and recovers the
  assigned ones from their changelogs, to the true end (streams.kafka.state.recover_to_true_end).
- Recovered: the decision queues of newly assigned partitions are rebuilt from the table, then
  the partitions are owned and the tick decides them, on their own clock
  (streams.pipeline.progress): a trace whose later spans are still in Kafka waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from streams.kafka import faust_seam
from streams.kafka.clients import DELIVERY_WAIT, ProducerLike
from streams.ops.metrics import PARTITION_RECOVERY, WORKER_READY
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache

__all__ = ["DecisionTick", "Handover", "Lease", "LeaseLapsed", "Ownership", "Recovery"]

log = logging.getLogger(__name__)


class LeaseLapsed(RuntimeError):
    """The lease lapsed and the partitions were revoked meanwhile: records read under the old
    assignment cannot be applied or skipped safely, so the worker restarts and rejoins."""


@dataclass
class Lease:
    """How long the group coordinator is sure to keep this worker's partitions with it.

    The coordinator gives a member's partitions away only after `session_timeout` without a
    heartbeat from it, counted from when it received the last one; a heartbeat is received
    after it was sent. So until `sent + session_timeout` of the last accepted heartbeat nobody
    else owns our partitions. A worker that was frozen (a pause of the process, a stalled
    network) and wakes after that writes nothing until a heartbeat is accepted again, or its
    partitions are revoked: it cannot overwrite what a new owner recovered.
    """

    session_timeout: float
    margin: float = 1.0
    until: float = float("inf")  # no lease checks until the first renewal

    def renew(self, sent: float) -> None:
        """A heartbeat sent at `sent` (time.monotonic()) was accepted."""
        self.until = max(
            self.until if self.until != float("inf") else 0.0,
            sent + self.session_timeout - self.margin,
        )

    def valid(self) -> bool:
        """Is this worker still sure to be the owner of its partitions?"""
        return time.monotonic() < self.until


@dataclass
class Ownership:
    """Which partitions this worker may decide (owned) and write (owned or draining)."""

    owned: frozenset[int] = frozenset()
    draining: frozenset[int] = frozenset()
    # Bumped when ownership is taken away: a loop that awaited sees that it changed.
    generation: int = 0
    lease: Lease | None = None

    def owns(self, partition: int) -> bool:
        """May traces of this partition be decided?"""
        return partition in self.owned and self.leased()

    def writable(self, partition: int) -> bool:
        """May this partition's tables be written?"""
        return (partition in self.owned or partition in self.draining) and self.leased()

    def leased(self) -> bool:
        """The lease holds (or there is none)."""
        return self.lease is None or self.lease.valid()

    async def wait_leased(self, poll: float = 0.05) -> None:
        """Return once the lease holds; LeaseLapsed if the partitions were revoked meanwhile."""
        generation = self.generation
        while not self.leased():
            await asyncio.sleep(poll)
            if self.generation != generation:
                raise LeaseLapsed("partitions revoked while this worker's lease had lapsed")

    def begin_revoke(self) -> None:
        """Stop deciding everything; let what is under way finish writing."""
        self.draining = self.owned | self.draining
        self.owned = frozenset()
        self.generation += 1

    def end_revoke(self) -> None:
        """Faust's revoke is done: nothing of the revoked partitions is written any more."""
        self.draining = frozenset()

    def assign(self, partitions: frozenset[int]) -> None:
        """The recovered partitions are this worker's."""
        self.owned = partitions


@dataclass
class DecisionTick:
    """One run of the decision timer: decide due traces of owned partitions, batch by batch.

    Holds `lock` while a batch is under way, so a revoke waits for it rather than leaving its
    kept traces produced and its decisions unwritten.
    """

    decider: Decider
    producer: ProducerLike
    ownership: Ownership
    clock: Any  # streams.pipeline.progress.PartitionClock or DirectClock
    batch_limit: Callable[[], int]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flush_timeout: float = DELIVERY_WAIT  # every record acknowledged or failed by then

    async def __call__(self) -> None:
        """Decide until nothing owned is due, or ownership changes."""
        async with self.lock:
            generation = self.ownership.generation
            while (
                self.ownership.owned
                and self.ownership.generation == generation
                and self.ownership.leased()
            ):
                batch = self.decider.decide_due(
                    time.time(), self.batch_limit(), self.clock.watermark, self.ownership.owned
                )
                if not batch.items:
                    return
                if await asyncio.to_thread(self.producer.flush, self.flush_timeout):
                    # Unacknowledged: keep those traces buffered and decide them again.
                    batch.failed.update(key for key, _, r in batch.items if r.kept)
                self.decider.complete(batch, time.time(), self.ownership.writable)
                # Decisions and tombstones durable now, not at the next commit: a crash after
                # the kept traces were acknowledged re-exports only what this flush covers.
                await asyncio.to_thread(self.producer.flush, self.flush_timeout)
                if batch.failed:
                    return  # the next tick tries again: no tight loop while the broker fails


async def _no_commit(offsets: dict[int, int]) -> bool:
    return True


@dataclass
class Handover:
    """Revoke, assignment and recovery of the buffer's partitions (see the module docstring)."""

    ownership: Ownership
    tick: DecisionTick
    buffer: TraceBuffer
    cache: DecisionCache
    clock: Any
    on_ready: Callable[[frozenset[int]], None]
    on_unready: Callable[[], None]
    # Last offset processed per partition, and how to commit (partition -> next offset).
    read_offsets: Callable[[], dict[int, int]] = dict
    commit: Callable[[dict[int, int]], Awaitable[bool]] = _no_commit
    held: frozenset[int] = frozenset()
    assigned_at: float | None = None

    async def before_revoke(self, revoked: object) -> None:
        """First thing on revoke: stop deciding, wait for the batch under way."""
        self.ownership.begin_revoke()
        self.on_unready()
        WORKER_READY.set(0)
        async with self.tick.lock:
            pass

    async def after_revoke(self, revoked: object) -> None:
        """Faust flushed what the revoked partitions produced: commit what was read, so the
        next owner does not read it again, then they are read-only."""
        try:
            offsets = {p: o + 1 for p, o in self.read_offsets().items() if p in self.held}
            if offsets and not await self.commit(offsets):
                log.warning("commit on revoke refused: the next owner reads again and skips")
        finally:
            self.ownership.end_revoke()

    def assigned(self, actives: frozenset[int]) -> None:
        """The new assignment is known: forget what went elsewhere; recovery starts."""
        self.assigned_at = time.monotonic()
        self._let_go(actives)

    def _let_go(self, actives: frozenset[int]) -> None:
        gone = self.held - actives
        if gone:
            self.buffer.forget(gone)
            self.cache.forget_partitions(gone)
            self.clock.forget(gone)
            log.info("partitions handed over partitions=%s", sorted(gone))
        self.held = self.held & actives

    def recovered(self, actives: frozenset[int]) -> None:
        """Tables recovered: rebuild queues of newly assigned partitions, then own them all."""
        self._let_go(actives)
        new = actives - self.held
        unreadable = self.buffer.rebuild(sorted(new))
        bad_decisions = self.cache.rebuild(sorted(new))
        self.held = actives
        self.ownership.assign(actives)
        self.tick.decider.settle_recovered(sorted(new), unreadable, bad_decisions)
        took = time.monotonic() - self.assigned_at if self.assigned_at is not None else 0.0
        PARTITION_RECOVERY.observe(took)
        WORKER_READY.set(1)
        self.on_ready(actives)
        log.info(
            "partitions recovered partitions=%s new=%s traces=%d decisions=%d seconds=%.2f",
            sorted(actives),
            sorted(new),
            len(self.buffer),
            len(self.cache),
            took,
        )


@dataclass
class Recovery:
    """Faust's assignment and recovery signals for the buffer's partitions, to the Handover.

    On assignment the group has just confirmed the membership: heartbeats renew the lease from
    there. On recovery the tables are at the changelogs' true end and the handover rebuilds.
    """

    app: Any
    handover: Handover
    ownership: Ownership
    source_topic: str

    def _actives(self) -> frozenset[int]:
        return frozenset(faust_seam.assigned_actives(self.app, self.source_topic))

    async def on_assigned(self, app: Any, assigned: Any, **kwargs: Any) -> None:
        """Faust's on_partitions_assigned signal."""
        lease = self.ownership.lease
        if lease is not None:
            lease.renew(time.monotonic())
            if not faust_seam.watch_heartbeats(app, lease.renew):
                log.warning("heartbeats cannot be watched: worker runs without its lease")
                self.ownership.lease = None
        self.handover.assigned(self._actives())

    async def on_recovered(self) -> None:
        """The `traces` table's on_recover callback."""
        try:
            self.handover.recovered(self._actives())
        except Exception as exc:
            # Faust drops exceptions raised in recovery callbacks; without this the worker
            # would report ready and never decide anything.
            log.exception("buffer recovery failed")
            await self.app.crash(exc)
