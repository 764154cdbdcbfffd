"""Health endpoints of a worker on the real broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from tests.endpoints import get
from tests.integration.harness import Pipeline, wait_for
from tests.integration.sdk_traces import SdkTraces, encode

pytestmark = pytest.mark.integration


def test_readyz_healthz_and_status(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path)
    try:
        worker = pipeline.start_worker()
        port = worker.metrics_port
        # The endpoints are up before the worker has joined its group: not ready yet.
        first = wait_for(lambda: get(port, "/readyz")[0], 30, "the health endpoint")
        assert first == 503
        assert get(port, "/healthz")[0] == 200
        wait_for(lambda: get(port, "/readyz")[0] == 200, 60, "readiness")

        sdk = SdkTraces(seed=61)
        ids = [sdk.make("error", "acme") for _ in range(20)]
        traces = sdk.spans_by_trace()
        for tid in ids:
            pipeline.produce(encode(traces[tid]))
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= 20, 60, "decisions")

        status, body = get(port, "/status")
        assert status == 200
        doc = json.loads(body)
        assert doc["pipeline_state"] == "running"
        assert doc["ready"] is True
        assert doc["health"] == {"state": "healthy", "reasons": []}
        # The shape README documents.
        assert set(doc) == {
            "pipeline_state",
            "ready",
            "health",
            "degradation_level",
            "degradation",
            "buffer",
            "consumer_lag",
            "read_offsets",
            "memory",
            "export_success_last_minute",
            "exporters",
            "config_version",
            "config_reloads",
        }
        assert doc["degradation_level"] == 0
        assert doc["degradation"] == {"level": 0, "reason": "normal", "sampling_percentage": None}
        assert set(doc["buffer"]) == {"traces", "max_traces", "fill"}
        assert doc["read_offsets"] and set(doc["read_offsets"]) <= {"0", "1", "2", "3"}
        assert set(doc["consumer_lag"]) <= {"0", "1", "2", "3"}
        assert doc["memory"]["rss_bytes"] > 0
        assert len(doc["config_version"]) == 12
        assert doc["exporters"] == {"files": "idle"} or doc["exporters"]["files"] in (
            "idle",
            "sending",
        )
        assert worker.total("caudal_health_state", state="healthy") == 1
        assert worker.total("caudal_pipeline_state", state="running") == 1
        assert get(port, "/nope")[0] == 404
        assert worker.stop() == 0
    finally:
        pipeline.stop()


def test_a_drain_over_the_grace_period_ends_the_process(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """shutdown.grace bounds the drain: past it the worker exits 1 (and says so) rather than
    wait for SIGKILL; what it had not committed is read again by the next owner."""
    pipeline = Pipeline(broker, tmp_path, shutdown={"grace": "0s"})
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        assert worker.stop() == 1
        assert "drain exceeded shutdown.grace" in worker.log.read_text()
    finally:
        pipeline.stop()
