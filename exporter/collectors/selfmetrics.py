"""`caffe_exporter_*`: how the exporter itself is doing (reads, parse outcomes, file events)."""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.collectors.runs import RunCollector
from exporter.pipeline import Pipeline


class ExporterCollector(Collector):
    def __init__(self, pipeline: Pipeline, runs: RunCollector) -> None:
        self._pipeline = pipeline
        self._runs = runs

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        p, t = self._pipeline, self._pipeline.tail_stats
        with p.lock:
            parsed, skipped, failed, nruns = p.lines.parsed, p.lines.skipped, p.lines.failed, len(p.registry.runs)
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
        return [
            info,
            lines,
            CounterMetricFamily("caffe_exporter_bytes_read", "Bytes read from all sources.", t.bytes_read),
            GaugeMetricFamily("caffe_exporter_files_watched", "Files currently open for tailing.",
                              t.files_watched),
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
            CounterMetricFamily("caffe_exporter_series_dropped", "Per-layer series withheld because a run "
                                "hit limits.max_series_per_run.", sum(self._runs.series_dropped.values())),
        ]
