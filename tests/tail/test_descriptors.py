"""Descriptors are bounded: idle files and the least recently grown beyond max_open_files are closed,
their offsets kept, and reopened when they grow. Before, every matched file stayed open for ever (past the
descriptor limit the HTTP server could not accept a connection any more)."""

from __future__ import annotations

import os
from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import Clock, append, by_path, caffe_lines, decoded, long_caffe_lines, poll, text


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_two_thousand_files_with_at_most_sixteen_descriptors(tmp_path: Path) -> None:
    lines = caffe_lines(3, start=1400)
    paths = []
    for i in range(2000):
        p = tmp_path / f"job{i:04d}" / "caffe.log"
        p.parent.mkdir()
        p.write_bytes(lines[i % 3])
        paths.append(p)
    stats, mono = TailStats(), Clock(0.0)
    baseline = open_fds()
    tailer = Tailer([str(tmp_path / "*" / "caffe.log")], stats=stats, monotonic=mono, max_open_files=16)

    peak = 0
    seen: dict[str, str] = {}
    for chunk in tailer.poll():
        peak = max(peak, open_fds() - baseline)
        seen[chunk.path] = seen.get(chunk.path, "") + chunk.text
    assert peak <= 16
    assert open_fds() - baseline == stats.files_open == 16
    assert stats.files_watched == 2000
    assert seen == {str(p): lines[i % 3].decode() for i, p in enumerate(paths)}

    # Appends to files closed long ago arrive, numbered after what was read.
    more = long_caffe_lines(2)
    append(paths[0], more[0])
    append(paths[1999], more[1])
    mono.now = 1.0
    chunks = poll(tailer)
    assert by_path(chunks) == {str(paths[0]): more[0].decode(), str(paths[1999]): more[1].decode()}
    assert [(c.first_line, c.file_start) for c in chunks] == [(2, False), (2, False)]
    assert open_fds() - baseline <= 16
    tailer.close()
    assert open_fds() == baseline


def test_idle_file_is_closed_and_reopened_when_it_grows(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b = long_caffe_lines(2)
    log.write_bytes(a + b[:20])  # a partial line pending while closed
    stats, mono = TailStats(), Clock(0.0)
    baseline = open_fds()
    tailer = Tailer([str(log)], stats=stats, monotonic=mono, idle_close=30.0)
    assert text(poll(tailer)) == decoded([a])
    mono.now = 29.0
    assert poll(tailer) == []
    assert stats.files_open == 1
    mono.now = 30.0
    assert poll(tailer) == []
    assert stats.files_open == 0 and open_fds() == baseline
    assert stats.files_watched == 1
    assert tailer.positions()[str(log)].offset == len(a)

    append(log, b[20:])
    mono.now = 31.0
    chunks = poll(tailer)
    assert text(chunks) == decoded([b])  # the partial bytes kept while closed complete the line
    assert chunks[0].first_line == 2 and chunks[0].end is not None and chunks[0].end.offset == len(a + b)
    assert stats.files_open == 1


def test_rotation_of_an_idle_closed_file(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    first, after = caffe_lines(10), caffe_lines(5, start=10)
    log.write_bytes(b"".join(first))
    stats, mono = TailStats(), Clock(0.0)
    tailer = Tailer([str(log)], stats=stats, monotonic=mono, idle_close=1.0)
    poll(tailer)
    mono.now = 2.0
    poll(tailer)
    assert stats.files_open == 0
    os.rename(log, tmp_path / "caffe.log.1")
    log.write_bytes(b"".join(after))
    chunks = poll(tailer)
    assert text(chunks) == decoded(after)
    assert chunks[0].file_start
    assert stats.rotations == 1 and stats.files_watched == 1 and stats.files_open == 1


def test_idle_closed_file_rotated_to_a_matched_name_keeps_its_place(tmp_path: Path) -> None:
    log, rotated = tmp_path / "caffe.log", tmp_path / "caffe.log.1"
    a, b = long_caffe_lines(2)
    log.write_bytes(a + b[:25])
    stats, mono = TailStats(), Clock(0.0)
    tailer = Tailer([str(tmp_path / "caffe.log*")], stats=stats, monotonic=mono, idle_close=1.0)
    poll(tailer)
    mono.now = 2.0
    poll(tailer)
    assert stats.files_open == 0
    os.rename(log, rotated)
    append(rotated, b[25:])
    chunks = poll(tailer)
    assert by_path(chunks) == {str(rotated): decoded([b])}
    assert chunks[0].first_line == 2
    assert stats.lines_partial == 0


def test_deleted_idle_closed_file_counts_its_fragment(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b = long_caffe_lines(2)
    log.write_bytes(a + b[:25])
    stats, mono = TailStats(), Clock(0.0)
    tailer = Tailer([str(log)], stats=stats, monotonic=mono, idle_close=1.0)
    poll(tailer)
    mono.now = 2.0
    poll(tailer)
    log.unlink()
    assert poll(tailer) == []
    assert stats.files_watched == stats.files_open == 0
    assert stats.lines_partial == 1
    assert tailer.tracked_paths() == frozenset()


def test_truncation_of_an_idle_closed_file(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(20)))
    stats, mono = TailStats(), Clock(0.0)
    tailer = Tailer([str(log)], stats=stats, monotonic=mono, idle_close=1.0)
    poll(tailer)
    mono.now = 2.0
    poll(tailer)
    log.write_bytes(b"".join(caffe_lines(3, start=100)))  # truncated and rewritten, shorter
    chunks = poll(tailer)
    assert text(chunks) == decoded(caffe_lines(3, start=100))
    assert chunks[0].file_start and stats.truncations == 1
