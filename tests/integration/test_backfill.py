"""`caudal backfill` on the real broker: traffic whose `search` traces the pipeline drops, then
a backfill of one segment of it with a policy that keeps them. Every `search` trace that
started in the segment reaches the backend once and whole, none from outside it, no trace the
pipeline kept comes again, a dry run predicts the counts, and a second run exports nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import TraceView, build_engine
from streams.devtools.broker import LocalBroker
from tests.faults.traffic import Received, Traffic, Truth, read_backend
from tests.integration.harness import Pipeline, WorkerProcess, wait_for

pytestmark = pytest.mark.integration

RATE = 20  # traces per second, half of them `search`
PIPELINE_POLICIES = [
    {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
    {
        "name": "no-search",
        "type": "drop",
        "drop_sub_policy": [
            {
                "name": "search",
                "type": "string_attribute",
                "key": "service.name",
                "values": ["search"],
            }
        ],
    },
]
BACKFILL_POLICIES = [
    {"name": "search", "type": "string_attribute", "key": "service.name", "values": ["search"]},
    # Matches traces the pipeline kept already: they must not be exported again.
    {"name": "errors", "type": "status_code", "status_codes": ["ERROR"]},
]


# A candidate that adds one policy: it keeps a share of what the pipeline drops, except the
# `search` traces (the drop policy still wins).
ADDED = {"name": "some-more", "type": "probabilistic", "sampling_percentage": 30, "hash_salt": "x"}


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat()


def caudal(*args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args, "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def backfill(pipeline: Pipeline, policies: Path, since: float, until: float, *extra: str) -> Any:
    return caudal(
        *("backfill", "-c", str(pipeline.path), "--policies", str(policies)),
        *("--since", iso(since), "--until", iso(until), *extra),
    )


def settled(worker: WorkerProcess) -> bool:
    return (
        worker.total("caudal_traces_buffered") == 0 and worker.total("caudal_exporter_backlog") == 0
    )


def run_backfill_case(broker: LocalBroker, root: Path, segment: float, show: bool = False) -> None:
    backend = f"backend-{root.name[-12:]}"
    pipeline = Pipeline(
        broker,
        root,
        policies=PIPELINE_POLICIES,
        exporters={"backend": {"type": "kafka", "topic": backend}},
        tenants={"default": {"exporters": ["backend"]}},
    )
    policies = root / "keep-search.yaml"
    policies.write_text(yaml.safe_dump(BACKFILL_POLICIES))
    try:
        worker = pipeline.start_worker()
        worker.wait_ready(90)
        traffic = Traffic(
            broker.bootstrap,
            pipeline.kafka["input_topic"],
            RATE,
            3 * segment,
            services=(("shop", 0.5), ("search", 0.5)),
        )
        traffic.start()
        traffic.join(3 * segment + 60)
        assert traffic.failed == 0
        wait_for(lambda: settled(worker), 120, "the pipeline to decide and export everything")
        truth = traffic.truth
        before = read_backend(broker.bootstrap, backend)
        # The second segment; its edges fall between two births.
        since = truth.started + segment + 0.5 / RATE
        until = truth.started + 2 * segment + 0.5 / RATE
        in_range = {t for t, born in truth.born.items() if since <= truth.started + born < until}
        search = {t for t in in_range if truth.service[t] == "search"}
        kept_before = {t for t in truth.spans if t in before.spans}
        assert kept_before and search
        check_comparison(pipeline, root, since, until, in_range, kept_before, truth)

        if show:  # the summary as a reader sees it
            text = subprocess.run(
                [sys.executable, "-m", "streams.cli", "backfill", "-c", str(pipeline.path)]
                + ["--policies", str(policies), "--since", iso(since), "--until", iso(until)]
                + ["--dry-run", "--quiet"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            print(text.stdout)
        predicted = backfill(pipeline, policies, since, until, "--dry-run")
        summary = backfill(pipeline, policies, since, until)
        print(f"dry run: {predicted}\nrun: {summary}")
        assert summary["newly_kept"] == {"search": len(search)}
        assert summary["traces_in_range"] == len(in_range)
        assert summary["already_kept"] == len(in_range & kept_before)
        for key in ("newly_kept", "traces_in_range", "already_kept", "spans_exported"):
            assert predicted[key] == summary[key], key
        # Held to 10 traces at once: traces are decided before complete, counted, none twice.
        bounded = backfill(pipeline, policies, since, until, "--dry-run", "--max-traces", "10")
        assert bounded["traces_decided_early"] > 0 and bounded["late_fragments_left_out"] > 0
        assert bounded["traces_in_range"] <= len(in_range)

        wait_for(lambda: settled(worker), 120, "the backfilled traces to be exported")
        after = read_backend(broker.bootstrap, backend)
        check_backend(truth, before, after, search, kept_before)

        again = backfill(pipeline, policies, since, until)
        assert again["newly_kept_traces"] == 0
        assert again["already_exported"] == len(search)
        wait_for(lambda: settled(worker), 120, "the exporter to be idle")
        assert read_backend(broker.bootstrap, backend).records == after.records
    finally:
        pipeline.stop()


def check_comparison(
    pipeline: Pipeline,
    root: Path,
    since: float,
    until: float,
    in_range: set[bytes],
    kept: set[bytes],
    truth: Truth,
) -> None:
    """`caudal decide --from-topic` with a candidate adding one policy: its current column is
    what the worker kept, and it names exactly the traces the added policy adds."""
    candidate = root / "candidate.yaml"
    config = {**pipeline.config, "policies": [*PIPELINE_POLICIES, ADDED]}
    candidate.write_text(yaml.safe_dump(config))
    report = caudal(
        *("decide", "-c", str(candidate), "--from-topic", "--current", str(pipeline.path)),
        *("--since", iso(since), "--until", iso(until), "--sample", "100000"),
    )
    tenant = report["tenants"]["default"]
    print(f"decide --from-topic: {json.dumps(tenant)[:600]}")
    assert tenant["traces"] == len(in_range)
    assert tenant["current"]["kept_traces"] == len(in_range & kept)  # the worker's decisions
    added = build_engine([ADDED])
    expected = {
        t
        for t in in_range - kept
        if truth.service[t] != "search" and added.decide(view_of(t), 0.0).kept
    }
    assert expected
    assert {bytes.fromhex(t) for t in tenant["changed"]["newly_kept_sample"]} == expected
    assert tenant["changed"]["newly_kept"] == len(expected)
    assert tenant["changed"]["newly_dropped"] == 0


def view_of(trace_id: bytes) -> TraceView:
    return TraceView.from_resource_spans(trace_id, [])


def check_backend(
    truth: Truth, before: Received, after: Received, search: set[bytes], kept: set[bytes]
) -> None:
    added = set(after.spans) - set(before.spans)
    assert added == search  # every search trace of the range, none from outside it
    for trace_id in search:  # whole, once
        assert after.spans[trace_id].keys() == truth.spans[trace_id]
        assert set(after.spans[trace_id].values()) == {1}
    for trace_id in kept:  # what the pipeline kept did not come again
        assert after.spans[trace_id] == before.spans[trace_id]


def test_a_backfill_exports_the_range_once(broker: LocalBroker, tmp_path: Path) -> None:
    run_backfill_case(broker, tmp_path, segment=4.0)
