"""The worker: a Faust app with the buffer agent, the decision timer and their two tables.

Data flow inside one worker:
  split process, or thread (input → caudal-spans) ─► buffer agent (caudal-spans → `traces` table)
  decision timer (`traces` → policies → caudal-sampled, `decisions` table)
  export threads (caudal-sampled → backends, one consumer group per exporter)
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from streams.config import ConfigSource, Settings
from streams.export.loop import ExportLoop
from streams.kafka import faust_seam
from streams.kafka.clients import (
    DeliveryFailures,
    client_config,
    ensure_topics,
    faust_credentials,
    make_producer,
)
from streams.kafka.state import RocksMemory, TableStore, bind_to_commits, recover_to_true_end
from streams.ops.experiments import ExperimentMeter
from streams.ops.health import ExportOutcomes, Health, Supervised, quiet_collector, serve_health
from streams.ops.logs import logging_dict_config
from streams.ops.metrics import (
    BUFFER_MAX_BYTES,
    BUFFER_MAX_TRACES,
    DECISION_WAIT,
    PARTITIONS_OWNED,
    ROCKSDB_MEMORY,
    TRACE_MAX_BYTES,
)
from streams.ops.pressure import PressureMonitor
from streams.ops.reload import PolicyReloader, config_version
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache, PolicySets
from streams.pipeline.degrade import Degradation, LagClock
from streams.pipeline.handover import DecisionTick, Handover, Lease, Ownership, Recovery
from streams.pipeline.intake import BufferAgent, Intake
from streams.pipeline.progress import DirectClock, PartitionClock
from streams.pipeline.route import TenantResolver, TenantRoutes
from streams.pipeline.split import SplitStage
from streams.pipeline.split_process import SplitProcess

__all__ = ["Drain", "Worker", "build_worker", "run_worker"]

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """Everything one worker process runs; `run()` blocks until SIGTERM/SIGINT."""

    settings: Settings
    app: faust.App
    buffer: TraceBuffer
    cache: DecisionCache
    decider: Decider
    producer: Any
    health: Health
    degradation: Degradation
    lag: LagClock
    meter: ExperimentMeter
    threads: list[Supervised] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    # Set first on SIGTERM: reading input stops before the buffer agent drains.
    stop_input: threading.Event = field(default_factory=threading.Event)

    def fail(self, reason: str) -> None:
        """A worker thread died: /healthz fails and the worker drains and exits with code 1."""
        if self.health.failure is None:
            self.health.failure = reason
            os.kill(os.getpid(), signal.SIGTERM)

    def run(self) -> int:
        """Start the threads and the Faust worker; stop and flush everything; the exit code."""
        for thread in self.threads:
            thread.on_failure = self.fail
            thread.start()
        self.health.set_pipeline("starting")
        worker = faust.Worker(
            self.app,
            loglevel=self.settings.logging.level,
            logging_config=logging_dict_config(self.settings.logging),
            quiet=True,
            redirect_stdouts=False,
        )
        code = 1
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:  # mode's worker always ends this way
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            self.health.set_pipeline("draining")
            self.health.ready = False
            self.stop_input.set()
            self.stop.set()
            for thread in self.threads:
                thread.join(timeout=15)
            self.producer.flush(10)
            self.health.set_pipeline("stopped")
            if self.health.failure is not None:
                code = 1
                log.error("worker stopped reason=%r", self.health.failure)
            log.info("worker stopped code=%d", code)
        return code


def build_worker(settings: Settings, source: ConfigSource | None = None) -> Worker:
    """Create topics, the Faust app with its tables, agent and timers, and the worker threads."""
    faust_seam.check_faust()
    kafka = settings.kafka
    direct = kafka.input_keyed_by_trace_id
    source_topic = kafka.input_topic if direct else kafka.spans_topic
    ensure_topics(
        kafka,
        [
            (kafka.input_topic, kafka.partitions),
            (kafka.spans_topic, kafka.partitions),
            (kafka.sampled_topic, kafka.partitions),
            (kafka.dlq_topic, 1),
        ],
    )
    app = make_app(settings)
    traces = app.Table("traces", partitions=kafka.partitions, key_type=bytes, value_type=bytes)
    decisions = app.Table(
        "decisions", partitions=kafka.partitions, key_type=bytes, value_type=bytes
    )
    producer = make_producer(kafka)
    ownership = Ownership(lease=Lease(settings.worker.session_timeout))
    rocksdb = settings.worker.rocksdb
    memory = RocksMemory(rocksdb.block_cache, rocksdb.write_buffers, rocksdb.compression)
    ROCKSDB_MEMORY.labels("block_cache").set_function(memory.cache.get_usage)
    ROCKSDB_MEMORY.labels("memtables").set_function(memory.write_buffers.get_usage)
    stores = [TableStore(t, producer, ownership.writable, memory) for t in (traces, decisions)]
    decider = make_decider(settings, producer, *stores)
    bind_to_commits(app, producer, stores, decider.failures.take)
    outcomes = ExportOutcomes()
    health = Health(
        settings,
        buffered=lambda: len(decider.buffer),
        outcomes=outcomes,
        config_version=config_version(source.path if source else None),
    )
    worker = Worker(
        settings,
        app,
        decider.buffer,
        decider.cache,
        decider,
        producer,
        health,
        health.degradation,
        LagClock(),
        ExperimentMeter(settings.experiments),
    )
    intake = _wire_partitions(worker, ownership, traces, source_topic)
    recover_to_true_end(app, client_config(kafka), stores)
    faust_seam.limit_fetch_wait(app, 0.2)
    _wire_timers(worker, source, source_topic, intake)
    _add_threads(worker, outcomes, direct)
    return worker


def make_app(settings: Settings) -> faust.App:
    """The Faust app of the worker group (tables in RocksDB under worker.state_dir)."""
    kafka = settings.kafka
    return faust.App(
        kafka.group_id,
        broker=";".join(f"kafka://{s.strip()}" for s in kafka.bootstrap_servers.split(",")),
        # The same security for Faust's aiokafka clients as for the confluent-kafka ones.
        broker_credentials=faust_credentials(kafka.security),
        store="rocksdb://",
        datadir=settings.worker.state_dir,
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.worker.session_timeout,
        broker_rebalance_timeout=settings.worker.session_timeout,
        broker_heartbeat_interval=1,
        producer_max_request_size=kafka.max_message_bytes,
        # Records read ahead of the agent are held in memory: a caudal-spans record packs up
        # to kafka.max_message_bytes of spans, so Faust's default of 4,096 records per stream
        # could hold gigabytes in a burst. 64 records, fetched a few MiB per partition at a
        # time, keep the agent busy and the read-ahead bounded.
        stream_buffer_maxsize=64,
        consumer_max_fetch_size=max(4 * 1024 * 1024, 2 * kafka.max_message_bytes),
    )


def make_decider(
    settings: Settings, producer: Any, trace_store: TableStore, decision_store: TableStore
) -> Decider:
    """The buffer, the decision cache and the decider over the two tables."""
    kafka, decision = settings.kafka, settings.decision
    buffer = TraceBuffer(
        trace_store,
        decision.wait,
        decision.max_traces,
        decision.max_trace_bytes,
        decision.max_buffer_bytes,
        kafka.max_message_bytes,
        decision.wait_after_root,
    )
    dc = decision.decision_cache
    cache = DecisionCache(
        decision_store, dc.kept, dc.dropped, dc.ttl, kafka.max_message_bytes, buffer.segment_span
    )
    BUFFER_MAX_TRACES.set(decision.max_traces)
    BUFFER_MAX_BYTES.set(decision.max_buffer_bytes)
    TRACE_MAX_BYTES.set(decision.max_trace_bytes)
    DECISION_WAIT.set(decision.wait)
    return Decider(
        PolicySets.from_settings(settings),
        TenantRoutes(settings),
        buffer,
        cache,
        producer,
        kafka.sampled_topic,
        kafka.dlq_topic,
        kafka.max_message_bytes,
        DeliveryFailures(),
    )


def _wire_partitions(worker: Worker, ownership: Ownership, traces: Any, topic_name: str) -> Intake:
    """The buffer agent, the decision tick and the handover of the buffer's partitions."""
    app, settings, decider = worker.app, worker.settings, worker.decider
    health, kafka = worker.health, settings.kafka
    resolver = TenantResolver.from_settings(settings)
    offsets: dict[int, int] = {}

    def caught_up(partition: int) -> bool:
        end = faust_seam.highwater(app, faust_seam.TP(topic_name, partition))
        read = offsets.get(partition)
        return end is not None and (end == 0 or (read is not None and read + 1 >= end))

    clock = DirectClock(caught_up) if kafka.input_keyed_by_trace_id else PartitionClock()
    intake = Intake(worker, resolver, clock, offsets)
    health.read_offsets = lambda: dict(offsets)
    tick = DecisionTick(
        decider,
        worker.producer,
        ownership,
        clock,
        lambda: 5_000 * worker.degradation.batch_factor(),
    )
    readiness = Readiness(health, decider, kafka.partitions)
    handover = Handover(
        ownership,
        tick,
        decider.buffer,
        decider.cache,
        clock,
        readiness.ready,
        readiness.unready,
        lambda: offsets,
        functools.partial(faust_seam.commit_processed, app, topic_name),
    )
    faust_seam.run_before_revoke(app, handover.before_revoke, handover.after_revoke)
    recovery = Recovery(app, handover, ownership, topic_name)
    app.on_partitions_assigned.connect(recovery.on_assigned)  # type: ignore[arg-type]
    traces.on_recover(recovery.on_recovered)
    topic = app.topic(
        topic_name,
        partitions=kafka.partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.agent(topic, name="buffer-spans")(BufferAgent(intake, ownership).consume)
    app.timer(settings.decision.tick, name="decide-due")(DecisionTimer(tick, health).run)
    return intake


def _wire_timers(
    worker: Worker, source: ConfigSource | None, source_topic: str, intake: Intake
) -> None:
    """Health, pressure, the SIGTERM drain and (with a config file) policy reloads."""
    app, settings, health = worker.app, worker.settings, worker.health
    monitor = PressureMonitor(
        app,
        source_topic,
        lambda: intake.offsets,
        health,
        worker.degradation,
        worker.lag,
        lambda: len(worker.buffer),
        settings.decision.max_traces,
        settings.health.memory_limit,
    )
    app.timer(5.0, name="evaluate-health")(monitor.evaluate_health)
    app.timer(settings.degradation.check_interval, name="check-pressure")(monitor.check_pressure)
    drain = Drain(health, worker.stop_input, settings.shutdown.grace)
    app.on_before_shutdown.connect(drain.on_shutdown)  # type: ignore[arg-type]
    if source is not None and source.path is not None:
        reloader = PolicyReloader(source, worker.decider, settings, health)
        app.timer(2.0, name="reload-policies")(reloader.watch)
        app.task(reloader.listen_for_sighup)


def _add_threads(worker: Worker, outcomes: ExportOutcomes, direct: bool) -> None:
    """The split stage (unless the input is keyed by trace ID) and one thread per exporter."""
    settings = worker.settings
    if not direct and settings.worker.split_process:
        worker.threads.append(
            SplitProcess(settings, worker.stop_input, worker.lag, worker.degradation)
        )
    elif not direct:
        degradation = worker.degradation
        worker.threads.append(
            SplitStage(
                settings, worker.stop_input, worker.lag, lambda: degradation.level, worker.meter
            )
        )
    routed = {name for tenant in settings.tenants.values() for name in tenant.exporters}
    exporters = [
        ExportLoop(name, settings, worker.stop, worker.producer, outcomes)
        for name in sorted(routed)
    ]
    worker.threads.extend(exporters)
    worker.health.exporter_states = lambda: {e.exporter_name: e.state for e in exporters}


@dataclass
class Readiness:
    """What changes when the worker owns its partitions again, or stops owning them."""

    health: Health
    decider: Decider  # its routes, which a reload replaces
    partitions: int

    def ready(self, owned: frozenset[int]) -> None:
        """Recovered: quotas follow the share of partitions owned, policies learn which
        partitions they keep state for; /readyz answers 200."""
        self.decider.routes.set_share(len(owned) / self.partitions)
        self.decider.policy_sets.set_partitions(owned, self.partitions)
        PARTITIONS_OWNED.set(len(owned))
        self.health.ready = True
        self.health.set_pipeline("running")

    def unready(self) -> None:
        """A revoke began."""
        self.health.ready = False
        PARTITIONS_OWNED.set(0)


@dataclass
class DecisionTimer:
    """The decide-due timer: the event loop is alive (for /healthz), then one decision tick."""

    tick: DecisionTick
    health: Health

    async def run(self) -> None:
        """One run of the timer."""
        self.health.beat()
        await self.tick()


def _drain_overrun(grace: float) -> None:
    # The drain took longer than shutdown.grace: exit rather than be killed mid-write. What was
    # not committed is read again by the partition's next owner (at-least-once).
    log.error("drain exceeded shutdown.grace=%.0fs, exiting", grace)
    logging.shutdown()
    os._exit(1)


@dataclass
class Drain:
    """SIGTERM: stop reading the input first, then Faust finishes the records read, flushes and
    commits; past `grace` seconds the process exits with code 1 instead."""

    health: Health
    stop_input: threading.Event
    grace: float
    on_overrun: Callable[[float], None] = _drain_overrun

    def begin(self) -> threading.Timer:
        """Start draining; the returned watchdog fires `on_overrun` after `grace`."""
        self.health.set_pipeline("draining")
        self.health.ready = False
        self.stop_input.set()
        log.info("draining grace=%.0fs", self.grace)
        watchdog = threading.Timer(self.grace, self.on_overrun, [self.grace])
        watchdog.daemon = True
        watchdog.start()
        return watchdog

    async def on_shutdown(self, app: Any, **kwargs: Any) -> None:
        """Faust's on_before_shutdown signal."""
        self.begin()


def run_worker(settings: Settings, source: ConfigSource | None = None) -> int:
    """Run one worker until it is told to stop; policies reload from `source`."""
    worker = build_worker(settings, source)
    quiet_collector()
    serve_health(worker.health, settings.metrics.host, settings.metrics.port)
    return worker.run()
