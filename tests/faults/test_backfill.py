"""`caudal backfill` at the issue's scale: three minutes of traffic, the middle minute
backfilled (the same checks as tests/integration/test_backfill.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from tests.integration.test_backfill import run_backfill_case

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_a_backfill_of_one_minute_of_three(broker: LocalBroker, tmp_path: Path) -> None:
    run_backfill_case(broker, tmp_path, segment=60.0, show=True)
