"""`caudal demo`: a local broker, one worker, a traffic generator and file backends, live.

Everything runs on 127.0.0.1 and stops when the demo ends (after `--duration` or on Ctrl-C):
the worker gets SIGTERM and drains, then the broker stops. Kept traces are written as OTLP/JSON
lines to `<output>/<tenant>.jsonl`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from streams.devtools.broker import LocalBroker, free_port
from streams.devtools.generate import GeneratorOptions, run_generator

__all__ = ["read_metrics", "run_demo", "start_worker", "stop_process"]

TENANTS = ("acme", "globex")


def read_metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Scrape a worker's /metrics: sample name → [(labels, value)]; empty if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def start_worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `caudal worker -c config` in its own session, output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(proc: subprocess.Popen[bytes], grace: float = 30.0) -> int:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _summary(samples: dict[str, list[tuple[dict[str, str], float]]], elapsed: float) -> str:
    def total(name: str) -> float:
        return sum(v for _, v in samples.get(name, ()))

    decisions = samples.get("caudal_decisions_total", [])
    kept_policy: dict[str, float] = defaultdict(float)
    kept_tenant: dict[str, float] = defaultdict(float)
    decided = kept = 0.0
    for labels, value in decisions:
        decided += value
        if labels["outcome"] == "kept":
            kept += value
            kept_policy[labels["policy"]] += value
            kept_tenant[labels["tenant"]] += value
    rate = f"{100 * kept / decided:.1f}%" if decided else "-"
    policies = ", ".join(f"{p} {int(v)}" for p, v in sorted(kept_policy.items())) or "-"
    tenants = ", ".join(f"{t} {int(v)}" for t, v in sorted(kept_tenant.items())) or "-"
    return (
        f"[{elapsed:4.0f}s] spans in {int(total('caudal_spans_received_total')):,} | "
        f"buffered {int(total('caudal_traces_buffered'))} traces | decided {int(decided):,} | "
        f"kept {int(kept):,} ({rate}) | per policy: {policies} | per tenant: {tenants}"
    )


def run_demo(duration: float = 0, output: str = "./demo-output", rate: float = 200.0) -> int:
    """Run the demo; returns the exit code."""
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="caudal-demo-"))
    metrics_port = free_port()
    broker = LocalBroker(log_path=work / "broker.log")
    config = {
        "kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 4},
        "decision": {"wait": "5s"},
        "exporters": {"files": {"type": "file", "path": str(out)}},
        # Tenants named in the config are labelled as themselves in metrics (others count as
        # the default tenant, so clients cannot create unbounded label values).
        "tenants": {name: {"exporters": ["files"]} for name in (*TENANTS, "default")},
        "worker": {"state_dir": str(work / "state")},
        "metrics": {"port": metrics_port},
    }
    config_path = work / "caudal.yaml"
    config_path.write_text(yaml.safe_dump(config))
    stop = threading.Event()

    def generate() -> None:
        from streams.config import KafkaConfig
        from streams.kafka.clients import TRAFFIC_DELIVERY_TIMEOUT, make_producer

        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
        producer = make_producer(kafka, TRAFFIC_DELIVERY_TIMEOUT)

        def produce(value: bytes, headers: list[tuple[str, str | bytes | None]]) -> None:
            producer.produce("otlp_spans", value=value, headers=headers)
            producer.poll(0)

        run_generator(produce, GeneratorOptions(rate=rate, tenants=TENANTS), stop.is_set)
        producer.flush(10)

    generator = threading.Thread(target=generate, name="demo-generator", daemon=True)
    started = time.monotonic()
    code = 0
    worker: subprocess.Popen[bytes] | None = None
    worker_code = -1
    try:
        broker.start()
        print(f"broker {broker.bootstrap} | worker log {work / 'worker.log'} | output {out}")
        worker = start_worker(config_path, work / "worker.log")
        generator.start()
        while not duration or time.monotonic() - started < duration:
            time.sleep(
                min(5.0, max(0.1, duration - (time.monotonic() - started)) if duration else 5.0)
            )
            if worker.poll() is not None:
                print(f"worker exited with {worker.returncode}; see {work / 'worker.log'}")
                code = 1
                break
            print(_summary(read_metrics(metrics_port), time.monotonic() - started), flush=True)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        stop.set()
        if generator.is_alive():
            generator.join(15)
        if worker is not None:
            worker_code = stop_process(worker)
        broker.stop()
        shutil.rmtree(work / "state", ignore_errors=True)
    files = sorted(p.name for p in out.glob("*.jsonl"))
    print(f"worker exit code {worker_code}; kept traces in {out}: {', '.join(files) or 'none'}")
    return code or (0 if worker_code == 0 else 1)
