"""Trace-integrity and experiment metrics against the generator's ground truth, on the broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.devtools.broker import LocalBroker
from streams.devtools.generate import GeneratorOptions, GroundTruth, parse_experiment, run_generator
from tests.integration.harness import Pipeline, wait_for

pytestmark = pytest.mark.integration

TRACES = 1500


def test_integrity_and_experiment_metrics_match_the_generator(
    broker: LocalBroker, tmp_path: Path
) -> None:
    pipeline = Pipeline(broker, tmp_path, decision={"wait": "3s"})
    try:
        worker = pipeline.start_worker()
        worker.wait_ready()
        truth = GroundTruth()
        options = GeneratorOptions(
            traces=TRACES,
            rate=0,
            spread=1.0,
            seed=7,
            rootless=0.08,
            orphans=0.12,
            experiment=parse_experiment("checkout-v2:control=0.02@40,candidate=0.15@120"),
        )
        run_generator(lambda value, headers: pipeline.produce(value, headers), options, truth=truth)
        pipeline.flush()
        wait_for(
            lambda: worker.total("caudal_decisions_total") >= TRACES,
            90,
            f"{TRACES} traces decided",
        )
        assert worker.total("caudal_decisions_total") == TRACES
        # Both kinds of breakage happened, and were counted exactly.
        assert truth.rootless_traces > 50 and truth.orphan_spans > truth.rootless_traces
        assert worker.total("caudal_traces_without_root_total") == truth.rootless_traces
        assert worker.total("caudal_orphan_spans_total") == truth.orphan_spans
        assert worker.total("caudal_late_spans_total") == 0
        assert worker.total("caudal_traces_decided_early_total") == 0

        assert len(truth.experiment_requests) >= 10  # two variants × several services
        for (experiment, variant, service), requests in truth.experiment_requests.items():
            labels = {"experiment": experiment, "variant": variant, "service": service}
            assert worker.total("caudal_experiment_requests_total", **labels) == requests
            errors = truth.experiment_errors[(experiment, variant, service)]
            assert worker.total("caudal_experiment_errors_total", **labels) == errors
            count = worker.total("caudal_experiment_duration_seconds_count", **labels)
            assert count == requests
            seconds = worker.total("caudal_experiment_duration_seconds_sum", **labels)
            assert seconds == pytest.approx(
                truth.experiment_seconds[(experiment, variant, service)]
            )
        # The variants' known error rates show through, on all traffic rather than the sample.
        rates = {}
        for variant in ("control", "candidate"):
            requests = worker.total("caudal_experiment_requests_total", variant=variant)
            rates[variant] = (
                worker.total("caudal_experiment_errors_total", variant=variant) / requests
            )
        assert rates["control"] < 0.05 < 0.10 < rates["candidate"]
        assert worker.total("caudal_experiment_series_dropped_total") == 0
    finally:
        pipeline.stop()
