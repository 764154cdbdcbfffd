"""The bench's own arithmetic: CPU from /proc, quantiles of summed histograms, the input."""

from __future__ import annotations

import os

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.devtools.bench import BenchOptions, _messages, cpu_seconds, lag_buckets, quantile


def test_cpu_seconds_counts_this_process() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds(os.getpid()) > before


def test_lag_quantiles_of_several_workers_sum_their_buckets() -> None:
    one = {"caudal_decision_lag_seconds_bucket": [({"le": "1.0"}, 90.0), ({"le": "+Inf"}, 100.0)]}
    two = {"caudal_decision_lag_seconds_bucket": [({"le": "1.0"}, 0.0), ({"le": "+Inf"}, 100.0)]}
    buckets = lag_buckets([one, two])
    assert buckets == [(1.0, 90.0), (float("inf"), 200.0)]
    assert quantile(buckets, 0.25) == 50 / 90  # 50 of 200, interpolated in the first bucket
    assert quantile(buckets, 0.99) == 1.0  # in the open bucket: its lower bound


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
