"""Health of a worker: pipeline state, health state with reasons, and the HTTP endpoints.

On the metrics port: `/metrics` (Prometheus), `/healthz` (liveness: the event loop is alive),
`/readyz` (503 until the worker joined its group and recovered its tables), `/status` (JSON).

Health states, as documented in README: `healthy`; `degraded` when the buffer is over
`health.degraded_buffer_fill` of `decision.max_traces` or export success is under
`health.min_export_success` over the last minute; `unhealthy` when the buffer is full, export
failures are over `health.max_export_failure`, or RSS is over `health.memory_limit`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.config import Settings
from streams.ops.metrics import (
    EXPOSITION,
    HEALTH_STATE,
    PIPELINE_STATE,
    THREAD_FAILURES,
    set_one_hot,
)
from streams.pipeline.degrade import Degradation

__all__ = [
    "HEALTH_STATES",
    "PIPELINE_STATES",
    "ExportOutcomes",
    "Health",
    "Supervised",
    "add_part",
    "quiet_collector",
    "remove_part",
    "rss_bytes",
    "serve_endpoints",
    "serve_health",
]

log = logging.getLogger(__name__)

PIPELINE_STATES = ("initializing", "starting", "running", "degraded", "draining", "stopped")
HEALTH_STATES = ("healthy", "degraded", "unhealthy")


class ExportOutcomes:
    """Batch outcomes of the last minute, shared by all exporters of a worker."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.events: deque[tuple[float, bool]] = deque()
        self.lock = threading.Lock()

    def record(self, ok: bool) -> None:
        """Note one batch attempt."""
        with self.lock:
            self.events.append((time.monotonic(), ok))

    def success_ratio(self) -> float | None:
        """Share of successful attempts in the window, or None without attempts."""
        cutoff = time.monotonic() - self.window
        with self.lock:
            while self.events and self.events[0][0] < cutoff:
                self.events.popleft()
            if not self.events:
                return None
            return sum(ok for _, ok in self.events) / len(self.events)


class Supervised(threading.Thread):
    """A worker thread (split stage, exporter) whose loop must never end by itself.

    Its loop handles the failures it expects; anything else ends it, is logged once with its
    cause and counted (caudal_thread_failures_total), and `on_failure` stops the worker:
    /healthz fails and the process exits non-zero, so the orchestrator restarts it and the
    partitions it held are read again from their committed offsets.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.on_failure: Callable[[str], None] = lambda reason: None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:
            log.critical("thread failed thread=%s error=%s", self.name, exc, exc_info=True)
            THREAD_FAILURES.labels(self.name).inc()
            self.on_failure(f"thread {self.name} failed: {type(exc).__name__}: {exc}")

    def work(self) -> None:
        """The thread's loop."""
        raise NotImplementedError


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to hand back
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``).

    Spans pass through as bytes objects of a few hundred bytes to a few MiB, allocated from
    several threads' heaps; glibc keeps what they free for reuse, so after a burst the RSS
    stays near the burst's peak and the memory degradation level reads it as pressure. A
    trim returns the free pages: with 200,000 traces buffered the RSS per 1,000 traces went
    from 0.67 to 0.39 MiB; a trim takes 1-12 ms. Called at every pressure check.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def quiet_collector() -> None:
    """Keep the cycle collector out of the hot path.

    Nearly everything a worker allocates per span is bytes (never tracked) or freed by reference
    counting; the collector still scanned every long-lived object each time young ones piled
    up: 8.7 % of the worker's CPU at 8,770 traces/s, in pauses of up to 190 ms (full scans of
    the modules, the clients and the remembered decisions). What exists once the worker is
    built is parked for good (`gc.freeze`), and the young generation is collected every 100,000
    allocations, not every 700: the objects of a decision batch (5,000 traces), alive until it
    completes, are scanned and moved to the older generations less often. In a burst of
    100,000 traces (`caudal bench`), the young and middle collections of the worker's main
    process took 0.17-0.19 s at every 10,000 allocations and 0.07-0.08 s at every 100,000,
    both counted from start-up (which collects at the default 700).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 10, 10)


# Processes that are part of this worker besides itself (its split process): their memory is
# the worker's, as the container's memory limit counts it.
_PARTS: set[int] = set()


def add_part(pid: int) -> None:
    """Count a process the worker started as part of it (rss_bytes)."""
    _PARTS.add(pid)


def remove_part(pid: int) -> None:
    """The process ended."""
    _PARTS.discard(pid)


def rss_bytes() -> int:
    """The resident memory of this process and of its parts (add_part), which the container's
    memory limit counts together (Linux; 0 elsewhere)."""
    total = 0
    for pid in ["self", *_PARTS]:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * 4096
        except OSError:
            pass
    return total


@dataclass
class Health:
    """What the endpoints report; the worker feeds it."""

    settings: Settings
    buffered: Callable[[], int] = lambda: 0
    exporter_states: Callable[[], dict[str, str]] = dict
    outcomes: ExportOutcomes = field(default_factory=ExportOutcomes)
    pipeline: str = "initializing"
    ready: bool = False
    heartbeat: float = field(default_factory=time.monotonic)
    reloads: int = 0
    degradation: Degradation = field(init=False)
    consumer_lag: dict[int, int] = field(default_factory=dict)
    read_offsets: Callable[[], dict[int, int]] = dict
    config_version: str = "defaults"
    # Why the worker is failing for good (a thread died): /healthz answers 503 from then on.
    failure: str | None = None

    def __post_init__(self) -> None:
        self.degradation = Degradation(self.settings.degradation)
        self.set_pipeline("initializing")
        self.evaluate()

    def set_pipeline(self, state: str) -> None:
        """Move the lifecycle (one-hot gauge)."""
        self.pipeline = state
        set_one_hot(PIPELINE_STATE, PIPELINE_STATES, state)

    def beat(self) -> None:
        """The event loop is alive (called from the decision timer)."""
        self.heartbeat = time.monotonic()

    def evaluate(self) -> tuple[str, list[str]]:
        """Health state and the reasons for it."""
        config = self.settings.health
        max_traces = self.settings.decision.max_traces
        fill = self.buffered() / max_traces
        success = self.outcomes.success_ratio()
        rss = rss_bytes()
        unhealthy, degraded = [], []
        if fill >= 1.0:
            unhealthy.append(f"buffer full ({self.buffered()} of {max_traces} traces)")
        elif fill > config.degraded_buffer_fill:
            degraded.append(f"buffer at {fill:.0%} of decision.max_traces")
        if success is not None:
            if 1 - success > config.max_export_failure:
                unhealthy.append(f"export failures at {1 - success:.0%} over the last minute")
            elif success < config.min_export_success:
                degraded.append(f"export success at {success:.1%} over the last minute")
        if config.memory_limit and rss > config.memory_limit:
            unhealthy.append(f"RSS {rss // 2**20} MiB over health.memory_limit")
        if self.failure is not None:
            unhealthy.append(self.failure)
        state = "unhealthy" if unhealthy else "degraded" if degraded else "healthy"
        set_one_hot(HEALTH_STATE, HEALTH_STATES, state)
        if self.pipeline in ("running", "degraded"):
            self.set_pipeline("degraded" if state != "healthy" else "running")
        return state, unhealthy + degraded

    def alive(self) -> bool:
        """Liveness: before the worker runs, starting up counts as alive; a worker thread
        that died (`failure`) never is."""
        if self.failure is not None:
            return False
        if self.pipeline in ("initializing", "starting", "draining", "stopped"):
            return True
        return time.monotonic() - self.heartbeat < 30

    def status(self) -> dict[str, Any]:
        """The /status document."""
        state, reasons = self.evaluate()
        max_traces = self.settings.decision.max_traces
        buffered = self.buffered()
        success = self.outcomes.success_ratio()
        degradation = self.degradation
        return {
            "pipeline_state": self.pipeline,
            "ready": self.ready,
            "health": {"state": state, "reasons": reasons},
            "degradation_level": degradation.level,
            "degradation": {
                "level": degradation.level,
                "reason": degradation.reason,
                "sampling_percentage": degradation.percentage(),
            },
            "buffer": {
                "traces": buffered,
                "max_traces": max_traces,
                "fill": round(buffered / max_traces, 4),
            },
            "consumer_lag": {str(p): lag for p, lag in sorted(self.consumer_lag.items())},
            "read_offsets": {str(p): o for p, o in sorted(self.read_offsets().items())},
            "memory": {"rss_bytes": rss_bytes(), "limit_bytes": self.settings.health.memory_limit},
            "export_success_last_minute": None if success is None else round(success, 4),
            "exporters": self.exporter_states(),
            "config_version": self.config_version,
            "config_reloads": self.reloads,
        }


def serve_health(health: Health, host: str, port: int) -> ThreadingHTTPServer | None:
    """Serve /metrics, /healthz, /readyz and /status of a worker on host:port (0: nothing)."""
    return serve_endpoints(
        host,
        port,
        alive=health.alive,
        ready=lambda: health.ready and health.pipeline in ("running", "degraded"),
        status=health.status,
    )


def serve_endpoints(
    host: str,
    port: int,
    alive: Callable[[], bool],
    ready: Callable[[], bool],
    status: Callable[[], dict[str, Any]],
) -> ThreadingHTTPServer | None:
    """/metrics, /healthz, /readyz and /status for any Caudal process (port 0: nothing)."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(EXPOSITION), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"not alive: see /status\n")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            elif path == "/status":
                body = json.dumps(status(), indent=2).encode() + b"\n"
                self._send(200, body, "application/json")
            else:
                self._send(404, b"not found: try /metrics, /healthz, /readyz, /status\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="caudal-health", daemon=True).start()
    return server
