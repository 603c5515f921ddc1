"""RunCollector: golden /metrics text per real fixture, fresh families per scrape, HELP texts, NaN/Inf.

The golden files are `generate_latest()` of a registry holding only the RunCollector after replaying the
fixture, minus the volatile series matched by VOLATILE. Rewrite them with `pytest --update-golden` and review
the diff. Each golden file is also linted with `promtool check metrics`.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors.runs import RunCollector
from exporter.identity import RunNamer
from exporter.state import RunRegistry
from exporter.tail import Chunk

TESTS = Path(__file__).parent
REAL = TESTS / "fixtures" / "real-caffe"
GOLDEN = TESTS / "golden"
GOLDEN_RUNS = ["lenet_healthy", "lenet_nan", "shared_params_2015", "slash_names"]

# The one place that says what is volatile, i.e. not a function of the log alone:
# * caffe_exporter_* self-metrics (read times, byte counts of this process);
# * caffe_last_log_timestamp_seconds: glog prints local time, so its Unix value depends on the time zone.
VOLATILE = re.compile(r"^(?:# (?:HELP|TYPE) )?(?:caffe_exporter_\w*|caffe_last_log_timestamp_seconds)\b.*\n", re.M)


def build(run: str) -> tuple[CollectorRegistry, RunCollector]:
    rel = f"real-caffe/{run}/caffe.log"  # the path as the exporter would be given it (a stable `source` label)
    text = (REAL / run / "caffe.log").read_text()
    runs = RunRegistry(identify=RunNamer())
    runs.feed(Chunk(rel, text, 1, True, 0.0))
    collector = RunCollector(runs, threading.Lock())
    registry = CollectorRegistry()
    registry.register(collector)
    return registry, collector


def exposition(run: str) -> str:
    return VOLATILE.sub("", generate_latest(build(run)[0]).decode())


@pytest.mark.parametrize("run", GOLDEN_RUNS)
def test_golden_exposition(run: str, update_golden: bool) -> None:
    path = GOLDEN / f"{run}.prom"
    text = exposition(run)
    if update_golden:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run pytest --update-golden"
    assert text == path.read_text(), f"{path.name} differs: review and run pytest --update-golden"


def test_volatile_series_are_dropped() -> None:
    raw = generate_latest(build("lenet_healthy")[0]).decode()
    assert "caffe_last_log_timestamp_seconds{" in raw
    text = VOLATILE.sub("", raw)
    assert "caffe_last_log_timestamp_seconds" not in text and "caffe_exporter_" not in text
    assert "caffe_loss{" in text


@pytest.mark.parametrize("run", GOLDEN_RUNS)
def test_promtool_check_metrics(run: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (CI installs it)")
    golden = GOLDEN / f"{run}.prom"
    proc = subprocess.run([promtool, "check", "metrics"], input=golden.read_bytes(), capture_output=True,
                          timeout=30)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def test_collect_twice_gives_new_family_objects() -> None:
    _, collector = build("lenet_healthy")
    first, second = list(collector.collect()), list(collector.collect())
    assert [f.name for f in first] == [f.name for f in second]
    assert all(a is not b for a, b in zip(first, second, strict=True))
    assert not {id(f) for f in first} & {id(f) for f in second}
    assert [f.samples for f in first] == [f.samples for f in second]


def test_describe_gives_the_families_without_reading_state() -> None:
    _, collector = build("lenet_healthy")
    described = {f.name for f in collector.describe()}
    assert described == {f.name for f in collector.collect()}
    assert all(not f.samples for f in collector.describe())


def test_per_layer_help_says_mean_absolute_value() -> None:
    registry, _ = build("lenet_healthy")
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    per_layer = [n for n in fams if n.startswith("caffe_layer_") and n.endswith("_abs_mean")]
    assert len(per_layer) == 6
    for name in per_layer:
        assert "mean absolute value" in fams[name].documentation, name
        assert "asum/count" in fams[name].documentation, name


def test_nan_and_inf_are_exported_as_nan_and_inf() -> None:
    text = generate_latest(build("lenet_nan")[0]).decode()
    assert re.search(r'^caffe_loss\{run="lenet_nan"\} NaN$', text, re.M)
    assert re.search(r'^caffe_net_param_diff_l2_norm\{run="lenet_nan"\} NaN$', text, re.M)
    infs = re.findall(r"^caffe_layer_\w+\{[^}]*\} ([+-]Inf)$", text, re.M)
    nans = re.findall(r"^caffe_layer_\w+\{[^}]*\} NaN$", text, re.M)
    assert nans, "the NaN per-layer values must be exported"
    # the parsed exposition holds the same non-finite values as the run state
    parsed = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert math.isnan(parsed["caffe_loss", (("run", "lenet_nan"),)])
    assert sum(1 for v in parsed.values() if math.isnan(v)) == len(nans) + 7  # 4 norms, loss, train+test "loss"
    assert all(v in ("+Inf", "-Inf") for v in infs)


def test_inf_per_layer_value_is_plus_inf_in_the_text() -> None:
    """The real `pool1 ... data: inf` line of lenet_nan, alone: exported as +Inf, not dropped or zeroed."""
    line = "I1126 14:27:39.643246 19243 net.cpp:593]     [Forward] Layer pool1, top blob pool1 data: inf\n"
    runs = RunRegistry(identify=RunNamer())
    runs.feed(Chunk("x/lenet_nan/caffe.log", line, 1, True, 0.0))
    registry = CollectorRegistry()
    registry.register(RunCollector(runs, threading.Lock()))
    text = generate_latest(registry).decode()
    assert 'caffe_layer_top_data_abs_mean{blob="pool1",layer="pool1",phase="train",run="lenet_nan"} +Inf' in text
    assert ('caffe_nonfinite_values_total{blob="pool1",layer="pool1",phase="train",run="lenet_nan",'
            'stage="forward"} 1.0') in text


def test_layer_info_index_is_zero_padded_forward_order() -> None:
    registry, _ = build("slash_names")
    rows = sorted((s.labels["index"], s.labels["layer"], s.labels["type"])
                  for f in registry.collect() if f.name == "caffe_layer_info"
                  for s in f.samples if s.labels["phase"] == "train")
    assert [r[0] for r in rows] == [f"{i:03d}" for i in range(len(rows))]
    assert rows[0][1:] == ("data", "HDF5Data")
    assert ("pool1/3x3_s2_pool1/3x3_s2_0_split", "Split") in {r[1:] for r in rows}
