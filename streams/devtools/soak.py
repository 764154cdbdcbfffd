"""`make soak`: one worker under steady traffic for a long time, its memory sampled. Does it
reach a plateau, and where README's sizing says it should?

A local broker, one worker (4 partitions, decision wait 5 s, the default decision cache, a
Kafka backend) and `caudal generate --fast` offering a steady rate. Every 10 s the worker's
RSS, buffered traces, remembered decisions and RocksDB memory are read; at the end the slope
of the RSS over the second half (least squares, MiB per minute), its mean there (the
plateau) and README's formula for the same moment are printed, and the exit code says
whether the slope is at most 0.5 MiB/min and the plateau within 20 % of the formula.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from streams.devtools.bench import rss_kib, total, wait_ready
from streams.devtools.broker import LocalBroker, free_port
from streams.devtools.demo import read_metrics, start_worker, stop_process

__all__ = ["predicted_mib", "run_soak", "slope"]

MIB = 1024 * 1024
# README's sizing (Running workers, Sizing memory).
BYTES_PER_BUFFERED_TRACE = 210  # the packed queue entry, its key and slot
BYTES_PER_KEPT = 155 + 12  # one origin: traces of one input record
ROCKSDB_MIB = 32 + 32  # worker.rocksdb.write_buffers + block_cache, the defaults


def predicted_mib(rest_mib: float, buffered: float, kept: float) -> float:
    """README's formula: the worker at rest (which holds the dropped-decision table, allocated
    in full at start), RocksDB's memtables and block cache at their bounds, its buffered traces
    and its kept decisions."""
    heap = BYTES_PER_BUFFERED_TRACE * buffered + BYTES_PER_KEPT * kept
    return rest_mib + ROCKSDB_MIB + heap / MIB


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def run_soak(minutes: float, rate: float, spans: int = 2) -> int:
    """Run the soak; print progress and the figures; 0 if both goals hold."""
    work = Path(tempfile.mkdtemp(prefix="caudal-soak-"))
    broker = LocalBroker(log_path=work / "broker.log").start()
    run = uuid.uuid4().hex[:6]
    port = free_port()
    config = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "partitions": 4,
            "input_topic": f"soak-{run}",
            "spans_topic": f"soak-spans-{run}",
            "sampled_topic": f"soak-sampled-{run}",
            "dlq_topic": f"soak-dlq-{run}",
            "group_id": f"soak-{run}",
        },
        "decision": {"wait": "5s"},
        "exporters": {"backend": {"type": "kafka", "topic": f"soak-backend-{run}"}},
        "tenants": {"default": {"exporters": ["backend"]}},
        "worker": {"state_dir": str(work / "state")},
        "metrics": {"port": port},
    }
    path = work / "caudal.yaml"
    path.write_text(yaml.safe_dump(config))
    worker = start_worker(path, work / "worker.log")
    generator = None
    try:
        if not wait_ready([worker], [port], 4):
            print("soak: the worker did not become ready", file=sys.stderr)
            return 2
        time.sleep(5)
        rest = rss_kib(worker.pid) / 1024
        seconds = minutes * 60
        generator = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "generate", "-c", str(path), "--fast"]
            + ["--rate", f"{rate:g}", "--spans", str(spans), "--duration", f"{seconds:g}"],
            stdout=subprocess.DEVNULL,
            stderr=open(work / "generate.log", "wb"),  # noqa: SIM115
        )
        print(
            f"soak: {minutes:g} min at {rate:,.0f} traces/s x {spans} spans, one worker, "
            f"RSS at rest {rest:.0f} MiB, work dir {work}",
            flush=True,
        )
        samples: list[dict[str, float]] = []
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            time.sleep(10)
            if worker.poll() is not None or broker.pid is None:
                print(f"soak: the worker or the broker stopped; see {work}", file=sys.stderr)
                return 2
            metrics = read_metrics(port)
            sample = {
                "minute": (time.monotonic() - began) / 60,
                "rss_mib": rss_kib(worker.pid) / 1024,
                "buffered": total(metrics, "caudal_traces_buffered"),
                "kept": total(metrics, "caudal_decision_cache_decisions", kind="kept"),
                "dropped": total(metrics, "caudal_decision_cache_decisions", kind="dropped"),
                "cache_mib": total(metrics, "caudal_decision_cache_bytes") / MIB,
                "rocksdb_mib": total(metrics, "caudal_rocksdb_memory_bytes") / MIB,
                "decided": total(metrics, "caudal_decisions_total"),
            }
            samples.append(sample)
            if len(samples) % 6 == 0:
                print(
                    "soak: {minute:5.1f} min  RSS {rss_mib:6.1f} MiB  buffered {buffered:8,.0f}  "
                    "kept {kept:8,.0f}  dropped {dropped:8,.0f}  cache {cache_mib:5.1f} MiB  "
                    "rocksdb {rocksdb_mib:5.1f} MiB  decided {decided:10,.0f}".format(**sample),
                    flush=True,
                )
        return _conclude(samples, rest, minutes)
    finally:
        if generator is not None and generator.poll() is None:
            generator.terminate()
            generator.wait(30)
        stop_process(worker)
        broker.stop()


def _conclude(samples: list[dict[str, float]], rest: float, minutes: float) -> int:
    second_half = [s for s in samples if s["minute"] >= minutes / 2]
    if not second_half:
        print("soak: too short to conclude", file=sys.stderr)
        return 2
    per_minute = slope([(s["minute"], s["rss_mib"]) for s in second_half])
    plateau = sum(s["rss_mib"] for s in second_half) / len(second_half)
    mean = {key: sum(s[key] for s in second_half) / len(second_half) for key in second_half[0]}
    formula = predicted_mib(rest, mean["buffered"], mean["kept"])
    off = (plateau - formula) / formula
    result = {
        "minutes": minutes,
        "rss_at_rest_mib": round(rest, 1),
        "slope_mib_per_min_second_half": round(per_minute, 3),
        "plateau_mib": round(plateau, 1),
        "formula_mib": round(formula, 1),
        "plateau_vs_formula": round(off, 3),
        "peak_rss_mib": round(max(s["rss_mib"] for s in samples), 1),
        "decided": round(samples[-1]["decided"]),
    }
    print(
        f"soak: RSS slope over the second half {per_minute:+.2f} MiB/min (goal <= 0.5); "
        f"plateau {plateau:.0f} MiB, README's formula {formula:.0f} MiB ({off:+.0%}, goal "
        f"within 20 %)"
    )
    print(json.dumps(result))
    return 0 if per_minute <= 0.5 and abs(off) <= 0.2 else 1


def main(argv: list[str] | None = None) -> int:
    """`python -m streams.devtools.soak`."""
    parser = argparse.ArgumentParser(prog="soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=4000.0, help="traces per second offered")
    parser.add_argument("--spans", type=int, default=2, help="spans per trace")
    args = parser.parse_args(argv)
    return run_soak(args.minutes, args.rate, args.spans)


if __name__ == "__main__":
    sys.exit(main())
