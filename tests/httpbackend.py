"""A real OTLP/HTTP backend on loopback for tests: records every request, answers as told."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass
class Received:
    """One request as the backend saw it."""

    at: float
    status: int
    headers: dict[str, str]
    raw: bytes  # the body as sent (maybe gzip)
    body: bytes  # decompressed

    def request(self) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(self.body)

    def spans_by_trace(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rs in self.request().resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    counts[span.trace_id.hex()] = counts.get(span.trace_id.hex(), 0) + 1
        return counts


@dataclass
class HttpBackend:
    """`answer(now)` returns (status, extra headers); default 200."""

    answer: Callable[[float], tuple[int, dict[str, str]]] = lambda now: (200, {})
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> HttpBackend:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = (
                    gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                )
                status, extra = backend.answer(time.monotonic())
                with backend.lock:
                    backend.received.append(
                        Received(time.monotonic(), status, dict(self.headers), raw, body)
                    )
                payload = b"" if status == 200 else b'{"message":"backend says no"}'
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.status == 200]

    def spans_by_trace(self) -> dict[str, int]:
        """Spans per trace over all accepted requests (duplicates add up)."""
        counts: dict[str, int] = {}
        for r in self.accepted():
            for tid, n in r.spans_by_trace().items():
                counts[tid] = counts.get(tid, 0) + n
        return counts

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
