"""Overload: offered load well above capacity degrades in announced steps and recovers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from streams.devtools.demo import read_metrics
from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.integration

LOAD_SECONDS = 30
MEMORY_LIMIT = 1536 * 2**20


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
        return json.load(response)


class Recorder(threading.Thread):
    """Poll /status twice a second: (time, level, rss) until stopped, and the records the
    worker has not read yet (input and caudal-spans) as (time, backlog)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, int, int]] = []
        self.backlog: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                doc = status(self.port)
            except OSError:
                continue
            now = time.monotonic()
            self.samples.append((now, doc["degradation"]["level"], doc["memory"]["rss_bytes"]))
            lags = read_metrics(self.port).get("caudal_consumer_lag", [])
            self.backlog.append((now, sum(value for _, value in lags)))

    def caught_up(self, since: float) -> float | None:
        """When the worker had first read everything after `since` (None: never)."""
        return next((at for at, backlog in self.backlog if at >= since and backlog == 0), None)

    def levels(self, since: float = 0.0) -> list[int]:
        """The level's successive values (from `since`, a monotonic time)."""
        out: list[int] = []
        for at, level, _ in self.samples:
            if at >= since and (not out or out[-1] != level):
                out.append(level)
        return out


def exported_error_traces(directory: Path) -> tuple[set[str], set[tuple[str, float]]]:
    """Trace IDs of the exported spans of status ERROR (file exporter, OTLP/JSON lines), and
    the (sampling.policy, sampling.probability) pairs seen on degraded spans."""
    found = set()
    degraded = set()
    for path in directory.glob("*.jsonl"):
        with path.open() as lines:
            for line in lines:
                if '"code":2' not in line and '"degraded"' not in line:
                    continue
                for rs in json.loads(line)["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        for span in ss["spans"]:
                            if span.get("status", {}).get("code") == 2:
                                found.add(span["traceId"])
                            attrs = {
                                kv["key"]: next(iter(kv["value"].values()))
                                for kv in span["attributes"]
                            }
                            if attrs.get("sampling.policy") == "degraded":
                                degraded.add(("degraded", attrs["sampling.probability"]))
    return found, degraded


def test_overload_degrades_keeps_errors_and_steps_back(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(
        broker,
        tmp_path,
        decision={"wait": "2s", "max_traces": 200_000},
        # Errors plus 1 %: the sample stays small, so the backlog is the worker's own work.
        policies=[
            {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
            {"name": "one-percent", "type": "probabilistic", "sampling_percentage": 1},
        ],
        health={"memory_limit": MEMORY_LIMIT},
        degradation={
            "check_interval": "1s",
            "sustain_checks": 3,
            "max_lag": "5s",
            "recovery_period": "6s",
        },
    )
    worker = pipeline.start_worker()
    recorder = Recorder(worker.metrics_port)
    try:
        worker.wait_ready()
        recorder.start()
        generator = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "generate",
                "-c",
                str(pipeline.path),
                "--fast",
                "--rate",
                "12000",
                "--duration",
                str(LOAD_SECONDS),
                "--mix",
                "error=0.05,ordinary=0.95",
                "--truth",
                str(tmp_path / "truth.json"),
            ],
            capture_output=True,
            text=True,
            timeout=LOAD_SECONDS + 60,
        )
        assert generator.returncode == 0, generator.stderr
        load_end = time.monotonic()
        wait_for(
            lambda: (
                recorder.samples and recorder.samples[-1][1] == 0 and max(recorder.levels()) > 0
            ),
            240,
            f"the level back at 0 (levels so far: {recorder.levels()})",
        )
        recorder.done.set()
        levels = recorder.levels()
        assert max(levels) >= 2, levels
        # One level at a time, up (at once while pressure lasts) and down (per recovery period).
        assert all(abs(b - a) == 1 for a, b in zip(levels, levels[1:], strict=False)), levels
        # Once the load is gone and its backlog read, the level only steps back, one level at
        # a time, to 0. (While a backlog is read slower than it was written, the records read
        # keep getting older: that is still pressure.)
        caught_up = recorder.caught_up(load_end)
        assert caught_up is not None, f"the backlog was never read: {recorder.backlog[-5:]}"
        after = recorder.levels(since=caught_up)
        assert after == list(range(after[0], -1, -1)) and after[0] >= 1, (levels, after)
        assert max(rss for _, _, rss in recorder.samples) < MEMORY_LIMIT
        log = worker.log.read_text()
        assert log.count("degradation level changed") == len(levels) - 1
        assert worker.total("caudal_degraded_spans_total", outcome="kept") > 0
        assert worker.total("caudal_degraded_spans_total", outcome="dropped") > 0
        # Every error trace still reached the backend, by its policy or in degraded mode.
        truth = json.loads((tmp_path / "truth.json").read_text())
        assert truth["error_traces"] > 10_000
        errors, degraded = exported_error_traces(tmp_path / "out")
        assert len(errors) == truth["error_traces"]
        # Degraded spans say so, with their true probability: a level's share, or 1.0 for an
        # error span kept for its status.
        probabilities = {p for _, p in degraded}
        assert 1.0 in probabilities
        assert probabilities - {1.0} <= {0.05, 0.01, 0.001} and probabilities - {1.0}
        peak_rss = max(rss for _, _, rss in recorder.samples)
        print(
            f"levels {levels}; {truth['traces']} traces offered in {LOAD_SECONDS}s; peak RSS "
            f"{peak_rss / 2**20:.0f} MiB; {len(errors)} error traces exported of "
            f"{truth['error_traces']}; degraded spans kept "
            f"{worker.total('caudal_degraded_spans_total', outcome='kept'):.0f}, dropped "
            f"{worker.total('caudal_degraded_spans_total', outcome='dropped'):.0f}; "
            f"{time.monotonic() - load_end:.0f}s from the end of the load to level 0"
        )
    finally:
        recorder.done.set()
        pipeline.stop()
