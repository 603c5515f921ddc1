"""The daemon behind `caffe-exporter serve`: the one place that wires every stage together.

tail -> pipeline (parse, run state, detectors) -> collectors -> HTTP, plus the threads around them: the
readers (files, stdin), the checkpointer, the lifecycle sweep, SIGHUP reloads and the supervisor that turns
a dead reading thread into exit status 1. cli.py only parses arguments and calls `serve`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__, checkpoint, config
from exporter.collectors.http import FAMILIES as HTTP_FAMILIES
from exporter.collectors.http import HttpCollector
from exporter.collectors.scrape import ScrapeCollector
from exporter.detectors import analysis_of, make_observers
from exporter.errors import StageErrors
from exporter.identity import RunNamer
from exporter.lifecycle import Lifecycle
from exporter.pipeline import Pipeline
from exporter.serve import Server, make_app, start_server
from exporter.shard import Shard, ShardFilter
from exporter.state import RunRegistry
from exporter.tail import Chunk, Tailer, TailStats, follow, read_stream
from exporter.tail.follow import RESCAN_INTERVAL

log = logging.getLogger("caffe_exporter.daemon")
SUPERVISE_INTERVAL = 0.5  # seconds between checks that every reading thread is alive
RESTART_ONLY = ("listen", "checkpoint_file", "poll", "start_at")  # settings a reload cannot change


class Follow(Protocol):
    """`exporter.tail.follow`'s shape: read what the tailer's files gain until `stop` (a seam for tests)."""

    def __call__(self, tailer: Tailer, on_chunk: Callable[[Chunk], None], stop: threading.Event, *,
                 force_polling: bool = ..., poll_interval: float = ...,
                 rescan_interval: float | None = ...) -> None: ...


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


def shard_filter(shard: Shard, namer: RunNamer) -> Callable[[str], bool] | None:
    """Which paths this exporter reads (its shard's runs, named as the registry names them before it tells
    colliding names apart); None when it is the only shard, so that an unsharded exporter pays nothing."""
    if not shard.sharded:
        return None
    return ShardFilter(shard, lambda path: namer(path)[0])


def build(cfg: config.Config) -> tuple[Pipeline, CollectorRegistry]:
    """The pipeline and a registry holding its collectors (nothing registers globally)."""
    namer = RunNamer(cfg.sources)
    runs = RunRegistry(identify=namer, make_observers=make_observers(cfg.detectors), limits=cfg.limits,
                       clock=time.time)
    pipeline = Pipeline(runs, TailStats(), accept=shard_filter(cfg.shard, namer),
                        shard=(cfg.shard.index, cfg.shard.total))
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


def serve(cfg: config.Config, stop: threading.Event, reload: Reload | None = None, *,
          supervise_interval: float = SUPERVISE_INTERVAL, follow_files: Follow = follow) -> int:
    """Run the exporter until `stop` is set; returns the exit status (1 when a reading thread died).
    `supervise_interval` and `follow_files` are seams for tests (a slower supervisor, a reader that dies)."""
    daemon = _Daemon(cfg, stop, follow_files)
    daemon.start()
    status = 0
    try:
        status = daemon.supervise(reload, supervise_interval)
    finally:
        daemon.shutdown(status)
    return status


class _Daemon:
    """The running exporter: built by `start`, watched by `supervise`, taken down by `shutdown`."""

    def __init__(self, cfg: config.Config, stop: threading.Event, follow_files: Follow) -> None:
        self.cfg, self.stop, self._follow = cfg, stop, follow_files
        self.pipeline, self.registry = build(cfg)
        self.restored = checkpoint.Restored({}, {})
        if cfg.checkpoint_file:
            self.pipeline, self.registry, self.restored = restore(cfg, self.pipeline, self.registry)
        self.pipeline.reload_status = (True, time.time())
        self.ready = threading.Event()
        self.readers: list[_Reader] = []
        self.threads: list[threading.Thread] = []
        self.tailer: Tailer | None = None
        self.saver: checkpoint.Checkpointer | None = None
        self.lifecycle = Lifecycle(cfg.runs, self.pipeline.registry, clock=time.time, exists=os.path.lexists,
                                   on_drop=self._forget)
        self.server = self._listen()  # OSError when it cannot: nothing else started yet

    def start(self) -> None:
        """The readers, the checkpointer and the lifecycle sweep; /-/ready once the backlog is read."""
        paths = [s.path for s in self.cfg.sources]
        if "-" in paths:
            self.readers.append(_Reader("stdin", self._read_stdin))
            paths.remove("-")
        if paths:
            self._tail(paths)
        else:
            self.ready.set()
        self.threads.extend(self.readers)
        if self.cfg.checkpoint_file:
            self.saver = _checkpointer(self.cfg, self.pipeline, self.tailer)
            self.threads.append(threading.Thread(target=_save_periodically, args=(self.saver, self.pipeline,
                                                 self.stop), name="checkpoint", daemon=True))
        self.threads.append(threading.Thread(target=self._sweep, name="lifecycle", daemon=True))
        for t in self.threads:
            t.start()

    def _listen(self) -> Server:
        pipeline = self.pipeline

        def runs() -> list[tuple[str, str]]:
            with pipeline.lock:
                return [(r.run, ", ".join(r.sources)) for r in pipeline.registry.runs.values()]

        def healthy() -> bool:
            return not any(r.dead for r in self.readers)

        host, port = config.parse_listen(self.cfg.listen, "--listen")
        server = start_server(make_app(self.registry, runs, healthy=healthy, ready=self.ready.is_set), host, port)
        self.registry.register(HttpCollector(lambda: {k: getattr(server, k) for k in HTTP_FAMILIES}))
        log.info("caffe-exporter %s listening on %s:%d, sources %s", __version__, host, port,
                 [s.path for s in self.cfg.sources])
        return server

    def _read_stdin(self) -> None:
        for chunk in read_stream(sys.stdin.buffer, max_line_bytes=self.cfg.max_line_bytes,
                                 stats=self.pipeline.tail_stats):
            self.pipeline.on_chunk(chunk)
        log.info("standard input closed; still serving what was read")

    def _tail(self, paths: list[str]) -> None:
        cfg = self.cfg
        accept = self.pipeline.accept
        positions = {p: pos for p, pos in self.restored.positions.items() if accept is None or accept(p)}
        tailer = Tailer(paths, start_at_end=cfg.start_at == "end", max_line_bytes=cfg.max_line_bytes,
                        read_bytes=cfg.read_bytes, stats=self.pipeline.tail_stats, positions=positions,
                        max_open_files=cfg.max_open_files, idle_close=cfg.idle_close,
                        rotate_wait=cfg.rotate_wait, accept=accept)
        self.tailer = tailer
        self.pipeline.applied.update(positions)
        self.readers.append(_Reader("tail", lambda: _read_files(tailer, self.pipeline, cfg, self.stop, self.ready,
                                                                self._follow)))

    def _forget(self, paths: Sequence[str]) -> None:
        """A dropped run's files are read again from their start once they grow (a fresh run)."""
        if self.tailer is not None:
            for path in paths:
                self.tailer.forget(path)

    def _sweep(self) -> None:
        while not self.stop.wait(self.lifecycle.config.sweep_interval()):
            with self.pipeline.lock:
                self.lifecycle.sweep()

    def supervise(self, reload: Reload | None, interval: float) -> int:
        """Apply requested reloads; 1 as soon as a reading thread died, 0 once `stop` is set."""
        while not self.stop.wait(interval):
            if reload is not None and reload.requested.is_set():
                reload.requested.clear()
                self.cfg = _reload(self.cfg, reload.load, self.pipeline, self.tailer, self.lifecycle)
            dead = [r.name for r in self.readers if r.dead]
            if dead:
                log.critical("reading thread %s died; exiting so that the service manager restarts the exporter "
                             "(the last checkpoint stays valid)", ", ".join(dead))
                return 1
        return 0

    def shutdown(self, status: int) -> None:
        """Stop everything; the final checkpoint only after a clean stop (a dead reader's state is suspect)."""
        self.server.shutdown()
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)
        if self.saver is not None and status == 0:
            self.saver.save()  # takes the pipeline lock itself, one run at a time
        if self.tailer is not None:
            self.tailer.close()


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
    restart = [k for k in RESTART_ONLY if getattr(new, k) != getattr(cfg, k)]
    if restart:
        log.warning("configuration reload: %s take effect at the next restart only", ", ".join(restart))
    paths = [s.path for s in new.sources]
    if "-" in paths and "-" not in [s.path for s in cfg.sources]:
        log.warning("configuration reload: standard input can only be read from the start")
    with pipeline.lock:
        _apply(new, pipeline, lifecycle)
        if tailer is not None:
            tailer.set_sources([p for p in paths if p != "-"])
            tailer.set_accept(pipeline.accept)
        pipeline.reload_status = (True, time.time())
    if new.shard != cfg.shard:
        log.info("configuration reload: shard %s -> %s", cfg.shard, new.shard)
    log.info("configuration reloaded: sources %s", paths)
    return dataclasses.replace(new, **{k: getattr(cfg, k) for k in restart})


def _apply(new: config.Config, pipeline: Pipeline, lifecycle: Lifecycle) -> None:
    """The reloadable settings, applied to the runs that stay (the caller holds the pipeline lock)."""
    registry = pipeline.registry
    registry.identify = namer = RunNamer(new.sources)
    pipeline.accept, pipeline.shard = shard_filter(new.shard, namer), (new.shard.index, new.shard.total)
    registry.make_observers = make_observers(new.detectors)
    for run in registry.runs.values():
        if run.sources and run.sources[-1] != "-":  # static labels and run_regex labels of runs that stay
            run.labels = registry.identify(run.sources[-1])[1]
        analysis = analysis_of(run)
        if analysis is not None:
            analysis.config = new.detectors
    registry.set_limits(new.limits)
    lifecycle.config = new.runs
    for name, run in list(registry.runs.items()):
        if run.sources != ["-"] and not any(rule.covers(src) for rule in new.sources for src in run.sources):
            # its files are no longer read; if the source comes back they are read from the start
            registry.drop(name, "removed")
    drop_unowned(pipeline)


def drop_unowned(pipeline: Pipeline) -> list[str]:
    """Drop the runs another shard owns now (a reload or restart with another shard, a checkpoint of
    another shard); they are counted in runs_expired_total{reason="resharded"}. Returns their names."""
    accept, registry = pipeline.accept, pipeline.registry
    if accept is None:
        return []
    gone = [name for name, run in registry.runs.items() if run.sources and not any(accept(s) for s in run.sources)]
    for name in gone:
        for path in registry.drop(name, "resharded"):
            pipeline.applied.pop(path, None)
    return gone


def _read_files(tailer: Tailer, pipeline: Pipeline, cfg: config.Config, stop: threading.Event,
                ready: threading.Event, follow_files: Follow = follow) -> None:
    """The tail thread: the backlog present at start first (then /-/ready), then follow; an exception in the
    tailer is counted and reading resumes after a pause instead of ending."""
    # with inotify every change is reported: the full poll is a slow safety net (idle cost, issue 9)
    rescan = None if cfg.poll else max(cfg.poll_interval, RESCAN_INTERVAL)
    while not stop.is_set():
        try:
            if not ready.is_set():
                _catch_up(tailer, pipeline)
                ready.set()
            follow_files(tailer, pipeline.on_chunk, stop, force_polling=cfg.poll, poll_interval=cfg.poll_interval,
                         rescan_interval=rescan)
        except Exception as e:
            pipeline.errors.report("tail", "the tailer", e)
            stop.wait(1.0)


def _catch_up(tailer: Tailer, pipeline: Pipeline, monotonic: Callable[[], float] = time.monotonic) -> None:
    """The first full poll: everything the files held at start. Logged when it ends, with how much and how
    long, so an operator can tell a slow start from a stuck one (caffe_exporter_backlog_bytes counts down)."""
    started, before = monotonic(), pipeline.tail_stats.bytes_read
    for chunk in tailer.poll():
        pipeline.on_chunk(chunk)
    log.info("caught up with the backlog present at start: %d bytes of %d files in %.2f s",
             pipeline.tail_stats.bytes_read - before, pipeline.tail_stats.files_watched, monotonic() - started)


def _save_periodically(saver: checkpoint.Checkpointer, pipeline: Pipeline, stop: threading.Event) -> None:
    """Every checkpoint_interval, if chunks were applied since the last save (so an idle exporter writes
    nothing). The save takes the pipeline lock one run at a time (checkpoint.Snapshotter), never for all."""
    saved_generation = pipeline.generation
    while not stop.wait(saver.interval):
        generation = pipeline.generation  # chunks applied during the save make the next one due
        if generation != saved_generation and saver.save():
            saved_generation = generation


def _checkpointer(cfg: config.Config, pipeline: Pipeline, tailer: Tailer | None) -> checkpoint.Checkpointer:
    def prune() -> None:  # under pipeline.lock
        if tailer is not None:  # files the tailer has finished with (deleted, drained) leave the checkpoint
            tracked = tailer.tracked_paths()
            for path in [p for p in pipeline.applied if p not in tracked]:
                del pipeline.applied[path]

    state = checkpoint.Snapshotter(pipeline.lock, pipeline.registry, pipeline.applied, pipeline.counters, prune)

    def failed(e: BaseException) -> None:
        pipeline.errors.report("checkpoint", cfg.checkpoint_file, e)

    def saved() -> None:
        pipeline.errors.ok("checkpoint", cfg.checkpoint_file)

    return checkpoint.Checkpointer(cfg.checkpoint_file, cfg.checkpoint_interval, state, time.monotonic,
                                   on_error=failed, on_success=saved)


def restore(cfg: config.Config, pipeline: Pipeline,
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
        for name in drop_unowned(pipeline):
            log.info("restored run %s belongs to another shard than %s: dropped", name, cfg.shard)
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

