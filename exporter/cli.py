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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__, checkpoint, config
from exporter.collectors.http import FAMILIES as HTTP_FAMILIES
from exporter.collectors.http import HttpCollector
from exporter.collectors.scrape import ScrapeCollector
from exporter.detectors import analysis_of, make_observers
from exporter.errors import StageErrors
from exporter.identity import RunNamer, SourceRule
from exporter.lifecycle import Lifecycle
from exporter.pipeline import Pipeline
from exporter.serve import make_app, start_server
from exporter.state import RunRegistry
from exporter.tail import Tailer, TailStats, follow, read_stream

log = logging.getLogger("caffe_exporter")
_SUPERVISE_INTERVAL = 0.5  # seconds between checks that every reading thread is alive


class _Guarded(Collector):
    """A collector whose failure costs its own families, counted, instead of failing the whole scrape."""

    def __init__(self, inner: Collector, errors: StageErrors, name: str) -> None:
        self.inner, self._errors, self._name = inner, errors, name

    def describe(self) -> Iterable[Metric]:
        return self.inner.describe() if hasattr(self.inner, "describe") else []

    def collect(self) -> Iterable[Metric]:
        try:
            families = list(self.inner.collect())
        except Exception as e:
            self._errors.report("collect", self._name, e)
            return []
        self._errors.ok("collect", self._name)
        return families


def build(cfg: config.Config) -> tuple[Pipeline, CollectorRegistry]:
    """The pipeline and a registry holding its collectors (nothing registers globally)."""
    runs = RunRegistry(identify=RunNamer(cfg.sources), make_observers=make_observers(cfg.detectors),
                       limits=cfg.limits, clock=time.time)
    pipeline = Pipeline(runs, TailStats())
    registry = CollectorRegistry()
    # runs, anomalies and self-metrics rendered from one state per scrape; a failure costs the scrape its
    # caffe_* families (counted in errors_total{stage="collect"}), never the process and self-metrics
    registry.register(_Guarded(ScrapeCollector(pipeline), pipeline.errors, "scrape"))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    PlatformCollector(registry=registry)  # python_info
    return pipeline, registry


class _Reader(threading.Thread):
    """A reading thread (files or stdin). It must never die: if it does anyway, /-/healthy turns 503 and the
    process exits non-zero so that systemd or Kubernetes restart it, rather than serve frozen metrics."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._body = target
        self.finished = False  # returned normally (stdin at EOF): not a death

    def run(self) -> None:
        self._body()
        self.finished = True

    @property
    def dead(self) -> bool:
        return not self.is_alive() and not self.finished and self.ident is not None


@dataclass
class Reload:
    """`requested` is set (by SIGHUP) when `load()` should be called and its configuration applied."""

    requested: threading.Event
    load: Callable[[], config.Config]


def serve(cfg: config.Config, stop: threading.Event, reload: Reload | None = None) -> int:
    """Run the exporter until `stop` is set; returns the exit status (1 when a reading thread died)."""
    pipeline, registry = build(cfg)
    restored = checkpoint.Restored({}, {})
    if cfg.checkpoint_file:
        pipeline, registry, restored = _restore(cfg, pipeline, registry)
    pipeline.reload_status = (True, time.time())
    ready = threading.Event()

    def runs() -> list[tuple[str, str]]:
        with pipeline.lock:
            return [(r.run, ", ".join(r.sources)) for r in pipeline.registry.runs.values()]

    readers: list[_Reader] = []

    def healthy() -> bool:
        return not any(r.dead for r in readers)

    host, port = config.parse_listen(cfg.listen, "--listen")
    server = start_server(make_app(registry, runs, healthy=healthy, ready=ready.is_set), host, port)
    registry.register(HttpCollector(lambda: {k: getattr(server, k) for k in HTTP_FAMILIES}))
    log.info("caffe-exporter %s listening on %s:%d, sources %s", __version__, host, port,
             [s.path for s in cfg.sources])
    paths = [s.path for s in cfg.sources]
    if "-" in paths:
        def stdin() -> None:
            for chunk in read_stream(sys.stdin.buffer, max_line_bytes=cfg.max_line_bytes,
                                     stats=pipeline.tail_stats):
                pipeline.on_chunk(chunk)
            log.info("standard input closed; still serving what was read")
        readers.append(_Reader("stdin", stdin))
        paths.remove("-")
    tailer = None
    saver = None
    if paths:
        tailer = Tailer(paths, start_at_end=cfg.start_at == "end", max_line_bytes=cfg.max_line_bytes,
                        read_bytes=cfg.read_bytes, stats=pipeline.tail_stats, positions=restored.positions,
                        max_open_files=cfg.max_open_files, idle_close=cfg.idle_close, rotate_wait=cfg.rotate_wait)
        pipeline.applied.update(restored.positions)
        readers.append(_Reader("tail", lambda: _read_files(tailer, pipeline, cfg, stop, ready)))
    else:
        ready.set()
    threads: list[threading.Thread] = list(readers)
    if cfg.checkpoint_file:
        saver = _checkpointer(cfg, pipeline, tailer)
        threads.append(threading.Thread(target=_save_periodically, args=(saver, pipeline, stop), name="checkpoint",
                                        daemon=True))
    def forget(paths: Sequence[str]) -> None:
        """A dropped run's files are read again from their start once they grow (a fresh run)."""
        if tailer is not None:
            for path in paths:
                tailer.forget(path)

    lifecycle = Lifecycle(cfg.runs, pipeline.registry, clock=time.time, exists=os.path.lexists, on_drop=forget)

    def sweep() -> None:
        while not stop.wait(lifecycle.config.sweep_interval()):
            with pipeline.lock:
                lifecycle.sweep()
    threads.append(threading.Thread(target=sweep, name="lifecycle", daemon=True))
    for t in threads:
        t.start()
    status = 0
    try:
        while not stop.wait(_SUPERVISE_INTERVAL):
            if reload is not None and reload.requested.is_set():
                reload.requested.clear()
                cfg = _reload(cfg, reload.load, pipeline, tailer, lifecycle)
            dead = [r.name for r in readers if r.dead]
            if dead:
                log.critical("reading thread %s died; exiting so that the service manager restarts the exporter "
                             "(the last checkpoint stays valid)", ", ".join(dead))
                status = 1
                break
    finally:
        server.shutdown()
        stop.set()
        for t in threads:
            t.join(timeout=5)
        if saver is not None and status == 0:
            with pipeline.lock:
                saver.save()
        if tailer is not None:
            tailer.close()
    return status


def _reload(cfg: config.Config, load: Callable[[], config.Config], pipeline: Pipeline,
            tailer: Tailer | None, lifecycle: Lifecycle) -> config.Config:
    """Apply a re-read configuration without losing the state of the runs that stay; a broken file is
    reported and the running configuration kept. Returns the configuration now in force."""
    try:
        new = load()
    except config.ConfigError as e:
        log.error("configuration reload failed, keeping the running configuration: %s", e)
        pipeline.reload_status = (False, pipeline.reload_status[1])
        return cfg
    restart = [k for k in ("listen", "checkpoint_file", "poll", "start_at") if getattr(new, k) != getattr(cfg, k)]
    if restart:
        log.warning("configuration reload: %s take effect at the next restart only", ", ".join(restart))
    paths = [s.path for s in new.sources]
    if "-" in paths and "-" not in [s.path for s in cfg.sources]:
        log.warning("configuration reload: standard input can only be read from the start")
    with pipeline.lock:
        pipeline.registry.identify = RunNamer(new.sources)
        for run in pipeline.registry.runs.values():  # static labels and run_regex labels of runs that stay
            if run.sources and run.sources[-1] != "-":
                run.labels = pipeline.registry.identify(run.sources[-1])[1]
        pipeline.registry.make_observers = make_observers(new.detectors)
        for run in pipeline.registry.runs.values():
            analysis = analysis_of(run)
            if analysis is not None:
                analysis.config = new.detectors
        pipeline.registry.set_limits(new.limits)
        lifecycle.config = new.runs
        for name, run in list(pipeline.registry.runs.items()):
            if run.sources != ["-"] and not any(rule.covers(src) for rule in new.sources for src in run.sources):
                # its files are no longer read; if the source comes back they are read from the start
                pipeline.registry.drop(name, "removed")
        if tailer is not None:
            tailer.set_sources([p for p in paths if p != "-"])
        pipeline.reload_status = (True, time.time())
    log.info("configuration reloaded: sources %s", paths)
    return dataclasses.replace(new, **{k: getattr(cfg, k) for k in restart})


def _read_files(tailer: Tailer, pipeline: Pipeline, cfg: config.Config, stop: threading.Event,
                ready: threading.Event) -> None:
    """The tail thread: the backlog present at start first (then /-/ready), then follow; an exception in the
    tailer is counted and reading resumes after a pause instead of ending."""
    while not stop.is_set():
        try:
            if not ready.is_set():
                for chunk in tailer.poll():
                    pipeline.on_chunk(chunk)
                ready.set()
            follow(tailer, pipeline.on_chunk, stop, force_polling=cfg.poll, poll_interval=cfg.poll_interval)
        except Exception as e:
            pipeline.errors.report("tail", "the tailer", e)
            stop.wait(1.0)


def _save_periodically(saver: checkpoint.Checkpointer, pipeline: Pipeline, stop: threading.Event) -> None:
    """Every checkpoint_interval, if chunks were applied since the last save (so an idle exporter writes
    nothing). The save runs under the pipeline lock: state and committed offsets describe the same lines."""
    saved_generation = pipeline.generation
    while not stop.wait(saver.interval):
        with pipeline.lock:
            if pipeline.generation != saved_generation and saver.save():
                saved_generation = pipeline.generation


def _checkpointer(cfg: config.Config, pipeline: Pipeline, tailer: Tailer | None) -> checkpoint.Checkpointer:
    def state() -> dict[str, Any] | None:  # the caller holds pipeline.lock
        if tailer is not None:  # files the tailer has finished with (deleted, drained) leave the checkpoint
            tracked = tailer.tracked_paths()
            for path in [p for p in pipeline.applied if p not in tracked]:
                del pipeline.applied[path]
        return checkpoint.snapshot(pipeline.registry, pipeline.applied, pipeline.counters())

    def failed(e: BaseException) -> None:
        pipeline.errors.report("checkpoint", cfg.checkpoint_file, e)

    def saved() -> None:
        pipeline.errors.ok("checkpoint", cfg.checkpoint_file)

    return checkpoint.Checkpointer(cfg.checkpoint_file, cfg.checkpoint_interval, state, time.monotonic,
                                   on_error=failed, on_success=saved)


def _restore(cfg: config.Config, pipeline: Pipeline,
             registry: CollectorRegistry) -> tuple[Pipeline, CollectorRegistry, checkpoint.Restored]:
    """Runs, offsets and counters from the checkpoint file, if usable: checked as a whole (every restored run
    renders) before any of it is used; otherwise a fresh pipeline and a full re-read."""
    for p in checkpoint.remove_leftovers(cfg.checkpoint_file):
        log.info("removed %s, left by a save that never finished", p)
    try:
        data = checkpoint.read(cfg.checkpoint_file)
        if data is None:
            return pipeline, registry, checkpoint.Restored({}, {})
        restored = checkpoint.restore(data, pipeline.registry, cfg.detectors)
        pipeline.restore_counters(restored.counters)
        failures = pipeline.errors.counts["collect"]
        generate_latest(registry)
        if pipeline.errors.counts["collect"] != failures:
            raise checkpoint.CheckpointError("its runs cannot be rendered as metrics")
    except Exception as e:
        log.error("%s: %s; starting without it", cfg.checkpoint_file, e)
        pipeline, registry = build(cfg)
        return pipeline, registry, checkpoint.Restored({}, {})
    log.info("restored %d runs and %d file offsets from %s", len(pipeline.registry.runs), len(restored.positions),
             cfg.checkpoint_file)
    return pipeline, registry, restored


def _install_signals(stop: threading.Event, reload: threading.Event) -> None:
    """TERM and INT stop (with a final checkpoint); HUP reloads the configuration, as Prometheus does."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def hup(signum: int, frame: FrameType | None) -> None:
        reload.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, hup)


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
    reload = threading.Event()
    _install_signals(stop, reload)
    if args.command == "demo":
        from exporter import demo

        return demo.run(args.listen, args.pace, args.loops, stop, serve)
    try:
        cfg = _config_from_args(args)
    except config.ConfigError as e:
        print(f"caffe-exporter: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return serve(cfg, stop, Reload(reload, lambda: _config_from_args(args)))
    except OSError as e:
        print(f"caffe-exporter: cannot listen on {cfg.listen}: {e.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
