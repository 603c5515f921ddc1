"""read_stream on a pipe: lines are yielded as they arrive, not at EOF; a last unterminated line is dropped."""

from __future__ import annotations

import io
import os
import threading

import pytest

from exporter.tail import TailStats, read_stream

from . import caffe_lines, decoded, long_caffe_lines

WAIT = 10.0  # seconds; every wait in this file is bounded


@pytest.mark.parametrize("buffering", [-1, 0], ids=["buffered-read1", "raw-fileio"])
def test_slow_writer_lines_arrive_before_eof(buffering: int) -> None:
    first = caffe_lines(3)
    second = long_caffe_lines(2)
    r, w = os.pipe()
    seen_first = threading.Event()
    waited: list[bool] = []

    def writer() -> None:
        with os.fdopen(w, "wb", buffering=0) as out:
            out.write(b"".join(first))
            waited.append(seen_first.wait(WAIT))  # the reader must yield before we write more
            out.write(second[0] + second[1][:-1])  # the last line never gets its newline

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    stats = TailStats()
    chunks = []
    with os.fdopen(r, "rb", buffering=buffering) as stream:
        for chunk in read_stream(stream, stats=stats):
            chunks.append(chunk)
            if "".join(c.text for c in chunks) == decoded(first):
                assert stats.files_watched == 1
                seen_first.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert waited == [True]
    assert "".join(c.text for c in chunks) == decoded(first + second[:1])
    assert all(c.path == "-" and c.mtime == 0.0 and c.text.endswith("\n") and c.end is None for c in chunks)
    assert chunks[0].file_start and chunks[0].first_line == 1
    assert not any(c.file_start for c in chunks[1:])
    assert chunks[-1].first_line == len(first) + 1
    assert stats.bytes_read == len(b"".join(first + second)) - 1
    assert stats.lines_partial == 1
    assert stats.files_watched == 0


def test_stream_oversized_and_nul() -> None:
    data = b"a\0b\n" + b"x" * 50 + b"\nlast"
    stats = TailStats()
    chunks = list(read_stream(io.BytesIO(data), path="pipe", max_line_bytes=10, stats=stats))
    assert "".join(c.text for c in chunks) == "ab\n"
    assert [c.first_line for c in chunks] == [1]
    assert stats.lines_oversized == 1
    assert stats.lines_partial == 1  # "last" never got its newline
