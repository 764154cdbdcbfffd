"""deploy/compose: compose.yaml is a valid Compose file (the Compose Specification's JSON schema,
vendored in tests/deploy/schemas) and its pieces fit: dependencies and mounted files exist, the
Collector writes what the workers read, Prometheus finds the workers, stops leave time to drain.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from streams.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(_load(COMPOSE_FILE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def validator() -> jsonschema.Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Validator, document: Any) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(top level)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def _mount(service: dict[str, Any], target: str) -> str:
    """The host source (relative to the compose file) mounted at `target` in a service."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume["target"] == target:
                return str(volume["source"])
        else:
            parts = volume.split(":")
            if len(parts) >= 2 and parts[1] == target:
                return str(parts[0])
    raise AssertionError(f"nothing is mounted at {target}")


def _config_of(service: dict[str, Any]) -> Path:
    """The host file of the Caudal config a service's command names with -c."""
    command = service["command"]
    return COMPOSE_DIR / _mount(service, command[command.index("-c") + 1])


def _settings(service: dict[str, Any]) -> Settings:
    environ = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return load_settings(_config_of(service), environ=environ)


def _seconds(duration: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def test_compose_file_matches_the_specification(
    compose: dict[str, Any], validator: jsonschema.Validator
) -> None:
    assert _errors(validator, compose) == []


def test_schema_rejects_what_compose_would(
    compose: dict[str, Any], validator: jsonschema.Validator
) -> None:
    """Not vacuous: a misspelt key or a wrong depends_on condition fails."""
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["worker"]["stop_grace"] = "60s"
    assert _errors(validator, misspelt)
    wrong_condition = copy.deepcopy(compose)
    wrong_condition["services"]["worker"]["depends_on"]["kafka-init"]["condition"] = "done"
    assert _errors(validator, wrong_condition)


def test_depends_on_targets_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown service {target}"


def test_mounted_files_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    """Every bind mount's source exists (relative to the compose file), and every named volume
    is declared."""
    named = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.get("source") if isinstance(volume, dict) else None
            if not isinstance(volume, dict):
                parts = volume.split(":")
                source = parts[0] if len(parts) >= 2 else None  # one part: an anonymous volume
            if source is None:
                continue
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_ports_are_published_on_loopback_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_collector_writes_what_the_workers_read(services: dict[str, Any]) -> None:
    """The Collector's kafka exporter writes OTLP protobuf, keyed by trace ID, to the workers'
    input topic on the Kafka the workers use, and it is in the traces pipeline."""
    collector = services["otel-collector"]
    config = _load(COMPOSE_DIR / _mount(collector, "/etc/otelcol-contrib/config.yaml"))
    settings = _settings(services["worker"])
    exporters = config["service"]["pipelines"]["traces"]["exporters"]
    (kafka_name,) = [name for name in exporters if name.split("/")[0] == "kafka"]
    exporter = config["exporters"][kafka_name]
    assert exporter["traces"]["encoding"] == settings.kafka.input_encoding == "otlp_proto"
    assert exporter["traces"]["topic"] == settings.kafka.input_topic
    assert exporter["partition_traces_by_id"] is True
    assert exporter["brokers"] == settings.kafka.bootstrap_servers.split(",")
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        assert protocol["endpoint"].startswith("0.0.0.0:")


def test_topics_are_created_before_anyone_uses_them(services: dict[str, Any]) -> None:
    """The one-shot topic service creates the input and spans topics with kafka.partitions
    partitions, and whatever writes or reads them waits for it to finish."""
    init = services["kafka-init"]
    topics = dict(spec.split(":") for spec in init["environment"]["TOPICS"].split())
    settings = _settings(services["worker"])
    for topic in (settings.kafka.input_topic, settings.kafka.spans_topic):
        assert int(topics[topic]) == settings.kafka.partitions
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("otel-collector", "ingest", "worker"):
        condition = services[name]["depends_on"]["kafka-init"]["condition"]
        assert condition == "service_completed_successfully", name


def test_caudal_services_use_the_stack_config(services: dict[str, Any]) -> None:
    for name in ("worker", "ingest", "generator"):
        assert "./caudal.yaml:/etc/caudal/caudal.yaml:ro" in services[name]["volumes"], name
        command = services[name]["command"]
        assert command[command.index("-c") + 1] == "/etc/caudal/caudal.yaml", name
    for name in ("worker", "ingest"):
        settings = _settings(services[name])
        assert settings.metrics.host == "0.0.0.0", f"{name}: metrics unreachable from Prometheus"
        assert settings.kafka.bootstrap_servers == "kafka:9092"


def test_every_exporter_delivers_inside_the_stack(services: dict[str, Any]) -> None:
    """No backend outside the stack: a fresh `up` shows no failing exporter or open breaker."""
    settings = _settings(services["worker"])
    routed = {name for tenant in settings.tenants.values() for name in tenant.exporters}
    for name in routed:
        exporter = settings.exporters[name]
        if exporter.type == "file":
            assert exporter.path is not None
            assert exporter.path.startswith("/var/lib/caudal/out"), name
        elif exporter.type == "otlp_http":
            host = exporter.url().split("//", 1)[1].split(":", 1)[0].split("/", 1)[0]
            assert host in services, f"{name} sends to {host}, not a service of the stack"


def test_prometheus_finds_two_workers_and_the_gateway(services: dict[str, Any]) -> None:
    """deploy/prometheus/prometheus.yml looks workers and gateways up by service name (DNS)."""
    prometheus = services["prometheus"]
    assert _mount(prometheus, "/etc/prometheus") == "../prometheus"
    config = _load(COMPOSE_DIR / "../prometheus/prometheus.yml")
    worker, ingest = services["worker"], services["ingest"]
    assert worker["deploy"]["replicas"] == 2
    ports = {
        "worker": _settings(worker).metrics.port,
        "ingest": _settings(ingest).ingest.metrics_port,
    }
    found = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                assert name in services, f"job {job['job_name']} looks up unknown {name}"
                found[name] = sd["port"]
    assert found == ports
    for pattern in config.get("rule_files", []):
        assert list((COMPOSE_DIR / "../prometheus").glob(pattern)), pattern


def test_grafana_is_provisioned_from_the_repository(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert _mount(grafana, "/etc/grafana/provisioning") == "../grafana/provisioning"
    assert _mount(grafana, "/var/lib/grafana/dashboards") == "../grafana/dashboards"
    # The provisioning files point at those paths and at the Prometheus service.
    provisioning = COMPOSE_DIR / "../grafana/provisioning"
    for path in sorted((provisioning / "dashboards").glob("*.y*ml")):
        for provider in _load(path)["providers"]:
            assert provider["options"]["path"] == "/var/lib/grafana/dashboards", path
    for path in sorted((provisioning / "datasources").glob("*.y*ml")):
        for source in _load(path)["datasources"]:
            host = re.match(r"^https?://([^:/]+)", source["url"])
            assert host and host.group(1) in services, f"{path}: {source['url']}"


def test_stop_leaves_time_to_drain(services: dict[str, Any]) -> None:
    """Compose sends SIGKILL after stop_grace_period: it must exceed the decision window plus
    the worker's shutdown grace."""
    worker = services["worker"]
    settings = _settings(worker)
    grace = _seconds(worker["stop_grace_period"])
    assert grace > settings.decision.wait + settings.shutdown.grace


def test_workers_do_not_share_output_files(services: dict[str, Any]) -> None:
    """Two workers appending to, and rotating, the same file exporter output would corrupt it:
    the exporters' directories are per container (anonymous volumes), not a shared volume."""
    worker = services["worker"]
    settings = _settings(worker)
    directories = {e.path for e in settings.exporters.values() if e.type == "file" and e.path}
    for volume in worker.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source"), volume["target"]
        else:
            parts = volume.split(":")
            source, target = (parts[0], parts[1]) if len(parts) >= 2 else (None, parts[0])
        if source and not source.startswith((".", "/")):  # a named volume: one for all replicas
            assert not any(d == target or d.startswith(target + "/") for d in directories), target
