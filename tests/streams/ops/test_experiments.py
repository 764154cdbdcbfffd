"""Experiment RED metrics: counted per experiment, variant and service, with bounded series."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status
from prometheus_client import REGISTRY

from streams.config import ExperimentsConfig
from streams.ops.experiments import ExperimentMeter


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def block(service: str, spans: list[Span], resource: dict[str, str] | None = None) -> ResourceSpans:
    attrs = [kv("service.name", service)] + [kv(k, v) for k, v in (resource or {}).items()]
    rs = ResourceSpans(resource=Resource(attributes=attrs))
    rs.scope_spans.add().spans.extend(spans)
    return rs


def span(ms: float, error: bool = False, **attributes: str) -> Span:
    out = Span(
        trace_id=b"\x01" * 16,
        span_id=b"\x02" * 8,
        start_time_unix_nano=1_000_000_000,
        end_time_unix_nano=1_000_000_000 + int(ms * 1e6),
        attributes=[kv(k.replace("_", "."), v) for k, v in attributes.items()],
    )
    if error:
        out.status.code = Status.STATUS_CODE_ERROR
    return out


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_counts_requests_errors_and_durations_per_variant() -> None:
    meter = ExperimentMeter(ExperimentsConfig())
    ids = {"experiment_id": "exp-red", "experiment_variant": "a"}
    b = {"experiment_id": "exp-red", "experiment_variant": "b"}
    meter.observe(
        [
            block(
                "cart",
                [span(10, **ids), span(20, error=True, **ids), span(3000, **b), span(5)],
            )
        ]
    )
    a_labels = {"experiment": "exp-red", "variant": "a", "service": "cart"}
    b_labels = {"experiment": "exp-red", "variant": "b", "service": "cart"}
    assert value("caudal_experiment_requests_total", **a_labels) == 2
    assert value("caudal_experiment_errors_total", **a_labels) == 1
    assert value("caudal_experiment_requests_total", **b_labels) == 1
    assert value("caudal_experiment_errors_total", **b_labels) == 0
    assert value("caudal_experiment_duration_seconds_sum", **a_labels) == 0.03
    assert value("caudal_experiment_duration_seconds_bucket", le="0.025", **a_labels) == 2
    assert value("caudal_experiment_duration_seconds_bucket", le="2.5", **b_labels) == 0


def test_resource_attributes_name_the_experiment_when_spans_do_not() -> None:
    meter = ExperimentMeter(ExperimentsConfig())
    resource = {"experiment.id": "exp-res", "experiment.variant": "control"}
    meter.observe([block("search", [span(1), span(2)], resource)])
    labels = {"experiment": "exp-res", "variant": "control", "service": "search"}
    assert value("caudal_experiment_requests_total", **labels) == 2


def test_series_are_bounded_and_overflow_is_counted() -> None:
    meter = ExperimentMeter(ExperimentsConfig(max_series=2))
    before = value("caudal_experiment_series_dropped_total")
    spans = [span(1, experiment_id="exp-many", experiment_variant=f"v{i}") for i in range(5)]
    meter.observe([block("api", spans)])
    counted = sum(
        value(
            "caudal_experiment_requests_total",
            experiment="exp-many",
            variant=f"v{i}",
            service="api",
        )
        for i in range(5)
    )
    assert counted == 2
    assert value("caudal_experiment_series_dropped_total") - before == 3


def test_allow_list_ignores_other_experiments() -> None:
    meter = ExperimentMeter(ExperimentsConfig(allow=["exp-allowed"]))
    meter.observe(
        [
            block(
                "api",
                [
                    span(1, experiment_id="exp-allowed", experiment_variant="a"),
                    span(1, experiment_id="exp-other", experiment_variant="a"),
                ],
            )
        ]
    )
    assert value(
        "caudal_experiment_requests_total", experiment="exp-allowed", variant="a", service="api"
    )
    assert not value(
        "caudal_experiment_requests_total", experiment="exp-other", variant="a", service="api"
    )


def test_cheap_prefilter_on_message_bytes() -> None:
    meter = ExperimentMeter(ExperimentsConfig())
    assert meter.may_apply(b"...experiment.variant...")
    assert not meter.may_apply(b"no experiments here")
    assert not ExperimentMeter(ExperimentsConfig(enabled=False)).may_apply(b"experiment.variant")
