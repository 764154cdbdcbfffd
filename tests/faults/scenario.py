"""Run workers through a timeline of joins, SIGTERMs and kill -9s under traffic, then count.

A scenario is a list of `Step`s at seconds from the start of the traffic. After the traffic
ends the surviving workers decide and export everything, are stopped with SIGTERM, and the
backend topic is compared with what was generated (`tests.faults.traffic.tally`).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from streams.devtools.broker import LocalBroker
from tests.faults.traffic import Received, Tally, Traffic, Truth, read_backend, tally
from tests.integration.harness import Pipeline, WorkerProcess, wait_for

DECISION_WAIT = 6.0
_RECOVERED = re.compile(r"partitions recovered .* seconds=([0-9.]+)")
GRACE = 30.0


@dataclass(frozen=True)
class Step:
    """At `at` seconds: `start`, `stop` (SIGTERM, not waited for), `kill` (SIGKILL) or
    `restart` (SIGTERM, wait for the exit, start again on the same state directory) `worker`."""

    at: float
    action: str
    worker: str


@dataclass
class Stopped:
    code: int | None
    seconds: float


@dataclass
class Outcome:
    """Everything a scenario measured."""

    tally: Tally
    stops: dict[str, Stopped] = field(default_factory=dict)
    crashes: dict[str, list[str]] = field(default_factory=dict)
    recovery_seconds: dict[str, float] = field(default_factory=dict)
    copies: float = 0  # fragments the surviving workers recognised as copies and skipped
    truth: Truth | None = None
    received: Received | None = None

    def report(self, name: str) -> str:
        lines = [f"[{name}] {self.tally.line()}"]
        if self.tally.missing_born:
            buckets = Counter(int(born // 5) * 5 for born in self.tally.missing_born)
            lines.append(
                "  missing by birth second: "
                + ", ".join(f"{b}-{b + 5}s: {n}" for b, n in sorted(buckets.items()))
            )
        for worker, stopped in self.stops.items():
            lines.append(f"  SIGTERM {worker}: exit {stopped.code} after {stopped.seconds:.1f}s")
        for worker, found in self.crashes.items():
            lines.append(f"  {worker} crashed: {found[0][:300]}")
        lines.append(f"  fragments skipped as copies by the surviving workers: {self.copies:.0f}")
        if self.recovery_seconds:
            lines.append(
                "  longest partition recovery per worker: "
                + ", ".join(f"{w} {s:.2f}s" for w, s in sorted(self.recovery_seconds.items()))
            )
        return "\n".join(lines)

    def assert_nothing_lost(self) -> None:
        t = self.tally
        assert t.kept_missing == 0, t.line()
        assert t.dropped_leaked == 0, t.line()
        assert t.foreign == 0, t.line()
        assert t.duplicated <= 0.001 * t.must_keep, t.line()
        assert not self.crashes, self.crashes
        for worker, stopped in self.stops.items():
            assert stopped.code == 0 and stopped.seconds <= GRACE, (worker, stopped)


class Scenario:
    """One fault scenario on its own topics, groups and state directories."""

    def __init__(
        self,
        broker: LocalBroker,
        root: Path,
        partitions: int = 8,
        policies: list[dict[str, object]] | None = None,
        **sections: object,
    ):
        run_topic = f"backend-{root.name[-12:]}"
        self.pipeline = Pipeline(
            broker,
            root,
            kafka={"partitions": partitions},
            decision={"wait": f"{DECISION_WAIT:g}s"},
            policies=policies
            or [{"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}],
            exporters={"backend": {"type": "kafka", "topic": run_topic}},
            tenants={"default": {"exporters": ["backend"]}},
            shutdown={"grace": f"{GRACE:g}s"},
            **sections,
        )
        self.backend_topic = run_topic
        self.workers: dict[str, WorkerProcess] = {}
        self.stops: dict[str, Stopped] = {}
        self._stoppers: list[threading.Thread] = []

    def start(self, name: str) -> WorkerProcess:
        worker = self.pipeline.start_worker(name)
        self.workers[name] = worker
        return worker

    def kill(self, name: str) -> None:
        self.workers[name].proc.send_signal(signal.SIGKILL)
        self.workers[name].proc.wait()

    def restart(self, name: str) -> None:
        self.stop(name).join(GRACE + 30)
        self.start(name)

    def stop(self, name: str) -> threading.Thread:
        """SIGTERM in the background; exit code and duration land in `stops`."""
        proc = self.workers[name].proc
        key = name if name not in self.stops else f"{name}#{len(self.stops)}"

        def wait() -> None:
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(GRACE + 15)
            except Exception:
                proc.kill()
                code = None
            self.stops[key] = Stopped(code, time.monotonic() - began)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        self._stoppers.append(thread)
        return thread

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.proc.poll() is None]

    def run(
        self, steps: list[Step], rate: float = 200, duration: float = 90, first: str = "A"
    ) -> Outcome:
        """Start `first`, run the traffic and the steps, settle, stop everyone, count."""
        try:
            self.start(first).wait_ready(90)
            traffic = Traffic(
                self.pipeline.broker.bootstrap, self.pipeline.kafka["input_topic"], rate, duration
            )
            traffic.start()
            for step in sorted(steps, key=lambda s: s.at):
                delay = traffic.started + step.at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                actions = {
                    "start": self.start,
                    "stop": self.stop,
                    "kill": self.kill,
                    "restart": self.restart,
                }
                actions[step.action](step.worker)
            traffic.join(duration + 60)
            assert traffic.failed == 0, "the traffic could not be produced"
            self._settle()
            copies = sum(w.total("caudal_redelivered_fragments_total") for w in self.alive())
            for worker in self.alive():
                name = next(n for n, w in self.workers.items() if w is worker)
                self.stop(name)
            for thread in self._stoppers:
                thread.join(GRACE + 30)
            received = read_backend(self.pipeline.broker.bootstrap, self.backend_topic)
            outcome = Outcome(
                tally(traffic.truth, received),
                dict(self.stops),
                copies=copies,
                truth=traffic.truth,
                received=received,
            )
            for name in self.workers:
                text = (self.pipeline.root / f"worker-{name}.log").read_text(errors="replace")
                lines = text.splitlines()
                found = [line for line in lines if "Crashed reason" in line]
                if found:
                    outcome.crashes[name] = found
                took = [float(m) for m in _RECOVERED.findall(text)]
                if took:
                    outcome.recovery_seconds[name] = max(took)
            return outcome
        finally:
            self.pipeline.stop()

    def _settle(self) -> None:
        """Wait until every live worker has decided and exported all it holds."""
        time.sleep(DECISION_WAIT + 2)
        calm = 0

        def settled() -> bool:
            nonlocal calm
            workers = self.alive()
            busy = any(
                w.total("caudal_traces_buffered") > 0
                or w.total("caudal_exporter_backlog") > 0
                or w.total("caudal_worker_ready") != 1
                for w in workers
            )
            calm = 0 if busy or not workers else calm + 1
            return calm >= 8

        wait_for(settled, 180, "the surviving workers to decide and export everything")
