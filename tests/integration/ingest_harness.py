"""Start `caudal ingest` as a process for tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from streams.devtools.broker import free_port
from streams.devtools.demo import read_metrics, stop_process


class IngestProcess:
    """A gateway process with its HTTP, gRPC and metrics ports."""

    def __init__(self, root: Path, config: dict[str, Any], ingest: dict[str, Any]) -> None:
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        config = {
            **config,
            "ingest": {
                "http": f"127.0.0.1:{self.http_port}",
                "grpc": f"127.0.0.1:{self.grpc_port}",
                "metrics_port": self.metrics_port,
                **ingest,
            },
        }
        path = root / "ingest.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = root / "ingest.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "ingest", "-c", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=0.5):
                    with socket.create_connection(("127.0.0.1", self.http_port), timeout=0.5):
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"ingest did not listen: {self.log.read_text()[-3000:]}")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_labels, value in read_metrics(self.metrics_port).get(name, ())
            if all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def stop(self) -> int:
        return stop_process(self.proc)
