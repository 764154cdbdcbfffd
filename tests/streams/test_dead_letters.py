"""Dead letters: headers for the reader, one log line each, but no log flood."""

from __future__ import annotations

import logging

import pytest

from streams import kafka
from streams.kafka import DLQ_REASON_HEADER, send_dead_letter


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def produce(self, topic: str, **kwargs: object) -> None:
        self.sent.append({"topic": topic, **kwargs})


def test_headers_and_a_bounded_number_of_log_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka, "_DEAD_LETTER_LOG", kafka._LogBudget(burst=10, period=10.0))
    producer = FakeProducer()
    with caplog.at_level(logging.WARNING, logger="streams.kafka"):
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
    budget = kafka._LogBudget(burst=2, period=10.0)
    assert [budget.allow(0.0) for _ in range(5)] == [True, True, False, False, False]
    assert budget.allow(10.0)
    assert budget.take_suppressed() == 3
    assert budget.take_suppressed() == 0
