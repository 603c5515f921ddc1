"""`caffe_anomaly`, `caffe_anomalies_total` and the first non-finite origin, from each run's Analysis.

A prometheus_client custom collector: every scrape builds fresh metric families from the run registry
under the exporter's lock, so the values are those of the newest display iteration each run has read.
Each family (name, type, HELP, labels) is defined once, in :data:`FAMILIES`; :func:`metric_tuples` gives
the samples as plain tuples from those same definitions, for comparing the daemon with `diagnose`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter.detectors import TYPES, analysis_of
from exporter.state import RunRegistry, RunState

Sample = tuple[str, dict[str, str], float]  # (sample name, labels, value)


@dataclass(frozen=True)
class Family:
    """One metric family: `name` is the sample name (a counter's ends in `_total`)."""

    name: str
    counter: bool
    help: str
    labels: tuple[str, ...]  # after `run` and the run's own labels

    def new(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.counter:
            return CounterMetricFamily(self.name.removesuffix("_total"), self.help)
        return GaugeMetricFamily(self.name, self.help)

    def sample(self, base: dict[str, str], value: float, *labels: str) -> Sample:
        return self.name, {**base, **dict(zip(self.labels, labels, strict=True))}, value


ANOMALY = Family(
    "caffe_anomaly", False,
    "1 while the anomaly condition holds at the newest display iteration of the run, else 0 "
    f"(type: {', '.join(TYPES)}; "
    'layer="" for net-wide conditions). See docs/detectors.md.',
    ("type", "layer"),
)
ANOMALIES_TOTAL = Family(
    "caffe_anomalies_total", True, "Display iterations in which the anomaly condition held.", ("type",)
)
FIRST_NONFINITE_ITERATION = Family(
    "caffe_first_nonfinite_iteration", False,
    "Iteration of the first display block holding a non-finite value of any kind (first observed: only "
    "display iterations carry debug_info); absent while none.",
    (),
)
FIRST_NONFINITE_LAYER_ITERATION = Family(
    "caffe_first_nonfinite_layer_iteration", False,
    "Iteration of the first per-layer non-finite debug_info line (the one caffe_first_nonfinite_info "
    "describes; test-phase origins give the test iteration); absent while none.",
    (),
)
FIRST_NONFINITE_INFO = Family(
    "caffe_first_nonfinite_info", False,
    "The first per-layer non-finite debug_info line (where the NaN/inf first appeared in a layer), "
    "always 1; absent while none.",
    ("phase", "stage", "layer", "blob", "value"),
)
LOSS_NONFINITE_TOTAL = Family("caffe_loss_nonfinite_total", True, "Display lines whose loss was NaN or inf.", ())
FAMILIES = (ANOMALY, ANOMALIES_TOTAL, FIRST_NONFINITE_ITERATION, FIRST_NONFINITE_LAYER_ITERATION,
            FIRST_NONFINITE_INFO, LOSS_NONFINITE_TOTAL)


def metric_tuples(run: RunState) -> list[Sample]:
    """The anomaly samples of one run as (name, labels, value), in the order the families list them."""
    out: list[Sample] = []
    a = analysis_of(run)
    base = {"run": run.run, **run.labels}
    if a is not None:
        out += [ANOMALY.sample(base, v, t, layer) for t, layer, v in a.anomaly_samples()]
        out += [ANOMALIES_TOTAL.sample(base, float(a.counts[t]), t) for t in a.types]
    f0 = run.first_nonfinite
    if f0 is not None and f0.iteration is not None:
        out.append(FIRST_NONFINITE_ITERATION.sample(base, float(f0.iteration)))
    f1 = run.first_nonfinite_layer
    if f1 is not None and f1.iteration is not None:
        out.append(FIRST_NONFINITE_LAYER_ITERATION.sample(base, float(f1.iteration)))
    if f1 is not None:
        out.append(FIRST_NONFINITE_INFO.sample(base, 1.0, f1.phase, f1.stage, f1.layer, f1.blob, f1.value))
    out.append(LOSS_NONFINITE_TOTAL.sample(base, float(run.loss_nonfinite)))
    return out


class AnomalyCollector(Collector):
    def __init__(self, registry: RunRegistry, lock: threading.Lock) -> None:
        self.registry = registry
        self.lock = lock

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Names only, so registering does not call collect() (which takes the lock)."""
        for family in FAMILIES:
            yield family.new()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self.lock:
            families = self.render(list(self.registry.runs.values()))
        yield from families

    @staticmethod
    def render(runs: Iterable[RunState]) -> list[GaugeMetricFamily | CounterMetricFamily]:
        """Built from `metric_tuples`, the one definition `diagnose` and the tests compare with; the caller
        holds the lock."""
        families = {f.name: f.new() for f in FAMILIES}
        for r in runs:
            for name, labels, value in metric_tuples(r):
                families[name].add_sample(name, labels, value)
        return list(families.values())
