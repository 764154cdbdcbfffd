"""Health states and their reasons, liveness, readiness and the endpoints, without a broker."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from streams.config import validate_mapping
from streams.devtools.broker import free_port
from streams.ops import health as health_module
from streams.ops.health import ExportOutcomes, Health, Supervised, rss_bytes, serve_health
from tests.endpoints import get

SETTINGS = validate_mapping({"decision": {"max_traces": 100}, "health": {"memory_limit": "1GiB"}})


def make(buffered: int = 0, outcomes: ExportOutcomes | None = None) -> Health:
    return Health(SETTINGS, buffered=lambda: buffered, outcomes=outcomes or ExportOutcomes())


def outcomes(ok: int, failed: int) -> ExportOutcomes:
    recorded = ExportOutcomes()
    for result in [True] * ok + [False] * failed:
        recorded.record(result)
    return recorded


def test_healthy_degraded_and_unhealthy_by_buffer_fill() -> None:
    assert make(50).evaluate() == ("healthy", [])
    state, reasons = make(81).evaluate()
    assert state == "degraded" and reasons == ["buffer at 81% of decision.max_traces"]
    state, reasons = make(100).evaluate()
    assert state == "unhealthy" and reasons == ["buffer full (100 of 100 traces)"]


def test_export_success_of_the_last_minute() -> None:
    assert make(outcomes=outcomes(99, 0)).evaluate()[0] == "healthy"
    assert make(outcomes=outcomes(97, 3)).evaluate() == (
        "degraded",
        ["export success at 97.0% over the last minute"],
    )
    assert make(outcomes=outcomes(4, 6)).evaluate() == (
        "unhealthy",
        ["export failures at 60% over the last minute"],
    )
    old = outcomes(0, 5)
    old.window = 0.0  # every attempt is older than the window: no evidence either way
    time.sleep(0.01)
    assert old.success_ratio() is None and make(outcomes=old).evaluate()[0] == "healthy"


def test_memory_over_the_limit_is_unhealthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health_module, "rss_bytes", lambda: 2 * 2**30)
    state, reasons = make().evaluate()
    assert state == "unhealthy" and reasons == ["RSS 2048 MiB over health.memory_limit"]


def test_running_pipeline_follows_health_and_a_dead_thread_fails_liveness() -> None:
    health = make(90)
    health.set_pipeline("running")
    health.evaluate()
    assert health.pipeline == "degraded"
    health.buffered = lambda: 0
    health.evaluate()
    assert health.pipeline == "running" and health.alive()
    health.heartbeat -= 31  # the event loop stopped beating
    assert not health.alive()
    health.beat()
    assert health.alive()
    health.failure = "thread split failed: RuntimeError: boom"
    assert not health.alive()
    assert health.evaluate() == ("unhealthy", ["thread split failed: RuntimeError: boom"])


def test_a_supervised_thread_that_dies_reports_why() -> None:
    reasons: list[str] = []

    class Broken(Supervised):
        def work(self) -> None:
            raise RuntimeError("boom")

    thread = Broken("exporter-x")
    thread.on_failure = reasons.append
    thread.start()
    thread.join(5)
    assert reasons == ["thread exporter-x failed: RuntimeError: boom"]


def test_endpoints_answer_readiness_liveness_and_status() -> None:
    health = make(10)
    port = free_port()
    server = serve_health(health, "127.0.0.1", port)
    assert server is not None
    try:
        assert get(port, "/readyz")[0] == 503  # not joined yet
        health.ready = True
        health.set_pipeline("running")
        assert get(port, "/readyz")[0] == 200
        assert get(port, "/healthz")[0] == 200
        status, body = get(port, "/status")
        doc = json.loads(body)
        assert status == 200 and doc["buffer"] == {"traces": 10, "max_traces": 100, "fill": 0.1}
        assert doc["health"] == {"state": "healthy", "reasons": []}
        assert b"caudal_health_state" in get(port, "/metrics")[1]
        health.failure = "thread split failed"
        assert get(port, "/healthz")[0] == 503
        assert get(port, "/nowhere")[0] == 404
    finally:
        server.shutdown()
    assert serve_health(health, "127.0.0.1", 0) is None


def test_memory_counts_the_worker_and_its_split_process_not_other_children() -> None:
    # The split process's memory is the worker's (the container's limit counts both); other
    # processes this one started are not (here: a test's broker).
    touch = "b = bytearray(80 * 2**20); b[::4096] = bytes(len(b[::4096])); print('ok', flush=True)"
    child = subprocess.Popen(
        [sys.executable, "-c", touch + "; input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ok\n"
        alone = rss_bytes()
        health_module.add_part(child.pid)
        with_part = rss_bytes()
        health_module.remove_part(child.pid)
        assert with_part - alone > 80 * 2**20
        assert rss_bytes() - alone < 20 * 2**20
    finally:
        child.communicate(b"\n")
