"""The fast path (exporter/scan.py: the regex's stored groups, and the C scanner exporter/_scan.c) is only a
faster way to read what the pure path reads: every line through parse_line gives the same state, always.

CI builds the C scanner (`.ci/install`); there a missing extension is a failure, elsewhere the tests that
need it are skipped (the pure-Python fast path is compared either way).
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import scan
from exporter.events import LayerBlob, ParsedLine, UpdateValue
from exporter.parse import PLAIN_NUMBER, layer_key, parse_line
from exporter.scan import FAST, PURE, PYTHON, FastPath
from exporter.state import Limits, RunState, SeriesBudget
from exporter.state import feed as feeding
from exporter.tail import Chunk

FIXTURES = Path(__file__).parent / "fixtures"
LOGS = sorted(FIXTURES.glob("real-caffe/*/caffe.log")) + sorted(FIXTURES.glob("public-logs/*.log"))
C = scan.C_SCANNER
if C is None and os.environ.get("CI"):  # pragma: no cover - depends on the build
    raise RuntimeError("exporter/_scan.c was not built: .ci/install must build it in place")
needs_c = pytest.mark.skipif(C is None, reason="the C scanner is not built here (python setup.py build_ext --inplace)")
# the fast paths compared against PURE: the C scanner (where built) and the pure-Python regex stores
FAST_PATHS = [pytest.param(FAST, id="c", marks=needs_c), pytest.param(PYTHON, id="python")]


def _text(log: Path) -> str:
    return log.read_bytes().replace(b"\0", b"").decode("utf-8", "replace")


def _run(text: str, fast_path: FastPath, cuts: list[int] | None = None, limits: Limits | None = None) -> RunState:
    run = RunState(run="r", fast_path=fast_path, budget=SeriesBudget(limits or Limits.unlimited()))
    lines = text.splitlines(keepends=True)
    bounds = [0, *sorted(set(cuts or [])), len(lines)]
    for a, b in itertools.pairwise(bounds):
        if a < b:
            run.feed(Chunk("jobs/r/caffe.log", "".join(lines[a:b]), a + 1, a == 0, 0.0))
    return run


def _state(text: str, fast_path: FastPath, cuts: list[int] | None = None, limits: Limits | None = None) -> str:
    run = _run(text, fast_path, cuts, limits)
    tables = (*run.forward.values(), run.backward, run.update_data, run.update_diff)
    types = sorted({type(v).__name__ for d in tables for v in d.values()})  # to_dict would hide a str
    return json.dumps([run.to_dict(), run.series, run.budget.total, run.budget.dropped, types], sort_keys=True)


@pytest.mark.parametrize("fast_path", FAST_PATHS)
@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_fast_path_gives_the_state_of_the_pure_path(log: Path, fast_path: FastPath) -> None:
    text = _text(log)
    assert _state(text, fast_path) == _state(text, PURE)


LENET_NAN = (FIXTURES / "real-caffe/lenet_nan/caffe.log").read_text()
# two solver threads interleaved in one file: chunks of one debug thread take the fast path, others not
TWO_GPUS = _text(FIXTURES / "public-logs/bvlc-squeezenet-2gpu-resume.log")
PURE_NAN = _state(LENET_NAN, PURE)
PURE_TWO_GPUS = _state(TWO_GPUS, PURE)


def _cuts(text: str) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=1, max_value=text.count("\n") - 1), max_size=12)


@settings(max_examples=40, deadline=None)
@given(_cuts(LENET_NAN), st.sampled_from([FAST, PYTHON] if C is not None else [PYTHON]))
def test_the_fast_path_under_any_chunking_gives_the_pure_state(cuts: list[int], fast_path: FastPath) -> None:
    assert _state(LENET_NAN, fast_path, cuts=cuts) == PURE_NAN


@settings(max_examples=15, deadline=None)
@given(_cuts(TWO_GPUS), st.sampled_from([FAST, PYTHON, PURE] if C is not None else [PYTHON, PURE]))
def test_interleaved_threads_under_any_chunking_give_the_pure_state(cuts: list[int], fast_path: FastPath) -> None:
    assert _state(TWO_GPUS, fast_path, cuts=cuts) == PURE_TWO_GPUS


# limits that bite on every fixture: a series cap inside the first Forward block, names cut, a layer filter
LIMITED = [
    Limits(max_series_per_run=7),
    Limits(max_series=11),
    Limits(max_name_bytes=4),
    Limits(layer_include=re.compile(r"conv.*|ip.*|loss"), layer_exclude=re.compile(r"ip2")),
]


@pytest.mark.parametrize("limits", LIMITED, ids=["per_run", "all_runs", "names", "layers"])
@pytest.mark.parametrize("fast_path", FAST_PATHS)
@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_fast_path_under_limits_gives_the_pure_state(log: Path, fast_path: FastPath, limits: Limits) -> None:
    text = _text(log)
    assert _state(text, fast_path, limits=limits) == _state(text, PURE, limits=limits)


@settings(max_examples=25, deadline=None)
@given(_cuts(LENET_NAN), st.sampled_from(LIMITED), st.sampled_from([FAST, PYTHON] if C is not None else [PYTHON]))
def test_the_fast_path_under_limits_and_any_chunking(cuts: list[int], limits: Limits, fast_path: FastPath) -> None:
    assert _state(LENET_NAN, fast_path, cuts=cuts, limits=limits) == _state(LENET_NAN, PURE, limits=limits)


# -- the comparison is between different paths: each mode really takes its own ------------------------

class _CountingScanner:
    """The real C scanner, counting the per-layer lines it stores (to show an accelerated run used it)."""

    def __init__(self, real: ModuleType) -> None:
        self.real, self.stored = real, 0

    def scan(self, *args: Any) -> tuple[int, int, int, int]:
        stop, nf, nb, nu = self.real.scan(*args)
        self.stored += nf + nb + nu
        return stop, nf, nb, nu


def _parse_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real: Callable[[str], ParsedLine | None] = parse_line

    def counting(line: str) -> ParsedLine | None:
        calls.append(line)
        return real(line)

    monkeypatch.setattr(feeding, "parse_line", counting)
    return calls


HEALTHY = (FIXTURES / "real-caffe/lenet_healthy/caffe.log").read_text()


@needs_c
def test_an_accelerated_run_stores_most_lines_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    assert C is not None
    counting = _CountingScanner(C)
    monkeypatch.setattr(scan, "C_SCANNER", counting)
    calls = _parse_calls(monkeypatch)
    run = _run(HEALTHY, FAST)
    per_layer = sum(n for (_, stage), n in run.debug_lines.items() if stage != "net")
    # every per-layer line after the first block's new keys is stored by C; parse_line sees none of them
    assert counting.stored > 0.9 * per_layer
    assert not any("[Forward] Layer" in line or "[Backward] Layer" in line for line in calls[-100:])


def test_the_pure_path_parses_every_per_layer_line_and_the_fast_path_none(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _parse_calls(monkeypatch)
    pure = _run(HEALTHY, PURE)
    per_layer = sum(n for (_, stage), n in pure.debug_lines.items() if stage != "net")
    assert sum("] " in ln and ("[Forward] Layer" in ln or "[Backward] Layer" in ln) for ln in calls) == per_layer
    calls.clear()
    _run(HEALTHY, PYTHON)
    assert not any("[Forward] Layer" in ln or "[Backward] Layer" in ln for ln in calls)


# -- the C scanner on its own ---------------------------------------------------------------------------

PREFIX = "I1126 14:26:20.074826 18205 net.cpp:593]     "
UPDATE_LINE = ("I1126 14:36:23.951157 29043 net.cpp:644]     [Update] Layer ip_in, param 0 data: 0.0309692; "
               "diff: 4.76837e-05")
Dicts = tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, float]]


def _c_scan(lines: list[str]) -> tuple[tuple[int, int, int, int], Dicts]:
    assert C is not None
    text = "".join(line + "\n" for line in lines)
    dicts: Dicts = ({}, {}, {}, {})
    return C.scan(text, 0, len(text), *dicts), dicts


@needs_c
def test_without_insert_the_scanner_updates_known_keys_and_stops_at_a_new_one() -> None:
    assert C is not None
    known = PREFIX + "[Forward] Layer conv1, top blob conv1 data: 0.25"
    new = PREFIX + "[Forward] Layer conv2, top blob conv2 data: 0.5"
    text = known + "\n" + new + "\n"
    fwd: dict[str, float] = {"conv1, top blob conv1": 1.0}
    assert C.scan(text, 0, len(text), fwd, {}, {}, {}, False) == (len(known) + 1, 1, 0, 0)
    assert fwd == {"conv1, top blob conv1": 0.25}
    upd = UPDATE_LINE.replace("0.0309692", "0.03").replace("4.76837e-05", "4.7e-05") + "\n"
    udata: dict[str, float] = {}
    udiff: dict[str, float] = {"ip_in, param 0": 1.0}  # only one of the two keys known: not stored
    assert C.scan(upd, 0, len(upd), {}, {}, udata, udiff, False) == (0, 0, 0, 0)
    assert udata == {} and udiff == {"ip_in, param 0": 1.0}


@needs_c
def test_plain_value_lines_are_stored_as_floats_under_their_whole_key() -> None:
    lines = [
        PREFIX + "[Forward] Layer conv1/5x5_s1, top blob conv1/5x5_s1 data: 0.821312",
        PREFIX + "[Forward] Layer ip_shared_a, param blob shared_w data: 0.110007",
        PREFIX + "[Backward] Layer loss, bottom blob ip2 diff: 5.06482e-10",
        UPDATE_LINE,
    ]
    (stop, nf, nb, nu), (fwd, bwd, udata, udiff) = _c_scan(lines)
    assert (nf, nb, nu) == (2, 1, 1) and stop == sum(len(ln) + 1 for ln in lines)  # all consumed
    assert fwd == {"conv1/5x5_s1, top blob conv1/5x5_s1": 0.821312, "ip_shared_a, param blob shared_w": 0.110007}
    assert bwd == {"loss, bottom blob ip2": 5.06482e-10}
    assert udata == {"ip_in, param 0": 0.0309692} and udiff == {"ip_in, param 0": 4.76837e-05}
    assert all(type(v) is float for d in (fwd, bwd, udata, udiff) for v in d.values())


@needs_c
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
    (stop, nf, nb, nu), (fwd, _, _, _) = _c_scan([first, line, first])
    assert stop == len(first) + 1 and (nf, nb, nu) == (1, 0, 0)
    assert fwd == {"conv1, top blob conv1": 0.25}


@needs_c
def test_the_key_runs_to_the_last_data_marker() -> None:
    (_, nf, _, _), (fwd, _, _, _) = _c_scan([PREFIX + "[Forward] Layer odd data: name, top blob b data: 2"])
    assert nf == 1 and fwd == {"odd data: name, top blob b": 2.0}


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.e+-", min_size=1, max_size=14))
def test_the_c_scanner_stores_exactly_the_numbers_of_the_grammar(token: str) -> None:
    """_scan.c's is_num mirrors parse.PLAIN_NUMBER; what it stores is float() of the printed number."""
    (_, nf, _, _), (fwd, _, _, _) = _c_scan([PREFIX + f"[Forward] Layer a, top blob b data: {token}"])
    plain = re.fullmatch(PLAIN_NUMBER, token) is not None
    assert nf == int(plain)
    assert fwd == ({"a, top blob b": float(token)} if plain else {})


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e300, allow_nan=False, allow_infinity=False),
       st.sampled_from(["{:g}", "{!r}", "{:.17g}", "{:.3e}"]))
def test_the_c_scanner_reads_a_printed_float_as_float_does(x: float, spelling: str) -> None:
    """Caffe's 6 significant digits take the exact fast path in C; longer ones Python's conversion."""
    token = spelling.format(x)
    (_, nf, _, _), (fwd, _, _, _) = _c_scan([PREFIX + f"[Forward] Layer a, top blob b data: {token}"])
    if re.fullmatch(PLAIN_NUMBER, token):
        assert nf == 1 and fwd["a, top blob b"] == float(token), token


def _lines(text: str) -> Iterator[str]:
    yield from text.splitlines()


@needs_c
@pytest.mark.parametrize("log", [p for p in LOGS if p.parent.name in ("lenet_nan", "shared_params_2015", "explode")],
                         ids=lambda p: p.parent.name)
def test_every_value_the_c_scanner_stores_is_the_one_parse_line_reads(log: Path) -> None:
    for line in _lines(_text(log)):
        (_, nf, nb, nu), (fwd, bwd, udata, udiff) = _c_scan([line])
        if not nf + nb + nu:
            continue
        pl = parse_line(line)
        assert pl is not None, line
        ev = pl.event
        if isinstance(ev, UpdateValue):
            assert (list(udata.values()), list(udiff.values())) == ([ev.data], [ev.diff]), line
            assert list(udata) == [f"{ev.layer}, param {ev.param}"]
        else:
            assert isinstance(ev, LayerBlob), line
            assert list({**fwd, **bwd}.items()) == [(layer_key(ev.layer, ev.role, ev.blob), ev.value)], line
