"""`caffe_anomaly`, `caffe_anomalies_total` and the first non-finite origin, from each run's Analysis.

A prometheus_client custom collector: every scrape builds fresh metric families from the run registry
under the exporter's lock, so the values are those of the newest display iteration each run has read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.detect import metric_tuples
from exporter.state import RunRegistry, RunState

HELP = {
    "caffe_anomaly": (
        "1 while the anomaly condition holds at the newest display iteration of the run, else 0 "
        "(type: nonfinite, nan_loss, loss_saturated, exploding, vanishing, zero_gradient, dead, loss_spike; "
        'layer="" for net-wide conditions). See docs/detectors.md.'
    ),
    "caffe_anomalies_total": "Display iterations in which the anomaly condition held.",
    "caffe_first_nonfinite_iteration": (
        "Iteration of the first display block holding a non-finite value of any kind (first observed: only "
        "display iterations carry debug_info); absent while none."
    ),
    "caffe_first_nonfinite_layer_iteration": (
        "Iteration of the first per-layer non-finite debug_info line (the one caffe_first_nonfinite_info "
        "describes; test-phase origins give the test iteration); absent while none."
    ),
    "caffe_first_nonfinite_info": (
        "The first per-layer non-finite debug_info line (where the NaN/inf first appeared in a layer), "
        "always 1; absent while none."
    ),
    "caffe_loss_nonfinite_total": "Display lines whose loss was NaN or inf.",
}


class AnomalyCollector(Collector):
    def __init__(self, registry: RunRegistry, lock: threading.Lock) -> None:
        self.registry = registry
        self.lock = lock

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Names only, so registering does not call collect() (which takes the lock)."""
        yield GaugeMetricFamily("caffe_anomaly", HELP["caffe_anomaly"])
        yield CounterMetricFamily("caffe_anomalies", HELP["caffe_anomalies_total"])
        yield GaugeMetricFamily("caffe_first_nonfinite_iteration", HELP["caffe_first_nonfinite_iteration"])
        yield GaugeMetricFamily("caffe_first_nonfinite_layer_iteration", HELP["caffe_first_nonfinite_layer_iteration"])
        yield GaugeMetricFamily("caffe_first_nonfinite_info", HELP["caffe_first_nonfinite_info"])
        yield CounterMetricFamily("caffe_loss_nonfinite", HELP["caffe_loss_nonfinite_total"])

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self.lock:
            families = self.render(list(self.registry.runs.values()))
        yield from families

    @staticmethod
    def render(runs: Iterable[RunState]) -> list[GaugeMetricFamily | CounterMetricFamily]:
        """Built from `detect.metric_tuples`, the one definition `diagnose` and the tests compare with; the
        caller holds the lock."""
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "caffe_anomaly": GaugeMetricFamily("caffe_anomaly", HELP["caffe_anomaly"]),
            "caffe_anomalies_total": CounterMetricFamily("caffe_anomalies", HELP["caffe_anomalies_total"]),
            "caffe_first_nonfinite_iteration": GaugeMetricFamily(
                "caffe_first_nonfinite_iteration", HELP["caffe_first_nonfinite_iteration"]),
            "caffe_first_nonfinite_layer_iteration": GaugeMetricFamily(
                "caffe_first_nonfinite_layer_iteration", HELP["caffe_first_nonfinite_layer_iteration"]),
            "caffe_first_nonfinite_info": GaugeMetricFamily(
                "caffe_first_nonfinite_info", HELP["caffe_first_nonfinite_info"]),
            "caffe_loss_nonfinite_total": CounterMetricFamily(
                "caffe_loss_nonfinite", HELP["caffe_loss_nonfinite_total"]),
        }
        for r in runs:
            for name, labels, value in metric_tuples(r):
                families[name].add_sample(name, labels, value)
        return list(families.values())
