"""The Faust seam: checked at start, and each hook does what the handover relies on.

No broker: a Faust app builds its tables and producer objects without connecting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import faust
import pytest

from streams.kafka import faust_seam
from streams.kafka.faust_seam import FaustSeamError


def make_app(tmp_path: Path) -> faust.App:
    return faust.App(
        "seam-test",
        broker="kafka://127.0.0.1:1",
        store="rocksdb://",
        datadir=str(tmp_path),
        web_enabled=False,
    )


def test_the_installed_faust_has_every_internal_used() -> None:
    faust_seam.check_faust()


def test_a_missing_internal_is_named() -> None:
    class Moved:
        pass

    with pytest.raises(FaustSeamError, match=r"Moved\._db_for_partition"):
        faust_seam.check_faust([(Moved, "_db_for_partition")])


def test_revoke_hook_runs_around_fausts_revoke(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    calls: list[str] = []

    async def faust_revoke(revoked: set) -> None:
        calls.append("faust")

    app._on_partitions_revoked = faust_revoke  # type: ignore[method-assign]

    async def before(revoked: set) -> None:
        calls.append("before")

    async def after(revoked: set) -> None:
        calls.append("after")

    faust_seam.run_before_revoke(app, before, after)
    asyncio.run(app._on_partitions_revoked(set()))
    assert calls == ["before", "faust", "after"]


def test_revoke_hook_refuses_an_app_whose_consumer_exists(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app._consumer = object()  # type: ignore[assignment]

    async def before(revoked: set) -> None:
        return None

    with pytest.raises(FaustSeamError):
        faust_seam.run_before_revoke(app, before, before)


def test_commit_flush_runs_after_fausts_own(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    calls: list[str] = []

    async def faust_flush() -> None:
        calls.append("faust")

    app.producer.flush = faust_flush  # type: ignore[method-assign]

    async def ours() -> None:
        calls.append("ours")

    faust_seam.run_before_commit(app, ours)
    asyncio.run(app.producer.flush())
    assert calls == ["faust", "ours"]


def test_opened_partitions_are_configured_and_not_kept(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    table = app.Table("t", partitions=2, key_type=bytes, value_type=bytes)
    configured: list[object] = []
    faust_seam.on_open_partition(table, configured.append)
    db = faust_seam.db_for_partition(table, 1)
    db.put(b"k", b"v")
    assert configured == [db]
    assert faust_seam.changelog_topic(table) == "seam-test-t-changelog"
    # Faust drops its handle on revoke; with none kept elsewhere the partition opens again.
    del db, configured[:]
    table.data._dbs.clear()
    again = faust_seam.db_for_partition(table, 1)
    assert bytes(again.get(b"k")) == b"v"
