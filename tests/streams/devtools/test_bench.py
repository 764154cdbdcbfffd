"""The bench's own arithmetic: CPU from /proc, quantiles of summed histograms, the input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.devtools.bench import (
    BenchOptions,
    _messages,
    cpu_seconds,
    lag_buckets,
    machine_busy_seconds,
    process_tree,
    quantile,
    quantile_bound,
    rss_kib,
)


def test_cpu_seconds_counts_this_process() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds(os.getpid()) > before


def test_the_machine_is_busy_at_least_as_long_as_this_process() -> None:
    machine, mine = machine_busy_seconds(), cpu_seconds(os.getpid())
    assert machine is not None
    sum(i * i for i in range(3_000_000))
    spent = cpu_seconds(os.getpid()) - mine
    assert spent > 0
    after = machine_busy_seconds()
    # /proc/stat and /proc/PID/stat sample time apart: a tenth and two ticks of slack.
    assert after is not None and after - machine >= 0.9 * spent - 2 / os.sysconf("SC_CLK_TCK")


def test_cpu_and_rss_count_the_processes_a_worker_started() -> None:
    # A worker's split stage runs in a child process: its CPU and memory are the worker's.
    child = subprocess.Popen(
        [sys.executable, "-c", "sum(i * i for i in range(3_000_000)); input()"],
        stdin=subprocess.PIPE,
    )
    try:
        while cpu_seconds(child.pid) < 0.1:
            time.sleep(0.05)
        mine = os.times()
        assert cpu_seconds(os.getpid()) >= mine.user + mine.system + cpu_seconds(child.pid) - 0.02
        assert rss_kib(os.getpid()) >= rss_kib(child.pid) + 1000
    finally:
        child.communicate(b"\n")


def test_lag_quantiles_of_several_workers_sum_their_buckets() -> None:
    one = {"caudal_decision_lag_seconds_bucket": [({"le": "1.0"}, 90.0), ({"le": "+Inf"}, 100.0)]}
    two = {"caudal_decision_lag_seconds_bucket": [({"le": "1.0"}, 0.0), ({"le": "+Inf"}, 100.0)]}
    buckets = lag_buckets([one, two])
    assert buckets == [(1.0, 90.0), (float("inf"), 200.0)]
    assert quantile(buckets, 0.25) == 50 / 90  # 50 of 200, interpolated in the first bucket
    assert quantile(buckets, 0.99) == 1.0  # in the open bucket: its lower bound
    assert quantile_bound(buckets, 0.25) == 1.0
    assert quantile_bound(buckets, 0.99) is None  # past the last finite edge


def test_the_p99_bound_is_the_edge_of_its_bucket_not_the_interpolation() -> None:
    # 1,000 lags: 980 up to 1 s, 15 in (1 s, 1.5 s], 5 in (1.5 s, 2 s].
    buckets = [(1.0, 980.0), (1.5, 995.0), (2.0, 1000.0), (float("inf"), 1000.0)]
    assert 1.0 < quantile(buckets, 0.99) < 1.5
    assert quantile_bound(buckets, 0.99) == 1.5
    assert quantile_bound(buckets, 0.5) == 1.0
    assert quantile_bound(buckets, 0.999) == 2.0
    assert quantile_bound([], 0.99) is None


def test_traces_per_message_groups_whole_traces() -> None:
    messages = _messages(BenchOptions(traces=7, spans_per_trace=4, traces_per_message=3))
    assert len(messages) == 3
    trace_ids = []
    for message in messages:
        request = ExportTraceServiceRequest.FromString(message)
        ids = {
            s.trace_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
        }
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        assert spans == 4 * len(ids)
        trace_ids.append(len(ids))
    assert trace_ids == [3, 3, 1]


def test_a_bench_told_to_stop_stops_the_broker_and_workers_it_started() -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "bench", "--traces", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started: list[int] = []
    try:
        deadline = time.monotonic() + 60
        # The broker, the worker and the worker's split process.
        while len(started) < 3 and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.2)
            started = process_tree(bench.pid)[1:]
        assert len(started) >= 3, "the bench started its broker and worker"
        bench.terminate()  # SIGTERM, as a CI job's timeout sends
        assert bench.wait(60) != 0
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in started), "nothing it started outlives it"
    finally:
        if bench.poll() is None:
            bench.kill()
        for pid in started:  # what a failure left behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """A process that runs (not a zombie waiting for its parent to read its exit)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
