"""/metrics of a worker whose split stage runs in its own process: the two processes' series as
one exposition, each counted once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streams.ops.metrics import (
    CONSUMER_LAG,
    EXPERIMENT_DURATION,
    SPANS_RECEIVED,
    Exposition,
    caudal_families,
)


def scrape(exposition: Exposition) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(exposition).decode()  # type: ignore[arg-type]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_counters_and_histograms_of_both_processes_add_up_and_created_stays_one() -> None:
    SPANS_RECEIVED.labels("exposition-a").inc(7)
    EXPERIMENT_DURATION.labels("exp", "b", "svc").observe(0.3)
    own = scrape(Exposition())
    merged = Exposition()
    # The other process's families, as it reports them (here: this process's own, once more).
    merged.report("split", caudal_families())
    both = scrape(merged)

    spans = ("caudal_spans_received_total", (("tenant", "exposition-a"),))
    assert own[spans] == 7 and both[spans] == 14
    labels = (("experiment", "exp"), ("service", "svc"), ("variant", "b"))
    bucket = (
        "caudal_experiment_duration_seconds_bucket",
        (*labels[:1], ("le", "0.5"), *labels[1:]),
    )
    assert both[bucket] == 2 * own[bucket] and own[bucket] >= 1
    count = ("caudal_experiment_duration_seconds_count", labels)
    assert both[count] == 2 * own[count]
    created = ("caudal_spans_received_created", (("tenant", "exposition-a"),))
    assert both[created] == own[created], "a creation time is not a sum"


def test_a_series_or_a_family_only_the_other_process_has_is_served() -> None:
    CONSUMER_LAG.labels("caudal-spans", "0").set(5)
    other = CollectorRegistry()
    Gauge("caudal_consumer_lag", "", ["topic", "partition"], registry=other).labels(
        "otlp_spans", "3"
    ).set(40)
    Gauge("caudal_only_there", "", registry=other).set(2)
    merged = Exposition()
    merged.report("split", list(other.collect()))
    both = scrape(merged)
    assert both[("caudal_consumer_lag", (("partition", "0"), ("topic", "caudal-spans")))] == 5
    assert both[("caudal_consumer_lag", (("partition", "3"), ("topic", "otlp_spans")))] == 40
    assert both[("caudal_only_there", ())] == 2
    # A newer report replaces the last one: reports are cumulative, not increments.
    merged.report("split", [])
    assert ("caudal_only_there", ()) not in scrape(merged)
