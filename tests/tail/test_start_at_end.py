"""start_at_end: files present at the first poll are skipped to their last complete line."""

from __future__ import annotations

from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import append, caffe_lines, decoded, long_caffe_lines, poll, text


def test_existing_content_is_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    old = caffe_lines(120)
    log.write_bytes(b"".join(old))
    stats = TailStats()
    tailer = Tailer([str(log)], start_at_end=True, stats=stats)
    assert poll(tailer) == []
    assert tailer.positions()[str(log)].offset == log.stat().st_size
    assert stats.bytes_read == 0

    new = caffe_lines(5, start=120)
    append(log, b"".join(new))
    chunks = poll(tailer)
    assert text(chunks) == decoded(new)
    assert chunks[0].first_line == 121
    assert not chunks[0].file_start


def test_line_being_written_at_start_is_read_whole(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b = long_caffe_lines(2)
    log.write_bytes(a + b[:33])
    tailer = Tailer([str(log)], start_at_end=True)
    assert poll(tailer) == []
    append(log, b[33:])
    chunks = poll(tailer)
    assert text(chunks) == decoded([b])  # not a fragment starting mid-line
    assert chunks[0].first_line == 2
