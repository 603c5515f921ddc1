"""AnomalyCollector: the metrics of a registry fed with a real log say exactly what `diagnose` reports."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.collectors.anomalies import AnomalyCollector, metric_tuples
from exporter.detectors import TYPES
from exporter.diagnose import diagnose
from exporter.state import RunRegistry
from exporter.tail import read_stream

REAL = Path(__file__).parent / "fixtures" / "real-caffe"
GLOG_INFO = "glog/caffe.vm.root.log.INFO.20261126-143014.22388"
RUNS = sorted(p.name for p in REAL.iterdir() if (p / "FACTS.json").is_file())


def log_of(run: str) -> Path:
    return REAL / run / (GLOG_INFO if run == "glog_dir" else "caffe.log")


def fed_registry(path: Path, labels: dict[str, str] | None = None) -> RunRegistry:
    from exporter.detectors import make_observers

    reg = RunRegistry(identify=lambda p: ("r", dict(labels or {})), make_observers=make_observers())
    with open(path, "rb") as f:
        for chunk in read_stream(f, path=str(path)):
            reg.feed(chunk)
    return reg


def scrape(reg: RunRegistry) -> CollectorRegistry:
    prom = CollectorRegistry()
    prom.register(AnomalyCollector(reg, threading.Lock()))
    return prom


@pytest.mark.parametrize("run", RUNS)
def test_metrics_agree_with_diagnose(run: str) -> None:
    path = log_of(run)
    doc, _ = diagnose([str(path)])
    (rep,) = doc["runs"]
    reg = fed_registry(path)
    prom = scrape(reg)

    def total(t: str) -> float | None:
        return prom.get_sample_value("caffe_anomalies_total", {"run": "r", "type": t})

    found = {f["type"] for f in rep["findings"]}
    assert {t for t in TYPES if (total(t) or 0) > 0} == found
    for f in rep["findings"]:
        assert total(f["type"]) == sum(x["display_iterations"] for x in rep["findings"] if x["type"] == f["type"])
        layer_labels = (
            [""] if f["type"] in ("nonfinite", "nan_loss", "loss_saturated", "exploding", "loss_spike") else f["layers"]
        )
        for layer in layer_labels:
            v = prom.get_sample_value("caffe_anomaly", {"run": "r", "type": f["type"], "layer": layer})
            assert v == (1.0 if f["open"] else 0.0), (f["type"], layer)
    origin_any = rep["nonfinite"]["first_observed"]
    origin_layer = rep["nonfinite"]["first_observed_layer"]
    it = prom.get_sample_value("caffe_first_nonfinite_iteration", {"run": "r"})
    assert it == (None if origin_any is None else float(origin_any["iteration"]))
    if origin_layer is None:
        assert "caffe_first_nonfinite_info{" not in generate_latest(prom).decode()
    else:
        labels = {k: origin_layer[k] for k in ("phase", "stage", "layer", "blob", "value")}
        assert prom.get_sample_value("caffe_first_nonfinite_info", {"run": "r", **labels}) == 1.0
    assert prom.get_sample_value("caffe_loss_nonfinite_total", {"run": "r"}) == float(
        rep["nonfinite"]["loss_nonfinite_lines"]
    )


def test_lenet_nan_values() -> None:
    prom = scrape(fed_registry(log_of("lenet_nan")))
    assert prom.get_sample_value("caffe_first_nonfinite_iteration", {"run": "r"}) == 2.0
    info = {"run": "r", "phase": "train", "stage": "forward", "layer": "conv1", "blob": "conv1", "value": "nan"}
    assert prom.get_sample_value("caffe_first_nonfinite_info", info) == 1.0
    assert prom.get_sample_value("caffe_anomaly", {"run": "r", "type": "nan_loss", "layer": ""}) == 1.0
    assert prom.get_sample_value("caffe_anomaly", {"run": "r", "type": "exploding", "layer": ""}) == 0.0
    assert prom.get_sample_value("caffe_anomalies_total", {"run": "r", "type": "exploding"}) == 1.0
    assert prom.get_sample_value("caffe_loss_nonfinite_total", {"run": "r"}) == 29.0


def test_metric_tuples_match_the_collector() -> None:
    reg = fed_registry(log_of("dead_relu"), {"user": "ann"})
    prom = scrape(reg)
    tuples = metric_tuples(reg.runs["r"])
    assert tuples
    for name, labels, value in tuples:
        assert prom.get_sample_value(name, labels) == value, (name, labels)
    assert prom.get_sample_value("caffe_anomaly", {"run": "r", "user": "ann", "type": "dead", "layer": "relu2"}) == 1


def test_extra_labels_follow_run_and_help_texts() -> None:
    reg = fed_registry(log_of("vanish"), {"team": "cv"})
    prom = scrape(reg)
    text = generate_latest(prom).decode()
    assert prom.get_sample_value("caffe_anomaly", {"run": "r", "team": "cv", "type": "vanishing", "layer": "ip1"}) == 1
    assert 'team="cv"' in text
    assert "# HELP caffe_anomaly 1 while the anomaly condition holds" in text
    assert "# TYPE caffe_anomalies_total counter" in text
    assert "# HELP caffe_first_nonfinite_info The first per-layer non-finite" in text


def test_registering_does_not_scrape_and_collect_takes_the_lock() -> None:
    reg = fed_registry(log_of("lenet_healthy"))
    lock = threading.Lock()
    prom = CollectorRegistry()
    with lock:
        prom.register(AnomalyCollector(reg, lock))  # describe() must not need the lock
    assert prom.get_sample_value("caffe_anomalies_total", {"run": "r", "type": "dead"}) == 0.0
