"""deploy/ files parse, and the example configuration is valid (the Compose and Kubernetes
files have their own tests in tests/deploy)."""

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
