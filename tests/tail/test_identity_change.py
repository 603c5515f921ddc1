"""A saved position is matched by content, not by (st_dev, st_ino). Before, a log copied and renamed (new
inode) or on a remounted device (new st_dev) while the exporter was down was re-read from 0 on top of the
restored state: every counter doubled."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from exporter.tail import FilePosition, Tailer

from . import by_path, caffe_lines, decoded, poll, poll_all, text


def saved_after_reading(log: Path, source: str | None = None) -> dict[str, FilePosition]:
    tailer = Tailer([source or str(log)])
    poll(tailer)
    positions = {p: FilePosition.from_dict(pos.to_dict()) for p, pos in tailer.positions().items()}
    tailer.close()
    return positions


def test_copy_and_rename_resumes_at_the_saved_offset(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    first, later = caffe_lines(300), caffe_lines(40, start=300)
    log.write_bytes(b"".join(first))
    saved = saved_after_reading(log)
    old_ino = log.stat().st_ino

    tmp = tmp_path / "caffe.log.tmp"
    shutil.copy2(log, tmp)  # cp -p log tmp && mv tmp log: same content, new inode
    os.replace(tmp, log)
    assert log.stat().st_ino != old_ino
    with open(log, "ab") as fh:
        fh.write(b"".join(later))

    chunks = poll_all(Tailer([str(log)], positions=saved))
    assert text(chunks) == decoded(later)
    lines = [c for c in chunks if c.text]
    assert lines[0].first_line == 301 and not lines[0].file_start
    # the new identity is committed at once, before any line
    assert chunks[0].text == "" and chunks[0].end is not None and chunks[0].end.ino == log.stat().st_ino


def test_new_device_number_resumes_at_the_saved_offset(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(100)))
    saved = saved_after_reading(log)
    remounted = {p: dataclasses.replace(pos, dev=pos.dev + 7) for p, pos in saved.items()}
    with open(log, "ab") as fh:
        fh.write(b"".join(caffe_lines(5, start=100)))
    chunks = poll(Tailer([str(log)], positions=remounted))
    assert text(chunks) == decoded(caffe_lines(5, start=100))
    assert chunks[0].first_line == 101


def test_rotated_while_down_resumes_the_rotated_file_and_reads_the_new_one(tmp_path: Path) -> None:
    log, rotated = tmp_path / "caffe.log", tmp_path / "caffe.log.1"
    before, tail_of_old, new = caffe_lines(200), caffe_lines(10, start=200), caffe_lines(30, start=210)
    log.write_bytes(b"".join(before))
    source = str(tmp_path / "caffe.log*")
    saved = saved_after_reading(log, source)
    assert set(saved) == {str(log)}

    with open(log, "ab") as fh:  # written while the exporter was down, then rotated
        fh.write(b"".join(tail_of_old))
    os.rename(log, rotated)
    log.write_bytes(b"".join(new))

    tailer = Tailer([source], positions=saved)
    chunks = poll_all(tailer)
    assert by_path(chunks) == {str(rotated): decoded(tail_of_old), str(log): decoded(new)}
    assert [(c.path, c.first_line, c.file_start) for c in chunks if c.text] == [
        (str(rotated), 201, False), (str(log), 1, True)]
    rebound = [c for c in chunks if c.path == str(rotated) and not c.text]
    assert rebound and rebound[0].end is not None and rebound[0].end.offset == len(b"".join(before))
    assert tailer.tracked_paths() == {str(log), str(rotated)}


def test_two_rotations_while_down(tmp_path: Path) -> None:
    log, one, two = tmp_path / "caffe.log", tmp_path / "caffe.log.1", tmp_path / "caffe.log.2"
    a, b, c = caffe_lines(50), caffe_lines(50, start=50), caffe_lines(50, start=100)
    one.write_bytes(b"".join(a))
    log.write_bytes(b"".join(b))
    source = str(tmp_path / "caffe.log*")
    saved = saved_after_reading(log, source)
    assert set(saved) == {str(log), str(one)}
    os.rename(one, two)
    os.rename(log, one)
    log.write_bytes(b"".join(c))
    assert text(poll(Tailer([source], positions=saved))) == decoded(c)


def test_other_content_at_the_path_is_read_from_zero_even_with_the_same_identity(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(30)))
    saved = saved_after_reading(log)
    with open(log, "r+b") as fh:  # rewritten in place: same inode, other first KiB
        fh.write(b"".join(caffe_lines(60, start=900)))
    chunks = poll(Tailer([str(log)], positions=saved))
    assert text(chunks) == decoded(caffe_lines(60, start=900))
    assert chunks[0].file_start
