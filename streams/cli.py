"""The `caudal` command: worker, ingest, validate, broker, generate, demo, bench, decide,
backfill, policies."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams.config import (
    ConfigError,
    ConfigSource,
    Settings,
    load_settings,
    parse_duration,
    parse_size,
)

__all__ = ["main"]


def _source(args: argparse.Namespace, metrics_port_key: str = "metrics.port") -> ConfigSource:
    """The config file and the command line's overrides, validated together on load."""
    given = {
        "kafka.bootstrap_servers": getattr(args, "bootstrap", None),
        "kafka.input_topic": getattr(args, "topic", None),
        "worker.state_dir": getattr(args, "state_dir", None),
        metrics_port_key: getattr(args, "metrics_port", None),
        "logging.level": (getattr(args, "loglevel", None) or "").lower() or None,
    }
    config = getattr(args, "config", None)
    return ConfigSource(
        Path(config) if config else None,
        {key: value for key, value in given.items() if value is not None},
    )


def _settings(args: argparse.Namespace, read_tokens: bool = False) -> Settings:
    return _source(args).load(read_tokens=read_tokens)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a config file; print every error with its key path."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"{args.config}: valid ({len(settings.policies)} policies, {len(settings.tenants)} "
        f"tenants, {len(settings.exporters)} exporters)"
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker."""
    from streams.worker import run_worker

    source = _source(args)
    code = run_worker(source.load(read_tokens=False), source)
    # Everything Caudal owns is flushed, committed and closed by now. Faust's consumer thread
    # can outlive its event loop after a stop (a race in mode's shutdown) and would keep the
    # interpreter waiting for it forever: end the process here.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Run the OTLP ingest gateway."""
    from streams.ingest.gateway import run_ingest

    settings = _source(args, metrics_port_key="ingest.metrics_port").load(read_tokens=True)
    run_ingest(settings)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the local development broker until Ctrl-C or SIGTERM."""
    from streams.devtools.broker import LocalBroker

    broker = LocalBroker(port=args.port).start()
    print(f"tansu broker listening; bootstrap servers: {broker.bootstrap}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            if broker._proc is None or broker._proc.poll() is not None:
                print("broker exited", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Write synthetic OTLP traffic to the input topic."""
    from streams.devtools.generate import (
        GeneratorOptions,
        GroundTruth,
        parse_experiment,
        run_generator,
    )
    from streams.kafka.clients import TRAFFIC_DELIVERY_TIMEOUT, ensure_topics, make_producer

    try:
        experiment = parse_experiment(args.experiment) if args.experiment else None
    except ValueError as exc:
        raise SystemExit(f"caudal generate: {exc}") from None
    options = GeneratorOptions(
        traces=args.traces,
        rate=args.rate,
        spans=args.spans,
        tenants=[t for t in args.tenants.split(",") if t],
        tenant_via=args.tenant_via,
        parts=args.parts,
        spread=args.spread,
        mix=_parse_mix(args.mix),
        rootless=args.rootless,
        orphans=args.orphans,
        experiment=experiment,
        fast=args.fast,
    )
    truth = GroundTruth() if args.truth else None
    settings = _settings(args)
    kafka = settings.kafka
    ensure_topics(kafka, [(kafka.input_topic, kafka.partitions)])
    producer = make_producer(kafka, TRAFFIC_DELIVERY_TIMEOUT)
    deadline = time.monotonic() + args.duration if args.duration else None

    def produce(value: bytes, headers: list[tuple[str, str | bytes | None]]) -> None:
        while True:
            try:
                producer.produce(kafka.input_topic, value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)

    try:
        made = run_generator(
            produce,
            options,
            should_stop=lambda: deadline is not None and time.monotonic() > deadline,
            truth=truth,
        )
    except KeyboardInterrupt:
        made = -1
    producer.flush(30)
    print(f"generated {made if made >= 0 else 'some'} traces into {kafka.input_topic}")
    if truth is not None:
        Path(args.truth).write_text(json.dumps(truth.as_dict(), indent=2) + "\n")
        print(f"ground truth written to {args.truth}")
    return 0


def _parse_mix(text: str) -> dict[str, float]:
    """`error=0.05,slow=0.05,...` → weights per trace kind."""
    from streams.devtools.generate import DEFAULT_MIX

    if not text:
        return dict(DEFAULT_MIX)
    mix: dict[str, float] = {}
    for item in text.split(","):
        kind, _, weight = item.partition("=")
        if kind.strip() not in DEFAULT_MIX:
            raise SystemExit(
                f"caudal generate: unknown trace kind {kind!r} in --mix "
                f"(kinds: {', '.join(DEFAULT_MIX)})"
            )
        try:
            mix[kind.strip()] = float(weight)
        except ValueError:
            raise SystemExit(
                f"caudal generate: weight of {kind!r} in --mix is not a number"
            ) from None
    return mix


def _interrupt_on_sigterm() -> None:
    """SIGTERM stops the command as Ctrl-C does: what it started (a broker, workers) is
    stopped on the way out, not left running."""

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def cmd_demo(args: argparse.Namespace) -> int:
    """Broker, worker, traffic and a live summary, all local."""
    from streams.devtools.demo import run_demo

    _interrupt_on_sigterm()
    return run_demo(duration=args.duration, output=args.output)


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the worker end to end against the raw consume+parse floor."""
    from streams.devtools.bench import BenchOptions, run_bench, run_policies_bench
    from streams.devtools.bench_big import run_big_trace_bench

    _interrupt_on_sigterm()
    if args.big_trace:
        return run_big_trace_bench(
            rate=int(args.rate or 500),
            seconds=args.seconds,
            big_spans=args.big_trace,
            partitions=args.partitions,
            bootstrap=args.bootstrap,
        )
    if args.policies_only:
        return run_policies_bench(args.traces, args.spans_per_trace, args.json)
    options = BenchOptions(
        traces=args.traces,
        spans_per_trace=args.spans_per_trace,
        traces_per_message=args.traces_per_message,
        partitions=args.partitions,
        workers=args.workers,
        rate=args.rate,
        wait=args.wait,
        bootstrap=args.bootstrap,
    )
    return run_bench(options, as_json=args.json)


def cmd_decide(args: argparse.Namespace) -> int:
    """Decide captured traces offline and print one JSON line per trace."""
    from streams.devtools.dryrun import decide_inputs
    from streams.wire.otlp import BadInput

    settings = _settings(args)
    if args.from_topic:
        return _decide_from_topic(args, settings)
    if args.since or args.current:
        print("caudal decide: --since and --current go with --from-topic", file=sys.stderr)
        return 2
    inputs = []
    for path in args.paths or ["-"]:
        if path == "-":
            inputs.append(("<stdin>", sys.stdin.buffer.read()))
        else:
            inputs.append((path, Path(path).read_bytes()))
    try:
        decide_inputs(settings, inputs)
    except BadInput as exc:
        print(f"caudal decide: {exc.detail}", file=sys.stderr)
        return 1
    return 0


def _decide_from_topic(args: argparse.Namespace, candidate: Settings) -> int:
    from streams.devtools.compare import compare_from_topic, write_comparison

    if not args.since or not args.current or args.paths:
        print(
            "caudal decide --from-topic: give --since and --current FILE, and no input files",
            file=sys.stderr,
        )
        return 2
    try:
        current = load_settings(args.current)
        since, until = _time_range(args)
    except (ConfigError, ValueError) as exc:
        print(f"caudal decide: {exc}", file=sys.stderr)
        return 2
    try:
        comparison = compare_from_topic(
            candidate,
            current,
            since,
            until,
            sample=args.sample,
            tenant=args.tenant,
            progress=None if args.quiet else sys.stderr,
        )
    except RuntimeError as exc:
        print(f"caudal decide: {exc}", file=sys.stderr)
        return 1
    write_comparison(comparison, args.json)
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Re-decide a time range of the input topic with extra policies; export what they keep."""
    from streams.devtools.backfill import Backfill, load_policies, write_summary

    try:
        settings = _settings(args)
        engine = load_policies(Path(args.policies))
        since, until = _time_range(args)
    except (ConfigError, ValueError) as exc:
        print(f"caudal backfill: {exc}", file=sys.stderr)
        return 2
    run = Backfill(
        settings,
        engine,
        since,
        until,
        tenant=args.tenant,
        dry_run=args.dry_run,
        max_traces=args.max_traces,
        max_bytes=args.max_bytes,
        progress=None if args.quiet else sys.stderr,
    )
    try:
        summary = run.run()
    except RuntimeError as exc:
        print(f"\ncaudal backfill: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(file=sys.stderr)
    write_summary(summary, args.json)
    return 0


def _time_range(args: argparse.Namespace) -> tuple[float, float]:
    """--since and --until (default now) as Unix seconds; ValueError if empty."""
    from streams.devtools.replay import parse_time

    now = time.time()
    since = parse_time(args.since, now)
    until = parse_time(args.until, now) if args.until else now
    if until <= since:
        raise ValueError(f"--until ({args.until or 'now'}) is not after --since ({args.since})")
    return since, until


def cmd_policies(args: argparse.Namespace) -> int:
    """List installed policy types and their configuration fields."""
    from policies import installed_policies

    for name, cls in sorted(installed_policies().items()):
        fields = ", ".join(
            f"{field}{'' if info.is_required() else '?'}"
            for field, info in cls.Config.model_fields.items()
        )
        print(f"{name:20s} {cls.__module__}:{cls.__qualname__}  [{fields}]")
    return 0


def with_config(p: argparse.ArgumentParser, required: bool = False) -> None:
    """The -c/--config option."""
    p.add_argument("-c", "--config", required=required, help="caudal.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caudal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run a stream worker")
    with_config(p)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides the file)")
    p.add_argument("--state-dir", help="RocksDB state directory (one per worker)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (one per worker; 0: off)")
    p.add_argument(
        "--loglevel",
        choices=["debug", "info", "warning", "error"],
        help="overrides logging.level of the file",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("ingest", help="run the OTLP/HTTP and OTLP/gRPC ingest gateway")
    with_config(p)
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides the file)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0: off)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("validate", help="check a config file and print every error")
    with_config(p, required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("broker", help="run a local development broker (tansu, in memory)")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=cmd_broker)

    _add_tools(sub)

    p = sub.add_parser("decide", help="decide captured OTLP traces offline (a dry run)")
    with_config(p)
    p.add_argument("paths", nargs="*", help="OTLP/JSON or protobuf files; none or '-': stdin")
    p.add_argument(
        "--from-topic",
        action="store_true",
        help="instead: decide the input topic's retained traffic with -c (the candidate) "
        "and --current side by side",
    )
    p.add_argument("--current", help="--from-topic: the configuration running now")
    p.add_argument("--since", help="--from-topic: ISO 8601 time, or before now: -30m, -2h")
    p.add_argument("--until", help="--from-topic: the same (default: now)")
    p.add_argument("--tenant", help="--from-topic: only this tenant's traces")
    p.add_argument(
        "--sample", type=int, default=10, help="--from-topic: trace IDs listed per change"
    )
    p.add_argument("--json", action="store_true", help="--from-topic: one JSON object")
    p.add_argument("--quiet", action="store_true", help="--from-topic: no progress line")
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser(
        "backfill", help="re-decide a time range of the input topic with extra policies"
    )
    with_config(p)
    p.add_argument("--since", required=True, help="ISO 8601 time, or before now: -30m, -2h")
    p.add_argument("--until", help="the same (default: now)")
    p.add_argument("--policies", required=True, help="YAML file of the backfill policies")
    p.add_argument("--tenant", help="only this tenant's traces")
    p.add_argument("--dry-run", action="store_true", help="print the summary, export nothing")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--max-traces", type=int, default=100_000, help="traces held at once (default 100000)"
    )
    p.add_argument(
        "--max-bytes",
        type=parse_size,
        default=256 * 1024 * 1024,
        help="span bytes held at once (default 256MiB)",
    )
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("policies", help="list installed policy types")
    p.set_defaults(func=cmd_policies)
    return parser


def _add_tools(sub: Any) -> None:
    """The developer tools' commands: generate, demo, bench."""
    p = sub.add_parser("generate", help="write synthetic OTLP traces to the input topic")
    with_config(p)
    p.add_argument("--bootstrap")
    p.add_argument("--topic", help="input topic (default: kafka.input_topic)")
    p.add_argument("--rate", type=float, default=200.0, help="traces per second (0: max)")
    p.add_argument("--traces", type=int, default=0, help="stop after this many (0: never)")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds")
    p.add_argument("--spans", type=int, default=10, help="spans per trace")
    p.add_argument("--tenants", default="acme,globex")
    p.add_argument("--tenant-via", choices=["resource", "header"], default="resource")
    p.add_argument("--parts", type=int, default=3, help="pieces each trace is sent in")
    p.add_argument("--spread", type=float, default=2.0, help="seconds between a trace's pieces")
    p.add_argument(
        "--mix",
        default="",
        help="kinds and weights: error=0.05,slow=0.05,critical=0.05,vip=0.1,ordinary=0.75",
    )
    p.add_argument("--rootless", type=float, default=0.0, help="share of traces losing the root")
    p.add_argument("--orphans", type=float, default=0.0, help="share with a span's parent lost")
    p.add_argument(
        "--experiment",
        help="an A/B experiment on every trace: ID:VARIANT=ERROR_RATE@LATENCY_MS,... "
        "(e.g. checkout-v2:a=0.02@50,b=0.1@200)",
    )
    p.add_argument("--truth", help="write what was generated (counts) to this JSON file")
    p.add_argument(
        "--fast",
        action="store_true",
        help="resend prebuilt traces under new IDs, one part each (for overload tests)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="run everything locally with a live summary")
    p.add_argument("--duration", type=float, default=0, help="seconds (0: until Ctrl-C)")
    p.add_argument("--output", default="./demo-output")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="measure end-to-end throughput and the raw floor")
    p.add_argument("--traces", type=int, default=50_000)
    p.add_argument("--spans-per-trace", "--spans", dest="spans_per_trace", type=int, default=10)
    p.add_argument("--traces-per-message", type=int, default=1, help="traces in one input message")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the partitions")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered traces per second, steady (0: all at once); --big-trace: default 500",
    )
    p.add_argument("--wait", type=parse_duration, default=1.0, help="decision.wait (default 1s)")
    p.add_argument("--json", action="store_true", help="print one JSON object of the figures")
    p.add_argument("--bootstrap", help="use this broker instead of a local one")
    p.add_argument("--policies-only", action="store_true", help="policy engine only")
    p.add_argument(
        "--big-trace",
        type=int,
        metavar="SPANS",
        help="instead: steady traffic alone, then next to one trace of SPANS spans",
    )
    p.add_argument("--seconds", type=float, default=40, help="--big-trace: steady traffic's length")
    p.set_defaults(func=cmd_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `caudal` console script."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one readable line instead of a traceback
        from streams.devtools.broker import BrokerError

        if isinstance(exc, BrokerError | OSError):
            print(f"caudal {args.command}: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
