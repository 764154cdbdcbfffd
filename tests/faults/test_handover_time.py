"""Handover time: a partition holding 50,000 buffered traces is ready on its new owner within
5 s of the assignment, whether the new owner kept a standby copy or starts from nothing."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streams.devtools.broker import LocalBroker
from tests.faults.traffic import PARTS, SPANS, _request, _trace
from tests.integration.harness import Pipeline, WorkerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TRACES = 50_000
_RECOVERED = re.compile(r"partitions recovered partitions=\S+ new=(\[[^\]]*\]) .*seconds=([0-9.]+)")


def recoveries(worker: WorkerProcess) -> list[tuple[str, float]]:
    """(newly assigned partitions, seconds) of every recovery the worker logged."""
    text = worker.log.read_text(errors="replace")
    return [(new, float(seconds)) for new, seconds in _RECOVERED.findall(text)]


def settled(worker: WorkerProcess, metric: str) -> float:
    """The metric's value once it has not changed for two seconds."""
    seen = [worker.total(metric)]

    def still() -> bool:
        time.sleep(2)
        seen.append(worker.total(metric))
        return seen[-1] == seen[-2]

    wait_for(still, 120, f"{metric} to settle")
    return seen[-1]


def took_over(worker: WorkerProcess) -> float:
    """Seconds of the worker's recovery of partition 0, once it has happened."""
    wait_for(
        lambda: (
            worker.total("caudal_partitions_owned") == 1
            and any(new == "[0]" for new, _ in recoveries(worker))
        ),
        120,
        f"{worker.log.name} owning the partition",
    )
    return next(seconds for new, seconds in recoveries(worker) if new == "[0]")


def test_a_partition_of_fifty_thousand_buffered_traces_changes_hands_within_five_seconds(
    broker: LocalBroker, tmp_path: Path
) -> None:
    pipeline = Pipeline(broker, tmp_path, kafka={"partitions": 1}, decision={"wait": "30m"})
    rng = random.Random(5)
    traces = [_trace(rng, "ok", time.time_ns())[1] for _ in range(TRACES)]
    per_part = SPANS // PARTS
    try:
        first = pipeline.start_worker("A")
        first.wait_ready(90)
        for part in range(PARTS):  # three fragments per trace: 150,000 fragments
            for spans in traces:
                pipeline.produce(
                    _request([("shop", spans[part * per_part : (part + 1) * per_part])])
                )
            pipeline.flush()
        wait_for(
            lambda: first.total("caudal_spans_received_total") == TRACES * SPANS,
            300,
            "every span read by A",
        )
        wait_for(lambda: first.total("caudal_traces_buffered") == TRACES, 120, "A buffering")
        size = settled(first, "caudal_buffer_bytes")
        standby = pipeline.start_worker("B")  # keeps a standby copy of the partition
        time.sleep(15)

        first.proc.kill()
        first.proc.wait()
        from_standby = took_over(standby)
        assert standby.total("caudal_traces_buffered") == TRACES
        assert standby.total("caudal_buffer_bytes") == size

        fresh = pipeline.start_worker("C")  # an empty state directory
        wait_for(lambda: fresh.total("caudal_worker_ready") == 1, 120, "C joined")
        assert standby.stop() == 0
        from_nothing = took_over(fresh)
        assert fresh.total("caudal_traces_buffered") == TRACES
        assert fresh.total("caudal_buffer_bytes") == size

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        changelog = f"{pipeline.kafka['group_id']}-traces-changelog"
        [future] = admin.describe_configs([ConfigResource("topic", changelog)]).values()
        policy = future.result()["cleanup.policy"].value
        print(
            f"handover of one partition holding {TRACES} traces ({TRACES * PARTS} fragments, "
            f"{size / 2**20:.1f} MiB): after kill -9 to the standby "
            f"{from_standby:.2f}s; after SIGTERM to a worker with an empty state directory "
            f"{from_nothing:.2f}s; changelog cleanup.policy={policy}"
        )
        assert policy == "compact"
        assert from_standby <= 5.0 and from_nothing <= 5.0
    finally:
        pipeline.stop()
