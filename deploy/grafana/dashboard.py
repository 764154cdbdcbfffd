"""The Caudal Grafana dashboard, built with the Grafana Foundation SDK.

Regenerate the committed JSON after a change (tests/deploy/test_dashboard.py checks they agree):

    .venv/bin/python deploy/grafana/dashboard.py > deploy/grafana/dashboards/caudal.json

Worker panels follow the `instance` variable; ingest gateway panels show every gateway. Every
expression reads metrics of the contract in README.md; none depends on a job name.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import stat, statetimeline, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

__all__ = ["build_dashboard", "main"]

UID = "caudal"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Selector of the worker series the `instance` variable picks; RATE is Grafana's rate window.
W = 'instance=~"$instance"'
RATE = "$__rate_interval"
AnyPanel = stat.Panel | timeseries.Panel | statetimeline.Panel

HEALTH_STATES = ("healthy", "degraded", "unhealthy")
PIPELINE_STATES = ("initializing", "starting", "running", "degraded", "draining", "stopped")
EXPORTER_STATES = ("idle", "sending", "backoff", "half_open", "open", "failed")
STATE_COLORS = {
    "healthy": "green",
    "degraded": "orange",
    "unhealthy": "red",
    "initializing": "blue",
    "starting": "blue",
    "running": "green",
    "draining": "purple",
    "stopped": "text",
    "idle": "green",
    "sending": "green",
    "backoff": "yellow",
    "half_open": "orange",
    "open": "red",
    "failed": "red",
}


def rate(metric: str, labels: str = "", by: str = "") -> str:
    """`sum [by (...)] (rate(metric{labels, instance}[...]))` over the selected workers."""
    selector = ", ".join(part for part in (labels, W) if part)
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}[{RATE}]))"


def quantile(q: float, histogram: str, by: str = "", labels: str = "") -> str:
    """The q-quantile of a histogram over the selected workers."""
    selector = ", ".join(part for part in (labels, W) if part)
    grouping = ", ".join(part for part in (by, "le") if part)
    return (
        f"histogram_quantile({q}, sum by ({grouping}) "
        f"(rate({histogram}_bucket{{{selector}}}[{RATE}])))"
    )


def ratio_or_zero(part: str, whole: str) -> str:
    """part / whole, where a part with no series yet (no increment so far) counts as 0."""
    return f"({part} or {whole} * 0) / {whole}"


def state_code(metric: str, states: Sequence[str], by: str = "") -> str:
    """A one-hot state gauge as one series per `by` (or one in all) valued by its state's index.

    Inactive states count 0, so the maximum is the index of the active state; with no `by`, it
    is the highest index, the worst state when `states` go from good to bad.
    """
    terms = " or ".join(
        f'{metric}{{state="{state}", {W}}} * {index}' for index, state in enumerate(states)
    )
    grouping = f" by ({by})" if by else ""
    return f"max{grouping} ({terms})"


def target(expr: str, legend: str = "", ref: str = "A") -> Dataquery:
    """A Prometheus query of a panel."""
    query = Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    return query.legend_format(legend) if legend else query


def thresholds(*steps: tuple[float | None, str]) -> ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (from minus infinity)."""
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def graph(
    title: str,
    description: str,
    queries: Sequence[tuple[str, str]],
    unit: str = "short",
    width: int = 8,
    limits: ThresholdsConfig | None = None,
    stacked: bool = False,
) -> timeseries.Panel:
    """A time series panel: one target per (expression, legend)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST))
        .targets(
            [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]
        )
    )
    if unit == "percentunit":
        panel = panel.min(0)
    if limits is not None:
        panel = panel.thresholds(limits).thresholds_style(
            GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    if stacked:
        panel = panel.stacking(StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def single(
    title: str,
    description: str,
    expr: str,
    unit: str = "short",
    limits: ThresholdsConfig | None = None,
    states: Sequence[str] = (),
) -> stat.Panel:
    """A stat panel of one value; `states` names the values 0, 1, ... of a state code."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(3)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(target(expr))
        .thresholds(limits or thresholds((None, "green")))
    )
    if states:
        panel = panel.mappings([state_mapping(states)]).graph_mode(common.BigValueGraphMode.NONE)
    return panel


def state_mapping(states: Sequence[str]) -> ValueMap:
    """Value mapping from a state's index to its name and colour."""
    return ValueMap(
        options={
            str(index): ValueMappingResult(text=state, color=STATE_COLORS[state], index=index)
            for index, state in enumerate(states)
        }
    )


def timeline(
    title: str, description: str, expr: str, legend: str, states: Sequence[str]
) -> statetimeline.Panel:
    """A state timeline of a state code, one row per series."""
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(8)
        .height(8)
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .mappings([state_mapping(states)])
        .with_target(target(expr, legend))
    )


def overview() -> list[AnyPanel]:
    """The top row: one number each for what a person looks at first."""
    kept = rate("caudal_decisions_total", 'outcome="kept"')
    decided = rate("caudal_decisions_total")
    return [
        single(
            "Spans in /s",
            "Spans read from the input topic per second, all tenants.",
            rate("caudal_spans_received_total"),
        ),
        single(
            "Traces kept",
            "Share of decided traces that were kept.",
            ratio_or_zero(kept, decided),
            unit="percentunit",
        ),
        single(
            "Buffer fill (max)",
            "Fullest trace buffer: traces waiting for their decision over decision.max_traces.",
            f"max(caudal_traces_buffered{{{W}}} / caudal_buffer_max_traces{{{W}}})",
            unit="percentunit",
            limits=thresholds((None, "green"), (0.8, "orange"), (1, "red")),
        ),
        single(
            "Decision lag p99",
            "How long past its decision deadline a trace is decided (99th percentile).",
            quantile(0.99, "caudal_decision_lag_seconds"),
            unit="s",
            limits=thresholds((None, "green"), (2, "orange"), (5, "red")),
        ),
        single(
            "Health (worst)",
            "Worst health state of the selected workers.",
            state_code("caudal_health_state", HEALTH_STATES),
            states=HEALTH_STATES,
        ),
        single(
            "Degradation level (max)",
            "0: normal. 2 and up: new traces are sampled by trace ID, not by policies.",
            f"max(caudal_degradation_level{{{W}}})",
            limits=thresholds((None, "green"), (1, "yellow"), (2, "red")),
        ),
        single(
            "Workers ready",
            "Workers that joined their group and recovered their tables.",
            f"sum(caudal_worker_ready{{{W}}})",
        ),
        single(
            "Exporter backlog",
            "Records of caudal-sampled not delivered yet, all exporters.",
            f"sum(caudal_exporter_backlog{{{W}}})",
            limits=thresholds((None, "green"), (10000, "orange")),
        ),
    ]


def sampling() -> list[AnyPanel]:
    """Traffic in, what was kept, and why."""
    kept_by_tenant = rate("caudal_decisions_total", 'outcome="kept"', by="tenant")
    decided_by_tenant = rate("caudal_decisions_total", by="tenant")
    delivered = (
        "max by (tenant) ("
        + rate("caudal_spans_exported_total", 'outcome="success"', by="tenant, exporter")
        + ")"
    )
    return [
        graph(
            "Spans in per tenant",
            "Spans read from the input topic per second.",
            [(rate("caudal_spans_received_total", by="tenant"), "{{tenant}}")],
            stacked=True,
        ),
        graph(
            "Kept traces per policy and tenant",
            "Traces kept per second, by the first policy that kept them.",
            [
                (
                    rate("caudal_decisions_total", 'outcome="kept"', by="tenant, policy"),
                    "{{tenant}} · {{policy}}",
                )
            ],
            stacked=True,
        ),
        graph(
            "Effective sampling rate",
            "Traces: kept over decided. Spans: delivered (best exporter of the tenant) over "
            "received.",
            [
                (ratio_or_zero(kept_by_tenant, decided_by_tenant), "{{tenant}} traces"),
                (
                    f"{delivered} / {rate('caudal_spans_received_total', by='tenant')}",
                    "{{tenant}} spans",
                ),
            ],
            unit="percentunit",
        ),
        graph(
            "Late spans",
            "Spans that arrived after their trace was decided: they follow the decision.",
            [(rate("caudal_late_spans_total", by="outcome"), "{{outcome}}")],
        ),
        graph(
            "Quota and unknown-tenant drops",
            "Kept traces dropped because the tenant was over quota or had no configuration.",
            [
                (
                    rate("caudal_quota_drops_total", by="tenant, policy"),
                    "quota {{tenant}} · {{policy}}",
                ),
                (rate("caudal_unknown_tenant_drops_total"), "unknown tenant"),
            ],
        ),
        graph(
            "Trace integrity",
            "Spans whose parent is not in their trace, decided traces without a root span, "
            "traces decided early because the buffer was full, and fragments read again after a "
            "restart or rebalance (skipped, not applied twice).",
            [
                (rate("caudal_orphan_spans_total"), "orphan spans"),
                (rate("caudal_traces_without_root_total"), "traces without root"),
                (rate("caudal_traces_decided_early_total"), "decided early"),
                (rate("caudal_redelivered_fragments_total"), "redelivered fragments"),
            ],
        ),
    ]


def decisions() -> list[AnyPanel]:
    """The buffer, the decision timer and the input lag."""
    return [
        graph(
            "Buffer fill",
            "Traces waiting for their decision over decision.max_traces, per worker.",
            [(f"caudal_traces_buffered{{{W}}} / caudal_buffer_max_traces{{{W}}}", "{{instance}}")],
            unit="percentunit",
            limits=thresholds((None, "green"), (0.8, "orange"), (1, "red")),
        ),
        graph(
            "Decision lag",
            "How long past its decision deadline (first span + decision.wait) a trace is decided.",
            [
                (quantile(0.5, "caudal_decision_lag_seconds"), "p50"),
                (quantile(0.99, "caudal_decision_lag_seconds"), "p99"),
            ],
            unit="s",
        ),
        graph(
            "Consumer lag",
            "Records not consumed yet, per worker and topic (the input topic and caudal-spans).",
            [
                (
                    f"sum by (instance, topic) (caudal_consumer_lag{{{W}}})",
                    "{{instance}} · {{topic}}",
                )
            ],
        ),
        graph(
            "Buffer bytes",
            "Bytes of span data in the buffer, per worker.",
            [(f"caudal_buffer_bytes{{{W}}}", "{{instance}}")],
            unit="bytes",
        ),
        graph(
            "Decisions",
            "Traces decided per second, kept and dropped.",
            [(rate("caudal_decisions_total", by="outcome"), "{{outcome}}")],
            stacked=True,
        ),
        graph(
            "Memory",
            "Resident memory per worker.",
            [(f"process_resident_memory_bytes{{{W}}}", "{{instance}}")],
            unit="bytes",
        ),
    ]


def export() -> list[AnyPanel]:
    """Exporters: their state, backlog, outcomes and dead letters."""
    return [
        timeline(
            "Exporter state",
            "State of each exporter on each worker.",
            state_code("caudal_exporter_state", EXPORTER_STATES, "instance, exporter"),
            "{{exporter}} · {{instance}}",
            EXPORTER_STATES,
        ),
        graph(
            "Exporter backlog",
            "Records of caudal-sampled each exporter has not delivered yet.",
            [(f"sum by (exporter) (caudal_exporter_backlog{{{W}}})", "{{exporter}}")],
        ),
        graph(
            "Spans exported",
            "Spans per second per exporter and outcome (success, dead_letter).",
            [
                (
                    rate("caudal_spans_exported_total", by="exporter, outcome"),
                    "{{exporter}} · {{outcome}}",
                )
            ],
        ),
        graph(
            "Export batches, retries, circuit opens",
            "Batch attempts per outcome, retries and circuit-breaker opens per second.",
            [
                (
                    rate("caudal_export_batches_total", by="exporter, outcome"),
                    "{{exporter}} · {{outcome}}",
                ),
                (rate("caudal_export_retries_total", by="exporter"), "{{exporter}} · retries"),
                (
                    rate("caudal_circuit_breaker_opens_total", by="exporter"),
                    "{{exporter}} · circuit opens",
                ),
            ],
        ),
        graph(
            "Dead letters",
            "Messages sent to the dead-letter topic per second, per reason.",
            [(rate("caudal_dead_letters_total", by="reason"), "{{reason}}")],
        ),
        graph(
            "Config reloads",
            "Policy reloads per outcome (a failure keeps the previous policies).",
            [
                (
                    f"sum by (outcome) (increase(caudal_config_reloads_total{{{W}}}[{RATE}]))",
                    "{{outcome}}",
                )
            ],
            unit="none",
        ),
    ]


def health() -> list[AnyPanel]:
    """Health, pipeline state and degradation per worker."""
    return [
        timeline(
            "Health state",
            "healthy; degraded (buffer over 80 % or export success under 99 %); unhealthy.",
            state_code("caudal_health_state", HEALTH_STATES, "instance"),
            "{{instance}}",
            HEALTH_STATES,
        ),
        timeline(
            "Pipeline state",
            "initializing, starting, running, degraded, draining, stopped.",
            state_code("caudal_pipeline_state", PIPELINE_STATES, "instance"),
            "{{instance}}",
            PIPELINE_STATES,
        ),
        graph(
            "Degradation level",
            "Level per worker; at 2 and up, spans decided on arrival (kept or dropped) per second.",
            [
                (f"max by (instance) (caudal_degradation_level{{{W}}})", "level {{instance}}"),
                (rate("caudal_degraded_spans_total", by="outcome"), "degraded spans {{outcome}}"),
            ],
            limits=thresholds((None, "green"), (2, "red")),
        ),
    ]


def experiments() -> list[AnyPanel]:
    """RED metrics per experiment and variant, counted on all traffic before sampling."""
    by = "experiment, variant"
    requests = rate("caudal_experiment_requests_total", by=by)
    errors = rate("caudal_experiment_errors_total", by=by)
    return [
        graph(
            "Experiment request rate",
            "Requests per second per experiment and variant (all traffic, before sampling).",
            [(requests, "{{experiment}} · {{variant}}")],
            width=6,
        ),
        graph(
            "Experiment error ratio",
            "Share of requests with an error, per experiment and variant.",
            [(ratio_or_zero(errors, requests), "{{experiment}} · {{variant}}")],
            unit="percentunit",
            width=6,
        ),
        graph(
            "Experiment duration p95",
            "95th percentile of the duration per experiment and variant.",
            [
                (
                    quantile(0.95, "caudal_experiment_duration_seconds", by=by),
                    "{{experiment}} · {{variant}}",
                )
            ],
            unit="s",
            width=6,
        ),
        graph(
            "Experiment spans not counted",
            "Spans left out of the experiment metrics because the series limit was reached.",
            [(rate("caudal_experiment_series_dropped_total"), "not counted")],
            width=6,
        ),
    ]


def ingest() -> list[AnyPanel]:
    """The OTLP ingest gateways (all of them: the `instance` variable picks workers)."""
    return [
        graph(
            "Ingest requests",
            "OTLP requests per second per protocol and outcome.",
            [
                (
                    f"sum by (protocol, outcome) (rate(caudal_ingest_requests_total[{RATE}]))",
                    "{{protocol}} · {{outcome}}",
                )
            ],
            width=6,
        ),
        graph(
            "Ingest spans",
            "Spans per second per outcome.",
            [(f"sum by (outcome) (rate(caudal_ingest_spans_total[{RATE}]))", "{{outcome}}")],
            width=6,
        ),
        graph(
            "Ingest backpressure",
            "Backpressure level (0-3) and produce queue fill per gateway.",
            [
                ("max by (instance) (caudal_ingest_backpressure)", "level {{instance}}"),
                ("max by (instance) (caudal_ingest_queue_fill_ratio)", "queue fill {{instance}}"),
            ],
            width=6,
        ),
        graph(
            "Ingest produce latency p99",
            "99th percentile of the time to hand a request's spans to Kafka.",
            [
                (
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(caudal_ingest_produce_latency_seconds_bucket[{RATE}])))",
                    "p99",
                )
            ],
            unit="s",
            width=6,
        ),
    ]


SECTIONS = (
    ("Overview", overview),
    ("Traffic and sampling", sampling),
    ("Buffer and decisions", decisions),
    ("Export", export),
    ("Health and degradation", health),
    ("Experiments (before sampling)", experiments),
    ("Ingest gateway", ingest),
)


def build_dashboard() -> Dashboard:
    """The whole dashboard: rows of panels, a datasource variable and an instance variable."""
    dashboard = (
        Dashboard("Caudal")
        .uid(UID)
        .description("Tail-based trace sampling: traffic, decisions, export and health.")
        .tags(["caudal", "tracing"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .editable()
        # Grafana's own annotations and alerts, as every new dashboard has them.
        .annotation(
            AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            QueryVariable("instance")
            .label("Worker")
            .datasource(DATASOURCE)
            .query("label_values(caudal_worker_ready, instance)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    )
    panel_id = 0
    for title, panels in SECTIONS:
        panel_id += 1
        dashboard = dashboard.with_row(Row(title).id(panel_id))
        for panel in panels():
            panel_id += 1
            dashboard = dashboard.with_panel(panel.id(panel_id))
    return dashboard


def main() -> None:
    """Print the dashboard JSON."""
    print(JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard().build()))


if __name__ == "__main__":
    main()
