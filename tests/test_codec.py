"""exporter/codec.py: saved state <-> JSON, derived from the dataclass fields (one encoding for NaN/Inf)."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import codec
from exporter.state import NonfiniteValue, RunState, SourceClock, ThreadState
from exporter.tail import Chunk

REAL = Path(__file__).parent / "fixtures" / "real-caffe"


class Point(NamedTuple):
    x: float
    label: str


@dataclass
class Sample:
    name: str
    values: dict[str, float] = field(default_factory=dict)
    by_pair: dict[tuple[str, str], float] = field(default_factory=dict)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    tags: set[str] = field(default_factory=set)
    point: Point | None = None
    norms: tuple[float, float] | None = None
    history: list[Point] = field(default_factory=list)
    scratch: list[str] = field(default_factory=list, metadata=codec.DERIVED)


def _json(obj: Any) -> Any:
    """Through JSON text as checkpoint.write and read do it (allow_nan: the NaN/Infinity tokens)."""
    return json.loads(json.dumps(codec.to_json(obj), allow_nan=True))


def test_a_field_added_to_a_dataclass_is_saved_without_further_code() -> None:
    sample = Sample("s", values={"a": 1.5}, by_pair={("x", "y"): 2.0}, counts=Counter({("p", "q"): 3}),
                    tags={"b", "a"}, point=Point(0.5, "p"), norms=(1.0, 2.0), history=[Point(1.0, "h")],
                    scratch=["not saved"])
    assert _json(sample) == {"name": "s", "values": {"a": 1.5}, "by_pair": [["x", "y", 2.0]],
                             "counts": [["p", "q", 3]], "tags": ["a", "b"], "point": [0.5, "p"],
                             "norms": [1.0, 2.0], "history": [[1.0, "h"]]}
    assert codec.from_json(Sample, _json(sample)) == dataclasses.replace(sample, scratch=[])


def test_every_field_of_a_run_is_saved_unless_declared_derived() -> None:
    """Fails when a RunState field is neither saved nor declared derived (it would reset at every restart)."""
    run = RunState(run="r", sources=["a"])
    derived = {f.name for f in dataclasses.fields(RunState) if f.metadata.get("codec.derived")}
    assert derived == {"observers", "fast_path", "budget", "series", "layers"}  # rebuilt from config / recount()
    assert set(run.to_dict()) == {f.name for f in dataclasses.fields(RunState)} - derived


# saved fields lenet_nan read whole leaves at their default (no dump open, no snapshot taken, ...)
QUIET = {"labels", "update_data", "update_diff", "test_loss", "last_snapshot_iteration", "snapshots", "dump", "read_at",
         "gone_at"}


def test_a_run_field_whose_value_is_not_saved_fails_the_round_trip() -> None:
    """Each saved field set to a non-default value comes back: a field dropped by the codec is caught here."""
    run = _fed("lenet_nan")
    back = RunState.from_dict(json.loads(json.dumps(run.to_dict(), allow_nan=True)))
    hints = typing.get_type_hints(RunState)
    fresh = RunState(run="")
    for f in codec.saved_fields(RunState):
        saved, again = (json.dumps(codec.encode(getattr(r, f), hints[f])) for r in (run, back))
        assert saved != json.dumps(codec.encode(getattr(fresh, f), hints[f])) or f in QUIET, f"{f}: still default"
        assert again == saved, f


def test_non_finite_floats_are_the_json_tokens_nan_and_infinity() -> None:
    text = json.dumps(codec.to_json(Sample("s", values={"n": math.nan, "p": math.inf, "m": -math.inf})),
                      allow_nan=True)
    assert '"values": {"n": NaN, "p": Infinity, "m": -Infinity}' in text
    back = codec.from_json(Sample, json.loads(text))
    assert math.isnan(back.values["n"]) and back.values["p"] == math.inf and back.values["m"] == -math.inf


def test_older_files_read_back_pairs_positional_dataclasses_and_nonfinite_strings() -> None:
    old = {"name": "s", "values": [["a", "nan"], ["b", 2]], "history": [[1, "h"]]}
    back = codec.from_json(Sample, old)
    assert math.isnan(back.values["a"]) and back.values["b"] == 2.0 and type(back.values["b"]) is float
    assert back.history == [Point(1.0, "h")]
    assert codec.decode([2026, 11, False, 11], SourceClock) == SourceClock(2026, 11, False, 11)


@pytest.mark.parametrize("damage, error", [
    ({"name": 1}, TypeError),  # a string expected
    ({"values": {"a": "x"}}, ValueError),  # no number
    ({"values": {"a": True}}, TypeError),  # a bool is no number
    ({"by_pair": [["x", 1.0]]}, ValueError),  # a key part missing
    ({"point": [1.0]}, ValueError),  # a NamedTuple field missing
    ({"tags": "ab"}, TypeError),  # an array expected
])
def test_a_damaged_value_is_an_error(damage: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        codec.from_json(Sample, {"name": "s", **damage})


def test_a_missing_field_takes_its_default_and_a_missing_required_one_is_an_error() -> None:
    assert codec.from_json(Sample, {"name": "s"}) == Sample("s")
    with pytest.raises(TypeError):
        codec.from_json(Sample, {"values": {}})


def test_a_run_saved_by_the_previous_version_reads_back_as_the_same_run() -> None:
    """tests/state/lenet_nan_to_line_844.v1.json: to_dict() of the previous, hand-written encoder (per-layer
    values as [key, value] pairs, clocks as arrays) after lenet_nan lines 1-844 (inside the first NaN block)."""
    old = json.loads((Path(__file__).parent / "state" / "lenet_nan_to_line_844.v1.json").read_text())
    lines = (REAL / "lenet_nan/caffe.log").read_text().split("\n")[:844]
    run = RunState(run="r", labels={"job": "lenet"})
    run.feed(Chunk("jobs/r/caffe.log", "".join(ln + "\n" for ln in lines), 1, True, 1764000000.0))
    run.read_at = 1764000100.5
    back = RunState.from_dict(old)
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(run.to_dict(), sort_keys=True)
    assert back.threads["19243"].pending[0] == NonfiniteValue(None, "train", 0, "forward", "conv1", "conv1", "data",
                                                             "nan", 826, "jobs/r/caffe.log")


def _fed(name: str) -> RunState:
    run = RunState(run="r")
    run.feed(Chunk(f"jobs/{name}/caffe.log", (REAL / name / "caffe.log").read_text(), 1, True, 0.0))
    return run


_names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_floats = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(values=st.dictionaries(_names, _floats, max_size=5), outputs=st.dictionaries(st.tuples(_names, _names), _floats,
       max_size=3), counts=st.dictionaries(st.tuples(_names, _names), st.integers(0, 10**12), max_size=3),
       loss=st.none() | _floats, thread=st.builds(ThreadState, phase=_names, test_iteration=st.integers(0, 10**9),
                                                  outputs_seen=st.sets(_names, max_size=3)))
def test_any_run_round_trips_through_json(values: dict[str, float], outputs: dict[tuple[str, str], float],
                                          counts: dict[tuple[str, str], int], loss: float | None,
                                          thread: ThreadState) -> None:
    run = RunState(run="r", sources=["a"], backward=values, test_outputs=outputs, debug_lines=Counter(counts),
                   loss=loss, threads={"1": thread})
    text = json.dumps(run.to_dict(), allow_nan=True)
    back = RunState.from_dict(json.loads(text))
    assert json.dumps(back.to_dict(), allow_nan=True) == text
    assert repr(back.backward) == repr(values) and back.threads == {"1": thread}
