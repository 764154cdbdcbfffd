"""The fault suite (`make faults`): each way a partition can change hands, under traffic.

Every scenario runs traces of six spans in three messages one second apart, kept only for an
error span in the first or the last message, and checks: no kept trace misses a span, no
dropped trace leaks one, at most 0.1 % of kept traces carry a duplicate span, no worker
crashes, every SIGTERM exits 0 within shutdown.grace. Each prints its figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from tests.faults.scenario import Scenario, Step

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SCENARIOS = {
    "scale out 1-2-3": [Step(15, "start", "B"), Step(35, "start", "C")],
    "kill -9 mid-window, then a replacement": [
        Step(5, "start", "B"),
        Step(25, "kill", "A"),
        Step(35, "start", "C"),
    ],
    "SIGTERM one of three": [
        Step(5, "start", "B"),
        Step(10, "start", "C"),
        Step(30, "stop", "B"),
    ],
    "rolling restart": [
        Step(5, "start", "B"),
        Step(10, "start", "C"),
        Step(25, "restart", "A"),
        Step(40, "restart", "B"),
        Step(55, "restart", "C"),
    ],
    "partitions leave and come back": [
        Step(15, "start", "B"),
        Step(30, "stop", "B"),
        Step(45, "start", "C"),
        Step(55, "stop", "C"),
    ],
    "SIGTERM during a rebalance": [
        Step(5, "start", "B"),
        Step(20, "start", "C"),
        Step(21, "stop", "B"),
    ],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_scenario(broker: LocalBroker, tmp_path: Path, name: str) -> None:
    outcome = Scenario(broker, tmp_path).run(SCENARIOS[name], rate=200, duration=70)
    print(outcome.report(name))
    outcome.assert_nothing_lost()
