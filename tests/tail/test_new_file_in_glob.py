"""Files that appear after start (matching a glob, or in a watched directory) are read from offset 0."""

from __future__ import annotations

from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import by_path, caffe_lines, decoded, poll


def test_new_file_matching_glob_is_read_from_start_even_with_start_at_end(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    old.write_bytes(b"".join(caffe_lines(50)))
    stats = TailStats()
    tailer = Tailer([str(tmp_path / "*.log")], start_at_end=True, stats=stats)
    assert poll(tailer) == []  # old.log existed at the first poll: skipped to its end
    assert stats.files_watched == 1

    new = tmp_path / "new.log"
    new.write_bytes(b"".join(caffe_lines(25, start=50)))
    (tmp_path / "notes.txt").write_bytes(b"not a log\n")
    chunks = poll(tailer)
    assert by_path(chunks) == {str(new): decoded(caffe_lines(25, start=50))}
    assert chunks[0].file_start and chunks[0].first_line == 1
    assert stats.files_watched == 2


def test_recursive_glob_finds_files_in_new_subdirectories(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    tailer = Tailer([str(tmp_path / "runs" / "**" / "*.log")])
    assert poll(tailer) == []
    assert tailer.watch_roots() == [str(tmp_path / "runs")]
    assert tailer.watch_recursive()

    deep = tmp_path / "runs" / "2026" / "lenet"
    deep.mkdir(parents=True)
    top = tmp_path / "runs" / "top.log"
    nested = deep / "caffe.log"
    top.write_bytes(b"".join(caffe_lines(3)))
    nested.write_bytes(b"".join(caffe_lines(4, start=3)))
    assert by_path(poll(tailer)) == {
        str(nested): decoded(caffe_lines(4, start=3)),
        str(top): decoded(caffe_lines(3)),
    }


def test_directory_source_picks_up_new_logs_recursively(tmp_path: Path) -> None:
    stats = TailStats()
    tailer = Tailer([str(tmp_path)], stats=stats)
    assert poll(tailer) == []
    sub = tmp_path / "job7"
    sub.mkdir()
    log = sub / "train.log"
    log.write_bytes(b"".join(caffe_lines(9)))
    (sub / "solver.prototxt").write_bytes(b"base_lr: 0.01\n")
    assert by_path(poll(tailer)) == {str(log): decoded(caffe_lines(9))}
    assert stats.files_watched == 1


def test_glob_whose_directory_does_not_exist_yet(tmp_path: Path) -> None:
    pattern = str(tmp_path / "later" / "*.log")
    tailer = Tailer([pattern])
    assert poll(tailer) == []
    assert tailer.watch_roots() == []  # nothing to watch yet: follow() falls back to timed polls
    (tmp_path / "later").mkdir()
    log = tmp_path / "later" / "a.log"
    log.write_bytes(b"".join(caffe_lines(2)))
    assert tailer.watch_roots() == [str(tmp_path / "later")]
    assert by_path(poll(tailer)) == {str(log): decoded(caffe_lines(2))}


def test_explicit_file_created_later(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    stats = TailStats()
    tailer = Tailer([str(log)], start_at_end=True, stats=stats)
    assert poll(tailer) == []
    assert tailer.watch_roots() == [str(tmp_path)]
    assert not tailer.watch_recursive()
    log.write_bytes(b"".join(caffe_lines(7)))
    chunks = poll(tailer)
    assert by_path(chunks) == {str(log): decoded(caffe_lines(7))}
    assert chunks[0].file_start
    assert stats.read_errors == 0
