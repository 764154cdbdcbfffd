"""The local broker: a clear error when the binary is missing."""

from __future__ import annotations

import pytest

from streams.cli import main
from streams.devtools.broker import BrokerError, find_tansu


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
