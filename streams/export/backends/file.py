"""OTLP/JSON lines, one file per tenant."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from streams.wire.otlp import request_to_json

__all__ = ["FileBackend", "file_name"]


def file_name(tenant: str) -> str:
    """A file name of its own for every tenant name: percent-encoded, so two tenants never share
    a file; a name too long for a file system is cut and ends in a digest of the whole."""
    name = urllib.parse.quote(tenant, safe="-_") or "_"
    if len(name) > 200:
        name = name[:180] + "~" + hashlib.sha256(tenant.encode()).hexdigest()[:16]
    return name


class FileBackend:
    """OTLP/JSON lines, one file per tenant (`<path>/<tenant>.jsonl`), one line per trace.

    A file is rotated at `max_bytes` (`.1` is the newest old file); `max_files` are kept.
    """

    def __init__(self, path: str, max_bytes: int, max_files: int) -> None:
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_files = max_files

    def write(self, tenant: str, traces: list[bytes]) -> None:
        """Append one JSON line per trace and flush it to the file."""
        data = "".join(
            request_to_json(ExportTraceServiceRequest.FromString(payload)) + "\n"
            for payload in traces
        ).encode()
        target = self.dir / f"{file_name(tenant)}.jsonl"
        try:
            size = target.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            self._rotate(target)
        with open(target, "ab") as out:
            out.write(data)

    def _rotate(self, target: Path) -> None:
        for index in range(self.max_files - 1, 0, -1):
            older = target.with_name(f"{target.name}.{index}")
            if older.exists():
                if index + 1 >= self.max_files:
                    older.unlink()
                else:
                    os.replace(older, target.with_name(f"{target.name}.{index + 1}"))
        if self.max_files > 1:
            os.replace(target, target.with_name(f"{target.name}.1"))
        else:
            target.unlink()

    def close(self) -> None:
        """Nothing to release: every write opens and closes its file."""
