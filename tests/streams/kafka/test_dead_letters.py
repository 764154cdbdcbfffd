"""Dead letters: headers for the reader, one log line each, but no log flood."""

from __future__ import annotations

import logging

import pytest

from streams.kafka import dead_letters
from streams.kafka.dead_letters import DLQ_REASON_HEADER, send_dead_letter
from streams.wire import records


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def produce(self, topic: str, **kwargs: object) -> None:
        self.sent.append({"topic": topic, **kwargs})


def test_headers_and_a_bounded_number_of_log_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        dead_letters, "_DEAD_LETTER_LOG", dead_letters._LogBudget(burst=10, period=10.0)
    )
    producer = FakeProducer()
    with caplog.at_level(logging.WARNING, logger="streams.kafka.dead_letters"):
        for offset in range(25):
            send_dead_letter(
                producer,  # type: ignore[arg-type]
                "dlq",
                b"junk",
                reason="invalid_protobuf",
                detail="truncated",
                origin=("otlp_spans", 3, offset),
            )
    assert len(producer.sent) == 25
    headers = dict(producer.sent[0]["headers"])  # type: ignore[arg-type]
    assert headers[DLQ_REASON_HEADER] == b"invalid_protobuf"
    assert headers["caudal-dlq-offset"] == b"0"
    lines = [r for r in caplog.records if r.getMessage().startswith("dead letter")]
    assert len(lines) == 10
    assert (lines[0].topic, lines[0].partition, lines[0].offset) == ("otlp_spans", 3, 0)


def test_the_budget_refills_and_reports_what_it_skipped() -> None:
    budget = dead_letters._LogBudget(burst=2, period=10.0)
    assert [budget.allow(0.0) for _ in range(5)] == [True, True, False, False, False]
    assert budget.allow(10.0)
    assert budget.take_suppressed() == 3
    assert budget.take_suppressed() == 0


def test_a_value_too_large_for_one_record_goes_in_parts() -> None:
    producer = FakeProducer()
    value = bytes(range(256)) * 1000  # 256 kB
    send_dead_letter(
        producer,  # type: ignore[arg-type]
        "dlq",
        value,
        reason="span_too_large",
        detail="x" * 5000,
        headers=[("original", b"h")],
        max_bytes=64 * 1024,
    )
    parts = producer.sent
    assert len(parts) == 5
    assert b"".join(p["value"] for p in parts) == value  # type: ignore[misc]
    for i, part in enumerate(parts):
        headers = dict(part["headers"])  # type: ignore[arg-type]
        assert headers[dead_letters.DLQ_PART_HEADER] == f"{i + 1}/5".encode()
        assert headers["original"] == b"h"
        size = records.record_size(None, part["value"], part["headers"])  # type: ignore[arg-type]
        assert size <= 64 * 1024 - records.RECORD_MARGIN
