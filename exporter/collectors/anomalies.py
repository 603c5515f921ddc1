"""`caffe_anomaly`, `caffe_anomalies_total` and the first non-finite origin, from each run's Analysis.

A prometheus_client custom collector: every scrape builds fresh metric families from the run registry
under the exporter's lock, so the values are those of the newest display iteration each run has read.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.detect import TYPES, analysis_of
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
            families = self._families(list(self.registry.runs.values()))
        yield from families

    @staticmethod
    def _families(runs: list[RunState]) -> list[GaugeMetricFamily | CounterMetricFamily]:
        extra = sorted({k for r in runs for k in r.labels} - {"run"})
        base = ["run", *extra]

        def lv(r: RunState) -> list[str]:
            return [r.run, *(r.labels.get(k, "") for k in extra)]

        anomaly = GaugeMetricFamily("caffe_anomaly", HELP["caffe_anomaly"], labels=[*base, "type", "layer"])
        total = CounterMetricFamily("caffe_anomalies", HELP["caffe_anomalies_total"], labels=[*base, "type"])
        first_it = GaugeMetricFamily(
            "caffe_first_nonfinite_iteration", HELP["caffe_first_nonfinite_iteration"], labels=base
        )
        first_layer_it = GaugeMetricFamily(
            "caffe_first_nonfinite_layer_iteration", HELP["caffe_first_nonfinite_layer_iteration"], labels=base
        )
        first_info = GaugeMetricFamily(
            "caffe_first_nonfinite_info",
            HELP["caffe_first_nonfinite_info"],
            labels=[*base, "phase", "stage", "layer", "blob", "value"],
        )
        loss_nf = CounterMetricFamily("caffe_loss_nonfinite", HELP["caffe_loss_nonfinite_total"], labels=base)
        for r in runs:
            labels = lv(r)
            a = analysis_of(r)
            if a is not None:
                for t, layer, v in a.anomaly_samples():
                    anomaly.add_metric([*labels, t, layer], v)
                for t in TYPES:
                    total.add_metric([*labels, t], float(a.counts[t]))
            f0 = r.first_nonfinite
            if f0 is not None and f0.iteration is not None:
                first_it.add_metric(labels, float(f0.iteration))
            f1 = r.first_nonfinite_layer
            if f1 is not None:
                if f1.iteration is not None:
                    first_layer_it.add_metric(labels, float(f1.iteration))
                first_info.add_metric([*labels, f1.phase, f1.stage, f1.layer, f1.blob, f1.value], 1.0)
            loss_nf.add_metric(labels, float(r.loss_nonfinite))
        return [anomaly, total, first_it, first_layer_it, first_info, loss_nf]
