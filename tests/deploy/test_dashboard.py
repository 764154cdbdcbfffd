"""The Grafana dashboard: the committed JSON is the generator's output, every panel queries
Prometheus, and every metric it reads is in the contract or recorded by the shipped rules."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_prometheus_rules import known_series, metric_names, recorded_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
GENERATOR = GRAFANA / "dashboard.py"
COMMITTED = GRAFANA / "dashboards" / "caudal.json"
PROVISIONING = GRAFANA / "provisioning"


def panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows excluded, panels inside collapsed rows included)."""
    found = []
    for panel in json.loads(COMMITTED.read_text())["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def expressions() -> list[tuple[str, str]]:
    return [(panel["title"], t["expr"]) for panel in panels() for t in panel.get("targets", [])]


@pytest.mark.skipif(
    importlib.util.find_spec("grafana_foundation_sdk") is None,
    reason="grafana-foundation-sdk not installed (pip install -e '.[test]')",
)
def test_committed_json_is_the_generators_output() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == COMMITTED.read_text(), (
        "deploy/grafana/dashboards/caudal.json is stale: run "
        ".venv/bin/python deploy/grafana/dashboard.py > deploy/grafana/dashboards/caudal.json"
    )


def test_every_panel_has_a_prometheus_query() -> None:
    found = panels()
    assert len(found) >= 30
    for panel in found:
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no target"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: empty expr"
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [target["refId"] for target in targets]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]


def test_panel_ids_are_unique_and_titles_cover_the_pipeline() -> None:
    doc = json.loads(COMMITTED.read_text())
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(set(ids)) == len(ids)
    titles = {panel["title"] for panel in panels()}
    for title in (
        "Spans in per tenant",
        "Kept traces per policy and tenant",
        "Effective sampling rate",
        "Buffer fill",
        "Decision lag",
        "Exporter state",
        "Exporter backlog",
        "Dead letters",
        "Degradation level",
        "Health state",
        "Pipeline state",
        "Consumer lag",
        "Late spans",
        "Trace integrity",
        "Experiment request rate",
        "Experiment error ratio",
        "Experiment duration p95",
        "Ingest requests",
        "Ingest backpressure",
    ):
        assert title in titles


def test_metrics_are_in_the_contract_or_recorded() -> None:
    allowed = known_series() | recorded_names()
    for title, expr in expressions():
        names = metric_names(expr)
        assert names, f"{title}: no metric found in {expr!r}"
        assert names <= allowed, f"{title} reads {names - allowed}"


def test_variables_pick_the_datasource_and_workers() -> None:
    variables = {v["name"]: v for v in json.loads(COMMITTED.read_text())["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["includeAll"] and instance["multi"]
    assert instance["allValue"] == ".*"
    # Every worker panel follows the variable; ingest gateways are other instances.
    for title, expr in expressions():
        if "caudal_ingest_" not in expr:
            assert 'instance=~"$instance"' in expr, title


def test_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["uid"] == "prometheus"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "caudal.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
