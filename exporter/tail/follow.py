"""When to read: :func:`follow` polls a Tailer on the watcher's wake-ups and on a timer; the Tailer decides
what changed. Its clock and its watcher are parameters, so its timing is tested without sleeping.

watchfiles (and its Rust notifier) is imported when :func:`follow` needs it (not on Linux), not with the
package: a stage that only reads a pipe (``diagnose``) or needs a :class:`Chunk` does not load it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from exporter.events import Chunk

RESCAN_INTERVAL = 10.0
"""Seconds between full polls while inotify watches (what the daemon passes as ``rescan_interval``): it
reports every change to a watched directory, so the full poll is only the safety net for what it cannot
see (a file written over NFS by another host, the target of a directory symlink)."""

Watch = Callable[..., Iterable[Collection[tuple[object, str]]]]
"""``watchfiles.watch``'s shape: yields a set of (change, path) per wake-up (empty on a ``rust_timeout`` tick)."""


class Pollable(Protocol):
    def poll(self) -> Iterable[Chunk]: ...

    def poll_changed(self, changed: Collection[str]) -> Iterable[Chunk]: ...

    def watch_roots(self) -> list[str]: ...

    def watch_recursive(self) -> bool: ...


class Schedule:
    """Which ticks of one watcher poll: a change, the first tick, the first tick after the watcher settled,
    and any tick ``poll_interval`` after the last poll.

    Changes made between our last poll and the watcher's start raise no event, and notify's polling
    watcher takes up to a poll delay to record its baseline (measured: an append 270 ms after start is
    sometimes missed with poll_delay_ms=300): hence the first tick and the settled tick.
    """

    def __init__(self, poll_interval: float, settle: float, started: float) -> None:
        self._interval = poll_interval
        self._settle = settle
        self._started = started
        self._last = started
        self._first = True
        self._settled = False

    def due(self, changed: bool, now: float) -> bool:
        due = changed or self._first or now - self._last >= self._interval
        if not self._settled and now - self._started >= self._settle:
            due = self._settled = True
        return due

    @property
    def first(self) -> bool:
        """No tick has polled yet (the first tick polls everything, changed or not)."""
        return self._first

    def polled(self, now: float) -> None:
        """A poll ended at ``now``."""
        self._first = False
        self._last = now


def follow(
    tailer: Pollable,
    on_chunk: Callable[[Chunk], None],
    stop: threading.Event,
    *,
    force_polling: bool = False,
    poll_interval: float = 1.0,
    rescan_interval: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    watch: Watch | None = None,
) -> None:
    """Block until ``stop`` is set, polling ``tailer`` and passing each chunk to ``on_chunk``.

    Polls once at start, then on every change set of the watcher and at least every ``rescan_interval``
    seconds (the watcher's ``rust_timeout`` ticks, ``yield_on_timeout=True``): events can be missed, and
    directories that do not exist yet cannot be watched. The watcher is rebuilt when
    :meth:`Tailer.watch_roots` changes; if it cannot be built (no roots, inotify limits) plain timed polling
    every ``poll_interval`` is used. ``watch`` stands for the watcher and ``monotonic`` for the clock, in tests.

    ``force_polling``: no watcher, a full poll every ``poll_interval`` (network filesystems). notify's
    polling backend is not used: it stats every file of the tree again, besides our own poll (measured at
    1,000 idle files: 4.7% of a core scanning every 300 ms, 1.5% every second), and its mtime comparison
    misses appends within the same second, so the timed poll bounds the latency anyway.

    Otherwise the watcher: on Linux :func:`exporter.tail.inotify.watch` (a change reaches the tailer as
    soon as inotify reports it), elsewhere ``watchfiles.watch``. A change set naming only followed files
    reads just those (:meth:`Tailer.poll_changed`); the full poll (discovery, every file stat'ed) runs on
    the timer, every ``rescan_interval`` (default ``poll_interval``) while a watcher runs.
    """
    if watch is None:
        watch = _default_watch()
    watcher: Watch = watch

    def run(changes: Collection[tuple[object, str]] = ()) -> None:
        paths = {path for _, path in changes}
        for chunk in tailer.poll_changed(paths) if paths else tailer.poll():
            on_chunk(chunk)

    interval_ms = max(1, int(poll_interval * 1000))
    # the watcher wakes us at least every tick; a tick polls only when the Schedule says so.
    tick_ms = min(interval_ms, 250)
    poll_delay_ms = max(10, min(300, interval_ms // 2))
    settle = 2 * poll_delay_ms / 1000
    rescan = poll_interval if rescan_interval is None else rescan_interval
    run()
    while not stop.is_set():
        roots = tailer.watch_roots()
        if not roots or force_polling:
            if not stop.wait(poll_interval):
                run()
            continue
        try:
            schedule = Schedule(rescan, settle, monotonic())
            for changes in watcher(
                *roots,
                watch_filter=None,
                debounce=max(50, min(1600, interval_ms)),
                step=50,
                stop_event=stop,
                rust_timeout=tick_ms,
                yield_on_timeout=True,
                force_polling=None,
                poll_delay_ms=poll_delay_ms,
                recursive=tailer.watch_recursive(),
                ignore_permission_denied=True,
            ):
                if changes and not schedule.first:
                    run(changes)
                elif schedule.due(False, monotonic()):
                    run()
                    schedule.polled(monotonic())
                if stop.is_set() or tailer.watch_roots() != roots:
                    break
        except (OSError, RuntimeError):  # cannot watch (a root vanished, inotify limits): poll on a timer
            if not stop.wait(poll_interval):
                run()


def _default_watch() -> Watch:
    from exporter.tail import inotify

    if inotify.available():
        return inotify.watch
    import watchfiles

    return watchfiles.watch
