"""The local broker: a clear error when the binary is missing; never left running."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest

from streams.cli import main
from streams.devtools import broker as broker_module
from streams.devtools.broker import BrokerError, LocalBroker, find_tansu


def test_missing_binary_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAUDAL_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(BrokerError, match="CAUDAL_TANSU_BIN"):
        find_tansu()


def test_cli_reports_missing_binary_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CAUDAL_TANSU_BIN", "/nonexistent/tansu")
    assert main(["broker", "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("caudal broker:") and "\n" not in err


def test_generate_rejects_an_unknown_trace_kind() -> None:
    with pytest.raises(SystemExit, match="unknown trace kind"):
        main(["generate", "--mix", "weird=1", "--bootstrap", "127.0.0.1:1"])


def test_a_broker_interrupted_while_it_starts_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGTERM makes `caudal bench` raise KeyboardInterrupt wherever it is, here while it waits
    # for the broker to listen: the broker runs in its own session and must not outlive it.
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    def interrupted(*_args: object, **_kwargs: object) -> socket.socket:
        raise KeyboardInterrupt

    monkeypatch.setattr(broker_module.subprocess, "Popen", popen)
    monkeypatch.setattr(broker_module.socket, "create_connection", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            LocalBroker().start()
        [process] = started
        assert process.poll() is not None, "the broker was left running"
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
