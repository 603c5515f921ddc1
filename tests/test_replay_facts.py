"""Replay every real log through RunRegistry + RunCollector and compare the metrics with FACTS.json.

FACTS.json was computed by an independent parser (tests/fixtures/real-caffe/README.md). Where FACTS has no
figure (how many non-finite values, the newest lr of a public log) a few plain regexes over the raw text,
written here and not shared with exporter/, are the oracle.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.collectors.runs import RunCollector
from exporter.identity import RunNamer
from exporter.state import RunRegistry, RunState
from exporter.tail import Chunk

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "real-caffe"
RUNS = sorted(p.name for p in REAL.iterdir() if (p / "FACTS.json").exists())
PUBLIC = sorted((FIXTURES / "public-logs").glob("*.log"))


def log_path(run: str) -> Path:
    if run == "glog_dir":  # FACTS.json was computed on glog's own INFO file (header included)
        return REAL / run / "glog/caffe.vm.root.log.INFO.20261126-143014.22388"
    return REAL / run / "caffe.log"


def read_text(path: Path) -> str:
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\0", "")
    return text[: text.rfind("\n") + 1]


class Replay:
    def __init__(self, path: Path) -> None:
        self.text = read_text(path)
        self.runs = RunRegistry(identify=RunNamer())
        self.runs.feed(Chunk(str(path), self.text, 1, True, path.stat().st_mtime))
        assert len(self.runs.runs) == 1
        self.state: RunState = next(iter(self.runs.runs.values()))
        self.name = self.state.run
        self.registry = CollectorRegistry()
        self.registry.register(RunCollector(self.runs, threading.Lock()))

    def value(self, metric: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, {"run": self.name, **labels})

    def samples(self, metric: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for fam in self.registry.collect() for s in fam.samples if s.name == metric]


_CACHE: dict[str, Replay] = {}


def replay(run: str) -> Replay:
    if run not in _CACHE:
        _CACHE[run] = Replay(log_path(run))
    return _CACHE[run]


def facts(run: str) -> dict[str, Any]:
    return json.loads((REAL / run / "FACTS.json").read_text())  # type: ignore[no-any-return]


def num(v: Any) -> float:
    return float(v)  # FACTS writes nan/inf as "nan"/"inf"/"-inf"; float() reads both


def same(a: float | None, b: float) -> bool:
    return a is not None and ((math.isnan(a) and math.isnan(b)) or a == b)


# -- the real-caffe runs -------------------------------------------------------------------------------


@pytest.mark.parametrize("run", RUNS)
def test_run_name_is_the_directory(run: str) -> None:
    assert replay(run).name == run


@pytest.mark.parametrize("run", RUNS)
def test_last_display_loss_and_iteration(run: str) -> None:
    r, f = replay(run), facts(run)
    last = f["display_losses"][-1]
    assert same(r.value("caffe_loss"), num(last["loss"]))
    assert r.value("caffe_iteration") == last["iteration"]
    assert r.value("caffe_display_iterations_total") == len(f["display_losses"])


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("phase", ["train", "test"])
def test_layers_in_forward_order(run: str, phase: str) -> None:
    rows = [(labels["index"], labels["layer"]) for labels, v in replay(run).samples("caffe_layer_info")
            if labels["phase"] == phase and v == 1]
    assert [layer for _, layer in sorted(rows)] == facts(run)[f"layers_forward_order_{phase}"]


@pytest.mark.parametrize("run", RUNS)
def test_debug_line_counts_by_stage_and_phase(run: str) -> None:
    r, f = replay(run), facts(run)
    got = {(labels["phase"], labels["stage"]): v for labels, v in r.samples("caffe_debug_lines_total")}
    want: dict[tuple[str, str], float] = {}
    for phase, counts in f["debug_line_counts_by_phase"].items():
        for kind, stage in (("Forward", "forward"), ("Backward", "backward"), ("Update", "update")):
            if counts[kind]:
                want[phase, stage] = counts[kind]
    want["train", "net"] = f["debug_line_counts"]["AllNetParams"]
    assert got == want


@pytest.mark.parametrize("run", RUNS)
def test_final_all_net_params(run: str) -> None:
    r, final = replay(run), facts(run)["final_all_net_params"]
    for metric, key in (("data_l1", "L1_data"), ("diff_l1", "L1_diff"), ("data_l2", "L2_data"),
                        ("diff_l2", "L2_diff")):
        assert same(r.value(f"caffe_net_param_{metric}_norm"), num(final[key])), metric


_VALUE = re.compile(r"(?:data|diff): (\S+)")
_NORMS = re.compile(r"L1 norm = \((\S+), (\S+)\); L2 norm = \((\S+), (\S+)\)")
_LOSS = re.compile(r"Iteration \d+.*, loss = (\S+)$")
_OUTPUT = re.compile(r"(?:Train|Test) net output #\d+: .+? = (\S+)")


def _nonfinite(tok: str) -> bool:
    try:
        return not math.isfinite(float(tok))
    except ValueError:
        return True  # Windows spellings; none in these logs


def oracle_nonfinite(text: str) -> Counter[str]:
    """Non-finite values per stage, counted with plain regexes over the raw log."""
    out: Counter[str] = Counter()
    for line in text.split("\n"):
        if "All net params" in line:
            m = _NORMS.search(line)
            assert m is not None
            out["net"] += sum(_nonfinite(v) for v in m.groups())
        elif "[Forward] " in line or "[Backward] " in line or "[Update] " in line:
            stage = "forward" if "[Forward]" in line else "backward" if "[Backward]" in line else "update"
            out[stage] += sum(_nonfinite(v.rstrip(";")) for v in _VALUE.findall(line))
        elif (m := _LOSS.search(line)) or (m := _OUTPUT.search(line)):
            out["loss"] += _nonfinite(m[1])
    return +out


@pytest.mark.parametrize("run", RUNS)
def test_nonfinite_values_seen(run: str) -> None:
    r = replay(run)
    got: Counter[str] = Counter()
    for labels, v in r.samples("caffe_nonfinite_values_total"):
        got[labels["stage"]] += int(v)
    assert +got == oracle_nonfinite(r.text)
    f = facts(run)
    assert bool(got) == (f["first_nan_or_inf"] is not None)


def _origin(fact: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if fact is None:
        return None
    layer = fact["layer"] or ""
    stage = {"Forward": "forward", "Backward": "backward", "Update": "update"}[fact["direction"]]
    blob = fact["blob"]
    if not layer:  # the All net params line: FACTS "All net params L2_diff" is blob "l2_diff", stage "net"
        stage, blob = "net", blob.removeprefix("All net params ").lower()
    return fact["iteration"], fact["phase"], stage, layer, blob, fact["kind"], fact["value"]


def _ours(nv: Any) -> tuple[Any, ...] | None:
    return None if nv is None else (nv.iteration, nv.phase, nv.stage, nv.layer, nv.blob, nv.kind, nv.value)


@pytest.mark.parametrize("run", RUNS)
def test_first_nonfinite_origins(run: str) -> None:
    r, f = replay(run), facts(run)
    assert _ours(r.state.first_nonfinite) == _origin(f["first_nan_or_inf"])
    assert _ours(r.state.first_nonfinite_layer) == _origin(f["first_nan_or_inf_per_layer_line"])


@pytest.mark.parametrize("run", RUNS)
def test_test_outputs_of_the_last_test_phase(run: str) -> None:
    r, last = replay(run), facts(run)["test_phases"][-1]
    got = {labels["output"]: v for labels, v in r.samples("caffe_test_output") if labels["net"] == str(last["net"])}
    assert got.keys() == last["outputs"].keys()
    for name, v in last["outputs"].items():
        assert same(got[name], num(v)), name
    assert r.value("caffe_test_iteration", net=str(last["net"])) == last["iteration"]


@pytest.mark.parametrize("run", RUNS)
def test_solver_starts_and_finished(run: str) -> None:
    r, f = replay(run), facts(run)
    assert r.value("caffe_solver_starts_total") == f["solver_runs_in_log"]
    assert r.value("caffe_run_finished") == (1.0 if "Optimization Done" in r.text else 0.0)


def test_resumed_has_two_solver_starts() -> None:
    assert replay("resumed").value("caffe_solver_starts_total") == 2


# -- public logs ---------------------------------------------------------------------------------------

_ITER_ANY = re.compile(r"Iteration (\d+)[ ,]")
_LR = re.compile(r"Iteration \d+, lr = ([^,\s]+)")
_TEST_OUT = re.compile(r"Test net output #(\d+): (.+?) = (\S+)")


def public_oracle(text: str) -> dict[str, Any]:
    """Newest loss, iteration, lr and test outputs of a log, by plain regexes over its lines."""
    want: dict[str, Any] = {"loss": None, "iteration": None, "lr": None, "test": {}}
    test_block: dict[str, float] = {}
    for line in text.split("\n"):
        if (m := _LOSS.search(line)) and "Iteration" in line:
            want["loss"] = float(m[1])
        if (m := _ITER_ANY.search(line)) and ("loss =" in line or "lr =" in line or "Testing net" in line):
            want["iteration"] = int(m[1])
        if m := _LR.search(line):
            want["lr"] = float(m[1])
        if "Testing net" in line:
            test_block = {}
        if m := _TEST_OUT.search(line):
            name = m[2] if m[2] not in test_block else f"{m[2]}#{m[1]}"
            test_block[name] = float(m[3])
            want["test"] = dict(test_block)
    return want


@pytest.mark.parametrize("log", PUBLIC, ids=lambda p: p.name)
def test_public_log_yields_its_solver_metrics(log: Path) -> None:
    r = Replay(log)  # reading raises nothing
    want = public_oracle(r.text)
    if want["loss"] is not None:
        assert same(r.value("caffe_loss"), float(want["loss"]))
    else:
        assert r.value("caffe_loss") is None
    assert r.value("caffe_iteration") == want["iteration"]
    if want["lr"] is not None:
        assert r.value("caffe_learning_rate") == want["lr"]
    else:
        assert r.value("caffe_learning_rate") is None
    got_test = {labels["output"]: v for labels, v in r.samples("caffe_test_output")}
    for name, v in want["test"].items():
        assert same(got_test.get(name), v), name


def test_public_debug_info_fragments_yield_their_layer_values() -> None:
    logs = FIXTURES / "public-logs"
    s3fd = Replay(logs / "issue-s3fd2-debuginfo-inf-fragment.log")
    assert s3fd.value("caffe_layer_top_data_abs_mean", phase="train", layer="conv4_1/dwise/scale",
                      blob="conv4_1/dwise/bn") == math.inf
    assert s3fd.value("caffe_layer_param_data_abs_mean", phase="train", layer="conv4_1/linear",
                      param="0") == 0.0805792
    mobilenet = Replay(logs / "issue-mobilenet75-debuginfo-nan-fragment.log")
    assert math.isnan(mobilenet.value("caffe_layer_param_diff_abs_mean", layer="conv5_1/expand", param="0") or 0)
    assert mobilenet.value("caffe_layer_bottom_diff_abs_mean", layer="conv5_1/expand",
                           blob="conv4_7/linear/bn_conv4_7/linear/scale_0_split_0") == 0.0
    bvlc = Replay(logs / "issue-bvlc1706-debuginfo-2015-fragment.log")
    assert bvlc.value("caffe_layer_top_data_abs_mean", phase="train", layer="loss", blob="(automatic)") == 1.98465
    hed = Replay(logs / "issue-hed24-allnetparams-test-fragment.log")
    assert (hed.value("caffe_net_param_data_l1_norm"), hed.value("caffe_net_param_diff_l1_norm"),
            hed.value("caffe_net_param_data_l2_norm"), hed.value("caffe_net_param_diff_l2_norm")) == (
        123540.0, 0.0, 51.1185, 0.0)
