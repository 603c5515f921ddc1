"""`caffe_exporter_*`: how the exporter itself is doing (reads, parse outcomes, file events)."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.collectors.family import Family
from exporter.pipeline import Pipeline

# lifecycle.REASONS, then the daemon's (collectors come before the lifecycle)
EXPIRY_REASONS = ("deleted", "finished", "stale", "removed", "resharded")
DROP_REASONS = ("max_series_per_run", "max_series", "max_runs", "name_too_long", "layer_filter")


BUILD_INFO = Family("caffe_exporter_build_info", "gauge", "caffe-exporter version and Python version.",
                    ("version", "python_version"))
LINES = Family(
    "caffe_exporter_lines", "counter",
    "Lines read, by outcome: parsed (a known Caffe line), skipped (anything else), oversized (over "
    "max_line_bytes, dropped), partial (an unterminated last line dropped when its file was rotated "
    "away, deleted or truncated, or stdin ended), failed (processing raised: a bug, see the "
    "exporter's log).", ("outcome",))
ERRORS = Family(
    "caffe_exporter_errors", "counter",
    "Exceptions by pipeline stage (tail, parse, state, detect, checkpoint, collect): each is logged once "
    "per episode with its file, and reading goes on.", ("stage",))
BYTES_READ = Family("caffe_exporter_bytes_read", "counter", "Bytes read from all sources.")
FILES_WATCHED = Family("caffe_exporter_files_watched", "gauge", "Files being followed (open, or closed while idle "
                       "and reopened when they grow), plus standard input while it is open.")
FILES_OPEN = Family("caffe_exporter_files_open", "gauge", "File descriptors held for log files (bounded: idle "
                    "files are closed, their offsets kept).")
RUNS = Family("caffe_exporter_runs", "gauge", "Runs currently exported.")
ROTATIONS = Family("caffe_exporter_file_rotations", "counter", "A watched path named another file "
                   "(rename rotation, new glog file).")
TRUNCATIONS = Family("caffe_exporter_file_truncations", "counter", "A file shrank below the read offset "
                     "(copytruncate).")
READ_ERRORS = Family("caffe_exporter_read_errors", "counter", "Open, stat or read failures (once per failure "
                     "episode of a path).")
UNREADABLE = Family("caffe_exporter_files_unreadable", "gauge", "Log paths failing to open, stat or read right "
                    "now.")
LAST_READ = Family("caffe_exporter_last_read_timestamp_seconds", "gauge", "Wall-clock time of the last read "
                   "that returned data.")
BACKLOG = Family("caffe_exporter_backlog_bytes", "gauge", "Bytes known to be in followed log files and not read "
                  "yet (each file's size at its last stat less the read offset): how far reading is behind.")
SERIES_DROPPED = Family(
    "caffe_exporter_series_dropped", "counter",
    "Values not stored because of limits: (reason max_series_per_run, max_series, layer_filter: "
    "a new series refused; max_runs: a Caffe log refused as a new run; name_too_long: a name "
    "cut to limits.max_name_bytes and stored).", ("reason",))
SERIES = Family("caffe_exporter_series", "gauge", "Series stored by all runs (counted against "
                "limits.max_series).")
RUNS_EXPIRED = Family(
    "caffe_exporter_runs_expired", "counter",
    "Runs dropped by the lifecycle (runs: in the configuration), by reason: deleted (every log "
    "file gone for deleted_grace), finished (finished_ttl after the last read of a finished run), "
    "stale (stale_ttl after the last read), removed (its source left the configuration on reload), resharded "
    "(another shard owns it since a reload or restart with another shard).", ("reason",))
RELOAD_OK = Family("caffe_exporter_config_last_reload_successful", "gauge", "1 if the last configuration "
                   "reload (SIGHUP) succeeded, 0 if the file was broken and the old one kept.")
RELOAD_TIME = Family("caffe_exporter_config_last_reload_success_timestamp_seconds", "gauge", "Time of the last "
                     "successful configuration load (start or SIGHUP), Unix seconds.")
SHARD_INFO = Family("caffe_exporter_shard_info", "gauge", "Always 1: the shard of the runs this exporter "
                    "exports (index of total exporters over the same files; 0 of 1 when not sharded).",
                    ("index", "total"))
FAMILIES: tuple[Family, ...] = (BUILD_INFO, LINES, ERRORS, BYTES_READ, FILES_WATCHED, FILES_OPEN, RUNS, ROTATIONS,
                                TRUNCATIONS, READ_ERRORS, UNREADABLE, LAST_READ, BACKLOG, SERIES_DROPPED, SERIES,
                                RUNS_EXPIRED, RELOAD_OK, RELOAD_TIME, SHARD_INFO)


class ExporterCollector(Collector):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def describe(self) -> Iterable[Metric]:
        """Declarations only: registering must not take the lock."""
        return [f.empty() for f in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        with self._pipeline.lock:
            return self.render()

    def render(self) -> list[Metric]:
        """The families, in FAMILIES' order; the caller holds the pipeline's lock."""
        p, t = self._pipeline, self._pipeline.tail_stats
        budget = p.registry.budget
        reload_ok, reload_time = p.reload_status
        lines = LINES.empty()
        for outcome, n in (("parsed", p.lines.parsed), ("skipped", p.lines.skipped), ("oversized", t.lines_oversized),
                           ("partial", t.lines_partial), ("failed", p.lines.failed)):
            LINES.add(lines, n, outcome)
        return [
            BUILD_INFO.of(1, __version__, platform.python_version()),
            lines,
            _by_label(ERRORS, sorted(p.errors.counts), p.errors.counts),
            BYTES_READ.of(t.bytes_read),
            FILES_WATCHED.of(t.files_watched),
            FILES_OPEN.of(t.files_open),
            RUNS.of(len(p.registry.runs)),
            ROTATIONS.of(t.rotations),
            TRUNCATIONS.of(t.truncations),
            READ_ERRORS.of(t.read_errors),
            UNREADABLE.of(t.files_unreadable),
            LAST_READ.of(t.last_read_time),
            BACKLOG.of(t.backlog_bytes),
            _by_label(SERIES_DROPPED, DROP_REASONS, budget.dropped),
            SERIES.of(budget.total),
            _by_label(RUNS_EXPIRED, EXPIRY_REASONS, p.registry.expired),
            RELOAD_OK.of(1.0 if reload_ok else 0.0),
            RELOAD_TIME.of(reload_time),
            SHARD_INFO.of(1, str(p.shard[0]), str(p.shard[1])),
        ]


def _by_label(spec: Family, values: Iterable[str], counts: Mapping[str, int]) -> Metric:
    fam = spec.empty()
    for v in values:
        spec.add(fam, counts.get(v, 0), v)
    return fam
