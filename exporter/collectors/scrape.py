"""One scrape, one snapshot: every family of a /metrics answer rendered under one hold of the lock.

Registered on its own, each collector takes the pipeline's lock for itself, and a chunk applied between
two of them lets one scrape show a run's `caffe_iteration` of one display iteration next to its anomaly
series of the next. This collector holds the lock once and renders the run, anomaly and self-metrics
families from that one state.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.collectors.anomalies import AnomalyCollector
from exporter.collectors.runs import RunCollector
from exporter.collectors.selfmetrics import ExporterCollector
from exporter.pipeline import Pipeline


class ScrapeCollector(Collector):
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._runs = RunCollector(pipeline.registry, pipeline.lock)
        self._anomalies = AnomalyCollector(pipeline.registry, pipeline.lock)
        self._exporter = ExporterCollector(pipeline)

    def describe(self) -> Iterable[Metric]:
        """Names only (registering must not render: it would take the lock)."""
        return [*self._runs.describe(), *self._anomalies.describe(), *self._exporter.describe()]

    def collect(self) -> Iterable[Metric]:
        with self._pipeline.lock:
            runs = list(self._pipeline.registry.runs.values())
            return [*self._runs.render(runs), *self._anomalies.render(runs), *self._exporter.render()]
