"""When to read: :func:`follow` polls a Tailer on watchfiles wake-ups and on a timer; the Tailer decides
what changed. Its clock and its watcher are parameters, so its timing is tested without sleeping.

watchfiles (and its Rust notifier) is imported when :func:`follow` runs, not with the package: a stage
that only reads a pipe (``diagnose``) or needs a :class:`Chunk` does not load it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from exporter.events import Chunk

Watch = Callable[..., Iterable[Collection[tuple[object, str]]]]
"""``watchfiles.watch``'s shape: yields a set of (change, path) per wake-up (empty on a ``rust_timeout`` tick)."""


class Pollable(Protocol):
    def poll(self) -> Iterable[Chunk]: ...

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
    monotonic: Callable[[], float] = time.monotonic,
    watch: Watch | None = None,
) -> None:
    """Block until ``stop`` is set, polling ``tailer`` and passing each chunk to ``on_chunk``.

    Polls once at start, then on every watchfiles change set and at least every ``poll_interval`` seconds
    (watchfiles' ``rust_timeout`` with ``yield_on_timeout=True`` ticks): events can be missed, and directories
    that do not exist yet cannot be watched. The watcher is rebuilt when :meth:`Tailer.watch_roots`
    changes; if it cannot be built (no roots, inotify limits) plain timed polling is used.
    ``force_polling=False`` leaves the choice to watchfiles (``WATCHFILES_FORCE_POLLING``, WSL).
    ``watch`` stands for ``watchfiles.watch`` (the default) and ``monotonic`` for the clock, in tests.
    """
    if watch is None:
        import watchfiles

        watch = watchfiles.watch
    watcher: Watch = watch

    def run() -> None:
        for chunk in tailer.poll():
            on_chunk(chunk)

    interval_ms = max(1, int(poll_interval * 1000))
    # watchfiles wakes us at least every tick; a tick polls only when the Schedule says so.
    tick_ms = min(interval_ms, 250)
    poll_delay_ms = max(10, min(300, interval_ms // 2))
    settle = 2 * poll_delay_ms / 1000
    run()
    while not stop.is_set():
        roots = tailer.watch_roots()
        if not roots:
            if not stop.wait(poll_interval):
                run()
            continue
        try:
            schedule = Schedule(poll_interval, settle, monotonic())
            for changes in watcher(
                *roots,
                watch_filter=None,
                debounce=max(50, min(1600, interval_ms)),
                step=50,
                stop_event=stop,
                rust_timeout=tick_ms,
                yield_on_timeout=True,
                force_polling=True if force_polling else None,
                poll_delay_ms=poll_delay_ms,
                recursive=tailer.watch_recursive(),
                ignore_permission_denied=True,
            ):
                if schedule.due(bool(changes), monotonic()):
                    run()
                    schedule.polled(monotonic())
                if stop.is_set() or tailer.watch_roots() != roots:
                    break
        except (OSError, RuntimeError):  # cannot watch (a root vanished, inotify limits): poll on a timer
            if not stop.wait(poll_interval):
                run()
