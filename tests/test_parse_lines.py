"""Annotated real lines (tests/lines/*.log, fail2ban style): one generated test per line.

Each line under a `# expect: {json}` comment must parse to exactly that event; `# expect: null` lines must be
skipped. The JSON names the event type (`"event"`) and its fields; `"prefix"`, when given, is compared with the
parsed glog prefix (`null` = no prefix). Non-finite numbers are written "nan", "inf", "-inf".

A second set of checks keeps the corpus honest: every compiled regex in exporter/parse.py matches at least
one annotated line, and every event type is annotated at least once.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple, get_args

import pytest

from exporter import events, parse

LINES_DIR = Path(__file__).parent / "lines"
EXPECT = "# expect: "


class Annotated(NamedTuple):
    file: str
    lineno: int
    line: str
    expect: dict[str, Any] | None


def load_annotated() -> list[Annotated]:
    out: list[Annotated] = []
    for path in sorted(LINES_DIR.glob("*.log")):
        pending: str | None = None
        pending_at = 0
        for i, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if raw.startswith(EXPECT):
                assert pending is None, f"{path.name}:{pending_at}: expect without a line below it"
                pending, pending_at = raw[len(EXPECT):], i
                continue
            if pending is None:
                assert raw == "" or raw.startswith("#"), f"{path.name}:{i}: line without '# expect:' above it"
                continue
            out.append(Annotated(path.name, i, raw, json.loads(pending)))
            pending = None
        assert pending is None, f"{path.name}: trailing expect"
    return out


ANNOTATED = load_annotated()


def _num(v: Any) -> Any:
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v


def _same(actual: Any, expected: Any) -> bool:
    expected = _num(expected)
    if isinstance(actual, float):
        if isinstance(expected, bool) or not isinstance(expected, int | float):
            return False
        if math.isnan(actual) or math.isnan(expected):
            return math.isnan(actual) and math.isnan(expected)
        return bool(actual == pytest.approx(expected, rel=1e-9, abs=0.0))
    return type(actual) is type(expected) and bool(actual == expected)


@pytest.mark.parametrize("case", ANNOTATED, ids=[f"{a.file}:{a.lineno}" for a in ANNOTATED])
def test_annotated_line(case: Annotated) -> None:
    parsed = parse.parse_line(case.line)
    if case.expect is None:
        assert parsed is None, f"must be skipped, parsed as {parsed!r}"
        return
    assert parsed is not None, "must parse"
    want = dict(case.expect)
    kind = want.pop("event")
    assert type(parsed.event).__name__ == kind
    if "prefix" in want:
        want_prefix = want.pop("prefix")
        if want_prefix is None:
            assert parsed.prefix is None
        else:
            assert parsed.prefix is not None
            got = parsed.prefix._asdict()
            assert got.keys() == want_prefix.keys()
            for k, v in want_prefix.items():
                assert _same(got[k], v), f"prefix {k}: {got[k]!r} != {v!r}"
    got_event = parsed.event._asdict()
    assert got_event.keys() == want.keys(), f"fields {sorted(got_event)} vs annotated {sorted(want)}"
    for k, v in want.items():
        assert _same(got_event[k], v), f"{k}: {got_event[k]!r} != {v!r}"


def test_trailing_newline_or_crlf_changes_nothing() -> None:
    for case in ANNOTATED:
        want = repr(parse.parse_line(case.line))  # repr: NamedTuples holding NaN never compare equal
        assert repr(parse.parse_line(case.line + "\n")) == want, case
        assert repr(parse.parse_line(case.line + "\r\n")) == want, case


def _patterns() -> dict[str, re.Pattern[str]]:
    return {name: obj for name, obj in vars(parse).items() if isinstance(obj, re.Pattern)}


@pytest.mark.parametrize("name", sorted(_patterns()))
def test_every_parse_regex_matches_an_annotated_line(name: str) -> None:
    """As in fail2ban's samplestestcase: a pattern that no annotated real line exercises is untested."""
    pattern = _patterns()[name]
    if pattern.match("") is not None and name == "_TAGS":
        # _TAGS is optional by construction; require that it consumes a real tag somewhere
        assert any(pattern.match(parse.split_prefix(a.line)[1]).end() > 0 for a in ANNOTATED  # type: ignore[union-attr]
                   if "[debug_info]" in a.line or a.line.lstrip().startswith("("))
        return
    hits = [a for a in ANNOTATED if pattern.search(a.line) or pattern.search(parse.split_prefix(a.line)[1].strip())]
    assert hits, f"parse.{name} ({pattern.pattern[:60]}...) matches no line in tests/lines/"


def test_every_event_type_is_annotated() -> None:
    annotated = {a.expect["event"] for a in ANNOTATED if a.expect is not None}
    kinds = {t.__name__ for t in get_args(events.Event)}
    assert kinds <= annotated, f"event types without an annotated line: {sorted(kinds - annotated)}"


def test_the_corpus_covers_every_nonfinite_spelling() -> None:
    text = "\n".join(a.line for a in ANNOTATED)
    for spelling in ("nan", "-nan", "inf", "-inf", "1.#QNAN", "-1.#IND", "1.#INF", "-1.#INF", "nan(ind)",
                     "-nan(ind)", "1.#QNAN0"):
        assert re.search(r"(?<![\w.#-])" + re.escape(spelling) + r"(?![\w#(])", text), spelling


@pytest.mark.parametrize("token,expected", [
    ("nan", math.nan), ("-nan", math.nan), ("NaN", math.nan), ("inf", math.inf), ("-inf", -math.inf),
    ("+inf", math.inf), ("infinity", math.inf), ("1.#QNAN", math.nan), ("-1.#IND", math.nan),
    ("1.#INF", math.inf), ("-1.#INF", -math.inf), ("nan(ind)", math.nan), ("-nan(ind)", math.nan),
    ("1.#QNAN0", math.nan), ("-1.#INF00", -math.inf), ("1.#SNAN", math.nan), ("0", 0.0), ("-0", -0.0),
    ("5.99449e-06", 5.99449e-06), ("1e-006", 1e-06), ("4.2e+08", 4.2e08), ("87.3365", 87.3365),
])
def test_parse_value_spellings(token: str, expected: float) -> None:
    got = parse.parse_value(token)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize("token", ["", "nanx", "1.#", "abc", "0.5)", "in f", "--1", "1.#QNANX"])
def test_parse_value_rejects_junk(token: str) -> None:
    with pytest.raises(ValueError):
        parse.parse_value(token)


def test_net_dump_gives_net_name_and_layer_types() -> None:
    """The real `Initializing net from parameters:` dump of lenet_healthy (train net)."""
    log = Path(__file__).parent / "fixtures/real-caffe/lenet_healthy/caffe.log"
    lines = log.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if "Initializing net from parameters:" in line) + 1
    dump: list[str] = []
    for line in lines[start:]:
        if not parse.is_dump_line(line):
            break
        dump.append(line)
    net = parse.parse_net_dump(dump)
    assert net.name == "LeNet"
    assert net.layers == (("mnist", "HDF5Data"), ("conv1", "Convolution"), ("pool1", "Pooling"),
                          ("conv2", "Convolution"), ("pool2", "Pooling"), ("ip1", "InnerProduct"),
                          ("relu1", "ReLU"), ("ip2", "InnerProduct"), ("loss", "SoftmaxWithLoss"))
