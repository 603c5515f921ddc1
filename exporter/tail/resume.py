"""Positions that outlive an open file: restored from a checkpoint, forgotten, and the paths they keep tracked.

A saved :class:`FilePosition` is matched by content, not by (st_dev, st_ino), which a copy+rename or a
remount changes: the file at the saved path (or, on the first poll, any discovered file, e.g. the log
rotated to ``caffe.log.1`` meanwhile) whose first ``head_len`` bytes hash to ``head`` and whose size is at
least ``offset`` is resumed there; any other file is read from 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Mapping, Sequence

from exporter.events import FilePosition

HEAD_BYTES = 1024
"""Bytes at offset 0 whose hash identifies a file's content (recycled-inode and rewrite detection)."""

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

FileId = tuple[int, int]


def last_line_end(fd: int, size: int, block: int = 4 << 20) -> tuple[int, int]:
    """Offset just after the last newline before ``size`` and the number of newlines up to there."""
    lines = 0
    end = 0
    pos = 0
    while pos < size:
        data = os.pread(fd, min(block, size - pos), pos)
        if not data:
            break
        n = data.count(b"\n")
        if n:
            lines += n
            end = pos + data.rfind(b"\n") + 1
        pos += len(data)
    return end, lines


def position_now(path: str) -> FilePosition | None:
    """A forgotten position for a file not followed yet: where it ends now."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = os.pread(fd, HEAD_BYTES, 0)
        lines = last_line_end(fd, st.st_size)[1]
        return FilePosition(path=path, dev=st.st_dev, ino=st.st_ino, offset=st.st_size, line=lines,
                            head=hashlib.sha1(head).hexdigest(), head_len=len(head), forgotten=True)
    except OSError:
        return None
    finally:
        os.close(fd)


def resumable(fd: int, size: int, saved: FilePosition) -> bool:
    """The file holds what ``saved`` was recorded on: its head hashes alike and it is long enough.
    (st_dev, st_ino) are not compared: a copy+rename or a remount changes them, not the content."""
    if not 0 <= saved.offset <= size:
        return False
    n = saved.head_len if saved.head_len >= 0 else min(size, HEAD_BYTES)
    if n > size:
        return False
    return hashlib.sha1(os.pread(fd, n, 0)).hexdigest() == saved.head


def matches(path: str, saved: FilePosition) -> bool:
    """The regular file at ``path`` is :func:`resumable` at ``saved``."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return stat.S_ISREG(st.st_mode) and resumable(fd, st.st_size, saved)
    except OSError:
        return False
    finally:
        os.close(fd)


def _ident(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Positions:
    """Restored positions not used yet (``saved``), forgotten ones, and the tracked paths.

    A path is tracked while its position means something: followed (open or idle-closed), forgotten, or
    restored and not used yet. The tracked set is read from other threads (the checkpoint), so it has a lock.
    """

    def __init__(self, positions: Mapping[str, FilePosition] | None) -> None:
        self.saved = {p: pos for p, pos in (positions or {}).items() if not pos.forgotten}
        self.forgotten = {p: pos for p, pos in (positions or {}).items() if pos.forgotten}
        self.rebound: set[str] = set()  # positions moved to another path by rebind
        self._lock = threading.Lock()
        self._tracked: set[str] = set(self.saved) | set(self.forgotten)

    def tracked(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._tracked)

    def track(self, path: str) -> None:
        with self._lock:
            self._tracked.add(path)

    def untrack(self, path: str, followed: bool) -> None:
        if not followed and path not in self.forgotten and path not in self.saved:
            with self._lock:
                self._tracked.discard(path)

    def holds(self, path: str) -> bool:
        return path in self.saved or path in self.forgotten

    def rebind(self, candidates: Sequence[str], followed: Callable[[str], bool]) -> None:
        """First poll: a restored position whose path now holds other content goes to the discovered file
        that holds its content (the log was rotated while the exporter was down), preferring the file
        with the saved identity. Forgotten positions move the same way, so a dropped run's log stays
        dropped under its rotated name."""
        tables = (self.saved, self.forgotten)
        unmatched = [{p: pos for p, pos in t.items() if not matches(p, pos)} for t in tables]
        if not any(unmatched):
            return
        claimed = {p for t, u in zip(tables, unmatched, strict=True) for p in t if p not in u}
        idents = {c: _ident(c) for c in candidates}
        moves: list[tuple[dict[str, FilePosition], str, str]] = []
        for t, u in zip(tables, unmatched, strict=True):
            for p, pos in u.items():
                target = _holder(pos, [c for c in candidates if c not in claimed and idents[c] is not None], idents)
                if target is not None:
                    claimed.add(target)
                    moves.append((t, p, target))
        self._move(moves, followed)

    def _move(self, moves: list[tuple[dict[str, FilePosition], str, str]], followed: Callable[[str], bool]) -> None:
        """Each (table, path, target): the position at ``path`` is now ``target``'s; all removed first."""
        moved = [(t, p, target, t[p]) for t, p, target in moves]
        for t, p, _, _ in moved:
            del t[p]
        for t, _, target, pos in moved:
            t[target] = dataclasses.replace(pos, path=target)
            self.rebound.add(target)
            self.track(target)
        for _, p, _, _ in moved:
            self.untrack(p, followed(p))


def _holder(pos: FilePosition, free: list[str], idents: Mapping[str, FileId | None]) -> str | None:
    """The first of ``free`` that holds ``pos``'s content, the file with its saved identity first."""
    free.sort(key=lambda q: idents[q] != (pos.dev, pos.ino))
    return next((q for q in free if matches(q, pos)), None)
