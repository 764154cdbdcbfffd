"""The decision cache at Refinery's density: 24 bytes per dropped decision, under 200 per kept
one, and a dropped trace's late spans still dropped."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest

from streams.pipeline.decisions import DROPPED, DecisionCache, Remembered
from streams.pipeline.dropped import DroppedSet, PythonDroppedSet, key_hash
from streams.wire.origin import origin, pack_origins
from streams.wire.tracekey import trace_key


class NullStore:
    """A table that keeps nothing (RocksDB's memory is not the cache's)."""

    topic = "decisions"

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        pass

    def delete(self, partition: int, key: bytes) -> None:
        pass

    def items(self, partition: int):  # type: ignore[no-untyped-def]
        return iter(())


def decisions(
    rng: random.Random, count: int, kept: bool, start: float = 1e9
) -> list[tuple[bytes, Remembered]]:
    out = []
    for i in range(count):
        key = trace_key(rng.randbytes(16), "default")
        origins = pack_origins(
            [origin(rng.randrange(12), rng.randrange(1 << 40)) for _ in range(3)]
        )
        policy = "errors" if kept else "none"
        out.append(
            (
                key,
                Remembered(
                    start + i, i % 12, kept, policy, 1.0 if kept else 0.0, "default", origins
                ),
            )
        )
    return out


def test_the_default_sizes_hold_under_32_bytes_dropped_and_200_kept() -> None:
    rng = random.Random(3)
    dropped, kept = decisions(rng, 500_000, False), decisions(rng, 100_000, True)
    gc.collect()
    tracemalloc.start()
    cache = DecisionCache(NullStore(), kept=100_000, dropped=500_000, ttl=1e12)  # type: ignore[arg-type]
    empty = tracemalloc.get_traced_memory()[0]
    for start in range(0, 500_000, 1000):  # a tick's batch at a time
        cache.persist_many(dropped[start : start + 1000])
    full_of_drops = tracemalloc.get_traced_memory()[0]
    for start in range(0, 100_000, 1000):
        cache.persist_many(kept[start : start + 1000])
    cache.evict(now=2e9)
    full = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_dropped = full_of_drops / 500_000  # the table and ring are there from the start
    per_kept = (full - full_of_drops) / 100_000
    print(f"bytes per dropped decision {per_dropped:.1f}, per kept one (3 origins) {per_kept:.1f}")
    assert len(cache) == 600_000
    assert per_dropped <= 32
    assert per_kept <= 200
    assert empty >= 0.9 * 24 * 500_000  # allocated once, not grown


def test_a_dropped_traces_late_spans_are_dropped_and_a_new_trace_is_not_taken_for_one() -> None:
    rng = random.Random(4)
    cache = DecisionCache(NullStore(), kept=10, dropped=500_000, ttl=1e12)  # type: ignore[arg-type]
    dropped = decisions(rng, 500_000, False)
    for start in range(0, len(dropped), 5000):
        cache.persist_many(dropped[start : start + 5000])
    assert all(cache.get(key) is DROPPED for key, _ in dropped[::1000])
    # A million keys never decided: none is taken for a dropped trace (the chance of one is
    # 10^6 x 500,000 / 2^64, about 3 in 10^8).
    fresh = (trace_key(rng.randbytes(16), "default") for _ in range(1_000_000))
    assert sum(1 for key in fresh if cache.get(key) is not None) == 0


def test_the_oldest_drops_go_first_and_the_ttl_applies() -> None:
    rng = random.Random(5)
    cache = DecisionCache(NullStore(), kept=10, dropped=1000, ttl=60.0)  # type: ignore[arg-type]
    first, second = decisions(rng, 1000, False), decisions(rng, 500, False, start=1e9 + 2000)
    cache.persist_many(first)
    cache.persist_many(second)
    assert cache.get(first[0][0]) is None and cache.get(first[499][0]) is None
    assert cache.get(first[500][0]) is DROPPED and cache.get(second[-1][0]) is DROPPED
    cache.evict(now=1e9 + 60.0 + 999)  # all of `first`'s batch is past the TTL: it goes
    assert cache.get(first[-1][0]) is None
    assert cache.get(second[0][0]) is DROPPED
    cache.evict(now=1e12)
    assert len(cache) == 0


# The table the worker uses (the C one where it was built) and the Python one it stands in for.
TABLES = sorted({DroppedSet, PythonDroppedSet}, key=lambda kind: kind.__module__)


@pytest.mark.parametrize("kind", TABLES, ids=lambda kind: kind.__module__)
@pytest.mark.parametrize("seed", range(5))
def test_the_hash_table_agrees_with_a_set_through_collisions_and_evictions(
    seed: int, kind: type[PythonDroppedSet]
) -> None:
    rng = random.Random(seed)
    table = kind(40)  # 128 slots; hashes chosen to collide in runs
    ring: list[int] = []  # the model: added hashes in order (discarded ones keep their turn)
    live: set[int] = set()
    for _ in range(3000):
        if rng.random() < 0.5:
            hashed = rng.randrange(1, 1 << 64)
        else:
            hashed = (rng.randrange(1, 8) << 60) | rng.randrange(16)  # same home slots
        if rng.random() < 0.8:
            table.add(hashed)
            if hashed not in live:
                if len(ring) >= 40:
                    live.discard(ring.pop(0))
                ring.append(hashed)
                live.add(hashed)
        elif live:
            gone = rng.choice(sorted(live))
            table.discard(gone)
            live.discard(gone)
        assert {h for h in table.table if h} == live
        assert all(h in table for h in live)
    assert key_hash(b"") != 0


@pytest.mark.skipif(DroppedSet is PythonDroppedSet, reason="built without a C compiler")
@pytest.mark.parametrize("limit", [0, 1, 7, 40, 1000])
def test_the_c_table_keeps_the_same_slots_as_the_python_one(limit: int) -> None:
    """Add, discard and evict by count and by TTL, as the decision cache does: after every
    step both tables hold the same hashes in the same slots, with the same counts."""
    rng = random.Random(limit)
    native, model = DroppedSet(limit), PythonDroppedSet(limit)
    seen: list[int] = []
    for _ in range(20 * max(limit, 10)):
        roll = rng.random()
        if roll < 0.7 or not seen:
            if rng.random() < 0.5:
                hashed = rng.randrange(1, 1 << 64)
            else:
                hashed = (rng.randrange(1, 8) << 60) | rng.randrange(16)  # same home slots
            if rng.random() < 0.1 and seen:
                hashed = rng.choice(seen)  # one held already, or discarded before
            seen.append(hashed)
            native.add(hashed)
            model.add(hashed)
        elif roll < 0.85:
            gone = rng.choice(seen)
            native.discard(gone)
            model.discard(gone)
        else:
            count = rng.randrange(-2, 5)
            native.evict(count)
            model.evict(count)
        assert native.table == list(model.table)
        assert (len(native), native.inserted, native.evicted) == (
            len(model),
            model.inserted,
            model.evicted,
        )
    assert native.nbytes == model.nbytes and native.limit == model.limit
    assert [h in native for h in seen] == [h in model for h in seen]
    assert -1 not in native and (1 << 64) not in native


@pytest.mark.skipif(DroppedSet is PythonDroppedSet, reason="built without a C compiler")
def test_a_c_table_made_without_init_holds_nothing_and_does_not_crash() -> None:
    table = DroppedSet.__new__(DroppedSet)
    table.add(5)
    table.discard(5)
    table.evict(3)
    assert 5 not in table and len(table) == 0 and table.table == []
