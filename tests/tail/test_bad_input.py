"""Bad input never raises: oversized lines, NUL padding, binary junk, unreadable and vanished files."""

from __future__ import annotations

import os
import random
from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import FIXTURES, append, caffe_lines, decoded, poll, text


def test_oversized_line_is_dropped_and_reading_resyncs(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b, c = caffe_lines(3, start=1000)
    huge = b"I1126 14:26:20.000000 18205 net.cpp:1] " + b"x" * 5000 + b"\n"
    log.write_bytes(a + huge + b)
    stats = TailStats()
    tailer = Tailer([str(log)], max_line_bytes=1000, read_bytes=512, stats=stats)
    chunks = poll(tailer)
    assert text(chunks) == decoded([a, b])
    assert [ch.first_line for ch in chunks if ch.text.startswith(b.decode())] == [3]
    assert stats.lines_oversized == 1

    # An oversized line still being written is not buffered past max_line_bytes.
    append(log, b"y" * 3000)
    assert poll(tailer) == []
    assert stats.lines_oversized == 2
    append(log, b"y" * 3000 + b"\n" + c)
    chunks = poll(tailer)
    assert text(chunks) == decoded([c])
    assert chunks[0].first_line == 5
    assert stats.lines_oversized == 2


def test_oversized_line_inside_one_read(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    lines = caffe_lines(40, start=700)
    huge = b"z" * 300 + b"\n"
    log.write_bytes(b"".join(lines[:20]) + huge + b"".join(lines[20:]))
    stats = TailStats()
    chunks = poll(Tailer([str(log)], max_line_bytes=200, stats=stats))
    assert text(chunks) == decoded(lines)
    assert [c.first_line for c in chunks] == [1, 22]
    assert stats.lines_oversized == 1


def test_nul_padding_left_by_a_crashed_writer(tmp_path: Path) -> None:
    """A real glog file that ends in 518 NUL bytes (a killed process), then the writer resumes."""
    real = (FIXTURES / "public-logs" / "ssd-mobilenet-glog-2gpu-finetune-nul-tail.log").read_bytes()
    log = tmp_path / "caffe.log"
    log.write_bytes(real)
    tailer = Tailer([str(log)])
    expected = real[: real.rindex(b"\n") + 1].decode("utf-8", "replace")
    assert text(poll(tailer)) == expected
    more = caffe_lines(2, start=900)
    append(log, b"".join(more))
    assert text(poll(tailer)) == decoded(more)  # the NULs vanish from the line they prefixed
    log.unlink()
    assert poll(tailer) == []  # a NUL-only partial line is nothing to flush


def test_binary_junk_never_raises(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    junk = random.Random(7).randbytes(200_000)
    log.write_bytes(junk)
    stats = TailStats()
    chunks = poll(Tailer([str(log)], max_line_bytes=4096, read_bytes=8192, stats=stats))
    kept = [ln for ln in junk[: junk.rindex(b"\n") + 1].split(b"\n")[:-1] if len(ln.replace(b"\0", b"")) <= 4096]
    assert text(chunks) == "".join(ln.replace(b"\0", b"").decode("utf-8", "replace") + "\n" for ln in kept)
    assert stats.bytes_read == len(junk)


def test_dangling_symlink_is_counted_once_and_retried(tmp_path: Path) -> None:
    target = tmp_path / "target.data"
    (tmp_path / "broken.log").symlink_to(target.name)
    stats = TailStats()
    tailer = Tailer([str(tmp_path)], stats=stats)
    assert poll(tailer) == []
    assert stats.read_errors == 1
    assert poll(tailer) == []
    assert stats.read_errors == 1  # the same failure episode is counted once
    assert stats.files_unreadable == 1  # ...and is still going on
    target.write_bytes(b"".join(caffe_lines(3)))
    assert text(poll(tailer)) == decoded(caffe_lines(3))
    assert stats.files_watched == 1
    assert stats.read_errors == 1
    assert stats.files_unreadable == 0


def test_read_failing_with_eio_is_counted_and_does_not_stop_others(tmp_path: Path) -> None:
    """/proc/self/mem is a regular file that root can open but reading offset 0 fails with EIO."""
    (tmp_path / "mem.log").symlink_to("/proc/self/mem")
    good = tmp_path / "good.log"
    good.write_bytes(b"".join(caffe_lines(4)))
    stats = TailStats()
    tailer = Tailer([str(tmp_path)], stats=stats)
    assert text(poll(tailer)) == decoded(caffe_lines(4))
    assert stats.read_errors == 1
    append(good, b"".join(caffe_lines(2, start=4)))
    assert text(poll(tailer)) == decoded(caffe_lines(2, start=4))
    assert stats.read_errors == 1


def test_fifo_and_directory_named_like_logs(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.log")
    (tmp_path / "dir.log").mkdir()
    stats = TailStats()
    # In a directory or glob, non-regular files are skipped; an explicitly named FIFO is an error.
    assert poll(Tailer([str(tmp_path), str(tmp_path / "*.log")], stats=stats)) == []
    assert stats.read_errors == 0
    assert poll(Tailer([str(tmp_path / "pipe.log")], stats=stats)) == []
    assert stats.read_errors == 1
    assert stats.files_watched == 0
