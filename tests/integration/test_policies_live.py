"""Policies on the real broker: a plugin package, hot reload, and `caudal decide` parity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from streams.devtools.broker import LocalBroker
from streams.wire.otlp import request_to_json
from tests.integration.harness import Pipeline, wait_for
from tests.integration.sdk_traces import SdkTraces, encode

pytestmark = pytest.mark.integration


def caudal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_example_plugin_decides_on_the_broker(broker: LocalBroker, tmp_path: Path) -> None:
    listed = caudal("policies")
    assert "http_status" in listed.stdout and "caudal_example_plugin:HttpStatus" in listed.stdout
    pipeline = Pipeline(
        broker, tmp_path, policies=[{"name": "server-errors", "type": "http_status"}]
    )
    sdk = SdkTraces(seed=31)
    failing = [sdk.make("ordinary", "acme") for _ in range(50)]
    fine = [sdk.make("ordinary", "acme") for _ in range(50)]
    traces = sdk.spans_by_trace()
    for tid in failing + fine:
        status = 503 if tid in failing else 200
        for span in traces[tid]:
            span._attributes = {**span.attributes, "http.response.status_code": status}
    try:
        worker = pipeline.start_worker()
        for tid in failing + fine:
            pipeline.produce(encode(traces[tid]))
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= 100, 60, "decisions")
        assert worker.total("caudal_decisions_total", policy="server-errors", outcome="kept") == 50
        wait_for(lambda: len(pipeline.exported().get("acme", {})) == 50, 30, "exports")
        assert set(pipeline.exported()["acme"]) == set(failing)
    finally:
        pipeline.stop()


def test_hot_reload_keeps_buffered_traces(broker: LocalBroker, tmp_path: Path) -> None:
    keep_all = [{"name": "everything", "type": "always_sample"}]
    errors_only = [{"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}]
    pipeline = Pipeline(broker, tmp_path, policies=keep_all, decision={"wait": "6s"})
    sdk = SdkTraces(seed=41)
    buffered = [sdk.make("ordinary", "acme") for _ in range(200)]
    later_ok = [sdk.make("ordinary", "acme") for _ in range(100)]
    later_err = [sdk.make("error", "acme") for _ in range(100)]
    traces = sdk.spans_by_trace()
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        config_path = tmp_path / "caudal-w1.yaml"
        config = yaml.safe_load(config_path.read_text())
        for tid in buffered:
            pipeline.produce(encode(traces[tid]))
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_traces_buffered") == 200, 30, "buffering")

        config["policies"] = errors_only
        config_path.write_text(yaml.safe_dump(config))
        wait_for(
            lambda: worker.total("caudal_config_reloads_total", outcome="success") == 1,
            20,
            "the reload",
        )
        for tid in later_ok + later_err:
            pipeline.produce(encode(traces[tid]))
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= 400, 60, "decisions")
        time.sleep(1)
        # Every buffered trace was decided once, by the policies current at its window's end.
        assert worker.total("caudal_decisions_total") == 400
        assert worker.total("caudal_decisions_total", policy="everything") == 0
        assert worker.total("caudal_decisions_total", policy="errors", outcome="kept") == 100
        wait_for(lambda: len(pipeline.exported().get("acme", {})) == 100, 30, "exports")
        assert set(pipeline.exported()["acme"]) == set(later_err)

        # A broken file is rejected (on change and on SIGHUP); the running policies stay.
        config["policies"] = [{"name": "broken", "type": "latency", "threshold_ms": "soon"}]
        config_path.write_text(yaml.safe_dump(config))
        wait_for(
            lambda: worker.total("caudal_config_reloads_total", outcome="failure") == 1,
            20,
            "the rejected reload",
        )
        os.kill(worker.proc.pid, signal.SIGHUP)
        wait_for(
            lambda: worker.total("caudal_config_reloads_total", outcome="failure") == 2,
            20,
            "the rejected SIGHUP reload",
        )
        assert "policies.0.threshold_ms" in worker.log.read_text()
        more_err = [sdk.make("error", "acme") for _ in range(20)]
        traces = sdk.spans_by_trace()
        for tid in more_err:
            pipeline.produce(encode(traces[tid]))
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= 420, 60, "decisions")
        assert worker.total("caudal_decisions_total", policy="errors", outcome="kept") == 120
        assert worker.proc.poll() is None
    finally:
        pipeline.stop()


def test_offline_decide_matches_the_worker(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(broker, tmp_path)
    sdk = SdkTraces(seed=51)
    kinds = ["ordinary"] * 300 + ["vip"] * 200 + ["error", "slow", "critical"] * 20
    ids = [sdk.make(kind, "acme") for kind in kinds]
    traces = sdk.spans_by_trace()
    capture = tmp_path / "captured.jsonl"
    with capture.open("w") as out:
        for tid in ids:
            out.write(request_to_json(encode_spans(traces[tid])) + "\n")
    try:
        worker = pipeline.start_worker()
        for tid in ids:
            pipeline.produce(encode(traces[tid]))
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= len(ids), 60, "decisions")
        kept_total = int(worker.total("caudal_decisions_total", outcome="kept"))
        wait_for(lambda: len(pipeline.exported().get("acme", {})) == kept_total, 30, "exports")
        exported = pipeline.exported()["acme"]
    finally:
        pipeline.stop()

    result = caudal("decide", "-c", str(pipeline.path), str(capture))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(ids)
    assert {line["trace_id"] for line in lines} == set(ids)
    assert all(line["tenant"] == "acme" for line in lines)
    offline_kept = {line["trace_id"] for line in lines if line["decision"] == "kept"}
    assert offline_kept == set(exported)
    # The policy and probability match what the worker wrote on the spans.
    for line in lines:
        if line["decision"] != "kept":
            continue
        span = exported[line["trace_id"]][0]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        attrs = {kv["key"]: next(iter(kv["value"].values())) for kv in span["attributes"]}
        assert attrs["sampling.policy"] == line["policy"]
        assert float(attrs["sampling.probability"]) == line["probability"]
