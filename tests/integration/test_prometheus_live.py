"""A real Prometheus scraping a real worker with the shipped config, rules and dashboard queries.

Every expression of the dashboard and of the recording and alert rules must evaluate; the core
panels must show data; the worker's exposition must pass `promtool check metrics`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.devtools.broker import LocalBroker, free_port
from tests.integration.harness import Pipeline, WorkerProcess, wait_for
from tests.integration.sdk_traces import SdkTraces, encode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "caudal.json"
# Grafana's variables, as the dashboard would fill them in: every worker, a 1-minute window.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}
# Panels that must show data for a worker with traffic (the rest may be empty: no ingest
# gateway runs here, no exporter fails, no experiment is configured).
CORE_PANELS = (
    "Spans in /s",
    "Spans in per tenant",
    "Kept traces per policy and tenant",
    "Decisions",
    "Buffer bytes",
    "Decision lag",
    "Health (worst)",
    "Health state",
    "Pipeline state",
    "Workers ready",
    "Exporter state",
)
RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")
KINDS = {"ordinary": 150, "error": 60, "slow": 40, "vip": 50}


def get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


class Prometheus:
    """A `prometheus` subprocess on 127.0.0.1 with its data in a temporary directory."""

    def __init__(self, binary: str, root: Path, worker_port: int) -> None:
        shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        rule_files = sorted(
            str(path) for pattern in shipped["rule_files"] for path in PROMETHEUS_DIR.glob(pattern)
        )
        assert rule_files, "the shipped config names no rule file"
        config = {
            **shipped,
            "global": {**shipped["global"], "scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [
                {
                    "job_name": "caudal",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                }
            ],
        }
        path = root / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> dict[str, Any]:
        return get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))

    def value(self, expr: str) -> float:
        """The sum of an instant query's values (0 when it has none)."""
        doc = self.query(expr)
        assert doc["status"] == "success", doc
        return sum(float(item["value"][1]) for item in doc["data"]["result"])

    def rules(self) -> list[dict[str, Any]]:
        doc = get_json(f"{self.url}/api/v1/rules")
        return [rule for group in doc["data"]["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables filled in) for every target."""
    found = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    found = []
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("record") or rule["alert"], rule["expr"]))
    return found


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not found on PATH: install Debian's prometheus package")
    return binary


@pytest.fixture(scope="module")
def scraped_worker(
    prometheus_binary: str, broker: LocalBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, Prometheus]]:
    """A worker with a few hundred decided traces, scraped by Prometheus every second."""
    tmp_path = tmp_path_factory.mktemp("prometheus-live")
    # globex has no configuration of its own: it is counted and exported as `default`.
    pipeline = Pipeline(
        broker,
        tmp_path,
        decision={"wait": "2s"},
        tenants={"acme": {"exporters": ["files"]}, "default": {"exporters": ["files"]}},
    )
    prometheus: Prometheus | None = None
    try:
        worker = pipeline.start_worker()
        prometheus = Prometheus(prometheus_binary, tmp_path, worker.metrics_port)
        worker.wait_ready()
        wait_for(prometheus.ready, 30, f"prometheus ready (log: {prometheus.log})")

        # Two waves, each scraped before the next: every counter then has an increase for
        # rate() to see (a labelled series appears with its first increment).
        sdk = SdkTraces(seed=23)
        waves: list[list[str]] = [[], []]
        for kind, count in KINDS.items():
            for i in range(count):
                waves[i % 4 // 2].append(sdk.make(kind, "acme" if i % 2 else "globex"))
        traces = sdk.spans_by_trace()
        decided = 0
        for wave in waves:
            for start in range(0, len(wave), 20):
                pipeline.produce(
                    encode([s for tid in wave[start : start + 20] for s in traces[tid]])
                )
            pipeline.flush()
            decided += len(wave)
            wait_for(
                lambda n=decided: worker.total("caudal_decisions_total") >= n,
                60,
                f"{decided} decisions (log: {worker.log})",
            )
            wait_for(
                lambda n=decided: prometheus.value("sum(caudal_decisions_total)") >= n,
                30,
                "prometheus to scrape the decisions",
            )
        # The health state is set by the worker's first health evaluation, a few seconds in.
        wait_for(lambda: prometheus.value("count(caudal_health_state)") > 0, 30, "health state")
        evaluated = time.time()
        wait_for(
            lambda: all(
                rule["health"] == "ok" and timestamp(rule["lastEvaluation"]) > evaluated
                for rule in prometheus.rules()
            ),
            30,
            "every rule evaluated after the traffic",
        )
        yield worker, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        pipeline.stop()


def timestamp(rfc3339: str) -> float:
    """Seconds since the epoch of an RFC 3339 time as Prometheus writes it (nanoseconds, zone)."""
    match = RFC3339.fullmatch(rfc3339)
    assert match, rfc3339
    zone = "+00:00" if match[3] == "Z" else match[3]
    return datetime.fromisoformat(match[1] + zone).timestamp() + float(match[2] or 0)


def test_prometheus_evaluates_dashboard_and_rules_on_a_live_worker(
    scraped_worker: tuple[WorkerProcess, Prometheus],
) -> None:
    _, prometheus = scraped_worker

    # The target is healthy and every rule evaluates without error.
    assert prometheus.value('up{job="caudal"}') == 1
    broken = [(r["name"], r["lastError"]) for r in prometheus.rules() if r["health"] != "ok"]
    assert broken == []

    # Every expression of the dashboard and the rules is valid PromQL on real series.
    results: dict[str, list[dict[str, Any]]] = {}
    failed = []
    for name, expr in dashboard_targets() + rule_expressions():
        doc = prometheus.query(expr)
        if doc["status"] != "success":
            failed.append((name, expr, doc.get("error")))
        else:
            results.setdefault(name, []).extend(doc["data"]["result"])
    assert failed == []

    # The core panels show this worker's traffic.
    empty = [title for title in CORE_PANELS if not results.get(title)]
    assert empty == []
    for series in ("caudal_spans_received_total", 'caudal_decisions_total{outcome="kept"}'):
        assert prometheus.value(f"sum(rate({series}[1m]))") > 0, series
    kept = prometheus.value('sum(caudal_decisions_total{outcome="kept"})')
    assert 0 < kept <= prometheus.value("sum(caudal_decisions_total)")
    # Error traces are kept by the default policies: a tenant's kept ratio is above zero.
    assert prometheus.value("max(tenant:caudal_traces_kept:ratio_rate5m)") > 0
    assert {r["metric"]["tenant"] for r in results["tenant:caudal_spans_received:rate1m"]} == {
        "acme",
        "default",
    }
    # A healthy worker with little traffic raises no alert.
    firing = prometheus.query("ALERTS")["data"]["result"]
    assert [alert["metric"]["alertname"] for alert in firing] == []


def test_worker_exposition_passes_promtool_check_metrics(
    scraped_worker: tuple[WorkerProcess, Prometheus],
) -> None:
    worker, _ = scraped_worker
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: install Debian's prometheus package")
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics") as response:
        body = response.read()
    assert b"caudal_decisions_total" in body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    problems = (result.stdout + result.stderr).decode()
    assert (result.returncode, problems) == (0, "")
