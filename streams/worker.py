"""The worker: a Faust app with the buffer agent, the decision timer and their two tables.

Data flow inside one worker process:
  split thread (input → caudal-spans) ─► buffer agent (caudal-spans → `traces` table)
  decision timer (`traces` → policies → caudal-sampled, `decisions` table)
  export threads (caudal-sampled → backends, one consumer group per exporter)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust

from streams.config import ConfigError, Settings, load_settings
from streams.export.loop import ExportLoop
from streams.kafka import faust_seam
from streams.kafka.clients import (
    DeliveryFailures,
    client_config,
    ensure_topics,
    faust_credentials,
    make_producer,
)
from streams.kafka.state import TableStore, bind_to_commits, recover_to_true_end
from streams.ops.experiments import ExperimentMeter
from streams.ops.health import ExportOutcomes, Health, Supervised, rss_bytes, serve_health
from streams.ops.logs import logging_dict_config
from streams.ops.metrics import (
    BUFFER_MAX_BYTES,
    BUFFER_MAX_TRACES,
    CONFIG_RELOADS,
    DECISION_WAIT,
    PARTITIONS_OWNED,
    TRACE_MAX_BYTES,
    set_consumer_lag,
)
from streams.pipeline.buffer import TraceBuffer
from streams.pipeline.decide import Decider, DecisionCache, PolicySets
from streams.pipeline.degrade import Degradation, LagClock, Pressure
from streams.pipeline.handover import DecisionTick, Handover, Lease, Ownership
from streams.pipeline.intake import Intake
from streams.pipeline.progress import DirectClock, PartitionClock
from streams.pipeline.route import TenantResolver, TenantRoutes
from streams.pipeline.split import SplitStage

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


class PolicyReloader:
    """Reload policies (global and per tenant) on SIGHUP or when the config file changes.

    Buffered traces stay where they are and are decided once, by whichever policies are
    current when their window closes. A file that does not validate is rejected with every
    error logged, and the running policies stay.
    """

    def __init__(
        self, path: Path, decider: Decider, settings: Settings, health: Health | None = None
    ) -> None:
        self.path = path
        self.decider = decider
        self.settings = settings
        self.health = health
        self.mtime = self._mtime()
        self.reloads = 0

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def check(self) -> None:
        """Reload if the file changed since it was last read."""
        mtime = self._mtime()
        if mtime != self.mtime:
            self.mtime = mtime
            self.reload("file changed")

    def reload(self, reason: str) -> None:
        """Validate the file again and swap in its policies, or keep the old ones."""
        try:
            new = load_settings(self.path, read_tokens=False)
        except ConfigError as exc:
            CONFIG_RELOADS.labels("failure").inc()
            for path, message in exc.errors:
                log.error("config reload rejected reason=%r key=%s error=%r", reason, path, message)
            log.error("config reload rejected, policies unchanged file=%s", self.path)
            return
        self.decider.policy_sets = PolicySets.from_settings(new)
        self.reloads += 1
        CONFIG_RELOADS.labels("success").inc()
        if self.health is not None:
            self.health.reloads = self.reloads
            self.health.config_version = config_version(self.path)
        ignored = [
            name
            for name in ("kafka", "decision", "exporters", "tenant_from", "default_tenant")
            if getattr(new, name) != getattr(self.settings, name)
        ]
        log.info(
            "policies reloaded reason=%r policies=%d tenant_sets=%d",
            reason,
            len(new.policies),
            len(self.decider.policy_sets.by_tenant),
        )
        if ignored:
            log.warning("changes need a restart to apply sections=%s", ",".join(ignored))


def build_worker(settings: Settings, config_path: Path | None = None) -> Worker:
    """Create topics, the Faust app with its tables, agent and timers, and the worker threads."""
    faust_seam.check_faust()
    kafka = settings.kafka
    # The same security for Faust's aiokafka clients as for the confluent-kafka ones.
    credentials = faust_credentials(kafka.security)
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
    app = faust.App(
        kafka.group_id,
        broker=";".join(f"kafka://{s.strip()}" for s in kafka.bootstrap_servers.split(",")),
        broker_credentials=credentials,
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
        consumer_max_fetch_size=16 * 1024 * 1024,
    )
    topic = app.topic(
        source_topic,
        partitions=kafka.partitions,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    traces = app.Table("traces", partitions=kafka.partitions, key_type=bytes, value_type=bytes)
    decisions = app.Table(
        "decisions", partitions=kafka.partitions, key_type=bytes, value_type=bytes
    )
    decision = settings.decision
    producer = make_producer(kafka)
    ownership = Ownership(lease=Lease(settings.worker.session_timeout))
    trace_store = TableStore(traces, producer, ownership.writable)
    decision_store = TableStore(decisions, producer, ownership.writable)
    failures = DeliveryFailures()
    bind_to_commits(app, producer, [trace_store, decision_store], failures.take)
    buffer = TraceBuffer(
        trace_store,
        decision.wait,
        decision.max_traces,
        decision.max_trace_bytes,
        decision.max_buffer_bytes,
    )
    dc = decision.decision_cache
    cache = DecisionCache(decision_store, dc.kept, dc.dropped, dc.ttl)
    routes = TenantRoutes(settings)
    decider = Decider(
        PolicySets.from_settings(settings),
        routes,
        buffer,
        cache,
        producer,
        kafka.sampled_topic,
        kafka.dlq_topic,
        kafka.max_message_bytes,
        failures,
    )
    outcomes = ExportOutcomes()
    health = Health(
        settings,
        buffered=lambda: len(buffer),
        outcomes=outcomes,
        config_version=config_version(config_path),
    )
    degradation = health.degradation
    lag = LagClock()
    meter = ExperimentMeter(settings.experiments)
    worker = Worker(
        settings, app, buffer, cache, decider, producer, health, degradation, lag, meter
    )
    resolver = TenantResolver.from_settings(settings)

    def caught_up(partition: int) -> bool:
        end = faust_seam.highwater(app, faust_seam.TP(source_topic, partition))
        read = intake.offsets.get(partition)
        return end is not None and (end == 0 or (read is not None and read + 1 >= end))

    clock = DirectClock(caught_up) if direct else PartitionClock()
    intake = Intake(worker, resolver, clock)
    health.read_offsets = lambda: dict(intake.offsets)
    tick = DecisionTick(
        decider, producer, ownership, clock, lambda: 5_000 * degradation.batch_factor()
    )

    def ready(partitions: frozenset[int]) -> None:
        routes.set_share(len(partitions) / kafka.partitions)
        PARTITIONS_OWNED.set(len(partitions))
        health.ready = True
        health.set_pipeline("running")

    def unready() -> None:
        health.ready = False
        PARTITIONS_OWNED.set(0)

    async def commit(offsets: dict[int, int]) -> bool:
        return await faust_seam.commit_processed(app, source_topic, offsets)

    handover = Handover(
        ownership, tick, buffer, cache, clock, ready, unready, lambda: intake.offsets, commit
    )
    faust_seam.run_before_revoke(app, handover.before_revoke, handover.after_revoke)
    recover_to_true_end(app, client_config(kafka), [trace_store, decision_store])
    faust_seam.limit_fetch_wait(app, 0.2)
    BUFFER_MAX_TRACES.set(decision.max_traces)
    BUFFER_MAX_BYTES.set(decision.max_buffer_bytes)
    TRACE_MAX_BYTES.set(decision.max_trace_bytes)
    DECISION_WAIT.set(decision.wait)

    @app.agent(topic, name="buffer-spans")
    async def buffer_spans(stream: Any) -> None:
        async for event in stream.events():
            if not ownership.leased():
                await ownership.wait_leased()
            intake.handle(event.message)

    @app.timer(decision.tick, name="decide-due")
    async def decide_due() -> None:
        health.beat()
        await tick()

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        # The group has just confirmed the membership; heartbeats renew the lease from here.
        lease = ownership.lease
        if lease is not None:
            lease.renew(time.monotonic())
            if not faust_seam.watch_heartbeats(app, lease.renew):
                log.warning("heartbeats cannot be watched: worker runs without its lease")
                ownership.lease = None
        handover.assigned(frozenset(faust_seam.assigned_actives(app, source_topic)))

    @traces.on_recover
    async def on_recovered() -> None:
        try:
            handover.recovered(frozenset(faust_seam.assigned_actives(app, source_topic)))
        except Exception as exc:
            # Faust drops exceptions raised in recovery callbacks; without this the worker
            # would report ready and never decide anything.
            log.exception("buffer recovery failed")
            await app.crash(exc)

    if config_path is not None:
        reloader = PolicyReloader(config_path, decider, settings, health)

        @app.timer(2.0, name="reload-policies")
        async def watch_config() -> None:
            reloader.check()

        @app.task
        async def on_sighup() -> None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloader.reload, "SIGHUP")

    if not direct:
        worker.threads.append(SplitStage(settings, worker.stop_input, lag, degradation, meter))
    routed = {name for tenant in settings.tenants.values() for name in tenant.exporters}
    exporters = [
        ExportLoop(name, settings, worker.stop, producer, outcomes) for name in sorted(routed)
    ]
    worker.threads.extend(exporters)
    health.exporter_states = lambda: {loop.exporter_name: loop.state for loop in exporters}

    drain = Drain(health, worker.stop_input, settings.shutdown.grace)

    @app.on_before_shutdown.connect
    async def on_shutdown(app: Any, **kwargs: Any) -> None:
        drain.begin()

    @app.timer(5.0, name="evaluate-health")
    async def evaluate_health() -> None:
        health.evaluate()

    @app.timer(settings.degradation.check_interval, name="check-pressure")
    async def check_pressure() -> None:
        lags = consumer_lags(app, source_topic, intake.offsets)
        health.consumer_lag = lags
        if not health.ready:
            lag.take()
            return
        limit = settings.health.memory_limit
        degradation.observe(
            Pressure(
                lag_seconds=lag.take(),
                buffer_fill=len(buffer) / decision.max_traces,
                memory_fill=rss_bytes() / limit if limit else None,
            ),
            time.time(),
        )

    return worker


def consumer_lags(app: faust.App, topic: str, offsets: dict[int, int]) -> dict[int, int]:
    """Records behind per assigned partition of `topic` (exported as caudal_consumer_lag)."""
    lags = {}
    for tp in faust_seam.assignment(app, topic):
        highwater = faust_seam.highwater(app, tp)
        if highwater is None:
            continue
        read = offsets.get(tp.partition)
        lags[tp.partition] = max(0, highwater - (read + 1 if read is not None else 0))
    set_consumer_lag(topic, lags)
    return lags


def config_version(path: Path | None) -> str:
    """A short digest of the config file, so /status shows which file a worker runs."""
    if path is None:
        return "defaults"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "unreadable"


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


def run_worker(settings: Settings, config_path: Path | None = None) -> int:
    """Run one worker until it is told to stop; policies reload from `config_path`."""
    worker = build_worker(settings, config_path)
    serve_health(worker.health, settings.metrics.host, settings.metrics.port)
    return worker.run()
