"""limits: what is over a limit is not stored (so not exported, not checkpointed) and is counted by reason.

Input: real Caffe logs from tests/fixtures; the counts below are those of these logs' line order (the first
Forward block of lenet_healthy is the test net's: `mnist` data/label, then `label_mnist_1_split`).
"""

from __future__ import annotations

import re
import threading
import tracemalloc
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import checkpoint
from exporter.collectors.runs import RunCollector
from exporter.collectors.scrape import ScrapeCollector
from exporter.detectors import DetectorConfig
from exporter.identity import RunNamer
from exporter.pipeline import Pipeline
from exporter.state import Limits, RunRegistry
from exporter.tail import Chunk

REAL = Path(__file__).parent / "fixtures" / "real-caffe"
HEALTHY = (REAL / "lenet_healthy/caffe.log").read_text()
NAN = (REAL / "lenet_nan/caffe.log").read_text()
PREFIX = "I1126 14:26:20.074826 18205 net.cpp:593]     "


def fed(limits: Limits, *logs: tuple[str, str]) -> RunRegistry:
    reg = RunRegistry(identify=RunNamer(), limits=limits, clock=lambda: 0.0)
    for path, text in logs:
        reg.feed(Chunk(path, text, 1, True, 0.0))
    return reg


def series(reg: RunRegistry) -> dict[str, list[dict[str, str]]]:
    prom = CollectorRegistry()
    prom.register(RunCollector(reg, threading.Lock()))
    out: dict[str, list[dict[str, str]]] = {}
    for fam in text_string_to_metric_families(generate_latest(prom).decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s.labels)
    return out


def per_layer(reg: RunRegistry) -> list[tuple[str, str, str]]:
    """(metric, run, layer) of every per-layer value series and caffe_layer_info."""
    return sorted((name, lab["run"], lab["layer"]) for name, rows in series(reg).items()
                  if name.startswith("caffe_layer_") for lab in rows)


def test_the_per_run_cap_keeps_the_first_series_in_log_order_with_their_layer_info() -> None:
    reg = fed(Limits(max_series_per_run=5), ("jobs/lenet/caffe.log", HEALTHY))
    run = reg.runs["lenet"]
    assert run.forward["train"] == {} and list(run.forward["test"]) == [
        "mnist, top blob data", "mnist, top blob label", "label_mnist_1_split, top blob label_mnist_1_split_0"]
    assert run.backward == {} and run.update_diff == {}
    assert run.series == 5 and reg.budget.total == 5  # 3 values + caffe_layer_info of 2 layers
    assert per_layer(reg) == [
        ("caffe_layer_info", "lenet", "label_mnist_1_split"), ("caffe_layer_info", "lenet", "mnist"),
        ("caffe_layer_top_data_abs_mean", "lenet", "label_mnist_1_split"),
        ("caffe_layer_top_data_abs_mean", "lenet", "mnist"), ("caffe_layer_top_data_abs_mean", "lenet", "mnist")]
    # each value line of a refused series counts once: all 1910 value lines of the log but the 120 of the
    # three stored series
    assert reg.budget.dropped == {"max_series_per_run": 1790}
    s = series(reg)
    assert s["caffe_loss"] == [{"run": "lenet"}] and "caffe_net_param_data_l1_norm" in s  # not per-layer


def test_the_cap_of_all_runs_leaves_later_runs_their_solver_series_only() -> None:
    one = fed(Limits(), ("a/lenet/caffe.log", HEALTHY)).runs["lenet"].series
    reg = fed(Limits(max_series=one), ("a/lenet/caffe.log", HEALTHY), ("b/other/caffe.log", HEALTHY))
    assert reg.runs["lenet"].series == one and reg.runs["other"].series == 0 and reg.budget.total == one
    assert {r for _, r, _ in per_layer(reg)} == {"lenet"}
    assert {lab["run"] for lab in series(reg)["caffe_loss"]} == {"lenet", "other"}
    assert reg.budget.dropped["max_series"] == 1910  # every per-layer value line of the second run


def test_a_dropped_run_gives_its_series_back() -> None:
    one = fed(Limits(), ("a/lenet/caffe.log", HEALTHY)).runs["lenet"].series
    reg = fed(Limits(max_series=one), ("a/lenet/caffe.log", HEALTHY))
    assert reg.drop("lenet", "stale") == ["a/lenet/caffe.log"] and reg.budget.total == 0
    reg.feed(Chunk("b/other/caffe.log", HEALTHY, 1, True, 0.0))
    assert reg.runs["other"].series == one


def test_max_runs_refuses_new_runs_and_counts_each_path_once() -> None:
    reg = fed(Limits(max_runs=2), ("a/caffe.log", HEALTHY), ("b/caffe.log", HEALTHY))
    head, tail = HEALTHY[:20000], HEALTHY[20000:]
    assert reg.feed(Chunk("c/caffe.log", head, 1, True, 0.0)) == 0
    assert reg.feed(Chunk("c/caffe.log", tail, 200, False, 0.0)) == 0
    assert sorted(reg.runs) == ["a", "b"] and reg.budget.dropped == {"max_runs": 1}
    reg.drop("a", "deleted")  # room again: the refused path becomes a run at its next Caffe chunk
    reg.feed(Chunk("c/caffe.log", tail, 200, False, 0.0))
    assert sorted(reg.runs) == ["b", "c"]


def test_long_names_are_cut_to_max_name_bytes_and_counted() -> None:
    layer = "conv" + "é" * 200  # 404 bytes in UTF-8
    line = f"{PREFIX}[Forward] Layer {layer}, top blob {layer} data: 0.25\n"
    reg = fed(Limits(max_name_bytes=9), ("jobs/r/caffe.log", line * 3))
    cut = "conv" + "é" * 2  # 8 bytes: the third é would end at byte 10
    assert reg.runs["r"].forward["train"] == {f"{cut}, top blob {cut}": 0.25}  # a float, however printed
    assert reg.budget.dropped == {"name_too_long": 6}  # layer and blob, on each of the three lines
    assert per_layer(reg) == [("caffe_layer_info", "r", cut), ("caffe_layer_top_data_abs_mean", "r", cut)]


def test_long_output_and_nonfinite_names_are_cut_too() -> None:
    name = "x" * 300
    text = (f"I1126 14:26:22.113291 18205 solver.cpp:259]     Train net output #0: {name} = nan (* 1 = nan loss)\n"
            f"{PREFIX}[Forward] Layer {name}, top blob {name} data: nan\n")
    reg = fed(Limits(max_name_bytes=16), ("jobs/r/caffe.log", text))
    run = reg.runs["r"]
    assert list(run.train_outputs) == ["x" * 16]
    assert set(run.nonfinite) == {("train", "loss", "", "x" * 16), ("train", "forward", "x" * 16, "x" * 16)}


def test_the_layer_filter_keeps_only_matching_layers_per_layer_series() -> None:
    limits = Limits(layer_include=re.compile(r"conv\d|ip\d"), layer_exclude=re.compile(r"ip2"))
    reg = fed(limits, ("jobs/lenet/caffe.log", HEALTHY))
    layers = {layer for _, _, layer in per_layer(reg)}
    assert layers == {"conv1", "conv2", "ip1"}
    assert reg.budget.dropped["layer_filter"] > 0 and set(reg.budget.dropped) == {"layer_filter"}
    assert "caffe_loss" in series(reg)


def test_nonfinite_counters_of_filtered_layers_are_not_stored() -> None:
    everything = fed(Limits(), ("jobs/nan/caffe.log", NAN)).runs["nan"].nonfinite
    reg = fed(Limits(layer_exclude=re.compile(r"conv1")), ("jobs/nan/caffe.log", NAN))
    kept = reg.runs["nan"].nonfinite
    assert {k for k in everything if k[2] == "conv1"} and not {k for k in kept if k[2] == "conv1"}
    assert {k for k in everything if k[2] != "conv1"} == set(kept)  # net-wide and loss ones stay


def test_nonfinite_counters_count_against_the_cap() -> None:
    nan = f"{PREFIX}[Forward] Layer conv1, top blob conv1 data: nan\n"
    other = f"{PREFIX}[Forward] Layer conv2, top blob conv2 data: nan\n"
    reg = fed(Limits(max_series_per_run=3), ("jobs/r/caffe.log", nan + other))
    run = reg.runs["r"]
    # conv1: value + layer_info + its nonfinite counter = 3; conv2 refused whole
    assert dict(run.nonfinite) == {("train", "forward", "conv1", "conv1"): 1}
    assert list(run.forward["train"]) == ["conv1, top blob conv1"] and run.series == 3
    assert reg.budget.dropped == {"max_series_per_run": 2}


def test_new_limits_apply_to_series_not_stored_yet() -> None:
    reg = fed(Limits(max_series_per_run=5), ("jobs/lenet/caffe.log", HEALTHY))
    reg.set_limits(Limits(max_series_per_run=7))
    reg.feed(Chunk("jobs/lenet/caffe.log", HEALTHY, 1, False, 0.0))
    # one more value of a stored layer (label_mnist_1_split_1) fits; a new layer's value and layer_info (2) not
    assert reg.runs["lenet"].series == 6 and reg.budget.limits.max_series_per_run == 7
    assert list(reg.runs["lenet"].forward["test"])[-1] == "label_mnist_1_split, top blob label_mnist_1_split_1"
    reg.set_limits(Limits(max_series_per_run=1))  # lower: nothing stored is removed
    reg.feed(Chunk("jobs/lenet/caffe.log", HEALTHY, 1, False, 0.0))
    assert reg.runs["lenet"].series == 6


def test_a_restored_run_counts_its_series_again(tmp_path: Path) -> None:
    reg = fed(Limits(), ("jobs/lenet/caffe.log", HEALTHY))
    data = checkpoint.snapshot(reg, {})
    again = RunRegistry(identify=RunNamer(), clock=lambda: 0.0)
    checkpoint.restore(data, again, DetectorConfig())
    assert again.runs["lenet"].series == reg.runs["lenet"].series == again.budget.total > 0


def test_self_metrics_count_drops_by_reason() -> None:
    reg = fed(Limits(max_series_per_run=5, max_name_bytes=300), ("jobs/lenet/caffe.log", HEALTHY))
    prom = CollectorRegistry()
    prom.register(ScrapeCollector(Pipeline(reg)))
    text = generate_latest(prom).decode()
    assert 'caffe_exporter_series_dropped_total{reason="max_series_per_run"} 1790.0' in text
    assert 'caffe_exporter_series_dropped_total{reason="layer_filter"} 0.0' in text
    assert "caffe_exporter_series 5.0" in text


def test_a_million_layer_flood_keeps_memory_flat_at_the_cap() -> None:
    """The CI-sized version of bench/limits.py (1,000,000 names there): 100,000 distinct layer names in one
    run keep it at max_series_per_run, and memory stops growing once the cap is full (at name 10,000): the
    last 60,000 names add nothing."""
    reg = RunRegistry(identify=RunNamer(), limits=Limits(max_series_per_run=20000), clock=lambda: 0.0)
    held: list[int] = []
    tracemalloc.start()
    try:
        for start in range(0, 100_000, 10_000):
            text = "".join(f"{PREFIX}[Forward] Layer flood{i}, top blob b{i} data: 0.5\n"
                           for i in range(start, start + 10_000))
            reg.feed(Chunk("jobs/flood/caffe.log", text, start + 1, start == 0, 0.0))
            del text
            held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    run = reg.runs["flood"]
    assert run.series == 20000 and len(run.forward["train"]) == 10000
    assert reg.budget.dropped["max_series_per_run"] == 90_000
    assert held[-1] - held[3] < 64 << 10  # flat: names 40,000-99,999 are refused and held nowhere
    assert held[-1] < 20000 * 400  # < 400 bytes per stored series (bench/limits.py measures RSS)


def test_many_run_directories_stop_at_max_runs() -> None:
    """The CI-sized version of bench/limits.py's 100,000 directories: 3,000 directories with max_runs 1,000
    hold 1,000 runs, and what they hold is per run, not per directory."""
    head = "".join(HEALTHY.splitlines(keepends=True)[:700])  # setup, net dump, a debug_info test pass
    reg = RunRegistry(identify=RunNamer(), limits=Limits(max_runs=1000), clock=lambda: 0.0)
    held = []
    tracemalloc.start()
    try:
        for i in range(3000):
            reg.feed(Chunk(f"jobs/run{i}/caffe.log", head, 1, True, 0.0))
            if i in (999, 2999):
                held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert len(reg.runs) == 1000 and reg.budget.dropped["max_runs"] == 2000
    assert reg.budget.total == 1000 * 35
    assert held[0] < 1000 * 24_000  # per run with 35 series (measured ~15 KB; bench/limits.py: RSS)
    assert held[1] - held[0] < 2000 * 300  # a refused directory: its path, once, in the refused set
