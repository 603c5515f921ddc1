"""exporter.tail.inotify.watch: changes are yielded as inotify reports them, new directories are watched."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.tail import inotify

from . import append, caffe_lines

WAIT = 10.0
pytestmark = pytest.mark.skipif(not inotify.available(), reason="Linux inotify only")


class Watching:
    """Runs the watcher in a thread and collects the changed paths."""

    def __init__(self, *roots: str, recursive: bool) -> None:
        self.paths: set[str] = set()
        self.ticks = 0
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(roots, recursive), daemon=True)
        self.thread.start()

    def _run(self, roots: tuple[str, ...], recursive: bool) -> None:
        try:
            for changes in inotify.watch(*roots, stop_event=self.stop, rust_timeout=20, recursive=recursive):
                with self.cond:
                    self.ticks += 1
                    self.paths |= {p for _, p in changes}
                    self.cond.notify_all()
        except BaseException as e:  # reported by the test
            self.error = e

    def wait(self, ok: Callable[[], bool]) -> bool:
        with self.cond:
            return self.cond.wait_for(ok, WAIT)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT)


def test_an_append_and_a_file_in_a_new_directory_are_reported(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(2)))
    w = Watching(str(tmp_path), recursive=True)
    try:
        assert w.wait(lambda: w.ticks >= 1)  # watching
        append(log, b"".join(caffe_lines(1, start=2)))
        assert w.wait(lambda: str(log) in w.paths)
        job = tmp_path / "job1"
        job.mkdir()
        assert w.wait(lambda: str(job) in w.paths)
        new = job / "caffe.log"
        new.write_bytes(b"".join(caffe_lines(1)))
        assert w.wait(lambda: str(new) in w.paths)
    finally:
        w.close()
    assert not w.thread.is_alive() and w.error is None


def test_not_recursive_watches_only_the_root(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    w = Watching(str(tmp_path), recursive=False)
    try:
        assert w.wait(lambda: w.ticks >= 1)
        (tmp_path / "sub" / "inner.log").write_bytes(b"x\n")
        (tmp_path / "top.log").write_bytes(b"y\n")
        assert w.wait(lambda: str(tmp_path / "top.log") in w.paths)
    finally:
        w.close()
    assert str(tmp_path / "sub" / "inner.log") not in w.paths


def test_a_root_that_does_not_exist_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        next(inotify.watch(str(tmp_path / "missing"), stop_event=threading.Event()))
