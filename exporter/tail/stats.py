"""The tailer's counters and its error episodes: what the self-metrics collector reads."""

from __future__ import annotations

import errno
from collections.abc import Collection
from dataclasses import dataclass


@dataclass
class TailStats:
    """Plain counters, read by the self-metrics collector."""

    bytes_read: int = 0
    lines_oversized: int = 0
    lines_partial: int = 0  # unterminated last lines dropped when their file or stream ended
    rotations: int = 0
    truncations: int = 0
    read_errors: int = 0
    files_watched: int = 0  # files followed at a source path (open or idle-closed), plus open streams
    files_open: int = 0  # descriptors held by the Tailer (followed files and rotated files being drained)
    files_unreadable: int = 0  # paths in a failure episode now (read_errors counts an episode only once)
    last_read_time: float = 0.0
    backlog_bytes: int = 0  # bytes known to be in followed files beyond the read offsets (at the last stat)


def err_key(op: str, e: OSError) -> str:
    """The episode key of a failure: the operation and the errno's name (``read:EIO``)."""
    return f"{op}:{errno.errorcode.get(e.errno or 0, str(e.errno))}"


class Errors:
    """Open/stat/read failures, counted once per *failure episode* of a path.

    The same path failing again with the same key on later polls is not re-counted in
    ``TailStats.read_errors``; a success of that operation, or a different key, starts a new episode.
    """

    __slots__ = ("_episodes", "_stats")

    def __init__(self, stats: TailStats) -> None:
        self._stats = stats
        self._episodes: dict[str, str] = {}  # path -> key of the failure episode already counted

    def error(self, path: str, key: str) -> None:
        if self._episodes.get(path) != key:
            self._episodes[path] = key
            self._stats.read_errors += 1
            self._stats.files_unreadable = len(self._episodes)

    def ok(self, path: str, op: str) -> None:
        """``op`` on ``path`` succeeded: a failure episode of that operation is over."""
        if self._episodes and self._episodes.get(path, "").startswith(op + ":"):
            del self._episodes[path]
            self._stats.files_unreadable = len(self._episodes)

    def keep_only(self, live: set[str]) -> None:
        """Forget the episodes of paths no longer discovered nor followed."""
        for path in [p for p in self._episodes if p not in live]:
            del self._episodes[path]
        self._stats.files_unreadable = len(self._episodes)


class Backlog:
    """``TailStats.backlog_bytes``: per followed file, what its size at the last stat put beyond our offset,
    paid off as it is read. Keys are the file objects (a file keeps its share when it moves to another name);
    before the first poll has opened a candidate its bytes are counted by path (:meth:`expect`)."""

    __slots__ = ("_expected", "_stats", "_unread")

    def __init__(self, stats: TailStats) -> None:
        self._stats = stats
        self._unread: dict[object, int] = {}
        self._expected: dict[str, int] = {}

    def expect(self, path: str, n: int) -> None:
        """``n`` bytes of ``path`` wait to be read, before it is opened (the first poll)."""
        self._expected[path] = n
        self._stats.backlog_bytes += n

    def stat(self, f: object, path: str, beyond: int) -> None:
        """``f`` (at ``path``) was just stat'ed: ``beyond`` bytes lie past our offset."""
        n = beyond if beyond > 0 else 0
        old = self._unread.get(f, 0)
        counted = old + self._expected.pop(path, 0) if self._expected else old
        if n != counted:
            self._stats.backlog_bytes += n - counted
        if n != old or f not in self._unread:
            self._unread[f] = n

    def read(self, f: object, n: int) -> None:
        owed = self._unread.get(f, 0)
        if owed:
            paid = min(owed, n)
            self._unread[f] = owed - paid
            self._stats.backlog_bytes -= paid

    def recount(self, followed: Collection[object]) -> None:
        """Only the files still followed count (after a full poll: those left behind are forgotten)."""
        self._expected.clear()
        self._unread = {f: n for f, n in self._unread.items() if f in followed}
        self._stats.backlog_bytes = sum(self._unread.values())
