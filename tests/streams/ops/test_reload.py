"""A reload applies what a running worker can apply and names every key that needs a restart."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from streams.config import ConfigSource, load_settings
from streams.ops.reload import PolicyReloader
from streams.pipeline.decide import PolicySets
from streams.pipeline.route import TenantRoutes

BASE = {
    "exporters": {"out": {"type": "file", "path": "/tmp/caudal-reload-test"}},
    "tenants": {
        "default": {"exporters": ["out"]},
        "acme": {"exporters": ["out"], "quota_spans_per_second": 100},
    },
}


def reloader(tmp_path: Path) -> tuple[PolicyReloader, SimpleNamespace, Path]:
    path = tmp_path / "caudal.yaml"
    path.write_text(yaml.safe_dump(BASE))
    settings = load_settings(path)
    routes = TenantRoutes(settings)
    routes.set_share(0.5)
    decider = SimpleNamespace(policy_sets=PolicySets.from_settings(settings), routes=routes)
    return PolicyReloader(ConfigSource(path), decider, settings), decider, path  # type: ignore[arg-type]


def rewrite(path: Path, **changes: object) -> None:
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        target = doc
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    path.write_text(yaml.safe_dump(doc))


def test_a_tenants_quota_applies_on_reload(tmp_path: Path) -> None:
    reload, decider, path = reloader(tmp_path)
    assert decider.routes.buckets["acme"].rate == 50  # half the partitions
    rewrite(path, **{"tenants.acme.quota_spans_per_second": 400})
    assert reload.reload("test") == []
    assert decider.routes.buckets["acme"].rate == 200, "the new quota, at this worker's share"


def test_redaction_applies_on_reload(tmp_path: Path) -> None:
    reload, decider, path = reloader(tmp_path)
    rewrite(path, **{"redaction.rules": [{"key": "user.email", "action": "delete"}]})
    assert reload.reload("test") == []
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.attributes.add(key="user.email", value=AnyValue(string_value="a@b.c"))
    redacted = decider.routes.redact("acme", request.SerializeToString())
    [span] = ExportTraceServiceRequest.FromString(redacted).resource_spans[0].scope_spans[0].spans
    assert [kv.key for kv in span.attributes] == []


def test_what_needs_a_restart_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reload, decider, path = reloader(tmp_path)
    rewrite(
        path,
        **{
            "tenants.acme.exporters": [],
            "decision.wait": "30s",
            "tenants.acme.quota_action": "errors_only",
        },
    )
    with caplog.at_level(logging.WARNING, logger="streams.ops.reload"):
        restart = reload.reload("test")
    assert restart == ["decision.wait", "tenants.acme.exporters"]
    assert "keys=decision.wait,tenants.acme.exporters" in caplog.text
    assert decider.routes.settings.tenants["acme"].quota_action == "errors_only"


def test_command_line_overrides_hold_across_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "caudal.yaml"
    path.write_text(yaml.safe_dump(BASE))
    source = ConfigSource(path, {"kafka.bootstrap_servers": "flag:9092"})
    settings = source.load()
    decider = SimpleNamespace(
        policy_sets=PolicySets.from_settings(settings), routes=TenantRoutes(settings)
    )
    reload = PolicyReloader(source, decider, settings)  # type: ignore[arg-type]
    rewrite(path, **{"tenants.acme.quota_spans_per_second": 400})
    # The file does not name the flag's servers: a reload that forgot the flag would report
    # kafka.bootstrap_servers as changed, needing a restart.
    assert reload.reload("test") == []
    assert settings.kafka.bootstrap_servers == "flag:9092"


def test_a_reload_keeps_a_samplers_rates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.policies.adaptive_traffic import Traffic

    sampler = {
        "name": "tp",
        "type": "ema_throughput",
        "key_fields": ["http.route"],
        "adjustment_interval": 5,
    }
    reload, decider, path = reloader(tmp_path)
    rewrite(path, policies=[sampler])
    assert reload.reload("test") == []
    for _, now, trace in Traffic({"/a": 0.9, "/b": 0.1}).traces(200, 20):
        decider.policy_sets.default.decide(trace, now)
    learned = decider.policy_sets.default.policies[0].part(0)[1].rates()
    assert learned
    rewrite(path, policies=[sampler | {"goal_throughput_per_sec": 50}])
    assert reload.reload("test") == []
    policy = decider.policy_sets.default.policies[0]
    assert policy.part(0)[1].rates() == learned
    rewrite(path, policies=[sampler | {"key_fields": ["service.name"]}])
    with caplog.at_level(logging.WARNING):
        assert reload.reload("test") == []
    assert decider.policy_sets.default.policies[0].part(0)[1].rates() == {}
    assert "policy starts with fresh state" in caplog.text
