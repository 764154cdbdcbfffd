"""Prometheus config, recording and alert rules: promtool checks and unit tests, and the rules'
own contract (every alert tested both ways, labelled, with a runbook; metric names known)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found: install Debian's prometheus package"
)

# Written by Prometheus itself for every target.
SYNTHETIC = frozenset({"up"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan"})


def known_series() -> frozenset[str]:
    """Every series name the worker and the gateway export (histogram series included), read
    from the metrics their code registers, plus what Prometheus adds itself."""
    import streams.ingest.gateway  # noqa: F401
    import streams.worker  # noqa: F401  (metrics register when their modules are imported)

    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return frozenset(names) | SYNTHETIC


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are not label names, functions,
    keywords or Grafana variables."""
    text = _STRING.sub('""', expr)
    text = _GROUPS.sub(" ", text)
    text = _BRACES.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for match in _NAME.finditer(text):
        name, before = match.group(), text[match.start() - 1 : match.start()]
        is_function = text[match.end() :].lstrip().startswith("(")
        # A name right after a digit is a number's exponent or a duration's unit (1e3, 5m).
        if is_function or name.lower() in _KEYWORDS or before.isdigit() or before == ".":
            continue
        names.add(name)
    return names


def load_rules() -> list[dict[str, Any]]:
    """All rules of the shipped rule files."""
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in load_rules() if "record" in rule}


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_config_is_valid() -> None:
    result = promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # The config's rule_files glob finds every shipped rule file.
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


@needs_promtool
def test_rules_are_valid() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    assert UNIT_TESTS
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def test_config_scrapes_workers_and_gateways_and_loads_the_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == ["rules/*.yml"]
    assert [path.parent.name for path in RULE_FILES] == ["rules", "rules"]
    jobs = {job["job_name"]: job["dns_sd_configs"] for job in config["scrape_configs"]}
    assert jobs == {
        "caudal": [{"names": ["worker"], "type": "A", "port": 9464}],
        "caudal-ingest": [{"names": ["ingest"], "type": "A", "port": 9465}],
    }


def test_every_alert_fires_and_stays_silent_in_the_unit_tests() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names, "no alert rules found"
    assert names - fired == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"
    assert (fired | silent) - names == set(), "unit tests name alerts that do not exist"


def test_alerts_have_a_severity_and_a_runbook() -> None:
    for rule in alerts():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key, "").strip(), f"{name}: no {key} annotation"
        # The runbook is the text of what to check and do, not a link to it.
        assert len(annotations["runbook"].split()) >= 15, f"{name}: runbook too thin"
        assert "http" not in annotations["runbook"], name


def test_alerts_wait_before_firing_except_on_discrete_events() -> None:
    # A reload failure is one event a person must fix; everything else must last to count.
    for rule in alerts():
        if rule["alert"] != "CaudalConfigReloadFailed":
            assert rule.get("for"), f"{rule['alert']} fires on a single evaluation"


def test_rules_read_only_contract_metrics_and_recorded_series() -> None:
    allowed = known_series() | recorded_names()
    for rule in load_rules():
        unknown = metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule.get('record') or rule.get('alert')} reads {unknown}"


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, instance) (rate(caudal_decision_lag_seconds_bucket"
        '{instance=~"$instance", state="open"}[$__rate_interval]))) > 1e3 '
        "and on (job) up offset 5m or job:caudal_consumer_lag:sum"
    )
    assert metric_names(expr) == {
        "caudal_decision_lag_seconds_bucket",
        "up",
        "job:caudal_consumer_lag:sum",
    }
