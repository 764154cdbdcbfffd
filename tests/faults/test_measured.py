"""The combined scenario: join, join, kill -9, SIGTERM, join, all under traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from tests.faults.scenario import Scenario, Step

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_membership_changes_under_traffic(broker: LocalBroker, tmp_path: Path) -> None:
    """A alone; +B at 15 s; +C at 30 s; kill -9 A at 45 s; SIGTERM B at 60 s; +D at 75 s."""
    steps = [
        Step(15, "start", "B"),
        Step(30, "start", "C"),
        Step(45, "kill", "A"),
        Step(60, "stop", "B"),
        Step(75, "start", "D"),
    ]
    outcome = Scenario(broker, tmp_path).run(steps, rate=200, duration=90)
    print(outcome.report("membership changes"))
    outcome.assert_nothing_lost()
