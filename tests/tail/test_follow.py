"""follow(): a real watchfiles watch wakes the tailer; timed polls cover what cannot be watched yet."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.tail import Chunk, Tailer, TailStats, follow

from . import append, caffe_lines, decoded

WAIT = 10.0  # seconds; every wait here is bounded


class Collector:
    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def __call__(self, chunk: Chunk) -> None:
        with self.changed:
            self.chunks.append(chunk)
            self.changed.notify_all()

    def wait_for(self, expected: str) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: "".join(c.text for c in self.chunks) == expected, WAIT)


class CountingTailer(Tailer):
    """Counts polls, so a test can wait until follow() has settled into waiting on the watcher."""

    polls = 0
    polled = threading.Condition()

    def poll(self) -> Iterator[Chunk]:
        yield from super().poll()
        with self.polled:
            self.polls += 1
            self.polled.notify_all()

    def wait_polls(self, n: int) -> bool:
        with self.polled:
            return self.polled.wait_for(lambda: self.polls >= n, WAIT)


def run_follow(tailer: Tailer, collect: Collector, **kwargs: object) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=follow, args=(tailer, collect, stop), kwargs=kwargs, daemon=True)
    thread.start()
    return thread, stop


@pytest.mark.parametrize("force_polling", [False, True], ids=["inotify", "polling"])
def test_append_is_picked_up_by_the_watch(tmp_path: Path, force_polling: bool) -> None:
    log = tmp_path / "caffe.log"
    first, more = caffe_lines(20), caffe_lines(15, start=20)
    log.write_bytes(b"".join(first))
    # notify's polling backend compares mtimes in whole seconds: an append within the second of the
    # previous write raises no event there (follow's timed poll covers that). Age the file so the
    # append below is seen as a change in both modes.
    old = time.time() - 10
    os.utime(log, (old, old))
    collect = Collector()
    stats = TailStats()
    tailer = CountingTailer([str(tmp_path)], stats=stats)
    # With a watcher the timed safety net is far beyond WAIT: only a reported change can deliver the append
    # in time. Polling has no watcher: its timed poll does.
    interval = 0.2 if force_polling else 60.0
    thread, stop = run_follow(tailer, collect, force_polling=force_polling, poll_interval=interval)
    try:
        assert collect.wait_for(decoded(first))
        # Polls: at start, at the first tick of the new watcher, once the watcher has settled.
        assert tailer.wait_polls(3)
        append(log, b"".join(more))
        assert collect.wait_for(decoded(first + more))
        new = tmp_path / "second.log"
        new.write_bytes(b"".join(caffe_lines(3, start=40)))
        assert collect.wait_for(decoded(first + more) + decoded(caffe_lines(3, start=40)))
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    assert stats.files_watched == 2


def test_timed_poll_finds_a_directory_created_later(tmp_path: Path) -> None:
    later = tmp_path / "later"
    collect = Collector()
    tailer = Tailer([str(later / "*.log")])
    thread, stop = run_follow(tailer, collect, poll_interval=0.05)
    try:
        later.mkdir()
        append(later / "a.log", b"".join(caffe_lines(4)))
        assert collect.wait_for(decoded(caffe_lines(4)))
        append(later / "a.log", b"".join(caffe_lines(4, start=4)))  # now through the rebuilt watch
        assert collect.wait_for(decoded(caffe_lines(8)))
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()
