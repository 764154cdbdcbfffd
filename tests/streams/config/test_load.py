"""Configuration: defaults, key-path errors, environment overrides, `caudal validate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main
from streams.config import ConfigError, load_settings, parse_duration, parse_size


def test_defaults_are_the_five_rules() -> None:
    settings = load_settings(None, environ={})
    assert [p["name"] for p in settings.policies] == [
        "errors",
        "slow",
        "critical-services",
        "vip-users",
        "baseline",
    ]
    assert settings.decision.wait == 10.0
    assert settings.kafka.input_topic == "otlp_spans"
    settings.build_engine()


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), (2, 2.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_three_mistakes_are_all_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
decision:
  wait: ten seconds
policies:
  - {name: slow, type: latency, threshold_ms: fast}
tenants:
  acme: {exporters: [nowhere]}
"""
    )
    assert main(["validate", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert "decision.wait:" in err
    assert "policies.0.threshold_ms:" in err
    assert "tenants.acme.exporters.0: unknown exporter 'nowhere'" in err
    assert "3 error(s)" in err


def test_unknown_keys_and_bad_yaml_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka: {bootstrap: x}\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap: Extra inputs are not permitted"):
        load_settings(path, environ={})
    path.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, environ={})


def test_environment_overrides_the_kafka_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka: {bootstrap_servers: 'a:9092'}\n")
    settings = load_settings(
        path,
        environ={"CAUDAL_BOOTSTRAP_SERVERS": "b:9092", "CAUDAL_SECURITY_SASL_USERNAME": "u"},
    )
    assert settings.kafka.bootstrap_servers == "b:9092"
    assert settings.kafka.security == {"sasl.username": "u"}


def test_valid_file_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("decision: {wait: 5s}\n")
    assert main(["validate", "-c", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_tenant_policy_sets_replace_or_extend(tmp_path: Path) -> None:
    from streams.pipeline.decide import PolicySets

    path = tmp_path / "c.yaml"
    path.write_text(
        """
policies:
  - {name: errors, type: status_code, status_codes: [ERROR]}
tenants:
  default: {exporters: [file]}
  acme:
    exporters: [file]
    policies: [{name: all, type: always_sample}]
  globex:
    exporters: [file]
    extends: default
    policies: [{name: slow, type: latency, threshold_ms: 500}]
"""
    )
    sets = PolicySets.from_settings(load_settings(path, environ={}))
    assert [p.name for p in sets.for_tenant("acme").policies] == ["all"]
    assert [p.name for p in sets.for_tenant("globex").policies] == ["errors", "slow"]
    assert [p.name for p in sets.for_tenant("anyone").policies] == ["errors"]


def test_tenant_policy_errors_have_their_own_key_paths(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        """
policies:
  - {name: errors, type: status_code, status_codes: [ERROR]}
tenants:
  default: {exporters: [file]}
  acme:
    extends: default
    policies:
      - {name: errors, type: always_sample}
      - {name: slow, type: latency, threshold_ms: later}
"""
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path, environ={})
    paths = [p for p, _ in exc.value.errors]
    assert "tenants.acme.policies.0.name" in paths  # duplicates the extended global name
    assert "tenants.acme.policies.1.threshold_ms" in paths


@pytest.mark.parametrize(
    ("text", "size"), [("512MiB", 512 * 2**20), ("2GiB", 2 * 2**30), ("100MB", 10**8), (4096, 4096)]
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_production_sections_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "caudal.yaml"
    path.write_text(
        """
health: {memory_limit: 1GiB}
degradation: {max_level: 2, recovery_period: 1m, level_percentages: [5, 1, 0.1]}
experiments: {allow: [checkout-v2], max_series: 50}
logging: {format: json}
shutdown: {grace: 45s}
"""
    )
    settings = load_settings(path, environ={})
    assert settings.health.memory_limit == 2**30
    assert settings.degradation.max_level == 2
    assert settings.degradation.recovery_period == 60
    assert settings.experiments.allow == ["checkout-v2"]
    assert settings.logging.format == "json"
    assert settings.shutdown.grace == 45
    path.write_text(
        """
degradation: {max_level: 7, level_percentages: [5, 1, 300]}
logging: {format: xml}
health: {memory_limit: lots}
"""
    )
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    paths = {key for key, _ in error.value.errors}
    assert {"degradation.max_level", "logging.format", "health.memory_limit"} <= paths


def test_ingest_tokens_file_is_merged(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("secret-a: acme\nsecret-b: globex\n")
    path = tmp_path / "caudal.yaml"
    path.write_text(f"ingest: {{tokens_file: {tokens}, tokens: {{inline: default}}}}\n")
    settings = load_settings(path, environ={})
    assert settings.ingest.tokens == {"secret-a": "acme", "secret-b": "globex", "inline": "default"}
    tokens.write_text("- not a map\n")
    with pytest.raises(ConfigError, match="ingest.tokens_file: .* must map each token"):
        load_settings(path, environ={})
    tokens.unlink()
    with pytest.raises(ConfigError, match="ingest.tokens_file: cannot read"):
        load_settings(path, environ={})
    # Workers load without the tokens: they need not see the Secret that holds them.
    assert load_settings(path, environ={}, read_tokens=False).ingest.tokens == {"inline": "default"}


def test_command_line_overrides_are_validated_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka: {bootstrap_servers: 'a:9092'}\nmetrics: {port: 9000}\n")
    settings = load_settings(
        path,
        environ={"CAUDAL_BOOTSTRAP_SERVERS": "b:9092"},
        overrides={"kafka.bootstrap_servers": "c:9092", "logging.level": "debug"},
    )
    assert settings.kafka.bootstrap_servers == "c:9092"  # flag over environment over file
    assert settings.logging.level == "debug" and settings.metrics.port == 9000
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={}, overrides={"metrics.port": 70000})
    assert [key for key, _ in error.value.errors] == ["metrics.port"]


def test_worker_flag_out_of_range_is_rejected(capsys: pytest.CaptureFixture) -> None:
    assert main(["worker", "--metrics-port", "70000"]) == 1
    assert "metrics.port:" in capsys.readouterr().err


def test_a_bad_exporter_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        """
exporters:
  backend: {type: otlp_http}
tenants:
  default: {exporters: [backend]}
"""
    )
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    # The route names an exporter that failed to validate: not also "unknown exporter".
    assert [key for key, _ in error.value.errors] == ["exporters.backend"]


def test_settings_built_in_code_are_cross_checked() -> None:
    from pydantic import ValidationError

    from streams.config import Settings, TenantConfig

    with pytest.raises(ValidationError, match=r"tenants\.acme\.exporters\.0: unknown exporter"):
        Settings(tenants={"acme": TenantConfig(exporters=["nowhere"])})
