"""exporter/state/clock.py: the year of classic glog prefixes (caffe_last_log_timestamp_seconds)."""

from __future__ import annotations

import calendar
import re
import time

from . import DISPLAY_0, GLOG_INFO, feed, log_lines

LAST = "I1126 14:30:14.648727 22388 caffe.cpp:250] Optimization Done."  # last line of the glog_dir INFO file


def local(y: int, mo: int, d: int, h: int, mi: int, s: float) -> float:
    return time.mktime((y, mo, d, h, mi, int(s), 0, 0, -1)) + (s - int(s))


def test_year_from_the_glog_header() -> None:
    """The header says 2026; the path is no glog name and the file time says 2019: the header wins."""
    lines = GLOG_INFO.read_text().split("\n")[:-1]
    assert lines[-1] == LAST
    run = feed(lines, "/logs/caffe.txt", mtime=calendar.timegm((2019, 6, 1, 0, 0, 0)))
    assert run.last_timestamp == local(2026, 11, 26, 14, 30, 14.648727)


def test_year_from_the_glog_file_name() -> None:
    """glog_dir's stderr capture (no header) under a glog file name from 2024."""
    run = feed(log_lines("glog_dir"), "/logs/caffe.vm.root.log.INFO.20241126-143014.22388")
    assert run.last_timestamp == local(2024, 11, 26, 14, 30, 14.648727)


def test_year_from_the_file_time() -> None:
    run = feed(log_lines("glog_dir"), "/logs/caffe.log", mtime=local(2025, 11, 27, 0, 0, 0))
    assert run.last_timestamp == local(2025, 11, 26, 14, 30, 14.648727)


def test_year_from_the_prefix_itself() -> None:
    """glog >= 0.6 prints the year; neither the file name (2019) nor the file time (2020) matter."""
    lines = log_lines("glog_year_prefix")
    last = lines[-1]
    assert last.startswith("I2026")
    run = feed(lines, "/logs/caffe.vm.root.log.INFO.20190101-000000.1", mtime=local(2020, 1, 1, 0, 0, 0))
    m = re.match(r"I(\d{4})(\d\d)(\d\d) (\d\d):(\d\d):(\d\d\.\d+)", last)
    assert m is not None
    y, mo, d, h, mi = (int(x) for x in m.groups()[:5])
    assert run.last_timestamp == local(y, mo, d, h, mi, float(m[6]))


def _dated(line: str, mmdd: str) -> str:
    """A real line with its glog date changed (the only edit)."""
    return line[0] + mmdd + line[5:]


def test_december_to_january_rolls_the_year_over() -> None:
    """Real lenet_healthy display lines, dated 31 Dec and 1 Jan, in a glog file named 2026."""
    path = "/logs/caffe.vm.root.log.INFO.20261231-235900.18205"
    run = feed([_dated(DISPLAY_0[0], "1231")], path)
    assert run.last_timestamp == local(2026, 12, 31, 14, 26, 22.113291)
    feed([_dated(DISPLAY_0[1], "0101")], path, run=run, first_line=2)
    assert run.last_timestamp == local(2027, 1, 1, 14, 26, 22.113305)
    # and it stays in the new year
    feed([_dated(DISPLAY_0[2], "0102")], path, run=run, first_line=3)
    assert run.last_timestamp == local(2027, 1, 2, 14, 26, 22.113322)


def test_december_to_january_within_one_chunk() -> None:
    path = "/logs/caffe.vm.root.log.INFO.20261231-235900.18205"
    run = feed([_dated(DISPLAY_0[0], "1231"), _dated(DISPLAY_0[1], "0101"), _dated(DISPLAY_0[2], "0101")], path)
    assert run.last_timestamp == local(2027, 1, 1, 14, 26, 22.113322)


def test_year_from_the_file_time_across_new_year() -> None:
    """A log begun in December and read after New Year: its December lines are from the file time's year - 1."""
    lines = [_dated(DISPLAY_0[0], "1231"), _dated(DISPLAY_0[1], "0101")]
    run = feed(lines, "/logs/caffe.log", mtime=local(2027, 1, 1, 15, 0, 0))
    assert run.last_timestamp == local(2027, 1, 1, 14, 26, 22.113305)
