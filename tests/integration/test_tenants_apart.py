"""Two tenants that send spans under the same trace IDs have two traces each: decided by their
own policies, exported only to their own backends."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from tests.integration.bad_input import request, span
from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.integration


def test_two_tenants_sharing_trace_ids_never_merge(broker: LocalBroker, tmp_path: Path) -> None:
    pipeline = Pipeline(
        broker,
        tmp_path,
        tenant_from=["header:x-tenant-id"],
        exporters={
            "acme-out": {"type": "file", "path": str(tmp_path / "acme")},
            "globex-out": {"type": "file", "path": str(tmp_path / "globex")},
        },
        tenants={
            "default": {"exporters": []},
            "acme": {
                "exporters": ["acme-out"],
                "policies": [{"name": "all", "type": "always_sample"}],
            },
            "globex": {
                "exporters": ["globex-out"],
                "policies": [{"name": "errors", "type": "status_code", "status_codes": ["ERROR"]}],
            },
        },
    )
    rng = random.Random(21)
    ids = [rng.randbytes(16) for _ in range(200)]
    errors = set(ids[::2])

    def send(tenant: str, tid: bytes) -> None:
        if tenant == "acme":
            spans = [span(tid, n) for n in range(2)]
        else:
            spans = [span(tid, 10 + n, error=tid in errors and n == 1) for n in range(3)]
        pipeline.produce(
            request(spans, service=f"{tenant}-svc").SerializeToString(),
            [("x-tenant-id", tenant.encode())],
        )

    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        for i, tid in enumerate(ids):  # half the traces start with each tenant
            first, second = ("acme", "globex") if i % 2 else ("globex", "acme")
            send(first, tid)
            send(second, tid)
        pipeline.flush()
        wait_for(lambda: worker.total("caudal_decisions_total") >= 400, 90, "400 decisions")
        wait_for(
            lambda: (
                len(pipeline.exported("acme").get("acme", {})) == 200
                and len(pipeline.exported("globex").get("globex", {})) == 100
            ),
            60,
            "each tenant's exports",
        )
        acme = pipeline.exported("acme")
        globex = pipeline.exported("globex")
        assert set(acme) == {"acme"} and set(globex) == {"globex"}
        assert set(acme["acme"]) == {tid.hex() for tid in ids}
        assert set(globex["globex"]) == {tid.hex() for tid in errors}
        for tenant, traces, spans in (("acme", acme["acme"], 2), ("globex", globex["globex"], 3)):
            for docs in traces.values():
                services = [
                    attr["value"]["stringValue"]
                    for doc in docs
                    for rs in doc["resourceSpans"]
                    for attr in rs["resource"]["attributes"]
                    if attr["key"] == "service.name"
                ]
                assert set(services) == {f"{tenant}-svc"}, "only the tenant's own spans"
                count = sum(
                    len(ss["spans"])
                    for doc in docs
                    for rs in doc["resourceSpans"]
                    for ss in rs["scopeSpans"]
                )
                assert count == spans, "every span of the tenant's trace"
        assert worker.total("caudal_decisions_total", tenant="globex", outcome="dropped") == 100
    finally:
        pipeline.stop()
