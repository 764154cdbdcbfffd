"""A broker that stops answering: a record it did not acknowledge in time fails, its producer
writes it again, and once the broker answers it holds one copy, not the failed one beside it.

The broker is stopped (SIGSTOP) before the producer first reaches it, so no request is in
flight when it stops: a record sent before a stall can always be written twice (at least once).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.config import Settings
from streams.devtools.broker import LocalBroker
from streams.kafka.clients import INDEX_HEADER, ORIGIN_HEADER, ensure_topics, make_producer
from streams.pipeline.split import SplitStage
from streams.wire.origin import decode_origins, origin
from tests.streams.pipeline.test_handover import K, Node, buffered
from tests.streams.pipeline.test_handover import request as error_request
from tests.streams.pipeline.test_split_stage import Consumer as InputConsumer
from tests.streams.pipeline.test_split_stage import Message, request

pytestmark = pytest.mark.integration

TIMEOUT = 2.0  # the producers' delivery timeout here (30 s in the pipeline)


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    """A broker of this module's own, to be stopped and continued."""
    with LocalBroker() as local:
        yield local


@contextmanager
def stopped(broker: LocalBroker) -> Iterator[None]:
    """The broker process stopped: connections are accepted, nothing is answered."""
    pid = broker.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def records(bootstrap: str, topic: str, partitions: int) -> list:
    """Every record of `topic` that holds data, read until none came for 2 s."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "stall-check"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list = []
    quiet_until = time.monotonic() + 10
    try:
        while time.monotonic() < quiet_until:
            for m in consumer.consume(100, timeout=0.5):
                if m.error() is None and m.value() is not None:  # not a progress record
                    out.append(m)
                    quiet_until = time.monotonic() + 2
    finally:
        consumer.close()
    return out


def test_a_split_read_not_acknowledged_in_time_is_written_once_when_the_broker_answers(
    broker: LocalBroker,
) -> None:
    settings = Settings.model_validate(
        {"kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 2}}
    )
    spans_topic = settings.kafka.spans_topic
    ensure_topics(settings.kafka, [(spans_topic, 2)])
    read = [Message(0, 7, request(b"u" * 16))]
    consumer = InputConsumer([read])
    with stopped(broker):
        split = SplitStage(settings, threading.Event(), delivery_timeout=TIMEOUT)
        split.consumer = consumer  # type: ignore[assignment]
        split.progress.assigned([0, 1], total=2, now=0.0)
        split._step()
        deadline = time.monotonic() + TIMEOUT + 10
        while not consumer.seeks and time.monotonic() < deadline:
            split._settle()
            time.sleep(0.1)
        assert consumer.seeks == [(0, 7)], "the read failed and is read again"
        assert consumer.commits == 0
        assert len(split.producer) == 0, "its records are no longer queued to be sent"
    consumer.batches = [read]  # the read, again
    split._step()
    split.producer.flush(15)
    split._settle()
    assert consumer.committed == [(0, 8)]
    written = records(broker.bootstrap, spans_topic, 2)
    sources = [
        o
        for m in written
        for o in decode_origins(
            dict(m.headers())[ORIGIN_HEADER], len(dict(m.headers())[INDEX_HEADER]) // 20
        )
    ]
    assert sources == [origin(0, 7)], "one copy of the input record's spans"


def test_a_kept_trace_not_acknowledged_in_time_is_exported_once_when_the_broker_answers(
    broker: LocalBroker,
) -> None:
    settings = Settings.model_validate({"kafka": {"bootstrap_servers": broker.bootstrap}})
    ensure_topics(settings.kafka, [("sampled", 1)])
    node = Node()
    kept = [bytes([n]) * 16 for n in range(1, 6)]
    node.buffered(kept[0], True)
    for tid in kept[1:]:
        node.buffer.append(0, K(tid), error_request(tid, True), 100.0)
    with stopped(broker):
        producer = make_producer(settings.kafka, delivery_timeout=TIMEOUT)
        node.decider.producer = node.tick.producer = producer
        node.tick.flush_timeout = TIMEOUT + 10
        began = time.monotonic()
        asyncio.run(node.tick())
        assert time.monotonic() - began < TIMEOUT + 5, "the records failed at their timeout"
        assert all(buffered(node.store, tid) for tid in kept), "still buffered"
        assert len(producer) == 0, "the failed records are no longer queued to be sent"
    node.advance(0, time.time() + 60)  # the traces are due again
    asyncio.run(node.tick())
    assert not any(buffered(node.store, tid) for tid in kept), "decided and exported"
    exported = records(broker.bootstrap, "sampled", 1)
    assert len(exported) == len(kept), "each kept trace once"
