"""The split stage's loop survives what Kafka throws at it, and vouches only for what it wrote."""

from __future__ import annotations

import threading

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from streams.config import Settings
from streams.kafka.clients import INDEX_HEADER, ORIGIN_HEADER
from streams.pipeline.progress import decode_claims
from streams.pipeline.split import SplitStage
from streams.wire.origin import decode_origins, origin


class Message:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self._partition, self._offset, self._value = partition, offset, value

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def headers(self) -> list:
        return []

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return "otlp_spans"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self._offset)

    def error(self) -> None:
        return None


class EndOfPartition(Message):
    """librdkafka's event: the consumer reached the end of the partition."""

    def __init__(self, partition: int) -> None:
        super().__init__(partition, -1, b"")

    def error(self) -> KafkaError:  # type: ignore[override]
        return KafkaError(KafkaError._PARTITION_EOF)


class Consumer:
    def __init__(self, batches: list[list[Message]], commit_error: bool = False) -> None:
        self.batches = batches
        self.commit_error = commit_error
        self.commits = 0
        self.committed: list[tuple[int, int]] = []
        self.seeks: list[tuple[int, int]] = []

    def consume(self, size: int, timeout: float) -> list[Message]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: list, asynchronous: bool) -> None:
        if self.commit_error:
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        self.commits += 1
        self.committed += [(tp.partition, tp.offset) for tp in offsets]

    def seek(self, tp: object) -> None:
        self.seeks.append((tp.partition, tp.offset))  # type: ignore[attr-defined]

    def position(self, partitions: object) -> list:
        return []

    def assignment(self) -> list:
        return []


class Producer:
    def __init__(self, fail: bool = False) -> None:
        self.records: list[dict] = []
        self.fail = fail

    def produce(
        self, topic: str, value=None, partition=0, headers=(), on_delivery=None, timestamp=0
    ):
        self.records.append({"partition": partition, "headers": dict(headers), "value": value})
        if on_delivery is not None:
            on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT) if self.fail else None, None)

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def request(trace_id: bytes) -> bytes:
    span = Span(trace_id=trace_id, span_id=b"s" * 8, name="x")
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    ).SerializeToString()


def stage(consumer: Consumer, producer: Producer) -> SplitStage:
    settings = Settings.model_validate({"kafka": {"partitions": 2}})
    split = SplitStage(settings, threading.Event())
    split.consumer, split.producer = consumer, producer  # type: ignore[assignment]
    split.progress.assigned([0, 1], total=2, now=0.0)
    return split


def test_a_failed_commit_does_not_stop_the_stage_and_records_carry_their_origin() -> None:
    consumer = Consumer(
        [[Message(1, 41, request(b"t" * 16))], [EndOfPartition(0), EndOfPartition(1)]],
        commit_error=True,
    )
    producer = Producer()
    split = stage(consumer, producer)
    split.batch_size = 1  # the read is full: nothing says the partitions were drained
    split._step()  # the commit raises: logged, not fatal
    [data] = [r for r in producer.records if INDEX_HEADER in r["headers"]]
    assert decode_origins(data["headers"][ORIGIN_HEADER], 1) == [origin(1, 41)]
    claims = decode_claims(split.progress.header() or b"")[2]
    assert claims[1] == 1_700_000_000.041, "what was produced is vouched for"
    split.batch_size = 1000
    split._step()  # both partitions read to their end: vouched for up to about now
    assert min(decode_claims(split.progress.header() or b"")[2].values()) > claims[1]


def test_an_empty_read_vouches_for_nothing_until_the_end_of_a_partition_was_reached() -> None:
    # Just after an assignment the fetch has not started: reads come back empty while the
    # partition still holds records. Only an end-of-partition event says there is nothing more.
    consumer = Consumer([[], [], [EndOfPartition(0)]])
    split = stage(consumer, Producer())
    split._step()
    split._step()
    assert decode_claims(split.progress.header() or b"")[2] == {0: 0.0, 1: 0.0}
    split._step()
    claims = decode_claims(split.progress.header() or b"")[2]
    assert claims[0] > 0.0 and claims[1] == 0.0
    consumer.batches = [[Message(0, 3, request(b"w" * 16))], []]
    split._step()  # a record again: partition 0 is no longer at its end
    before = decode_claims(split.progress.header() or b"")[2][0]
    split._step()
    assert decode_claims(split.progress.header() or b"")[2][0] == before


def test_a_batch_that_was_not_acknowledged_is_read_again_and_not_vouched_for() -> None:
    consumer = Consumer([[Message(0, 7, request(b"u" * 16)), Message(0, 8, request(b"v" * 16))]])
    split = stage(consumer, Producer(fail=True))
    split._step()
    assert consumer.seeks == [(0, 7)] and consumer.commits == 0
    assert decode_claims(split.progress.header() or b"")[2][0] == 0.0


class SlowProducer(Producer):
    """Acknowledges only when told to (`release`), as a broker under load does."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list = []
        self.outcome: KafkaError | None = None

    def produce(
        self, topic: str, value=None, partition=0, headers=(), on_delivery=None, timestamp=0
    ):
        self.records.append({"partition": partition, "headers": dict(headers), "value": value})
        if on_delivery is not None:
            self.waiting.append(on_delivery)

    def release(self) -> None:
        for callback in self.waiting:
            callback(self.outcome, None)
        self.waiting = []

    def flush(self, timeout: float = 0) -> int:
        self.release()
        return 0


def test_reads_go_on_while_a_batch_waits_for_its_acknowledgement() -> None:
    first = Message(0, 5, request(b"a" * 16))
    consumer = Consumer([[first], [Message(1, 9, request(b"b" * 16))], [EndOfPartition(0)]])
    producer = SlowProducer()
    split = stage(consumer, producer)
    split._step()
    split._step()  # read before the first batch was acknowledged
    split._step()  # partition 0 read to its end: vouches for nothing before the batches
    assert consumer.commits == 0
    assert decode_claims(split.progress.header() or b"")[2] == {0: 0.0, 1: 0.0}
    producer.release()
    split._settle()
    assert consumer.committed == [(0, 6), (1, 10)], "each batch past its own last record"
    claims = decode_claims(split.progress.header() or b"")[2]
    assert claims[1] == 1_700_000_000.009 and claims[0] > claims[1]


def test_a_failed_batch_is_read_again_with_every_batch_read_after_it() -> None:
    consumer = Consumer([[Message(0, 5, request(b"a" * 16))], [Message(0, 6, request(b"b" * 16))]])
    producer = SlowProducer()
    split = stage(consumer, producer)
    split._step()
    split._step()
    producer.outcome = KafkaError(KafkaError._MSG_TIMED_OUT)
    producer.release()
    split._settle()
    assert consumer.seeks == [(0, 5)] and consumer.commits == 0
    assert not split.in_flight
    assert decode_claims(split.progress.header() or b"")[2] == {0: 0.0, 1: 0.0}


def test_a_revoke_waits_for_the_batches_under_way_and_commits_them() -> None:
    consumer = Consumer([[Message(0, 5, request(b"a" * 16))]])
    split = stage(consumer, SlowProducer())
    split._step()
    split._on_revoke(consumer, [])  # type: ignore[arg-type]
    assert consumer.committed == [(0, 6)] and not split.in_flight


def test_after_a_rewind_an_empty_read_does_not_vouch_for_what_is_read_again() -> None:
    # The batch reached the partition's end, then failed: the fetch starts again from its first
    # record, and the reads that come back empty meanwhile say nothing about the partition.
    consumer = Consumer([[Message(0, 5, request(b"a" * 16)), EndOfPartition(0)], [], []])
    producer = SlowProducer()
    split = stage(consumer, producer)
    split._step()
    producer.outcome = KafkaError(KafkaError._MSG_TIMED_OUT)
    producer.release()
    split._step()  # finds the failure: read again
    assert consumer.seeks == [(0, 5)]
    split._step()  # empty: the fetch has not started again
    assert decode_claims(split.progress.header() or b"")[2] == {0: 0.0, 1: 0.0}


def test_a_revoked_partition_is_no_longer_vouched_for() -> None:
    consumer = Consumer([[EndOfPartition(0), EndOfPartition(1)], [EndOfPartition(1)]])
    split = stage(consumer, Producer())
    split._step()
    before = decode_claims(split.progress.header() or b"")[2]
    split._on_revoke(consumer, [TopicPartition("otlp_spans", 0)])  # type: ignore[arg-type]
    split._step()
    after = decode_claims(split.progress.header() or b"")[2]
    assert set(after) == {1} and after[1] >= before[1]
