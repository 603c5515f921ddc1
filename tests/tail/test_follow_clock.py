"""When follow() polls, driven by an injected clock and watcher: no sleeps, exact times.

With ``poll_interval=1.0`` the watcher ticks every 0.25 s and settles 0.6 s after it starts (twice the
0.3 s poll delay of notify's polling backend). follow() polls at start, at the watcher's first tick, at
the first tick once settled, on every change set, and on a tick ``poll_interval`` after the last poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import watchfiles

from exporter.tail import Chunk, Tailer, follow
from exporter.tail.follow import Schedule

from . import Clock, append, caffe_lines, decoded

Changes = set[tuple[watchfiles.Change, str]]


class TimedTailer(Tailer):
    """Records the clock at each poll."""

    def __init__(self, sources: list[str], clock: Clock) -> None:
        super().__init__(sources, monotonic=clock)
        self.clock = clock
        self.polled_at: list[float] = []

    def poll(self) -> Iterator[Chunk]:
        self.polled_at.append(self.clock.now)
        yield from super().poll()


class Watcher:
    """Stands in for watchfiles.watch: one tick per script entry, the clock moved before each; a step may
    act on the files first and says whether the tick carries a change. Stops follow() after the script."""

    def __init__(self, clock: Clock, stop: threading.Event,
                 script: list[tuple[float, bool, Callable[[], None] | None]]) -> None:
        self.clock, self.stop, self.script = clock, stop, script
        self.calls: list[tuple[tuple[str, ...], dict[str, object]]] = []

    def __call__(self, *roots: str, **kwargs: object) -> Iterator[Changes]:
        self.calls.append((roots, kwargs))
        while self.script:
            dt, changed, act = self.script.pop(0)
            self.clock.now += dt
            if act is not None:
                act()
            yield {(watchfiles.Change.modified, roots[0])} if changed else set()
        self.stop.set()


def ticks(n: int, dt: float = 0.25) -> list[tuple[float, bool, Callable[[], None] | None]]:
    return [(dt, False, None)] * n


def test_polls_at_start_first_tick_settled_tick_and_every_interval(tmp_path: Path) -> None:
    (tmp_path / "caffe.log").write_bytes(b"".join(caffe_lines(5)))
    clock = Clock(100.0)
    stop = threading.Event()
    tailer = TimedTailer([str(tmp_path)], clock)
    got: list[Chunk] = []
    watch = Watcher(clock, stop, ticks(12))  # ticks at 100.25 ... 103.00
    follow(tailer, got.append, stop, poll_interval=1.0, monotonic=clock, watch=watch)
    assert tailer.polled_at == [100.0, 100.25, 100.75, 101.75, 102.75]
    assert "".join(c.text for c in got) == decoded(caffe_lines(5))
    assert len(watch.calls) == 1
    roots, kwargs = watch.calls[0]
    assert roots == (str(tmp_path),)
    assert kwargs["rust_timeout"] == 250 and kwargs["poll_delay_ms"] == 300 and kwargs["recursive"] is True


def test_a_change_polls_at_once_and_an_unwatched_append_waits_for_the_timer(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(2)))
    clock = Clock(0.0)
    stop = threading.Event()
    tailer = TimedTailer([str(log)], clock)
    seen: list[tuple[float, str]] = []
    script = ticks(4)  # 0.25 (first), 0.5, 0.75 (settled), 1.0
    script.append((0.25, False, lambda: append(log, b"".join(caffe_lines(1, start=2)))))  # 1.25: no event
    script += ticks(2)  # 1.5, 1.75: the timed poll reads it
    script.append((0.25, True, lambda: append(log, b"".join(caffe_lines(1, start=3)))))  # 2.0: an event
    follow(tailer, lambda c: seen.append((clock.now, c.text)), stop, poll_interval=1.0, monotonic=clock,
           watch=Watcher(clock, stop, script))
    assert tailer.polled_at == [0.0, 0.25, 0.75, 1.75, 2.0]
    assert [(t, s) for t, s in seen if s] == [(0.0, decoded(caffe_lines(2))),
                                              (1.75, decoded(caffe_lines(1, start=2))),
                                              (2.0, decoded(caffe_lines(1, start=3)))]


def test_the_watcher_is_rebuilt_when_a_watched_directory_appears(tmp_path: Path) -> None:
    later = tmp_path / "later"
    (tmp_path / "a.log").write_bytes(b"".join(caffe_lines(1)))
    clock = Clock(0.0)
    stop = threading.Event()
    tailer = TimedTailer([str(tmp_path / "a.log"), str(later / "b.log")], clock)

    def create() -> None:
        later.mkdir()
        (later / "b.log").write_bytes(b"".join(caffe_lines(2, start=1)))

    calls: list[tuple[str, ...]] = []
    scripts = [[*ticks(1), (0.25, True, create)], ticks(1)]

    def watch(*roots: str, **kwargs: object) -> Iterator[Changes]:
        calls.append(roots)
        w = Watcher(clock, threading.Event(), scripts.pop(0))
        yield from w(*roots, **kwargs)
        if not scripts:
            stop.set()

    got: list[Chunk] = []
    follow(tailer, got.append, stop, poll_interval=1.0, monotonic=clock, watch=watch)
    assert calls == [(str(tmp_path),), (str(tmp_path), str(later))]
    assert "".join(c.text for c in got) == decoded(caffe_lines(3))
    assert tailer.polled_at == [0.0, 0.25, 0.5, 0.75]  # start, first tick, change; first tick of the new one


def test_schedule_settles_once() -> None:
    s = Schedule(poll_interval=10.0, settle=0.6, started=0.0)
    assert s.due(False, 0.1)  # the first tick
    s.polled(0.1)
    assert not s.due(False, 0.5)
    assert s.due(False, 0.6)  # settled
    s.polled(0.6)
    assert not s.due(False, 0.7) and not s.due(False, 10.5)
    assert s.due(True, 10.55)  # a change
    s.polled(10.55)
    assert not s.due(False, 20.5) and s.due(False, 20.55)  # poll_interval after the last poll


class ChangeTailer(TimedTailer):
    """Also records the change sets handed to poll_changed."""

    def __init__(self, sources: list[str], clock: Clock) -> None:
        super().__init__(sources, clock)
        self.changed_at: list[tuple[float, frozenset[str]]] = []

    def poll_changed(self, changed: Collection[str]) -> Iterator[Chunk]:
        self.changed_at.append((self.clock.now, frozenset(changed)))
        yield from super().poll_changed(changed)


def test_a_change_of_a_followed_file_reads_it_alone_and_full_polls_wait_for_rescan_interval(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(caffe_lines(2)))
    clock = Clock(0.0)
    stop = threading.Event()
    tailer = ChangeTailer([str(log)], clock)
    seen: list[tuple[float, str]] = []

    def change(start: int) -> Callable[[], None]:
        return lambda: append(log, b"".join(caffe_lines(1, start=start)))

    script = ticks(3)  # 0.25 (first), 0.5, 0.75 (settled)
    script.append((0.25, True, change(2)))  # 1.0: the watcher names the file
    script += ticks(18)  # 1.25 ... 5.5: no full poll before 0.75 + 5
    script.append((0.25, False, None))  # 5.75: the rescan

    def watch(*roots: str, **kwargs: object) -> Iterator[set[tuple[str, str]]]:
        for dt, changed, act in script:
            clock.now += dt
            if act is not None:
                act()
            yield {("changed", str(log))} if changed else set()
        stop.set()

    follow(tailer, lambda c: seen.append((clock.now, c.text)), stop, poll_interval=1.0, rescan_interval=5.0,
           monotonic=clock, watch=watch)
    assert tailer.polled_at == [0.0, 0.25, 0.75, 5.75]
    assert tailer.changed_at == [(1.0, frozenset({str(log)}))]
    assert [(t, s) for t, s in seen if s] == [(0.0, decoded(caffe_lines(2))), (1.0, decoded(caffe_lines(1, start=2)))]
