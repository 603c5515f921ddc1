"""Tailer.poll_changed: a watcher's change set that names only followed files reads just those files."""

from __future__ import annotations

import os
from pathlib import Path

from exporter.tail import Tailer

from . import append, by_path, caffe_lines, decoded, poll


def test_only_the_named_followed_file_is_read(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"".join(caffe_lines(3)))
    b.write_bytes(b"".join(caffe_lines(3, start=3)))
    tailer = Tailer([str(tmp_path)])
    poll(tailer)
    append(a, b"".join(caffe_lines(2, start=6)))
    append(b, b"".join(caffe_lines(2, start=8)))
    (tmp_path / "c.log").write_bytes(b"".join(caffe_lines(1, start=10)))  # a full poll would find it
    got = by_path(c for c in tailer.poll_changed({str(a)}) if c.text)
    assert got == {str(a): decoded(caffe_lines(2, start=6))}
    assert by_path(poll(tailer)) == {str(b): decoded(caffe_lines(2, start=8)),
                                     str(tmp_path / "c.log"): decoded(caffe_lines(1, start=10))}


def test_a_name_that_is_not_followed_makes_it_a_full_poll(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    a.write_bytes(b"".join(caffe_lines(3)))
    tailer = Tailer([str(tmp_path)])
    poll(tailer)
    new = tmp_path / "new.log"
    new.write_bytes(b"".join(caffe_lines(2, start=3)))
    got = by_path(c for c in tailer.poll_changed({str(new)}) if c.text)
    assert got == {str(new): decoded(caffe_lines(2, start=3))}


def test_a_rotated_path_makes_it_a_full_poll_that_sees_the_rotation(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(3)))
    tailer = Tailer([str(log)])
    poll(tailer)
    append(log, b"".join(caffe_lines(1, start=3)))
    os.rename(log, tmp_path / "caffe.log.1")
    log.write_bytes(b"".join(caffe_lines(2, start=4)))
    got = "".join(c.text for c in tailer.poll_changed({str(log)}))
    assert got == decoded(caffe_lines(3, start=3))  # the old file's last line, then the new file
    assert tailer.stats.rotations == 1


def test_before_the_first_poll_it_is_a_full_poll(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    a.write_bytes(b"".join(caffe_lines(4)))
    tailer = Tailer([str(tmp_path)])
    assert "".join(c.text for c in tailer.poll_changed({str(a)})) == decoded(caffe_lines(4))
