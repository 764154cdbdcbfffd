"""deploy/ files parse, and the example configuration is valid."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.config import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_example_config_is_valid() -> None:
    settings = load_settings(DEPLOY / "caudal.yaml", environ={})
    assert set(settings.tenants) == {"acme", "globex", "default"}
    assert settings.build_engine().policies


def test_yaml_files_parse() -> None:
    files = sorted(DEPLOY.rglob("*.y*ml"))
    assert files
    for path in files:
        assert yaml.safe_load(path.read_text()), path


def test_compose_workers_use_the_example_config() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    worker = compose["services"]["worker"]
    assert "../caudal.yaml:/etc/caudal/caudal.yaml:ro" in worker["volumes"]
    assert worker["command"][-1] == "/etc/caudal/caudal.yaml"
