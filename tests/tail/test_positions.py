"""Positions: serialisable offsets, and resuming after a restart only when the file is the same one."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from exporter.tail import FilePosition, Tailer, TailStats

from . import append, caffe_lines, decoded, long_caffe_lines, poll, text


def test_round_trip_over_every_field() -> None:
    pos = FilePosition(path="/logs/caffe.log", dev=64769, ino=1234567, offset=98765, line=4321,
                       head="ab" * 20, head_len=1024, forgotten=True)  # fmt: skip
    d = pos.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(FilePosition)}
    assert FilePosition.from_dict(json.loads(json.dumps(d))) == pos
    for field in dataclasses.fields(FilePosition):  # every field survives on its own
        value = getattr(pos, field.name)
        if isinstance(value, bool):
            new: object = not value
        else:
            new = value + (1 if isinstance(value, int) else "x")
        changes: dict[str, Any] = {field.name: new}  # the field's own type, checked by from_dict below
        changed = dataclasses.replace(pos, **changes)
        assert FilePosition.from_dict(changed.to_dict()) == changed


def test_from_dict_defaults_head_len_and_rejects_bad_types() -> None:
    d: dict[str, object] = {"path": "a.log", "dev": 1, "ino": 2, "offset": 3, "line": 4, "head": ""}
    assert FilePosition.from_dict(d).head_len == -1
    for key, bad in [("dev", "1"), ("offset", None), ("line", True), ("path", 5), ("head", None)]:
        with pytest.raises(ValueError):
            FilePosition.from_dict({**d, key: bad})


def test_positions_count_complete_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    a, b = long_caffe_lines(2)
    log.write_bytes(a + b[:10])
    tailer = Tailer([str(log)])
    poll(tailer)
    pos = tailer.positions()[str(log)]
    st = log.stat()
    assert (pos.path, pos.dev, pos.ino, pos.offset, pos.line) == (str(log), st.st_dev, st.st_ino, len(a), 1)
    assert pos.head == hashlib.sha1(a + b[:10]).hexdigest()
    assert pos.head_len == len(a) + 10


def test_resume_continues_where_the_last_run_stopped(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    first, second = caffe_lines(300), caffe_lines(40, start=300)
    partial = long_caffe_lines(1)[0]
    log.write_bytes(b"".join(first) + partial[:12])
    tailer = Tailer([str(log)])
    poll(tailer)
    saved = {p: FilePosition.from_dict(json.loads(json.dumps(fp.to_dict())))
             for p, fp in tailer.positions().items()}  # fmt: skip
    tailer.close()

    append(log, partial[12:] + b"".join(second))  # written while the exporter was down
    stats = TailStats()
    resumed = Tailer([str(log)], positions=saved, start_at_end=True, stats=stats)
    chunks = poll(resumed)
    assert text(chunks) == decoded([partial, *second])
    assert chunks[0].first_line == 301
    assert not chunks[0].file_start
    assert stats.bytes_read == log.stat().st_size - saved[str(log)].offset


def test_replaced_file_is_read_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(30)))
    tailer = Tailer([str(log)])
    poll(tailer)
    saved = tailer.positions()
    tailer.close()

    os.unlink(log)
    fresh = caffe_lines(50, start=600)
    log.write_bytes(b"".join(fresh))  # another file (the inode may even be recycled)
    chunks = poll(Tailer([str(log)], positions=saved))
    assert text(chunks) == decoded(fresh)
    assert chunks[0].file_start and chunks[0].first_line == 1


def test_same_inode_with_other_head_or_shorter_size_is_not_resumed(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    lines = caffe_lines(30)
    log.write_bytes(b"".join(lines))
    tailer = Tailer([str(log)])
    poll(tailer)
    saved = tailer.positions()[str(log)]
    tailer.close()

    other_head = dataclasses.replace(saved, head=hashlib.sha1(b"something else").hexdigest())
    assert text(poll(Tailer([str(log)], positions={str(log): other_head}))) == decoded(lines)
    too_far = dataclasses.replace(saved, offset=saved.offset + 1)
    assert text(poll(Tailer([str(log)], positions={str(log): too_far}))) == decoded(lines)
    unknown_len = dataclasses.replace(saved, head_len=-1)
    assert poll(Tailer([str(log)], positions={str(log): unknown_len})) == []


def test_unused_positions_are_carried_into_the_next_checkpoint(tmp_path: Path) -> None:
    saved = FilePosition(path=str(tmp_path / "gone.log"), dev=1, ino=2, offset=30, line=3, head="0" * 40, head_len=30)
    tailer = Tailer([saved.path], positions={saved.path: saved})
    assert poll(tailer) == []  # the file is not there (yet)
    assert tailer.positions() == {saved.path: saved}
