"""Tail Caffe log files: the first pipeline stage.

A :class:`Tailer` turns a list of sources (files, globs, directories) into :class:`Chunk` s of complete
lines and hides rotation, truncation and deletion from its consumers (the model is mtail's ``filestream``
and fail2ban's ``FileContainer``): at every :meth:`Tailer.poll` each open file is read to EOF, then its
path is stat'ed; a new (st_dev, st_ino) at the path is a rotation, a size below our offset (or a changed
first KiB) is a truncation. :func:`follow` decides *when* to poll (watchfiles wake-ups plus a timer);
the Tailer decides *what* changed. :func:`read_stream` does the same line splitting for a pipe.

Files are identified by (st_dev, st_ino): a path naming a file already tailed under another path is
skipped. When a rotated file still matches a source under its new name (``app.log`` -> ``app.log.1``
with the glob ``app.log*``), it keeps being followed under that name, so its unterminated last line
waits for completion as usual; a rotated or deleted file that matches nothing more is drained, its
unterminated last line emitted with a newline added, and closed. A path that vanished and later names
a file again counts as a rotation.

This module imports nothing from ``exporter``; its counters live in a :class:`TailStats` passed in.

Error accounting: open/stat/read failures increment ``TailStats.read_errors`` once per *failure episode*
of a path (the same path failing again with the same errno on later polls is not re-counted; a success,
or a different errno, starts a new episode). An explicitly named file that does not exist yet is not an
error (it may be created later); a file listed in a directory or matched by a glob that then cannot be
opened is.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import hashlib
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import BinaryIO

import watchfiles

__all__ = ["Chunk", "FilePosition", "TailStats", "Tailer", "follow", "read_stream"]

HEAD_BYTES = 1024
"""Bytes at offset 0 whose hash identifies a file's content (recycled-inode and rewrite detection)."""

_GLOG_INFO = re.compile(r".+\.log\.INFO\.\d{8}-\d{6}\.\d+")
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

FileId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One or more complete lines of one file."""

    path: str
    """The path as discovered (not symlink-resolved); ``"-"`` for stdin."""
    text: str
    """Complete lines, each ending in ``"\\n"``; NULs removed; UTF-8 decoded with ``errors="replace"``."""
    first_line: int
    """1-based line number within the file of the first line (dropped oversized lines are counted)."""
    file_start: bool
    """True for the first chunk read from offset 0 of a file (new file, rotated-in file, after truncation)."""
    mtime: float
    """st_mtime of the file when it was opened (0.0 for streams)."""
    end: FilePosition | None = None
    """Where the file's position stands just after this chunk's last line (None for streams)."""


@dataclass
class TailStats:
    """Plain counters, read by the self-metrics collector."""

    bytes_read: int = 0
    lines_oversized: int = 0
    rotations: int = 0
    truncations: int = 0
    read_errors: int = 0
    files_watched: int = 0
    files_unreadable: int = 0  # paths in a failure episode now (read_errors counts an episode only once)
    last_read_time: float = 0.0


@dataclass
class FilePosition:
    """Where reading of one path stopped; serialisable for checkpoints.

    ``offset`` counts bytes of complete lines consumed (a pending partial line is not consumed), ``line``
    the lines consumed (including dropped oversized lines, so ``line + 1`` is the next chunk's
    ``first_line``). ``head`` is the hex sha1 of the first ``head_len`` bytes of the file
    (``head_len = min(size, 1024)`` when recorded; ``-1`` means unknown, then ``min(size, 1024)`` of the
    file at resume time is hashed).
    """

    path: str
    dev: int
    ino: int
    offset: int
    line: int
    head: str
    head_len: int = -1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FilePosition:
        def num(key: str, default: int | None = None) -> int:
            v = d.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"FilePosition.{key} must be an int, got {v!r}")
            return v

        path, head = d.get("path"), d.get("head")
        if not isinstance(path, str) or not isinstance(head, str):
            raise ValueError(f"FilePosition.path and .head must be strings, got {path!r}, {head!r}")
        return cls(
            path=path,
            dev=num("dev"),
            ino=num("ino"),
            offset=num("offset"),
            line=num("line"),
            head=head,
            head_len=num("head_len", -1),
        )


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


class _Lines:
    """Splits a byte stream into chunks of complete lines; the partial last line waits in a buffer."""

    __slots__ = ("fresh", "line", "max_line", "mtime", "partial", "path", "pending", "skipping", "stats")

    def __init__(self, path: str, max_line: int, stats: TailStats, mtime: float) -> None:
        self.path = path
        self.max_line = max_line
        self.stats = stats
        self.mtime = mtime
        self.line = 0  # lines consumed (emitted or dropped)
        self.pending = 0  # raw bytes after the last consumed newline
        self.partial = bytearray()  # those bytes without NULs, unless skipping an oversized line
        self.skipping = False
        self.fresh = True  # next chunk gets file_start=True

    def reset(self, mtime: float) -> None:
        self.line = self.pending = 0
        self.partial.clear()
        self.skipping = False
        self.fresh = True
        self.mtime = mtime

    def _chunk(self, data: bytes, first_line: int) -> Chunk:
        c = Chunk(self.path, data.decode("utf-8", "replace"), first_line, self.fresh, self.mtime)
        self.fresh = False
        return c

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
        start = 0
        if self.skipping:  # the first newline ends the oversized line already counted
            start = raw.find(b"\n") + 1
            self.line += 1
            self.skipping = False
            self.partial.clear()
        body = _strip_nul(raw[start : k + 1]) if start <= k else b""
        if self.partial:
            body = bytes(self.partial) + body
            self.partial.clear()
        self.pending = 0
        if k + 1 < len(raw):
            self._grow_partial(raw[k + 1 :])
        return self._emit(body)

    def _emit(self, body: bytes) -> list[Chunk]:
        if not body:
            return []
        first = self.line + 1
        self.line += body.count(b"\n")
        if len(body) <= self.max_line + 1:
            return [self._chunk(body, first)]
        ranges, dropped = _long_line_ranges(body, self.max_line)
        if not dropped:
            return [self._chunk(body, first)]
        self.stats.lines_oversized += dropped
        out: list[Chunk] = []
        for a, b in ranges:
            out.append(self._chunk(body[a:b], first + body.count(b"\n", 0, a)))
        return out

    def flush(self) -> list[Chunk]:
        """The stream ended: emit a pending partial line with a newline added."""
        out: list[Chunk] = []
        if self.partial and not self.skipping:
            out = [self._chunk(bytes(self.partial) + b"\n", self.line + 1)]
            self.line += 1
        elif self.skipping:
            self.line += 1
        self.partial.clear()
        self.skipping = False
        self.pending = 0
        return out


class _File(_Lines):
    """An open regular file being tailed."""

    __slots__ = ("fd", "head", "ident", "pos")

    def __init__(self, path: str, fd: int, st: os.stat_result, max_line: int, stats: TailStats) -> None:
        super().__init__(path, max_line, stats, st.st_mtime)
        self.fd = fd
        self.ident: FileId = (st.st_dev, st.st_ino)
        self.pos = 0  # raw read position
        self.head = b""  # the first bytes of the file (up to HEAD_BYTES) as last seen


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: str
    explicit: bool


def _err_key(op: str, e: OSError) -> str:
    return f"{op}:{errno.errorcode.get(e.errno or 0, str(e.errno))}"


class Tailer:
    """Follows files named by paths, globs and directories; see the module docstring."""

    def __init__(
        self,
        sources: Sequence[str],
        *,
        start_at_end: bool = False,
        max_line_bytes: int = 1 << 20,
        read_bytes: int = 4 << 20,
        stats: TailStats | None = None,
        positions: Mapping[str, FilePosition] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_line_bytes < 1 or read_bytes < 1:
            raise ValueError("max_line_bytes and read_bytes must be positive")
        self._sources = list(sources)
        self._start_at_end = start_at_end
        self._max_line = max_line_bytes
        self._read_bytes = read_bytes
        self.stats = stats if stats is not None else TailStats()
        self._saved = dict(positions or {})
        self._clock = clock
        self._files: dict[str, _File] = {}
        self._ids: dict[FileId, str] = {}
        self._errors: dict[str, str] = {}  # path -> key of the failure episode already counted
        self._vanished: set[str] = set()  # paths whose file was closed because it went away
        self._polled = False

    # discovery --------------------------------------------------------------------------------

    def _discover(self) -> list[_Candidate]:
        seen: set[str] = set()
        out: list[_Candidate] = []

        def add(path: str, explicit: bool) -> None:
            if path not in seen:
                seen.add(path)
                out.append(_Candidate(path, explicit))

        for src in self._sources:
            if os.path.isdir(src):
                for p in _walk_logs(src):
                    add(p, False)
            elif glob.has_magic(src) and not os.path.lexists(src):
                for p in sorted(glob.glob(src, recursive=True)):
                    if not os.path.isdir(p):
                        add(p, False)
            else:
                add(src, True)
        return out

    def _watch_plan(self) -> tuple[list[str], bool]:
        roots: list[str] = []
        recursive = False
        for src in self._sources:
            if os.path.isdir(src):
                roots.append(src)
                recursive = True
            elif glob.has_magic(src) and not os.path.lexists(src):
                parts = src.split(os.sep)
                i = next(n for n, part in enumerate(parts) if glob.has_magic(part))
                recursive = recursive or i < len(parts) - 1 or "**" in src
                base = os.sep.join(parts[:i]) or (os.sep if src.startswith(os.sep) else ".")
                roots.append(base)
            else:
                roots.append(os.path.dirname(src) or ".")
        uniq: list[str] = []
        for r in roots:
            r = os.path.normpath(r)
            if r not in uniq and os.path.isdir(r):
                uniq.append(r)
        if recursive:  # a root inside another recursive root adds nothing
            uniq = [r for r in uniq if not any(o != r and _is_under(r, o) for o in uniq)]
        return uniq, recursive

    def watch_roots(self) -> list[str]:
        """Existing directories to watch for changes: parents of files, directories, glob bases."""
        return self._watch_plan()[0]

    def watch_recursive(self) -> bool:
        """Whether the roots must be watched recursively (a directory source or a multi-level glob)."""
        return self._watch_plan()[1]

    # errors -----------------------------------------------------------------------------------

    def _error(self, path: str, key: str) -> None:
        if self._errors.get(path) != key:
            self._errors[path] = key
            self.stats.read_errors += 1
            self.stats.files_unreadable = len(self._errors)

    def _ok(self, path: str, op: str) -> None:
        """``op`` on ``path`` succeeded: a failure episode of that operation is over."""
        if self._errors and self._errors.get(path, "").startswith(op + ":"):
            del self._errors[path]
            self.stats.files_unreadable = len(self._errors)

    # polling ----------------------------------------------------------------------------------

    def poll(self) -> Iterator[Chunk]:
        """Discover new files, then read every open file to EOF, handling rotation, truncation, deletion.

        Iterate it to the end: the tailer's offsets advance as chunks are produced, so chunks of an
        abandoned iteration are not produced again.
        """
        first = not self._polled
        self._polled = True
        candidates = self._discover()
        stats_cache: dict[str, FileId | None] = {}

        def ident(path: str) -> FileId | None:
            if path not in stats_cache:
                try:
                    st = os.stat(path)
                    stats_cache[path] = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
                except OSError:
                    stats_cache[path] = None
            return stats_cache[path]

        for path in list(self._files):
            f = self._files.get(path)
            if f is not None:
                yield from self._service(f, candidates, ident)
        for cand in candidates:
            if cand.path not in self._files:
                yield from self._open(cand, first)
        live = {c.path for c in candidates} | set(self._files)
        for path in [p for p in self._errors if p not in live]:
            del self._errors[path]
        self.stats.files_unreadable = len(self._errors)

    def _service(
        self, f: _File, candidates: list[_Candidate], ident: Callable[[str], FileId | None]
    ) -> Iterator[Chunk]:
        path = f.path
        now: FileId | None
        try:
            st = os.stat(path)
            now = (st.st_dev, st.st_ino)
            self._ok(path, "stat")
        except (FileNotFoundError, NotADirectoryError):
            now = None
        except OSError as e:
            self._error(path, _err_key("stat", e))
            now = f.ident  # cannot tell; keep reading the open file
        yield from self._drain(f)
        if now == f.ident:
            return
        # The path names another file now, or nothing. If the old file is still matched under another
        # path (app.log -> app.log.1 with a glob app.log*), keep following it there; else finish it.
        moved = next((c.path for c in candidates if c.path not in self._files and ident(c.path) == f.ident), None)
        del self._files[path]
        if moved is not None:
            f.path = moved
            self._files[moved] = f
            self._ids[f.ident] = moved
        else:
            yield from self._close_file(f)
        if now is None:
            self._vanished.add(path)
        else:
            self.stats.rotations += 1
            self._vanished.discard(path)
            yield from self._open(_Candidate(path, True), False)

    def _close_file(self, f: _File) -> Iterator[Chunk]:
        yield from self._drain(f)
        chunks = f.flush()
        self._ids.pop(f.ident, None)
        self.stats.files_watched -= 1
        os.close(f.fd)
        yield from chunks

    def _drain(self, f: _File) -> Iterator[Chunk]:
        """Read ``f`` to EOF; detect truncation (size below our position, or a rewritten head)."""
        try:
            st = os.fstat(f.fd)
            truncated = st.st_size < f.pos
            if not truncated and st.st_size > f.pos:  # grew: is it still the content we read?
                head = os.pread(f.fd, HEAD_BYTES, 0)
                truncated = not head.startswith(f.head)
                if not truncated and len(head) > len(f.head):
                    f.head = head
        except OSError as e:
            self._error(f.path, _err_key("read", e))
            return
        if truncated:
            chunks = f.flush()
            f.reset(st.st_mtime)
            f.pos = 0
            f.head = b""
            self.stats.truncations += 1
            yield from chunks
        stats, fd, n = self.stats, f.fd, self._read_bytes
        while True:
            try:
                raw = os.pread(fd, n, f.pos)
            except OSError as e:
                self._error(f.path, _err_key("read", e))
                return
            if not raw:
                break
            self._ok(f.path, "read")
            f.pos += len(raw)
            stats.bytes_read += len(raw)
            stats.last_read_time = self._clock()
            chunks = f.feed(raw)
            if chunks:  # the last one ends where the consumed lines end
                chunks[-1] = dataclasses.replace(chunks[-1], end=self._position(f))
            yield from chunks
            if len(raw) < n:
                break

    def _open(self, cand: _Candidate, first: bool) -> Iterator[Chunk]:
        path = cand.path
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError) as e:
            if not cand.explicit:  # listed a moment ago (or a dangling symlink): it vanished
                self._error(path, _err_key("open", e))
            return
        except OSError as e:
            self._error(path, _err_key("open", e))
            return
        if not stat.S_ISREG(st.st_mode):
            if cand.explicit:
                self._error(path, "open:not-a-regular-file")
            return
        if (st.st_dev, st.st_ino) in self._ids:
            return  # already tailed under another path (symlink, rotated name)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as e:
            self._error(path, _err_key("open", e))
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in self._ids:
                os.close(fd)
                return
            f = _File(path, fd, st, self._max_line, self.stats)
            self._place(f, st, first)
        except OSError as e:
            os.close(fd)
            self._error(path, _err_key("open", e))
            return
        self._ok(path, "open")
        if path in self._vanished:
            self._vanished.discard(path)
            self.stats.rotations += 1
        self._files[path] = f
        self._ids[f.ident] = path
        self.stats.files_watched += 1
        yield from self._drain(f)

    def _place(self, f: _File, st: os.stat_result, first: bool) -> None:
        """Choose where reading of a newly opened file starts: saved position, end, or 0."""
        f.head = os.pread(f.fd, HEAD_BYTES, 0)
        saved = self._saved.pop(f.path, None)
        if saved is not None and self._resumable(f, st, saved):
            f.pos, f.line, f.fresh = saved.offset, saved.line, saved.offset == 0
        elif first and self._start_at_end:
            f.pos, f.line = _last_line_end(f.fd, st.st_size)
            f.fresh = f.pos == 0

    @staticmethod
    def _resumable(f: _File, st: os.stat_result, saved: FilePosition) -> bool:
        if (saved.dev, saved.ino) != f.ident or not 0 <= saved.offset <= st.st_size:
            return False
        n = saved.head_len if saved.head_len >= 0 else min(st.st_size, HEAD_BYTES)
        if n > st.st_size:
            return False
        return hashlib.sha1(os.pread(f.fd, n, 0)).hexdigest() == saved.head

    @staticmethod
    def _position(f: _File) -> FilePosition:
        return FilePosition(path=f.path, dev=f.ident[0], ino=f.ident[1], offset=f.pos - f.pending, line=f.line,
                            head=hashlib.sha1(f.head).hexdigest(), head_len=len(f.head))

    def positions(self) -> dict[str, FilePosition]:
        """Per path: bytes and lines consumed (complete lines only) plus the file's identity.

        Covers the open files, and the positions given to the constructor that have not been used yet
        (their file was not opened so far), so a checkpoint taken early loses nothing.
        """
        out: dict[str, FilePosition] = dict(self._saved)
        for path, f in self._files.items():
            try:
                head = os.pread(f.fd, HEAD_BYTES, 0)
            except OSError:
                head = f.head
            out[path] = FilePosition(
                path=path,
                dev=f.ident[0],
                ino=f.ident[1],
                offset=f.pos - f.pending,
                line=f.line,
                head=hashlib.sha1(head).hexdigest(),
                head_len=len(head),
            )
        return out

    def close(self) -> None:
        """Close every open file (pending partial lines are dropped, not emitted)."""
        for f in self._files.values():
            os.close(f.fd)
        self.stats.files_watched -= len(self._files)
        self._files.clear()
        self._ids.clear()


def _is_under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def _walk_logs(root: str) -> list[str]:
    """Files under ``root`` named ``*.log`` or like a glog INFO file (not WARNING/ERROR, not symlinks)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".log") or _GLOG_INFO.fullmatch(name):
                out.append(os.path.join(dirpath, name))
    return out


def _last_line_end(fd: int, size: int, block: int = 4 << 20) -> tuple[int, int]:
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


def follow(
    tailer: Tailer,
    on_chunk: Callable[[Chunk], None],
    stop: threading.Event,
    *,
    force_polling: bool = False,
    poll_interval: float = 1.0,
) -> None:
    """Block until ``stop`` is set, polling ``tailer`` and passing each chunk to ``on_chunk``.

    Polls once at start, then on every watchfiles change set and at least every ``poll_interval`` seconds
    (watchfiles' ``rust_timeout`` with ``yield_on_timeout=True`` ticks): events can be missed, and directories
    that do not exist yet cannot be watched. The watcher is rebuilt when :meth:`Tailer.watch_roots`
    changes; if it cannot be built (no roots, inotify limits) plain timed polling is used.
    ``force_polling=False`` leaves the choice to watchfiles (``WATCHFILES_FORCE_POLLING``, WSL).
    """

    def run() -> None:
        for chunk in tailer.poll():
            on_chunk(chunk)

    interval_ms = max(1, int(poll_interval * 1000))
    # watchfiles wakes us at least every tick; a tick polls only when poll_interval has passed, except
    # the first tick after a watcher is built and the first one after it has settled: changes made
    # between our last poll and the watcher's start raise no event, and notify's polling watcher
    # takes up to a poll delay to record its baseline (measured: an append 270 ms after start is
    # sometimes missed with poll_delay_ms=300).
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
            started = last = time.monotonic()
            first, settled = True, False
            for changes in watchfiles.watch(
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
                now = time.monotonic()
                due = bool(changes) or first or now - last >= poll_interval
                if not settled and now - started >= settle:
                    due = settled = True
                if due:
                    first = False
                    run()
                    last = time.monotonic()
                if stop.is_set() or tailer.watch_roots() != roots:
                    break
        except (OSError, RuntimeError):  # cannot watch (a root vanished, inotify limits): poll on a timer
            if not stop.wait(poll_interval):
                run()


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
    back until a buffer fills; a final unterminated line is emitted at EOF with ``"\\n"`` added.
    """
    st = stats if stats is not None else TailStats()
    lines = _Lines(path, max_line_bytes, st, 0.0)
    # BufferedReader.read1 does at most one raw read; a raw FileIO's read() is a single os.read.
    read1: Callable[[int], bytes] = getattr(stream, "read1", None) or stream.read
    st.files_watched += 1
    try:
        while raw := read1(read_bytes):
            st.bytes_read += len(raw)
            st.last_read_time = clock()
            yield from lines.feed(raw)
        yield from lines.flush()
    finally:
        st.files_watched -= 1
