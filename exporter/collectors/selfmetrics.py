"""`caffe_exporter_*`: how the exporter itself is doing (reads, parse outcomes, file events)."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.pipeline import Pipeline

EXPIRY_REASONS = ("deleted", "finished", "stale", "removed")  # lifecycle.REASONS (collectors come before the lifecycle)
DROP_REASONS = ("max_series_per_run", "max_series", "max_runs", "name_too_long", "layer_filter")


class ExporterCollector(Collector):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        with self._pipeline.lock:
            return self.render()

    def render(self) -> list[Metric]:
        """The families; the caller holds the pipeline's lock."""
        p, t = self._pipeline, self._pipeline.tail_stats
        parsed, skipped, failed, nruns = p.lines.parsed, p.lines.skipped, p.lines.failed, len(p.registry.runs)
        budget = p.registry.budget
        reload_ok, reload_time = p.reload_status
        info = GaugeMetricFamily("caffe_exporter_build_info", "caffe-exporter version and Python version.",
                                 labels=["version", "python_version"])
        info.add_metric([__version__, platform.python_version()], 1)
        lines = CounterMetricFamily(
            "caffe_exporter_lines",
            "Lines read, by outcome: parsed (a known Caffe line), skipped (anything else), oversized (over "
            "max_line_bytes, dropped), partial (an unterminated last line dropped when its file was rotated "
            "away, deleted or truncated, or stdin ended), failed (processing raised: a bug, see the "
            "exporter's log).",
            labels=["outcome"],
        )
        lines.add_metric(["parsed"], parsed)
        lines.add_metric(["skipped"], skipped)
        lines.add_metric(["oversized"], t.lines_oversized)
        lines.add_metric(["partial"], t.lines_partial)
        lines.add_metric(["failed"], failed)
        errors = CounterMetricFamily(
            "caffe_exporter_errors",
            "Exceptions by pipeline stage (tail, parse, state, detect, checkpoint, collect): each is logged once "
            "per episode with its file, and reading goes on.",
            labels=["stage"],
        )
        for stage, n in sorted(p.errors.counts.items()):
            errors.add_metric([stage], n)
        return [
            info,
            lines,
            errors,
            CounterMetricFamily("caffe_exporter_bytes_read", "Bytes read from all sources.", t.bytes_read),
            GaugeMetricFamily("caffe_exporter_files_watched", "Files being followed (open, or closed while idle "
                              "and reopened when they grow), plus standard input while it is open.", t.files_watched),
            GaugeMetricFamily("caffe_exporter_files_open", "File descriptors held for log files (bounded: idle "
                              "files are closed, their offsets kept).", t.files_open),
            GaugeMetricFamily("caffe_exporter_runs", "Runs currently exported.", nruns),
            CounterMetricFamily("caffe_exporter_file_rotations", "A watched path named another file "
                                "(rename rotation, new glog file).", t.rotations),
            CounterMetricFamily("caffe_exporter_file_truncations", "A file shrank below the read offset "
                                "(copytruncate).", t.truncations),
            CounterMetricFamily("caffe_exporter_read_errors", "Open, stat or read failures (once per failure "
                                "episode of a path).", t.read_errors),
            GaugeMetricFamily("caffe_exporter_files_unreadable", "Log paths failing to open, stat or read right "
                              "now.", t.files_unreadable),
            GaugeMetricFamily("caffe_exporter_last_read_timestamp_seconds", "Wall-clock time of the last read "
                              "that returned data.", t.last_read_time),
            _by_label(CounterMetricFamily(
                "caffe_exporter_series_dropped",
                "Values not stored because of limits: (reason max_series_per_run, max_series, layer_filter: "
                "a new series refused; max_runs: a Caffe log refused as a new run; name_too_long: a name "
                "cut to limits.max_name_bytes and stored).", labels=["reason"]),
                DROP_REASONS, budget.dropped),
            GaugeMetricFamily("caffe_exporter_series", "Series stored by all runs (counted against "
                              "limits.max_series).", budget.total),
            _by_label(CounterMetricFamily(
                "caffe_exporter_runs_expired",
                "Runs dropped by the lifecycle (runs: in the configuration), by reason: deleted (every log "
                "file gone for deleted_grace), finished (finished_ttl after the last read of a finished run), "
                "stale (stale_ttl after the last read), removed (its source left the configuration on reload).",
                labels=["reason"]),
                EXPIRY_REASONS, p.registry.expired),
            GaugeMetricFamily("caffe_exporter_config_last_reload_successful", "1 if the last configuration "
                              "reload (SIGHUP) succeeded, 0 if the file was broken and the old one kept.",
                              1.0 if reload_ok else 0.0),
            GaugeMetricFamily("caffe_exporter_config_last_reload_success_timestamp_seconds", "Time of the last "
                              "successful configuration load (start or SIGHUP), Unix seconds.", reload_time),
        ]


def _by_label(fam: CounterMetricFamily, reasons: Iterable[str], counts: Mapping[str, int]) -> CounterMetricFamily:
    for r in reasons:
        fam.add_metric([r], counts.get(r, 0))
    return fam
