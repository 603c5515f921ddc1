"""A file renamed away keeps being read until it has been idle for rotate_wait (as Promtail and mtail do).

Before, it was closed at the first poll that saw the rename: what the writer appended to its open
descriptor before reopening was lost (review D7a: 19,892 bytes) and its partial line was parsed as a line.
"""

from __future__ import annotations

import os
from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import Clock, caffe_lines, decoded, long_caffe_lines, poll, text


def test_writer_finishing_in_the_renamed_file_loses_nothing(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b = long_caffe_lines(2)
    late, after = caffe_lines(200, start=1500), caffe_lines(20, start=1700)
    stats, mono = TailStats(), Clock(0.0)
    tailer = Tailer([str(log)], stats=stats, monotonic=mono)
    with open(log, "wb", buffering=0) as writer:  # the training process, holding its descriptor
        writer.write(a + b[:40])
        assert text(poll(tailer)) == decoded([a])
        os.rename(log, tmp_path / "caffe.log.1")  # logrotate
        mono.now = 1.0
        assert poll(tailer) == []  # the rename is seen before the writer reopens
        writer.write(b[40:] + b"".join(late))
    log.write_bytes(b"".join(after))  # the writer reopens its log by name
    mono.now = 2.0
    chunks = poll(tailer)

    assert text(chunks) == decoded([b, *late, *after])
    old = [c for c in chunks if not c.file_start and c.first_line == 2]
    assert len(old) == 1 and old[0].path == str(log) and old[0].end is None  # nothing resumes it
    new = [c for c in chunks if c.file_start]
    assert len(new) == 1 and new[0].first_line == 1 and new[0].end is not None
    assert chunks.index(old[0]) < chunks.index(new[0])
    assert stats.lines_partial == 0 and stats.rotations == 1
    assert stats.files_open == 2 and stats.files_watched == 1


def test_rotated_file_is_closed_once_idle_for_rotate_wait(tmp_path: Path) -> None:
    log, rotated = tmp_path / "caffe.log", tmp_path / "caffe.log.1"
    lines = caffe_lines(30)
    log.write_bytes(b"".join(lines[:10]))
    stats, mono = TailStats(), Clock(100.0)
    tailer = Tailer([str(log)], stats=stats, monotonic=mono, rotate_wait=5.0)
    poll(tailer)
    os.rename(log, rotated)
    assert poll(tailer) == []
    assert stats.files_open == 1 and stats.files_watched == 0

    mono.now = 104.0
    with open(rotated, "ab") as fh:
        fh.write(b"".join(lines[10:20]))
    assert text(poll(tailer)) == decoded(lines[10:20])  # growth restarts the wait
    mono.now = 108.9
    assert poll(tailer) == []
    assert stats.files_open == 1
    mono.now = 109.0
    assert poll(tailer) == []
    assert stats.files_open == 0
    with open(rotated, "ab") as fh:
        fh.write(b"".join(lines[20:]))
    assert poll(tailer) == []  # closed for good: nothing names it any more
    assert stats.lines_partial == 0


def test_deleted_file_is_not_kept_open(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(5)))
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    poll(tailer)
    log.unlink()
    assert poll(tailer) == []
    assert stats.files_open == 0
