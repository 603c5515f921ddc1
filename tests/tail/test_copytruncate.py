"""copytruncate: the file shrinks under us; the partial line is dropped (counted) and reading restarts at 0."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import append, caffe_lines, decoded, long_caffe_lines, poll, text


def test_truncated_file_is_reread_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    before = caffe_lines(80)
    a, b = long_caffe_lines(2)
    log.write_bytes(b"".join(before))
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    assert text(poll(tailer)) == decoded(before)
    append(log, a + b[:20])  # a complete line and a partial one, unseen yet

    shutil.copyfile(log, tmp_path / "caffe.log.1")  # logrotate copytruncate
    with open(log, "r+b") as fh:
        fh.truncate(0)
    after = caffe_lines(10, start=200)
    append(log, b"".join(after))
    chunks = poll(tailer)

    # The lines written before the truncation are gone from the file; what we had read stays read,
    # the lines after it are read from offset 0 with numbering restarted.
    assert text(chunks) == decoded(after)
    assert chunks[0].file_start and chunks[0].first_line == 1
    assert stats.truncations == 1
    assert stats.rotations == 0
    assert stats.files_watched == 1


def test_partial_line_is_dropped_on_truncation(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b, c = long_caffe_lines(3)
    log.write_bytes(a + b[:25])
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    assert text(poll(tailer)) == decoded([a])

    os.truncate(log, 0)
    assert poll(tailer) == []  # the fragment is not a line: its end was never written
    assert stats.truncations == 1
    assert stats.lines_partial == 1

    append(log, c)
    chunks = poll(tailer)
    assert text(chunks) == decoded([c])
    assert chunks[0].file_start and chunks[0].first_line == 1


def test_truncation_followed_by_more_bytes_than_we_had_read(tmp_path: Path) -> None:
    """The size alone cannot tell; the changed first KiB does."""
    log = tmp_path / "caffe.log"
    first = caffe_lines(5)
    log.write_bytes(b"".join(first))
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    poll(tailer)
    bigger = caffe_lines(40, start=300)
    with open(log, "r+b") as fh:
        fh.truncate(0)
        fh.write(b"".join(bigger))
    chunks = poll(tailer)
    assert text(chunks) == decoded(bigger)
    assert chunks[0].file_start
    assert stats.truncations == 1
