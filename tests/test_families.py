"""Each family's name, type, HELP and labels are declared once (exporter/collectors/family.py): what a
collector announces at registration is exactly what it serves, and every sample carries the declared labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from exporter import config
from exporter.collectors import http, runs, selfmetrics
from exporter.collectors.anomalies import AnomalyCollector
from exporter.collectors.family import Family
from exporter.collectors.http import HttpCollector
from exporter.collectors.scrape import ScrapeCollector
from exporter.daemon import build
from exporter.identity import SourceRule
from exporter.pipeline import Pipeline
from exporter.tail import read_stream

REAL = Path(__file__).parent / "fixtures" / "real-caffe"
# between them: [Update] lines (2015), test phases, non-finite values, net dumps, snapshots, finished runs
LOGS = ["lenet_nan_2015", "lenet_nan", "lenet_healthy", "shared_params_2015"]
UNEXERCISED = {"caffe_test_loss"}  # no fixture prints BVLC's "Test loss: v" line
DECLARED = {f.name: f for f in (*runs.FAMILIES, *selfmetrics.FAMILIES, *http.FAMILIES.values())}


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    cfg = config.Config(sources=(SourceRule(str(REAL), labels={"team": "vision"}),))
    pipeline, _ = build(cfg)
    for name in LOGS:
        path = REAL / name / "caffe.log"
        with open(path, "rb") as f:
            for chunk in read_stream(f, path=str(path)):
                pipeline.on_chunk(chunk)
    return pipeline


def _shape(families: list[Metric]) -> list[tuple[str, str, str]]:
    return [(m.name, m.type, m.documentation) for m in families]


def _collectors(pipeline: Pipeline) -> list[ScrapeCollector | HttpCollector]:
    return [ScrapeCollector(pipeline), HttpCollector(lambda: {"open_connections": 3, "app_errors": 1})]


def test_describe_announces_exactly_the_families_collect_serves(pipeline: Pipeline) -> None:
    for collector in _collectors(pipeline):
        assert _shape(list(collector.describe())) == _shape(list(collector.collect()))


def test_every_served_family_is_a_declared_one(pipeline: Pipeline) -> None:
    """Runs, then anomalies (collectors/anomalies.py declares its own), then self-metrics, then HTTP."""
    anomalies = {m.name for m in AnomalyCollector(pipeline.registry, pipeline.lock).describe()}
    served = [m for c in _collectors(pipeline) for m in c.collect() if m.name not in anomalies]
    assert [m.name for m in served] == list(DECLARED)
    for m in served:
        spec = DECLARED[m.name]
        assert (m.type, m.documentation) == (spec.type, spec.help)


def test_every_sample_carries_its_familys_declared_labels(pipeline: Pipeline) -> None:
    families = {m.name: m for m in ScrapeCollector(pipeline).collect()}
    for spec in runs.FAMILIES:
        assert bool(families[spec.name].samples) != (spec.name in UNEXERCISED), spec.name
        for s in families[spec.name].samples:
            assert s.name == spec.sample
            assert tuple(s.labels) == ("run", "team", *spec.labels), spec.name
    for spec in selfmetrics.FAMILIES:
        for s in families[spec.name].samples:
            assert (s.name, tuple(s.labels)) == (spec.sample, spec.labels)


def test_a_sample_with_the_wrong_number_of_label_values_is_refused() -> None:
    spec = Family("caffe_test_output", "gauge", "doc", ("net", "output"))
    with pytest.raises(ValueError):
        spec.of(1.0, "0")
    assert [(s.name, s.labels, s.value) for s in spec.of(0.5, "0", "accuracy").samples] == [
        ("caffe_test_output", {"net": "0", "output": "accuracy"}, 0.5)]


def test_a_counter_family_names_its_samples_total() -> None:
    spec = Family("caffe_snapshots", "counter", "doc")
    assert spec.sample == "caffe_snapshots_total"
    assert [s.name for s in spec.of(2).samples] == ["caffe_snapshots_total"]
