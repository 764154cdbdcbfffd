"""Produce and wait for acknowledgements: every failure is seen, a full queue is waited out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from streams.export.backends import RetryableError
from streams.export.backends.kafka import KafkaBackend
from streams.kafka.clients import DeliveryReports, produce_all


class QueueingProducer:
    """Queues records and reports them on flush: `fail` names values whose delivery fails,
    `stuck` values never acknowledged, `full` how many produce calls find the queue full."""

    def __init__(
        self, fail: set[bytes] | None = None, stuck: set[bytes] | None = None, full: int = 0
    ) -> None:
        self.fail, self.stuck, self.full = fail or set(), stuck or set(), full
        self.queued: list[tuple[dict[str, Any], Callable[[Any, Any], None]]] = []
        self.delivered: list[dict[str, Any]] = []

    def produce(self, topic: str, **record: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        callback = record.pop("on_delivery")
        self.queued.append(({"topic": topic, **record}, callback))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        stuck = 0
        for record, callback in self.queued:
            if record["value"] in self.stuck:
                stuck += 1
            elif record["value"] in self.fail:
                callback("broker said no", None)
            else:
                self.delivered.append(record)
                callback(None, None)
        self.queued = []
        return stuck


def test_every_record_acknowledged_is_ok_and_a_full_queue_is_waited_out() -> None:
    producer = QueueingProducer(full=3)
    delivery = produce_all(producer, "t", [{"value": b"a"}, {"value": b"b", "key": b"k"}])
    assert delivery.ok
    assert [r["value"] for r in producer.delivered] == [b"a", b"b"]


def test_failures_and_timeouts_are_both_reported() -> None:
    producer = QueueingProducer(fail={b"a"}, stuck={b"c"})
    delivery = produce_all(producer, "t", [{"value": v} for v in (b"a", b"b", b"c")])
    assert not delivery.ok
    assert delivery.errors == ["broker said no"] and delivery.undelivered == 1
    assert "errors=1 undelivered=1" in str(delivery)


def test_reports_start_afresh_after_each_wait() -> None:
    producer = QueueingProducer(fail={b"bad"})
    reports = DeliveryReports()
    producer.produce("t", value=b"bad", on_delivery=reports.on_delivery)
    assert not reports.wait(producer).ok
    producer.produce("t", value=b"good", on_delivery=reports.on_delivery)
    assert reports.wait(producer).ok


def test_kafka_exporter_retries_what_was_not_acknowledged() -> None:
    backend = KafkaBackend.__new__(KafkaBackend)
    backend.topic = "out"
    backend.producer = QueueingProducer(fail={b"t2"})  # type: ignore[assignment]
    with pytest.raises(RetryableError, match="not acknowledged"):
        backend.write("acme", [b"t1", b"t2"])
    backend.producer = producer = QueueingProducer()  # type: ignore[assignment]
    backend.write("acme", [b"t1"])
    assert producer.delivered == [{"topic": "out", "key": b"acme", "value": b"t1"}]
