"""forget (a run was dropped) and set_sources (configuration reload), both requested from other threads."""

from __future__ import annotations

import threading
from pathlib import Path

from exporter.tail import FilePosition, Tailer, TailStats

from . import append, by_path, caffe_lines, decoded, long_caffe_lines, poll, poll_all, text


def test_forgotten_file_is_closed_and_not_read_again(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(40)))
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    poll(tailer)
    t = threading.Thread(target=tailer.forget, args=(str(log),))
    t.start()
    t.join()

    chunks = poll_all(tailer)
    assert [c.text for c in chunks] == [""]  # commits the forgotten position, reads nothing
    end = chunks[0].end
    assert end is not None and end.forgotten and end.offset == log.stat().st_size
    assert stats.files_watched == stats.files_open == 0
    assert poll_all(tailer) == []
    assert tailer.positions() == {str(log): end}
    assert tailer.tracked_paths() == {str(log)}


def test_forgotten_file_that_grows_is_read_from_zero_as_a_new_file(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    first, more = caffe_lines(40), caffe_lines(3, start=40)
    log.write_bytes(b"".join(first))
    tailer = Tailer([str(log)])
    poll(tailer)
    tailer.forget(str(log))
    poll(tailer)
    append(log, b"".join(more))
    chunks = poll(tailer)
    assert text(chunks) == decoded(first + more)
    assert chunks[0].file_start and chunks[0].first_line == 1
    assert chunks[-1].end is not None and not chunks[-1].end.forgotten
    assert not tailer.positions()[str(log)].forgotten


def test_forgotten_path_replaced_by_another_file_is_read(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(10)))
    tailer = Tailer([str(log)])
    poll(tailer)
    tailer.forget(str(log))
    poll(tailer)
    log.unlink()
    assert poll(tailer) == []
    assert tailer.tracked_paths() == frozenset()  # nothing left to remember
    log.write_bytes(b"".join(caffe_lines(10)))  # same size, other file
    chunks = poll(tailer)
    assert text(chunks) == decoded(caffe_lines(10)) and chunks[0].file_start


def test_forgotten_position_survives_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(40)))
    tailer = Tailer([str(log)])
    poll(tailer)
    tailer.forget(str(log))
    poll(tailer)
    saved = {p: FilePosition.from_dict(pos.to_dict()) for p, pos in tailer.positions().items()}
    tailer.close()
    assert saved[str(log)].forgotten

    restarted = Tailer([str(log)], positions=saved)
    assert poll_all(restarted) == []  # not re-read: its run was dropped
    assert restarted.positions() == saved
    append(log, long_caffe_lines(1)[0])
    chunks = poll(restarted)
    assert chunks[0].file_start and text(chunks) == decoded(caffe_lines(40) + long_caffe_lines(1))


def test_old_position_dicts_without_forgotten_are_accepted() -> None:
    d: dict[str, object] = {"path": "a.log", "dev": 1, "ino": 2, "offset": 3, "line": 4, "head": "", "head_len": 0}
    assert FilePosition.from_dict(d).forgotten is False


def test_forget_a_path_not_opened_yet_keeps_it_unread(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(10)))
    tailer = Tailer([str(log)])
    tailer.forget(str(log))
    chunks = poll_all(tailer)
    assert [c.text for c in chunks] == [""]
    assert chunks[0].end is not None and chunks[0].end.forgotten


def test_forget_an_unknown_path_is_harmless(tmp_path: Path) -> None:
    tailer = Tailer([str(tmp_path / "*.log")])
    tailer.forget(str(tmp_path / "never.log"))
    assert poll_all(tailer) == []
    assert tailer.tracked_paths() == frozenset()


def test_set_sources_adds_and_removes(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "caffe.log", tmp_path / "b" / "caffe.log"
    a.parent.mkdir()
    b.parent.mkdir()
    x, y = long_caffe_lines(2)
    a.write_bytes(b"".join(caffe_lines(5)) + x[:20])  # a partial line pending
    b.write_bytes(b"".join(caffe_lines(7)))
    stats = TailStats()
    tailer = Tailer([str(a)], stats=stats)
    assert by_path(poll(tailer)) == {str(a): decoded(caffe_lines(5))}
    assert tailer.watch_roots() == [str(a.parent)]

    t = threading.Thread(target=tailer.set_sources, args=([str(b)],))
    t.start()
    t.join()
    assert tailer.watch_roots() == [str(a.parent)]  # applied at the next poll
    assert by_path(poll(tailer)) == {str(b): decoded(caffe_lines(7))}
    assert tailer.watch_roots() == [str(b.parent)]
    assert tailer.tracked_paths() == {str(b)}
    assert stats.files_watched == stats.files_open == 1
    assert stats.lines_partial == 1  # a's fragment will never be completed for us
    append(a, x[20:] + y)
    assert poll(tailer) == []

    tailer.set_sources([str(b), str(a)])  # a comes back: a new file for us, read from 0
    chunks = poll(tailer)
    assert by_path(chunks) == {str(a): decoded([*caffe_lines(5), x, y])}
    assert chunks[0].file_start


def test_forgotten_file_rotated_to_a_matched_name_stays_dormant(tmp_path: Path) -> None:
    log, rotated = tmp_path / "caffe.log", tmp_path / "caffe.log.1"
    log.write_bytes(b"".join(caffe_lines(20)))
    tailer = Tailer([str(tmp_path / "caffe.log*")])
    poll(tailer)
    tailer.forget(str(log))
    poll(tailer)
    rotated_ino = log.stat().st_ino
    log.rename(rotated)
    log.write_bytes(b"".join(caffe_lines(4, start=20)))
    chunks = poll_all(tailer)
    assert by_path(chunks) == {str(log): decoded(caffe_lines(4, start=20)), str(rotated): ""}
    moved = [c.end for c in chunks if c.path == str(rotated)]
    assert moved[0] is not None and moved[0].forgotten and moved[0].ino == rotated_ino
    assert tailer.tracked_paths() == {str(log), str(rotated)}
    assert tailer.positions()[str(rotated)].forgotten


def test_forgotten_file_rotated_while_down_stays_dormant(tmp_path: Path) -> None:
    log, rotated = tmp_path / "caffe.log", tmp_path / "caffe.log.1"
    log.write_bytes(b"".join(caffe_lines(20)))
    source = str(tmp_path / "caffe.log*")
    tailer = Tailer([source])
    poll(tailer)
    tailer.forget(str(log))
    poll(tailer)
    saved = tailer.positions()
    tailer.close()
    log.rename(rotated)
    log.write_bytes(b"".join(caffe_lines(4, start=20)))

    restarted = Tailer([source], positions=saved)
    chunks = poll_all(restarted)
    assert by_path(chunks) == {str(log): decoded(caffe_lines(4, start=20)), str(rotated): ""}
    assert restarted.positions()[str(rotated)].forgotten


def test_forget_a_restored_path_before_it_is_opened_uses_its_current_end(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(10)))
    tailer = Tailer([str(log)])
    poll(tailer)
    saved = tailer.positions()
    tailer.close()
    append(log, b"".join(caffe_lines(5, start=10)))  # grew while down
    restarted = Tailer([str(log)], positions=saved)
    restarted.forget(str(log))
    chunks = poll_all(restarted)
    assert [c.text for c in chunks] == [""]
    assert chunks[0].end is not None and chunks[0].end.offset == log.stat().st_size
    assert poll_all(restarted) == []
