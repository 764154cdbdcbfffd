"""Handover time: 50,000 buffered traces ready on their new owners within 5 s of assignment."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from streams.broker import LocalBroker
from tests.faults.traffic import _request, _trace
from tests.integration.harness import Pipeline, WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TRACES = 50_000
_RECOVERED = re.compile(
    r"partitions recovered partitions=(\[[^\]]*\]) new=(\[[^\]]*\]) .*seconds=([0-9.]+)"
)


def recoveries(worker: WorkerProcess) -> list[tuple[str, str, float]]:
    """(partitions, newly assigned, seconds) of every recovery the worker logged."""
    text = worker.log.read_text(errors="replace")
    return [(a, b, float(c)) for a, b, c in _RECOVERED.findall(text)]


def buffered(*workers: WorkerProcess) -> int:
    return int(sum(w.total("caudal_traces_buffered") for w in workers))


def test_fifty_thousand_buffered_traces_change_hands_within_five_seconds(
    broker: LocalBroker, tmp_path: Path
) -> None:
    pipeline = Pipeline(broker, tmp_path, kafka={"partitions": 4}, decision={"wait": "10m"})
    rng = random.Random(5)
    try:
        first = pipeline.start_worker("A")
        first.wait_ready(90)
        for _ in range(TRACES):
            _, spans = _trace(rng, "ok", time.time_ns())
            pipeline.produce(_request(spans))
        pipeline.flush()
        wait_for(lambda: buffered(first) == TRACES, 300, "every trace buffered on A")

        second = pipeline.start_worker("B")
        wait_for(lambda: recoveries(second), 120, "B recovered its first partitions")
        wait_for(lambda: buffered(first, second) == TRACES, 60, "all traces buffered on A and B")
        joined = recoveries(second)[-1]

        first.proc.kill()
        first.proc.wait()
        wait_for(
            lambda: len(recoveries(second)) >= 2 and second.total("caudal_partitions_owned") == 4,
            120,
            "B took every partition",
        )
        took_over = recoveries(second)[-1]
        assert buffered(second) == TRACES

        third = pipeline.start_worker("C")
        wait_for(lambda: recoveries(third), 120, "C recovered its first partitions")
        wait_for(lambda: buffered(second, third) == TRACES, 60, "all traces buffered on B and C")
        fresh = recoveries(third)[-1]
        print(
            f"handover of {TRACES} buffered traces: B joining (fresh state) {joined[2]:.2f}s "
            f"for {joined[1]}; B taking A's partitions after kill -9 {took_over[2]:.2f}s for "
            f"{took_over[1]}; C joining (fresh state) {fresh[2]:.2f}s for {fresh[1]}; "
            f"buffered after: B {buffered(second)}, C {buffered(third)}"
        )
        for _, _, seconds in (joined, took_over, fresh):
            assert seconds <= 5.0
    finally:
        pipeline.stop()
