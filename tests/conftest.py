"""Shared fixtures: one local tansu broker per test session (a real Kafka-protocol broker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.devtools.broker import LocalBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A tansu broker on a free loopback port, stopped at the end of the session."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    local = LocalBroker(log_path=log).start()
    yield local
    local.stop()
