"""The tailer's counters and its error episodes: what the self-metrics collector reads."""

from __future__ import annotations

import errno
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
