"""The split stage in its own process, on the real broker: it lives and ends with its worker,
and its metrics are the worker's."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streams.devtools.bench import process_tree
from streams.devtools.broker import LocalBroker
from tests.integration.harness import Pipeline, WorkerProcess, wait_for
from tests.integration.sdk_traces import SdkTraces, encode

pytestmark = pytest.mark.integration


def split_processes(worker: WorkerProcess) -> list[int]:
    return process_tree(worker.proc.pid)[1:]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def send_traces(pipeline: Pipeline, count: int, seed: int) -> int:
    sdk = SdkTraces(seed=seed)
    ids = [sdk.make("error", "acme") for _ in range(count)]
    traces = sdk.spans_by_trace()
    for tid in ids:
        pipeline.produce(encode(traces[tid]))
    pipeline.flush()
    return sum(len(traces[tid]) for tid in ids)


@pytest.mark.parametrize("in_process", [True, False], ids=["process", "thread"])
def test_spans_are_split_and_counted_once_and_sigterm_ends_both(
    broker: LocalBroker, tmp_path: Path, in_process: bool
) -> None:
    pipeline = Pipeline(broker, tmp_path, worker={"split_process": in_process})
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        children = split_processes(worker)
        assert len(children) == (1 if in_process else 0)
        spans = send_traces(pipeline, 30, seed=71)
        wait_for(lambda: worker.total("caudal_decisions_total") >= 30, 60, "decisions")
        # Counted in the split process, served by the worker, once.
        wait_for(lambda: worker.total("caudal_spans_received_total") == spans, 10, "spans received")
        lag = worker.total("caudal_consumer_lag", topic=pipeline.kafka["input_topic"])
        assert lag == 0 and "caudal_consumer_lag" in worker.metrics()
        assert worker.stop() == 0
        assert not [pid for pid in children if alive(pid)]
        assert "split stage stopped" in worker.log.read_text()
    finally:
        pipeline.stop()


@contextmanager
def split_of_a_ready_worker(
    broker: LocalBroker, tmp_path: Path
) -> Iterator[tuple[WorkerProcess, int]]:
    pipeline = Pipeline(broker, tmp_path)
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        [split] = split_processes(worker)
        yield worker, split
    finally:
        pipeline.stop()


def test_a_split_process_that_dies_stops_its_worker_with_the_reason(
    broker: LocalBroker, tmp_path: Path
) -> None:
    with split_of_a_ready_worker(broker, tmp_path) as (worker, split):
        os.kill(split, signal.SIGKILL)
        wait_for(lambda: worker.proc.poll() is not None, 60, "the worker to stop")
        assert worker.proc.returncode == 1
        assert "split process exited with code -9" in worker.log.read_text()


def test_kill_9_of_a_worker_takes_its_split_process_with_it(
    broker: LocalBroker, tmp_path: Path
) -> None:
    with split_of_a_ready_worker(broker, tmp_path) as (worker, split):
        worker.proc.kill()
        worker.proc.wait()
        deadline = time.monotonic() + 5
        while alive(split) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(split), "the split process outlived its worker"
