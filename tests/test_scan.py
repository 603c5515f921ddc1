"""exporter/scan.py: one grammar. The scan finds every line parse_line reads, and a value it hands over as
a named group is the value parse_line reads from the same line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter import parse, scan
from exporter.events import LayerBlob, UpdateValue
from exporter.parse import layer_key, parse_line
from tests.test_parse_lines import ANNOTATED, Annotated

FIXTURES = Path(__file__).parent / "fixtures"
LOGS = sorted(FIXTURES.glob("real-caffe/*/caffe.log")) + sorted(FIXTURES.glob("public-logs/*.log"))
READ = [a for a in ANNOTATED if a.expect is not None and parse_line(a.line) is not None]


@pytest.mark.parametrize("case", READ, ids=lambda a: f"{a.file}:{a.lineno}")
def test_the_scan_finds_every_line_parse_line_reads(case: Annotated) -> None:
    line = case.line
    assert scan.SCAN.search(line + "\n") is not None
    if parse.split_prefix(line)[0] is not None and not line.startswith("Log file created at: "):
        assert scan.SCAN_GLOG.search(line + "\n") is not None


def test_lines_of_no_state_are_not_found() -> None:
    skipped = [a.line for a in ANNOTATED if a.expect is None]
    found = [ln for ln in skipped if scan.SCAN.search(ln) is None]
    assert found, "tests/lines has skipped lines the scan does not even look at"


def test_the_dispatch_names_are_groups_of_the_pattern() -> None:
    for pattern in (scan.SCAN, scan.SCAN_GLOG):
        assert {scan.FORWARD, scan.BACKWARD, scan.UPDATE, scan.NONFINITE} <= set(pattern.groupindex)


@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_value_the_scan_stores_is_the_value_parse_line_reads(log: Path) -> None:
    text = log.read_bytes().replace(b"\0", b"").decode("utf-8", "replace")
    for m in scan.SCAN.finditer(text):
        kind = m.lastgroup
        if kind is None:
            continue
        start, end = parse.line_at(text, m.start())
        pl = parse_line(text[start:end])
        assert pl is not None, text[start:end]
        ev = pl.event
        if kind == scan.UPDATE:
            assert isinstance(ev, UpdateValue)
            assert (m["upd_key"], float(m["upd_data"]), float(m[kind])) == (f"{ev.layer}, param {ev.param}",
                                                                              ev.data, ev.diff)
            continue
        assert isinstance(ev, LayerBlob)
        key = m["nf_key"] if kind == scan.NONFINITE else m[f"{kind}_key"]
        assert key == layer_key(ev.layer, ev.role, ev.blob)
        assert repr(parse.parse_value(m[kind])) == repr(ev.value)


def test_the_plain_number_is_what_iostream_prints() -> None:
    assert all(re.fullmatch(parse.PLAIN_NUMBER, n) for n in ("0", "0.882001", "5.06482e-10", "1.2e+06"))
    assert not any(re.fullmatch(parse.PLAIN_NUMBER, n) for n in ("1.", "1e5", "-0.5", "nan", ".5"))
