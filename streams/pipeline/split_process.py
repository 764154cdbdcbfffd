"""The split stage in a process of its own, beside the worker's Faust loop.

In one process the split thread and the buffer agent share one interpreter lock: while a burst
is buffered they use one core between them, and the machine's second core is half idle. In a
process of its own the split stage has its own lock. It talks to the worker only through
Kafka, as it already did (`caudal-spans`, with the progress claims), plus four small things
that cross the process boundary here:

- the stop: the worker's `stop_input`, sent when it is set. The process ignores SIGINT and
  SIGTERM (they are the worker's to handle: it stops reading input first, then drains) and
  dies with the worker on kill -9 (Linux's parent-death signal, and a check of its parent at
  every read);
- the worker's degradation level, which sizes the batches and turns experiment metrics off,
  sent when it changes;
- the age of the records read (the degradation's lag), reported every `REPORT_INTERVAL`;
- its `caudal_*` metrics, reported with it and added into the worker's /metrics
  (streams.ops.metrics.Exposition).

All of it crosses one socket pair (multiprocessing's `Connection`: pickled messages). The
process is started as `python -m streams.pipeline.split_process FD`, not by multiprocessing's
spawn, which would add a resource-tracker process to every worker.

A split process that ends by itself ends the worker, exactly as a failed split thread does
(streams.ops.health.Supervised): the orchestrator restarts both, and the input is read again
from the committed offsets.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from streams.config import Settings
from streams.ops.experiments import ExperimentMeter
from streams.ops.health import (
    Supervised,
    add_part,
    quiet_collector,
    release_free_memory,
    remove_part,
)
from streams.ops.logs import configure_logging
from streams.ops.metrics import EXPOSITION, caudal_families
from streams.pipeline.degrade import Degradation, LagClock
from streams.pipeline.split import DRAIN_TIMEOUT, SplitStage

__all__ = ["REPORT_INTERVAL", "SplitProcess"]

log = logging.getLogger(__name__)

REPORT_INTERVAL = 0.5
_WATCH_INTERVAL = 0.1  # how often the worker's side looks at the stop and the level
_TRIM_EVERY = 10  # reports: the C heap's free pages go back to the system every 5 s
_PR_SET_PDEATHSIG = 1
_STOP = "stop"


@dataclass(frozen=True)
class _Report:
    """What the split process tells the worker every REPORT_INTERVAL, and once as it ends."""

    oldest_age: float  # of the records read since the last report (LagClock)
    families: list[Any]  # its caudal_* metric families, cumulative
    failure: str | None = None  # set in the last report of a process that failed


class SplitProcess(Supervised):
    """The worker's side: start the split process, send it the stop and the degradation level,
    take in its reports; its unexpected end fails the worker."""

    def __init__(
        self,
        settings: Settings,
        stop: threading.Event,
        lag: LagClock,
        degradation: Degradation,
    ) -> None:
        super().__init__(name="caudal-split")
        self.settings = settings
        self.stop = stop
        self.lag = lag
        self.degradation = degradation
        self.process: subprocess.Popen[bytes] | None = None

    def work(self) -> None:
        """Run the split process until the worker stops; raise if it ends by itself."""
        channel, theirs = Pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
        theirs.close()  # the process holds the only other end: EOF when it ends
        add_part(self.process.pid)
        failure: str | None = None
        try:
            channel.send((self.settings, os.getpid()))
            level, stopping, running = 0, False, True
            while running:
                if self.stop.is_set() and not stopping:
                    stopping = True
                    channel.send(_STOP)
                if self.degradation.level != level:
                    level = self.degradation.level
                    channel.send(level)
                running, failed = self._receive(channel)
                failure = failed or failure
            self.process.wait()
        except OSError:  # the process ended before it took the settings, or meanwhile
            pass
        finally:
            self._end(channel)
        if failure is not None or not self.stop.is_set():
            code = self.process.returncode
            raise RuntimeError(failure or f"split process exited with code {code}")

    def _receive(self, channel: Connection) -> tuple[bool, str | None]:
        """Take in the report that comes within _WATCH_INTERVAL, if one does: whether the
        process still runs, and the failure it reported."""
        try:
            if not channel.poll(_WATCH_INTERVAL):
                return True, None
            report: _Report = channel.recv()
        except (EOFError, OSError):  # the process ended
            return False, None
        self.lag.note(report.oldest_age)
        EXPOSITION.report("split", report.families)
        return True, report.failure

    def _end(self, channel: Connection) -> None:
        """Stop the process if it still runs: it drains first (DRAIN_TIMEOUT), then is killed."""
        process = self.process
        assert process is not None
        if process.poll() is None:
            try:
                channel.send(_STOP)
                process.wait(DRAIN_TIMEOUT + 2 * REPORT_INTERVAL)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if process.poll() is None:
            log.error("split process did not stop, killing it pid=%s", process.pid)
            process.kill()
            process.wait()
        remove_part(process.pid)
        channel.close()


class _Orders(threading.Thread):
    """In the split process: take in the worker's stop and level, and send a report every
    REPORT_INTERVAL, until the process ends."""

    def __init__(self, channel: Connection, lag: LagClock, parent: int) -> None:
        super().__init__(name="caudal-split-orders", daemon=True)
        self.channel = channel
        self.lag = lag
        self.parent = parent
        self.level = 0
        self.stopped = threading.Event()
        self.done = threading.Event()

    def is_set(self) -> bool:
        """The split stage's stop flag: set by the worker, or by the worker's end."""
        return self.stopped.is_set() or os.getppid() != self.parent

    def run(self) -> None:
        reports = 0
        while not self.done.is_set():
            try:
                while self.channel.poll(REPORT_INTERVAL):
                    order = self.channel.recv()
                    if order == _STOP:
                        self.stopped.set()
                    else:
                        self.level = order
                    if self.done.is_set():
                        return
            except (EOFError, OSError):  # the worker is gone
                self.stopped.set()
                return
            self.send()
            reports += 1
            if reports % _TRIM_EVERY == 0:
                release_free_memory()  # as the worker does at every pressure check

    def send(self, failure: str | None = None) -> None:
        try:
            self.channel.send(_Report(self.lag.take(), caudal_families(), failure))
        except OSError:  # the worker is gone: the stage stops at its next read
            self.stopped.set()

    def finish(self, failure: str | None) -> None:
        self.done.set()
        self.join()
        self.send(failure)


def _split_main(fd: int) -> None:
    """The split process: the split stage's loop, until the worker stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    channel = Connection(fd)
    settings, parent = channel.recv()
    configure_logging(settings.logging)
    lag = LagClock()
    orders = _Orders(channel, lag, parent)
    meter = ExperimentMeter(settings.experiments)
    stage = SplitStage(settings, orders, lag, lambda: orders.level, meter)
    quiet_collector()
    orders.start()
    failure = None
    try:
        stage.work()
    except BaseException as exc:  # reported to the worker, which fails and logs it
        log.critical("split process failed error=%s", exc, exc_info=True)
        failure = f"split process failed: {type(exc).__name__}: {exc}"
    orders.finish(failure)
    channel.close()
    logging.shutdown()
    os._exit(1 if failure else 0)  # the clients are closed; nothing else is left to wait for


def _die_with_parent() -> None:
    """Linux: SIGKILL when the worker's thread that started this process ends (kill -9)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent check notices at the next read
        pass


if __name__ == "__main__":
    # Through the module's own name, so that what it pickles names this module, not __main__.
    from streams.pipeline.split_process import _split_main as main

    main(int(sys.argv[1]))
