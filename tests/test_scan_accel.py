"""The C scanner (exporter/_scan.c) is only a faster way to do what the Python loop does: same state, always.

CI builds it (`.ci/install`); there a missing extension is a failure, elsewhere these tests are skipped.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import state
from exporter.state import Limits, RunState, SeriesBudget
from exporter.tail import Chunk

FIXTURES = Path(__file__).parent / "fixtures"
LOGS = sorted(FIXTURES.glob("real-caffe/*/caffe.log")) + sorted(FIXTURES.glob("public-logs/*.log"))

if state._accel is None:  # pragma: no cover - depends on the build
    if os.environ.get("CI"):
        raise RuntimeError("exporter/_scan.c was not built: .ci/install must build it in place")
    pytest.skip("the C accelerator is not built here (python setup.py build_ext --inplace)",
                allow_module_level=True)
scan = state._accel.scan


def _state(text: str, accelerate: bool, cuts: list[int] | None = None, limits: Limits | None = None) -> str:
    run = RunState(run="r", accelerate=accelerate, budget=SeriesBudget(limits or Limits.unlimited()))
    lines = text.splitlines(keepends=True)
    bounds = [0, *sorted(set(cuts or [])), len(lines)]
    for a, b in itertools.pairwise(bounds):
        if a < b:
            run.feed(Chunk("jobs/r/caffe.log", "".join(lines[a:b]), a + 1, a == 0, 0.0))
    return json.dumps([run.to_dict(), run.series, run.budget.total, run.budget.dropped], sort_keys=True)


@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_same_state_with_and_without_the_accelerator(log: Path) -> None:
    text = log.read_bytes().replace(b"\0", b"").decode("utf-8", "replace")
    assert _state(text, accelerate=True) == _state(text, accelerate=False)


LENET_NAN = (FIXTURES / "real-caffe/lenet_nan/caffe.log").read_text()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=LENET_NAN.count("\n") - 1), max_size=12))
def test_same_state_under_any_chunking(cuts: list[int]) -> None:
    assert _state(LENET_NAN, accelerate=True, cuts=cuts) == _state(LENET_NAN, accelerate=False)


# limits that bite on every fixture: a series cap inside the first Forward block, names cut, a layer filter
LIMITED = [
    Limits(max_series_per_run=7),
    Limits(max_series=11),
    Limits(max_name_bytes=4),
    Limits(layer_include=re.compile(r"conv.*|ip.*|loss"), layer_exclude=re.compile(r"ip2")),
]


@pytest.mark.parametrize("limits", LIMITED, ids=["per_run", "all_runs", "names", "layers"])
@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_same_state_with_and_without_the_accelerator_under_limits(log: Path, limits: Limits) -> None:
    text = log.read_bytes().replace(b"\0", b"").decode("utf-8", "replace")
    assert _state(text, True, limits=limits) == _state(text, False, limits=limits)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=LENET_NAN.count("\n") - 1), max_size=12),
       st.sampled_from(LIMITED))
def test_same_state_under_limits_and_any_chunking(cuts: list[int], limits: Limits) -> None:
    assert _state(LENET_NAN, True, cuts=cuts, limits=limits) == _state(LENET_NAN, False, limits=limits)


def test_without_insert_the_scanner_updates_known_keys_and_stops_at_a_new_one() -> None:
    known = PREFIX + "[Forward] Layer conv1, top blob conv1 data: 0.25"
    new = PREFIX + "[Forward] Layer conv2, top blob conv2 data: 0.5"
    text = known + "\n" + new + "\n"
    fwd: dict[str, str | float] = {"conv1, top blob conv1": 1.0}
    assert scan(text, 0, len(text), fwd, {}, {}, {}, False) == (len(known) + 1, 1, 0, 0)
    assert fwd == {"conv1, top blob conv1": "0.25"}
    upd = "I1126 14:36:23.951157 29043 net.cpp:644]     [Update] Layer ip_in, param 0 data: 0.03; diff: 4.7e-05\n"
    udata: dict[str, str | float] = {}
    udiff: dict[str, str | float] = {"ip_in, param 0": 1.0}  # only one of the two keys known: not stored
    assert scan(upd, 0, len(upd), {}, {}, udata, udiff, False) == (0, 0, 0, 0)
    assert udata == {} and udiff == {"ip_in, param 0": 1.0}


PREFIX = "I1126 14:26:20.074826 18205 net.cpp:593]     "


def _scan(lines: list[str]) -> tuple[tuple[int, int, int, int], dict[str, str | float], dict[str, str | float],
                                     dict[str, str | float], dict[str, str | float]]:
    text = "".join(line + "\n" for line in lines)
    fwd: dict[str, str | float] = {}
    bwd: dict[str, str | float] = {}
    udata: dict[str, str | float] = {}
    udiff: dict[str, str | float] = {}
    return scan(text, 0, len(text), fwd, bwd, udata, udiff), fwd, bwd, udata, udiff


def test_plain_value_lines_are_stored_under_their_whole_key() -> None:
    (stop, nf, nb, nu), fwd, bwd, udata, udiff = _scan([
        PREFIX + "[Forward] Layer conv1/5x5_s1, top blob conv1/5x5_s1 data: 0.821312",
        PREFIX + "[Forward] Layer ip_shared_a, param blob shared_w data: 0.110007",
        PREFIX + "[Backward] Layer loss, bottom blob ip2 diff: 5.06482e-10",
        "I1126 14:36:23.951157 29043 net.cpp:644]     [Update] Layer ip_in, param 0 data: 0.0309692; diff: 4.76837e-05",
    ])
    assert (nf, nb, nu) == (2, 1, 1) and stop == sum(len(ln) + 1 for ln in [
        PREFIX + "[Forward] Layer conv1/5x5_s1, top blob conv1/5x5_s1 data: 0.821312",
        PREFIX + "[Forward] Layer ip_shared_a, param blob shared_w data: 0.110007",
        PREFIX + "[Backward] Layer loss, bottom blob ip2 diff: 5.06482e-10",
        "I1126 14:36:23.951157 29043 net.cpp:644]     [Update] Layer ip_in, param 0 data: 0.0309692; diff: 4.76837e-05",
    ])  # all consumed: stop is the end
    assert fwd == {"conv1/5x5_s1, top blob conv1/5x5_s1": "0.821312", "ip_shared_a, param blob shared_w": "0.110007"}
    assert bwd == {"loss, bottom blob ip2": "5.06482e-10"}
    assert udata == {"ip_in, param 0": "0.0309692"} and udiff == {"ip_in, param 0": "4.76837e-05"}


@pytest.mark.parametrize("line", [
    PREFIX + "[Forward] Layer conv1, top blob conv1 data: nan",  # non-finite: the Python path records it
    PREFIX + "[Forward] Layer conv1, top blob conv1 data: 1.",  # not a number Caffe prints
    PREFIX + "[Forward] Layer conv1, top blob conv1 data: 1e5",  # exponent without sign
    PREFIX + "[Forward] Layer conv1, top blob conv1 data: 0.5\r",  # CRLF line
    PREFIX + "[Forward] Layer  data: 0.5",  # empty key
    PREFIX + "[Forward] Layer conv1",  # NVCaffe 0.16 header
    PREFIX + "[Forward] Input data data: 0.343971",
    "E1126 14:26:22.113255 18205 net.cpp:721]     [Backward] All net params (data, diff): L1 norm = (1, 2); "
    "L2 norm = (3, 4)",
    "I1126 14:26:22.113291 18205 solver.cpp:239] Iteration 0 (-1.29182e-17 iter/s, 2.039s/10 iters), loss = 2.58",
    "[Forward] Layer conv1, top blob conv1 data: 0.5",  # no glog prefix: the chunk takes the Python path
])
def test_any_other_line_stops_the_scan_at_its_start(line: str) -> None:
    first = PREFIX + "[Forward] Layer conv1, top blob conv1 data: 0.25"
    (stop, nf, nb, nu), fwd, _, _, _ = _scan([first, line, first])
    assert stop == len(first) + 1 and (nf, nb, nu) == (1, 0, 0)
    assert fwd == {"conv1, top blob conv1": "0.25"}


def test_the_key_runs_to_the_last_data_marker() -> None:
    (_, nf, _, _), fwd, _, _, _ = _scan([PREFIX + "[Forward] Layer odd data: name, top blob b data: 2"])
    assert nf == 1 and fwd == {"odd data: name, top blob b": "2"}
