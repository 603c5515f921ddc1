"""Basic tail: chunks of complete lines, a partial last line held back until completed."""

from __future__ import annotations

from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import Clock, append, caffe_lines, decoded, long_caffe_lines, poll, text


def test_reads_existing_file_in_chunks_ending_at_newlines(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    lines = caffe_lines(300)
    log.write_bytes(b"".join(lines))
    stats, clock = TailStats(), Clock(5.0)
    tailer = Tailer([str(log)], read_bytes=4096, stats=stats, clock=clock)

    chunks = poll(tailer)

    assert text(chunks) == decoded(lines)
    assert len(chunks) > 1  # read_bytes forces several reads
    assert [c.file_start for c in chunks] == [True] + [False] * (len(chunks) - 1)
    expected_first = 1
    for c in chunks:
        assert c.path == str(log)
        assert c.first_line == expected_first
        assert c.mtime == log.stat().st_mtime
        expected_first += c.text.count("\n")
    assert stats.bytes_read == log.stat().st_size
    assert stats.files_watched == 1
    assert stats.last_read_time == 5.0
    assert poll(tailer) == []  # nothing new
    tailer.close()
    assert stats.files_watched == 0


def test_partial_line_waits_until_completed(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b, c = long_caffe_lines(3)
    log.write_bytes(a + b[:17])
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)

    first = poll(tailer)
    assert text(first) == decoded([a])
    assert tailer.positions()[str(log)].offset == len(a)  # the partial line is not consumed yet

    append(log, b[17:-1])  # still no newline
    assert poll(tailer) == []

    append(log, b"\n" + c)
    second = poll(tailer)
    assert text(second) == decoded([b, c])
    assert second[0].first_line == 2
    assert not second[0].file_start
    assert tailer.positions()[str(log)].offset == len(a + b + c)
    assert tailer.positions()[str(log)].line == 3
    assert stats.lines_oversized == stats.read_errors == stats.rotations == stats.truncations == 0


def test_line_split_across_many_small_appends(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"")
    lines = caffe_lines(20, start=400)
    data = b"".join(lines)
    tailer = Tailer([str(log)])
    out = poll(tailer)
    for i in range(0, len(data), 37):
        append(log, data[i : i + 37])
        out += poll(tailer)
    assert text(out) == decoded(lines)
    assert out[0].file_start and out[0].first_line == 1
