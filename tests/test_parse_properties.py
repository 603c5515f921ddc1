"""Property tests: the parser and the run state never raise, and the fast path equals the slow path.

`RunState.feed` scans a chunk with one regex and stores finite per-layer values without parsing them
(the fast path); every other line goes through `parse_line` (the slow path), and `apply_line` feeds one line
alone. Whatever the chunking, the resulting state must be the same: that is the invariant of the hot loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter import parse
from exporter.state import RunState
from exporter.tail import Chunk

FIXTURES = Path(__file__).parent / "fixtures"
REAL_LOGS = sorted((FIXTURES / "real-caffe").glob("*/caffe.log"))
PUBLIC_LOGS = sorted((FIXTURES / "public-logs").glob("*.log"))
LINES_DIR = Path(__file__).parent / "lines"


def complete_lines(path: Path) -> str:
    """The file's complete lines, decoded and cleaned as the tailer hands them over (NULs dropped)."""
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\0", "")
    return text[: text.rfind("\n") + 1]


def _corpus() -> list[str]:
    """Real lines: every annotated line plus a spread of lines from every real and public fixture."""
    lines = [ln for p in sorted(LINES_DIR.glob("*.log")) for ln in p.read_text().split("\n")
             if ln and not ln.startswith("#")]
    for p in REAL_LOGS + PUBLIC_LOGS:
        all_lines = complete_lines(p).split("\n")
        lines += all_lines[:: max(1, len(all_lines) // 150)]
    return lines


CORPUS = _corpus()
NONFINITE = ["nan", "-nan", "inf", "-inf", "1.#QNAN", "-1.#IND", "1.#INF", "-1.#INF", "nan(ind)", "-nan(ind)",
             "1.#QNAN0", "NaN", "+inf", "1e-006", "-0", "1e309", "0x1p3", "", "(", ")"]


def state_dict(st_: RunState) -> str:
    """to_dict() as canonical JSON; the counters' key order (the order of first increment) is no state."""
    d = st_.to_dict()
    d["debug_lines"], d["nonfinite"] = sorted(d["debug_lines"]), sorted(d["nonfinite"])
    return json.dumps(d, sort_keys=True)


def feed_whole(path: str, text: str) -> RunState:
    run = RunState(run="r")
    run.feed(Chunk(path, text, 1, True, 0.0))
    return run


def feed_split(path: str, text: str, cuts: Iterable[int]) -> RunState:
    """Feed `text` as chunks ending after the newlines at the given line indexes."""
    lines = text.splitlines(keepends=True)
    run = RunState(run="r")
    start = 0
    for end in [*sorted(set(cuts)), len(lines)]:
        if end <= start:
            continue
        run.feed(Chunk(path, "".join(lines[start:end]), start + 1, start == 0, 0.0))
        start = end
    return run


def feed_lines(path: str, text: str) -> RunState:
    run = RunState(run="r")
    for i, line in enumerate(text.splitlines(), 1):
        run.apply_line(line, i, path)
    return run


# -- never raise ---------------------------------------------------------------------------------------

_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(st.text(max_size=300))
def test_parse_line_never_raises_on_text(text: str) -> None:
    parse.parse_line(text)
    parse.parse_message(text)
    parse.split_prefix(text)


@_settings
@given(st.binary(max_size=300), st.sampled_from(["utf-8", "latin-1"]))
def test_parse_and_feed_never_raise_on_decoded_bytes(raw: bytes, encoding: str) -> None:
    text = raw.decode(encoding, errors="replace")
    for line in text.splitlines() or [text]:
        parse.parse_line(line)
    run = RunState(run="r")
    run.feed(Chunk("x.log", text.replace("\r", "") + "\n", 1, True, 0.0))
    json.dumps(run.to_dict())


_NUMERIC_FIELDS = {"value", "loss", "lr", "data", "diff", "l1_data", "l1_diff", "l2_data", "l2_diff",
                   "iters_per_second"}


@st.composite
def mutated_line(draw: st.DrawFn) -> str:
    line = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "number", "truncate"]))
        pos = draw(st.integers(0, len(line)))
        if op == "insert":
            line = line[:pos] + draw(st.text(max_size=8)) + line[pos:]
        elif op == "delete":
            line = line[:pos] + line[pos + draw(st.integers(1, 10)):]
        elif op == "replace":
            line = line[:pos] + draw(st.sampled_from(list(" ,:;()[]#/-.e+0123456789\t"))) + line[pos + 1:]
        elif op == "number":  # swap the last token (usually the value) for an odd number spelling
            head, _, _ = line.rpartition(" ")
            line = f"{head} {draw(st.sampled_from(NONFINITE))}"
        else:
            line = line[:pos]
    return line.replace("\n", " ").replace("\r", " ")


@_settings
@given(mutated_line())
def test_mutated_real_lines_never_raise(line: str) -> None:
    pl = parse.parse_line(line)
    if pl is not None:  # numbers come out as floats (NaN/inf included), never as the raw token
        for name, value in pl.event._asdict().items():
            if name in _NUMERIC_FIELDS and value is not None:
                assert isinstance(value, float), (name, value)
    for token in line.split():
        with contextlib.suppress(ValueError):  # the one documented failure of parse_value; callers guard it
            parse.parse_value(token)


@_settings
@given(st.lists(mutated_line(), min_size=1, max_size=40))
def test_feed_never_raises_on_mutated_sequences(lines: list[str]) -> None:
    run = RunState(run="r")
    run.feed(Chunk("caffe.INFO", "\n".join(lines) + "\n", 1, True, 0.0))
    for i, line in enumerate(lines, 1):
        run.apply_line(line, i, "caffe.INFO")
    RunState.from_dict(json.loads(json.dumps(run.to_dict())))


# -- fast path == slow path ---------------------------------------------------------------------------


@pytest.mark.parametrize("log", REAL_LOGS + PUBLIC_LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_one_chunk_equals_line_by_line(log: Path) -> None:
    text = complete_lines(log)
    whole = feed_whole(str(log), text)
    assert state_dict(whole) == state_dict(feed_lines(str(log), text))


@pytest.mark.parametrize("log", REAL_LOGS + PUBLIC_LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_one_chunk_equals_random_chunks(log: Path) -> None:
    text = complete_lines(log)
    n = text.count("\n")
    rng = random.Random(log.name)
    want = state_dict(feed_whole(str(log), text))
    for k in (1, 7, 60):
        cuts = rng.sample(range(1, n), min(k, n - 1)) if n > 1 else []
        assert state_dict(feed_split(str(log), text, cuts)) == want, f"cuts {sorted(cuts)[:10]}..."


_TEXTS = {p: complete_lines(p) for p in REAL_LOGS}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REAL_LOGS), st.lists(st.floats(0, 1), max_size=30))
def test_random_newline_splits_give_the_same_state(log: Path, fractions: list[float]) -> None:
    text = _TEXTS[log]
    n = text.count("\n")
    cuts = [int(f * n) for f in fractions]
    assert state_dict(feed_split(str(log), text, cuts)) == state_dict(feed_whole(str(log), text))


_SAME_DAY = re.compile(r"^([IWEF])(\d{4})?\d{4} ")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=60), st.data())
def test_random_real_line_sequences_chunked_any_way_give_the_same_state(lines: list[str], data: Any) -> None:
    """Real lines in a random order (phases, threads, NVCaffe headers, dumps mixed): chunking never matters.

    Two realistic shapes are drawn: every line with its glog prefix (un-prefixed lines kept only when they
    carry no state, like protobuf dumps), or every prefix stripped (a wrapper). A log never mixes prefixed and
    un-prefixed Caffe lines, and an un-prefixed line takes the thread of its chunk, so a mix would test the mix.
    The glog dates are set to one day: months running backwards are read as a new year (Dec -> Jan), and the
    timestamp is taken from the newest line of a chunk only, so shuffled dates would test the shuffle.
    """
    if data.draw(st.booleans(), label="strip prefixes"):
        lines = [parse.split_prefix(line)[1] for line in lines]
    else:
        lines = [ln for ln in lines if parse.split_prefix(ln)[0] is not None or parse.parse_line(ln) is None]
    text = "\n".join(_SAME_DAY.sub(r"\g<1>\g<2>1126 ", line) for line in lines) + "\n"
    cuts = data.draw(st.lists(st.integers(1, max(1, len(lines))), max_size=10))
    want = state_dict(feed_whole("caffe.log", text))
    assert state_dict(feed_split("caffe.log", text, cuts)) == want
    assert state_dict(feed_lines("caffe.log", text)) == want


def test_line_numbers_of_nonfinite_origins_agree_across_feeds() -> None:
    """first_line-derived line numbers are part of the state; they point at the real line in the file."""
    log = FIXTURES / "real-caffe/lenet_nan/caffe.log"
    text = complete_lines(log)
    runs = [feed_whole(str(log), text), feed_lines(str(log), text),
            feed_split(str(log), text, range(3, text.count("\n"), 97))]
    origins = {(r.first_nonfinite, r.first_nonfinite_layer) for r in runs}
    assert len(origins) == 1
    first, first_layer = origins.pop()
    assert first is not None and first_layer is not None
    lines = text.split("\n")
    assert "All net params" in lines[first.line - 1] and "inf" in lines[first.line - 1]
    assert lines[first_layer.line - 1].endswith("[Forward] Layer conv1, top blob conv1 data: nan")
    assert math.isnan(float(lines[first_layer.line - 1].rsplit(" ", 1)[1]))
