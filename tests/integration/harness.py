"""An isolated pipeline on the shared broker: its own topics, groups, state and output dirs."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer

from streams.devtools.broker import LocalBroker, free_port
from streams.devtools.demo import read_metrics, start_worker, stop_process


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class WorkerProcess:
    """A `caudal worker` subprocess and its metrics port."""

    def __init__(self, proc: subprocess.Popen[bytes], metrics_port: int, log: Path) -> None:
        self.proc = proc
        self.metrics_port = metrics_port
        self.log = log

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return read_metrics(self.metrics_port)

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_labels, value in self.metrics().get(name, ())
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(
            lambda: self.proc.poll() is not None or self.total("caudal_worker_ready") == 1,
            timeout,
            f"worker ready (log: {self.log})",
        )
        assert self.proc.poll() is None, f"worker exited: {self.log.read_text()[-3000:]}"

    def stop(self) -> int:
        return stop_process(self.proc)


class Pipeline:
    """Config, topics and helpers for one test."""

    def __init__(self, broker: LocalBroker, root: Path, **sections: Any) -> None:
        self.broker = broker
        self.root = root
        run = uuid.uuid4().hex[:8]
        self.config: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": broker.bootstrap,
                "partitions": 4,
                "input_topic": f"otlp-{run}",
                "spans_topic": f"spans-{run}",
                "sampled_topic": f"sampled-{run}",
                "dlq_topic": f"dlq-{run}",
                "group_id": f"caudal-{run}",
            },
            "decision": {"wait": "3s"},
            "exporters": {"files": {"type": "file", "path": str(root / "out")}},
            "tenants": {"default": {"exporters": ["files"]}},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(self.config.get(key), dict):
                self.config[key] = {**self.config[key], **value}
            else:
                self.config[key] = value
        self.path = root / "caudal.yaml"
        self.path.write_text(yaml.safe_dump(self.config))
        self.producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        self.workers: list[WorkerProcess] = []

    @property
    def kafka(self) -> dict[str, Any]:
        return self.config["kafka"]

    def start_worker(self, name: str = "w1") -> WorkerProcess:
        port = free_port()
        config = dict(self.config)
        config["worker"] = {
            **config.get("worker", {}),
            "state_dir": str(self.root / f"state-{name}"),
        }
        config["metrics"] = {"port": port}
        path = self.root / f"caudal-{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = self.root / f"worker-{name}.log"
        worker = WorkerProcess(start_worker(path, log), port, log)
        self.workers.append(worker)
        return worker

    def produce(self, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        self.producer.produce(self.kafka["input_topic"], value=value, headers=headers or [])
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def consume_all(self, topic: str, expect: int, timeout: float = 60) -> list[Any]:
        """Read a topic from the start until `expect` messages arrived (or timeout)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.broker.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(messages) < expect and time.monotonic() < deadline:
                for msg in consumer.consume(500, timeout=0.5):
                    if msg.error() is None:
                        messages.append(msg)
        finally:
            consumer.close()
        return messages

    def exported(self, directory: str = "out") -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Exported file lines: tenant → trace ID (hex) → list of OTLP/JSON requests."""
        result: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for path in (self.root / directory).glob("*.jsonl"):
            for line in path.read_text().splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # the exporter is writing this line right now
                doc = json.loads(line)
                trace_ids = {
                    span["traceId"]
                    for rs in doc["resourceSpans"]
                    for ss in rs["scopeSpans"]
                    for span in ss["spans"]
                }
                assert len(trace_ids) == 1, "an exported line must hold exactly one trace"
                result[path.stem][trace_ids.pop()].append(doc)
        return result

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.stop()
