"""Rename rotation: ``mv app.log app.log.1`` then a new ``app.log``; nothing lost, nothing read twice."""

from __future__ import annotations

import os
from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import Clock, append, by_path, caffe_lines, decoded, long_caffe_lines, poll, text


def test_old_file_is_drained_before_the_new_one_is_read(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    before, late, after = caffe_lines(50), caffe_lines(10, start=50), caffe_lines(30, start=60)
    log.write_bytes(b"".join(before))
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    assert text(poll(tailer)) == decoded(before)

    append(log, b"".join(late))  # written after our last poll, just before the rename
    os.rename(log, tmp_path / "caffe.log.1")
    log.write_bytes(b"".join(after))
    chunks = poll(tailer)

    assert text(chunks) == decoded(late + after)
    old = [c for c in chunks if c.first_line == 51]
    assert len(old) == 1 and not old[0].file_start
    new = [c for c in chunks if c.file_start]
    assert len(new) == 1 and new[0].first_line == 1 and new[0].text == decoded(after)
    assert chunks.index(old[0]) < chunks.index(new[0])
    assert stats.rotations == 1
    assert stats.files_watched == 1
    assert stats.truncations == stats.read_errors == 0
    assert tailer.positions()[str(log)].ino == log.stat().st_ino


def test_unterminated_last_line_of_rotated_file_is_dropped_once_it_stays_idle(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b, c = long_caffe_lines(3)
    log.write_bytes(a + b[:-10])
    stats, mono = TailStats(), Clock(0.0)
    tailer = Tailer([str(log)], stats=stats, monotonic=mono, rotate_wait=5.0)
    assert text(poll(tailer)) == decoded([a])
    os.rename(log, tmp_path / "caffe.log.1")
    log.write_bytes(c)

    chunks = poll(tailer)
    assert text(chunks) == decoded([c])  # the fragment waits: the writer may still finish it
    assert chunks[0].file_start
    assert stats.files_open == 2 and stats.files_watched == 1

    mono.now = 4.9
    assert poll(tailer) == []
    assert stats.files_open == 2 and stats.lines_partial == 0
    mono.now = 5.0
    assert poll(tailer) == []
    assert stats.files_open == 1
    assert stats.lines_partial == 1  # dropped, never parsed as a line


def test_rotated_name_matching_the_glob_is_not_read_again(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    rotated = tmp_path / "caffe.log.1"
    first, late, newer, after = (
        caffe_lines(40),
        caffe_lines(5, start=40),
        caffe_lines(5, start=45),
        caffe_lines(20, start=50),
    )
    log.write_bytes(b"".join(first))
    stats = TailStats()
    tailer = Tailer([str(tmp_path / "caffe.log*")], stats=stats)
    assert text(poll(tailer)) == decoded(first)

    append(log, b"".join(late))
    os.rename(log, rotated)
    log.write_bytes(b"".join(after))
    # The old file is drained under the name its lines were written to, then followed as caffe.log.1.
    assert by_path(poll(tailer)) == {str(log): decoded(late + after)}
    assert stats.rotations == 1
    assert stats.files_watched == 2

    append(rotated, b"".join(newer))  # a writer still holding the old file keeps appending
    assert by_path(poll(tailer)) == {str(rotated): decoded(newer)}
    assert poll(tailer) == []


def test_rename_then_create_after_a_poll_in_between(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    first, after = caffe_lines(20), caffe_lines(20, start=20)
    log.write_bytes(b"".join(first))
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    poll(tailer)
    os.rename(log, tmp_path / "caffe.log.1")
    assert poll(tailer) == []
    assert stats.files_watched == 0

    log.write_bytes(b"".join(after))
    chunks = poll(tailer)
    assert text(chunks) == decoded(after)
    assert chunks[0].file_start and chunks[0].first_line == 1
    assert stats.rotations == 1
    assert stats.files_watched == 1


def test_symlink_retargeted_to_a_new_run(tmp_path: Path) -> None:
    """glog's ``caffe.INFO`` symlink points at each new run's file in turn."""
    run1, run2 = (
        tmp_path / "caffe.h.u.log.INFO.20261126-143014.1",
        tmp_path / "caffe.h.u.log.INFO.20261126-150000.2",
    )
    run1.write_bytes(b"".join(caffe_lines(10)))
    link = tmp_path / "caffe.INFO"
    link.symlink_to(run1.name)
    stats = TailStats()
    tailer = Tailer([str(link)], stats=stats)
    assert text(poll(tailer)) == decoded(caffe_lines(10))

    run2.write_bytes(b"".join(caffe_lines(5, start=10)))
    tmp = tmp_path / "caffe.INFO.tmp"
    tmp.symlink_to(run2.name)
    os.replace(tmp, link)
    chunks = poll(tailer)
    assert text(chunks) == decoded(caffe_lines(5, start=10))
    assert chunks[0].path == str(link) and chunks[0].file_start
    assert stats.rotations == 1


def test_rotated_file_still_matched_keeps_its_partial_line_until_completed(tmp_path: Path) -> None:
    """A writer that has not reopened yet may finish its line in the renamed file: no fragment lines."""
    log, rotated = tmp_path / "caffe.log", tmp_path / "caffe.log.1"
    a, b = long_caffe_lines(2)
    log.write_bytes(a + b[:30])
    stats = TailStats()
    tailer = Tailer([str(tmp_path / "caffe.log*")], stats=stats)
    assert text(poll(tailer)) == decoded([a])
    os.rename(log, rotated)
    log.write_bytes(b"")
    assert poll(tailer) == []
    append(rotated, b[30:])
    chunks = poll(tailer)
    assert by_path(chunks) == {str(rotated): decoded([b])}
    assert chunks[0].first_line == 2
    assert stats.rotations == 1
