"""Deletion: the open file is drained and closed (an unterminated last line dropped); a file re-created at the
path is read from 0."""

from __future__ import annotations

from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import append, caffe_lines, decoded, long_caffe_lines, poll, text


def test_deleted_file_is_drained_closed_and_recreated_file_read(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    first = caffe_lines(30)
    late = long_caffe_lines(2)
    log.write_bytes(b"".join(first))
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    assert text(poll(tailer)) == decoded(first)
    assert stats.files_watched == 1

    append(log, late[0] + late[1][:30])  # a line and a partial one written just before deletion
    log.unlink()
    chunks = poll(tailer)
    assert text(chunks) == late[0].decode()
    assert stats.lines_partial == 1
    assert stats.files_watched == stats.files_open == 0
    assert tailer.positions() == {}
    assert poll(tailer) == []

    again = caffe_lines(12, start=500)
    log.write_bytes(b"".join(again))
    chunks = poll(tailer)
    assert text(chunks) == decoded(again)
    assert chunks[0].file_start and chunks[0].first_line == 1
    assert stats.files_watched == 1
    assert stats.rotations == 1  # the watched path names another file now
    assert stats.read_errors == 0  # a missing explicit file is not an error


def test_deleted_file_in_directory_source(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(b"".join(caffe_lines(10)))
    stats = TailStats()
    tailer = Tailer([str(tmp_path)], stats=stats)
    poll(tailer)
    log.unlink()
    assert poll(tailer) == []
    assert stats.files_watched == 0
    assert stats.read_errors == 0
