"""Command line: `serve` (the daemon), `demo` (a real log replayed live), `diagnose` (an offline report).

This is the one module that wires every stage together.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from exporter import __version__, checkpoint, config
from exporter.collectors.scrape import ScrapeCollector
from exporter.detect import make_observers
from exporter.identity import RunNamer, SourceRule
from exporter.lifecycle import Lifecycle
from exporter.pipeline import Pipeline
from exporter.serve import make_app, start_server
from exporter.state import RunRegistry
from exporter.tail import FilePosition, Tailer, TailStats, follow, read_stream

log = logging.getLogger("caffe_exporter")


def build(cfg: config.Config) -> tuple[Pipeline, CollectorRegistry]:
    """The pipeline and a registry holding its collectors (nothing registers globally)."""
    runs = RunRegistry(identify=RunNamer(cfg.sources), make_observers=make_observers(cfg.detectors),
                       limits=cfg.limits, clock=time.time)
    pipeline = Pipeline(runs, TailStats())
    registry = CollectorRegistry()
    registry.register(ScrapeCollector(pipeline))  # runs, anomalies and self-metrics of one state per scrape
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    PlatformCollector(registry=registry)  # python_info
    return pipeline, registry


def serve(cfg: config.Config, stop: threading.Event) -> None:
    """Run the exporter until `stop` is set."""
    pipeline, registry = build(cfg)

    def runs() -> list[tuple[str, str]]:
        with pipeline.lock:
            return [(r.run, ", ".join(r.sources)) for r in pipeline.registry.runs.values()]

    positions = _restore(cfg, pipeline)
    host, port = config.parse_listen(cfg.listen, "--listen")
    server, _ = start_server(make_app(registry, runs), host, port)
    log.info("caffe-exporter %s listening on %s:%d, sources %s", __version__, host, port,
             [s.path for s in cfg.sources])
    threads = []
    paths = [s.path for s in cfg.sources]
    if "-" in paths:
        def stdin() -> None:
            for chunk in read_stream(sys.stdin.buffer, max_line_bytes=cfg.max_line_bytes,
                                     stats=pipeline.tail_stats):
                pipeline.on_chunk(chunk)
            log.info("standard input closed; still serving what was read")
        threads.append(threading.Thread(target=stdin, name="stdin", daemon=True))
        paths.remove("-")
    tailer = None
    saver = None
    if paths:
        tailer = Tailer(paths, start_at_end=cfg.start_at == "end", max_line_bytes=cfg.max_line_bytes,
                        read_bytes=cfg.read_bytes, stats=pipeline.tail_stats, positions=positions)
        if cfg.checkpoint_file:
            saver = checkpoint.Checkpointer(cfg.checkpoint_file, cfg.checkpoint_interval, pipeline.registry,
                                            tailer.positions, time.monotonic)
            pipeline.after_chunk = saver.maybe_save
        threads.append(threading.Thread(
            target=follow, args=(tailer, pipeline.on_chunk, stop),
            kwargs={"force_polling": cfg.poll, "poll_interval": cfg.poll_interval}, name="tail", daemon=True))
    def forget(paths: Sequence[str]) -> None:
        """A dropped run's files are read again from their start once they grow (a fresh run)."""
        for path in paths:
            if tailer is not None and hasattr(tailer, "forget"):  # Tailer.forget(path)
                tailer.forget(path)

    lifecycle = Lifecycle(cfg.runs, pipeline.registry, clock=time.time, exists=os.path.lexists, on_drop=forget)

    def sweep() -> None:
        while not stop.wait(lifecycle.config.sweep_interval()):
            with pipeline.lock:
                lifecycle.sweep()
    threads.append(threading.Thread(target=sweep, name="lifecycle", daemon=True))
    for t in threads:
        t.start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        for t in threads:
            t.join(timeout=5)
        if saver is not None:
            with pipeline.lock:
                saver.save()
        if tailer is not None:
            tailer.close()


def _restore(cfg: config.Config, pipeline: Pipeline) -> dict[str, FilePosition]:
    """Runs and offsets from the checkpoint file, if one is configured and usable."""
    if not cfg.checkpoint_file:
        return {}
    try:
        data = checkpoint.read(cfg.checkpoint_file)
        if data is None:
            return {}
        positions = checkpoint.restore(data, pipeline.registry, cfg.detectors)
    except checkpoint.CheckpointError as e:
        log.error("%s; starting without it", e)
        return {}
    log.info("restored %d runs and %d file offsets from %s", len(pipeline.registry.runs), len(positions),
             cfg.checkpoint_file)
    return positions


def _install_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _config_from_args(args: argparse.Namespace) -> config.Config:
    cfg = config.load(args.config) if args.config else config.Config()
    changes: dict[str, object] = {}
    if args.paths:
        changes["sources"] = tuple(SourceRule(p) for p in args.paths)
    if args.listen:
        config.parse_listen(args.listen, "--listen")
        changes["listen"] = args.listen
    if args.start_at:
        changes["start_at"] = args.start_at
    if args.poll:
        changes["poll"] = True
    if args.poll_interval:
        changes["poll_interval"] = args.poll_interval
    if args.checkpoint_file:
        changes["checkpoint_file"] = args.checkpoint_file
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["diagnose"]:  # its own parser: options may come before or after the paths
        from exporter import diagnose

        return diagnose.main(args_list[1:])
    parser = argparse.ArgumentParser(prog="caffe-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"caffe-exporter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="tail Caffe logs and serve /metrics")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="log files, globs or directories ('-' = standard input); default: the config's sources, "
                        "else the current directory")
    p.add_argument("--config", help="YAML configuration file (docs/configuration.md)")
    p.add_argument("--listen", help=f"HOST:PORT to serve on (default {config.DEFAULT_LISTEN})")
    p.add_argument("--start-at", choices=["beginning", "end"], help="read existing files from the beginning "
                   "(default) or only what is appended from now on")
    p.add_argument("--poll", action="store_true", help="poll with stat() instead of inotify (network filesystems)")
    p.add_argument("--poll-interval", type=float, help="seconds between polls (default 1)")
    p.add_argument("--checkpoint-file", help="save offsets and run state here, and continue from it after a restart")
    p.add_argument("--log-level", default="INFO")
    d = sub.add_parser("demo", help="serve metrics from a real Caffe log replayed live (no Caffe needed)")
    d.add_argument("--listen", default="127.0.0.1:10052")
    d.add_argument("--pace", type=float, default=1.0, help="seconds between display iterations (default 1)")
    d.add_argument("--loops", type=int, default=0, help="stop after this many replays (default: forever)")
    d.add_argument("--log-level", default="INFO")
    sub.add_parser("diagnose", help="report anomalies in finished or live logs (see: diagnose --help)")
    args = parser.parse_args(args_list)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every change set at INFO
    stop = threading.Event()
    _install_signals(stop)
    if args.command == "demo":
        from exporter import demo

        return demo.run(args.listen, args.pace, args.loops, stop, serve)
    try:
        cfg = _config_from_args(args)
    except config.ConfigError as e:
        print(f"caffe-exporter: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        serve(cfg, stop)
    except OSError as e:
        print(f"caffe-exporter: cannot listen on {cfg.listen}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
