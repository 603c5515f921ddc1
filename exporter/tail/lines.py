"""Bytes -> complete lines: the line splitting shared by files and pipes.

A chunk holds complete lines only; the partial last line waits in a buffer until its newline arrives, and is
dropped (counted in ``TailStats.lines_partial``) when its file or stream ends for good: a fragment such as
``loss = 0.1`` of ``loss = 0.147174`` must never be parsed as a whole line. NULs are removed, lines longer
than ``max_line`` bytes are dropped and counted (``TailStats.lines_oversized``), text is decoded as UTF-8
with ``errors="replace"``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from exporter.events import Chunk, FilePosition
from exporter.tail.stats import TailStats


def _strip_nul(b: bytes) -> bytes:
    return b.replace(b"\0", b"") if b"\0" in b else b


def _long_line_ranges(seg: bytes, limit: int) -> tuple[list[tuple[int, int]], int]:
    """Split ``seg`` (ending in a newline) into ranges of lines at most ``limit`` bytes long.

    Returns the kept ranges and the number of dropped lines. Needs O(len/limit) rfind calls: a window of
    ``limit + 1`` bytes that starts at a line start must hold a newline, else that line is too long.
    """
    ranges: list[tuple[int, int]] = []
    dropped = 0
    size = len(seg)
    pos = keep = 0
    while size - pos > limit + 1:
        r = seg.rfind(b"\n", pos, pos + limit + 1)
        if r >= 0:
            pos = r + 1
            continue
        if pos > keep:
            ranges.append((keep, pos))
        dropped += 1
        pos = keep = seg.find(b"\n", pos + limit + 1) + 1
    if keep < size:
        ranges.append((keep, size))
    return ranges, dropped


class Lines:
    """Splits a byte stream into chunks of complete lines; the partial last line waits in a buffer."""

    __slots__ = ("consumed", "fresh", "line", "max_line", "mtime", "partial", "path", "pending", "skipping",
                 "stats")

    def __init__(self, path: str, max_line: int, stats: TailStats, mtime: float) -> None:
        self.path = path
        self.max_line = max_line
        self.stats = stats
        self.mtime = mtime
        self.line = 0  # lines consumed (emitted or dropped)
        self.consumed = 0  # raw bytes consumed (up to the last consumed newline)
        self.pending = 0  # raw bytes after the last consumed newline
        self.partial = bytearray()  # those bytes without NULs, unless skipping an oversized line
        self.skipping = False
        self.fresh = True  # next chunk with text gets file_start=True

    def reset(self, mtime: float) -> None:
        self.line = self.pending = self.consumed = 0
        self.partial.clear()
        self.skipping = False
        self.fresh = True
        self.mtime = mtime

    def end_at(self, offset: int, line: int) -> FilePosition | None:
        """The position after ``offset`` raw bytes and ``line`` lines; None where positions mean nothing."""
        return None

    def _chunk(self, data: bytes, first_line: int, end: FilePosition | None) -> Chunk:
        c = Chunk(self.path, data.decode("utf-8", "replace"), first_line, self.fresh, self.mtime, end)
        self.fresh = False
        return c

    def empty(self) -> list[Chunk]:
        """A chunk without text that moves ``end`` to what is consumed now (none if positions mean nothing)."""
        end = self.end_at(self.consumed, self.line)
        return [] if end is None else [Chunk(self.path, "", self.line + 1, False, self.mtime, end)]

    def _grow_partial(self, raw: bytes) -> None:
        self.pending += len(raw)
        if self.skipping:
            return
        self.partial += _strip_nul(raw)
        if len(self.partial) > self.max_line:
            self.partial.clear()
            self.skipping = True
            self.stats.lines_oversized += 1

    def feed(self, raw: bytes) -> list[Chunk]:
        """Consume ``raw`` (the next bytes of the stream); return the chunks it completes."""
        k = raw.rfind(b"\n")
        if k < 0:
            self._grow_partial(raw)
            return []
        base = self.consumed + self.pending  # raw offset of raw[0]
        start = 0
        body_off = self.consumed
        if self.skipping:  # the first newline ends the oversized line already counted
            start = raw.find(b"\n") + 1
            self.line += 1
            self.skipping = False
            self.partial.clear()
            body_off = base + start
        seg = raw[start : k + 1]
        body = _strip_nul(seg) if start <= k else b""
        if self.partial:
            body = bytes(self.partial) + body
            self.partial.clear()
        self.consumed = base + k + 1
        self.pending = 0
        if len(body) == self.consumed - body_off:  # no NUL removed: body offsets are raw offsets
            out = self._emit(body, lambda i, c: body_off + i)
        else:  # body's newlines are raw's newlines after ``start`` (the partial line holds none)
            cursor = [start, 0]

            def after_newline(i: int, c: int) -> int:
                while cursor[1] < c:
                    cursor[0] = raw.find(b"\n", cursor[0]) + 1
                    cursor[1] += 1
                return base + cursor[0]

            out = self._emit(body, after_newline)
        if k + 1 < len(raw):
            self._grow_partial(raw[k + 1 :])
        return out

    def _emit(self, body: bytes, raw_offset: Callable[[int, int], int]) -> list[Chunk]:
        """Chunks of ``body``; ``raw_offset(i, c)`` is the raw offset of ``body[i]``, which follows the
        ``c``-th newline of ``body``, for the ends of chunks split by dropped oversized lines."""
        if not body:  # only an oversized line ended
            return self.empty()
        first = self.line + 1
        self.line += body.count(b"\n")
        end = self.end_at(self.consumed, self.line)
        if len(body) <= self.max_line + 1:
            return [self._chunk(body, first, end)]
        ranges, dropped = _long_line_ranges(body, self.max_line)
        if not dropped:
            return [self._chunk(body, first, end)]
        self.stats.lines_oversized += dropped
        if not ranges:
            return self.empty()
        out: list[Chunk] = []
        for i, (a, b) in enumerate(ranges):
            if i == len(ranges) - 1:
                e = end
            else:  # up to the next kept line: the dropped lines between are consumed too
                nxt = ranges[i + 1][0]
                c = body.count(b"\n", 0, nxt)
                e = self.end_at(raw_offset(nxt, c), first - 1 + c)
            out.append(self._chunk(body[a:b], first + body.count(b"\n", 0, a), e))
        return out

    def discard(self) -> None:
        """The stream or file ended for good: an unterminated last line is dropped (and counted), never
        emitted, since its end is unknown (``loss = 0.1`` may be the start of ``loss = 0.147174``)."""
        if self.partial and not self.skipping:
            self.stats.lines_partial += 1
        self.partial.clear()
        self.skipping = False
        self.pending = 0



def read_stream(
    stream: BinaryIO,
    *,
    path: str = "-",
    max_line_bytes: int = 1 << 20,
    stats: TailStats | None = None,
    read_bytes: int = 1 << 16,
    clock: Callable[[], float] = time.time,
) -> Iterator[Chunk]:
    """Read a pipe (stdin) to EOF, yielding complete lines as soon as they arrive.

    Uses ``os.read`` on the stream's file descriptor (or ``read1``) so a slow writer's lines are not held
    back until a buffer fills. A final unterminated line is dropped at EOF and counted in
    ``TailStats.lines_partial`` (its end is unknown). Chunks carry ``end=None``: a pipe cannot be resumed.
    """
    st = stats if stats is not None else TailStats()
    lines = Lines(path, max_line_bytes, st, 0.0)
    # BufferedReader.read1 does at most one raw read; a raw FileIO's read() is a single os.read.
    read1: Callable[[int], bytes] = getattr(stream, "read1", None) or stream.read
    st.files_watched += 1
    try:
        while raw := read1(read_bytes):
            st.bytes_read += len(raw)
            st.last_read_time = clock()
            yield from lines.feed(raw)
        lines.discard()
    finally:
        st.files_watched -= 1
