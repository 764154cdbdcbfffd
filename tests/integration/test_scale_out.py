"""Two workers in one group share the partitions; every trace is decided exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from tests.integration.harness import Pipeline, wait_for
from tests.integration.sdk_traces import SdkTraces, encode

pytestmark = pytest.mark.integration


def test_two_workers_share_the_work(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path, decision={"wait": "2s"})
    sdk = SdkTraces(seed=21)
    ids = [sdk.make("error", "acme") for _ in range(600)]
    traces = sdk.spans_by_trace()
    try:
        first = pipeline.start_worker("w1")
        first.wait_ready()
        second = pipeline.start_worker("w2")
        # Both are ready once the group has rebalanced and each recovered its partitions.
        wait_for(
            lambda: (
                first.total("caudal_worker_ready") == 1 and second.total("caudal_worker_ready") == 1
            ),
            90,
            "both workers ready after the rebalance",
        )
        for part in (0, 1):
            for tid in ids:
                pipeline.produce(encode(traces[tid][part::2]))
            pipeline.flush()

        def decided() -> float:
            return first.total("caudal_decisions_total") + second.total("caudal_decisions_total")

        wait_for(lambda: decided() >= len(ids), 90, "all decisions")
        assert decided() == len(ids)
        assert first.total("caudal_decisions_total") > 0
        assert second.total("caudal_decisions_total") > 0
        wait_for(lambda: len(pipeline.exported().get("acme", {})) == len(ids), 30, "exports")
        exported = pipeline.exported()["acme"]
        assert all(len(exported[tid]) == 1 for tid in ids), "each trace exported once, whole"
        for tid in ids:
            [line] = exported[tid]
            assert sum(
                len(ss["spans"]) for rs in line["resourceSpans"] for ss in rs["scopeSpans"]
            ) == len(traces[tid])
    finally:
        pipeline.stop()
