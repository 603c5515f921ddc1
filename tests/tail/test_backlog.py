"""TailStats.backlog_bytes: bytes known to be in followed files and not read yet, from each file's last stat."""

from __future__ import annotations

from pathlib import Path

from exporter.events import FilePosition
from exporter.tail import Tailer, TailStats

from . import append, caffe_lines, poll_all


def test_the_first_poll_counts_every_file_before_reading_and_down_to_zero(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"".join(caffe_lines(40)))
    b.write_bytes(b"".join(caffe_lines(30, start=40)))
    total = a.stat().st_size + b.stat().st_size
    stats = TailStats()
    tailer = Tailer([str(tmp_path)], read_bytes=256, stats=stats)
    chunks = tailer.poll()
    next(chunks)  # the first lines of a.log: b.log not opened yet, its bytes already counted
    assert 0 < stats.bytes_read < total
    assert stats.backlog_bytes == total - stats.bytes_read
    list(chunks)
    assert stats.bytes_read == total
    assert stats.backlog_bytes == 0


def test_an_append_is_counted_at_the_poll_that_stats_it_and_paid_as_it_is_read(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(5)))
    stats = TailStats()
    tailer = Tailer([str(log)], read_bytes=128, stats=stats)
    poll_all(tailer)
    more = b"".join(caffe_lines(20, start=5))
    append(log, more)
    assert stats.backlog_bytes == 0  # not stat'ed yet
    before = stats.bytes_read
    chunks = tailer.poll()
    next(chunks)
    assert 0 < stats.bytes_read - before < len(more)
    assert stats.backlog_bytes == len(more) - (stats.bytes_read - before)
    list(chunks)
    assert stats.backlog_bytes == 0


def test_a_restored_offset_counts_only_what_lies_beyond_it(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    first, rest = b"".join(caffe_lines(10)), b"".join(caffe_lines(10, start=10))
    log.write_bytes(first)
    tailer = Tailer([str(log)])
    poll_all(tailer)
    saved: FilePosition = tailer.positions()[str(log)]
    append(log, rest)
    stats = TailStats()
    restarted = Tailer([str(log)], positions={str(log): saved}, read_bytes=64, stats=stats)
    chunks = restarted.poll()
    next(chunks)
    assert stats.backlog_bytes == len(rest) - stats.bytes_read
    list(chunks)
    assert stats.bytes_read == len(rest) and stats.backlog_bytes == 0


def test_a_file_that_stops_being_followed_leaves_the_backlog(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(10)))
    stats = TailStats()
    tailer = Tailer([str(log)], read_bytes=64, stats=stats)
    chunks = tailer.poll()
    next(chunks)
    assert stats.backlog_bytes > 0
    del chunks  # abandoned mid-file: the rest stays owed
    tailer.set_sources([])
    poll_all(tailer)
    assert stats.backlog_bytes == 0
