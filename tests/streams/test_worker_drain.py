"""SIGTERM's drain: input stops first, readiness drops, and an overrun ends the process."""

from __future__ import annotations

import threading

from streams.worker import Drain


class FakeHealth:
    def __init__(self) -> None:
        self.ready = True
        self.states: list[str] = []

    def set_pipeline(self, state: str) -> None:
        self.states.append(state)


def test_drain_stops_input_first_and_reports_draining() -> None:
    health, stop_input = FakeHealth(), threading.Event()
    overran: list[float] = []
    watchdog = Drain(health, stop_input, grace=30.0, on_overrun=overran.append).begin()  # type: ignore[arg-type]
    watchdog.cancel()
    assert stop_input.is_set() and not health.ready and health.states == ["draining"]
    assert overran == []


def test_a_drain_past_the_grace_period_ends_the_process() -> None:
    overran = threading.Event()
    drain = Drain(FakeHealth(), threading.Event(), grace=0.05, on_overrun=lambda g: overran.set())  # type: ignore[arg-type]
    drain.begin()
    assert overran.wait(2)
