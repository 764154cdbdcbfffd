"""The pressure check hands freed C-heap memory back, so the RSS falls after a burst."""

from __future__ import annotations

import sys
import threading

import pytest

from streams.ops.health import _MALLOC_TRIM, release_free_memory, rss_bytes

pytestmark = pytest.mark.skipif(
    _MALLOC_TRIM is None or not sys.platform.startswith("linux"), reason="needs glibc"
)


def test_memory_freed_after_a_burst_leaves_the_rss() -> None:
    # Spans are bytes objects over pymalloc's 512-byte limit, allocated from a thread as the
    # split stage does. Every 64th one stays alive, so the heap cannot simply shrink from
    # its top: only a trim returns the free pages in between.
    kept: list[bytes] = []

    def burst() -> None:
        chunks = [bytes(2048) + i.to_bytes(4, "big") for i in range(100_000)]
        kept.extend(chunks[::64])

    before = rss_bytes()
    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()
    held = rss_bytes()
    assert held - before > 150 * 1024 * 1024  # the burst took its memory
    release_free_memory()
    after = rss_bytes()
    assert after - before < (held - before) / 4
    assert len(kept) == 1563
