"""Tail Caffe log files: the first pipeline stage.

A :class:`Tailer` turns a list of sources (files, globs, directories) into :class:`Chunk` s of complete
lines and hides rotation, truncation and deletion from its consumers (the model is mtail's ``filestream``
and fail2ban's ``FileContainer``): at every :meth:`Tailer.poll` each followed file is read to EOF, then
its path is stat'ed; a new (st_dev, st_ino) at the path is a rotation, a size below our offset (or a
changed first KiB) is a truncation. :func:`follow` decides *when* to poll (watchfiles wake-ups plus a
timer); the Tailer decides *what* changed. :func:`read_stream` does the same line splitting for a pipe.

Positions. Every chunk of a regular file carries ``end``, the :class:`FilePosition` just after its last
line, so the stage that applies chunks can commit exactly what it applied (a checkpoint of how far the
tailer *read* can be ahead of what was applied). Bytes consumed without a line emitted (an oversized line
dropped, history skipped by ``start_at_end``, a file that moved to another matched name, a forgotten
file) produce a chunk with ``text == ""`` that only moves ``end``. ``end`` is None only for a stream and
for a file being drained after it was renamed away (its path names another file, or none, and nothing
will resume it).

Files are identified by (st_dev, st_ino): a path naming a file already tailed under another path is
skipped. When a rotated file still matches a source under its new name (``app.log`` -> ``app.log.1``
with the glob ``app.log*``), it keeps being followed under that name. A file renamed to a name that
matches nothing keeps its descriptor and is read until it has not grown for ``rotate_wait`` seconds (a
writer that has not reopened yet still appends to it, as Promtail and mtail allow), then closed; a
deleted file is drained and closed. A file closed for good, or truncated, drops its unterminated last
line (counted in ``TailStats.lines_partial``): a fragment such as ``loss = 0.1`` of ``loss = 0.147174``
must never be parsed as a whole line. A path that vanished and later names a file again counts as a
rotation.

Descriptors are bounded: a followed file that has not grown for ``idle_close`` seconds, or the least
recently grown ones beyond ``max_open_files``, are closed while their path, identity, offset, line count,
head and pending partial line are kept; a poll reopens one (by path, identity checked) when its stat shows
it grew or changed. A closed file that was rotated away is found again under a matched name, else it is
finished (an idle file has nothing left to drain).

Discovery follows directory symlinks in ``**`` globs only into directories not visited yet (a
``self -> .`` loop ends); directory sources do not follow directory symlinks; compressed files
(``.gz``, ``.bz2``, ``.xz``, ``.zst``, ``.lz4``, ``.zip``) matched by a glob are skipped; rotated siblings
(``caffe.log.2``, ``caffe.log.1``, ``caffe.log-20261126``) are ordered oldest first, before the live file,
so a fresh read follows the order the lines were written in.

Restart. A saved :class:`FilePosition` is matched by content, not by (st_dev, st_ino), which a copy+rename
or a remount changes: the file at the saved path (or, on the first poll, any discovered file, e.g. the
log rotated to ``caffe.log.1`` meanwhile) whose first ``head_len`` bytes hash to ``head`` and whose size
is at least ``offset`` is resumed there; any other file is read from 0.

Lifecycle. :meth:`Tailer.forget` stops reading a path without re-reading it (its position is kept with
``forgotten=True``; it is read from 0 as a new file once it grows or is replaced); :meth:`Tailer.set_sources`
replaces the sources. Both may be called from any thread and take effect at the next poll.

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
import fnmatch
import glob
import hashlib
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import BinaryIO

import watchfiles

__all__ = ["Chunk", "FilePosition", "TailStats", "Tailer", "follow", "read_stream"]

HEAD_BYTES = 1024
"""Bytes at offset 0 whose hash identifies a file's content (recycled-inode and rewrite detection)."""

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
"""Rotated-and-compressed files: binary, never read (skipped at discovery)."""

_GLOG_INFO = re.compile(r".+\.log\.INFO\.\d{8}-\d{6}\.\d+")
_ROTATED = re.compile(r"(?P<base>.+\.(?:log|txt))(?:\.(?P<n>\d+)|[-.](?P<date>\d{8}))", re.IGNORECASE)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

FileId = tuple[int, int]


@dataclass
class FilePosition:
    """Where reading of one path stopped; serialisable for checkpoints.

    ``offset`` counts bytes of complete lines consumed (a pending partial line is not consumed; dropped
    oversized lines and NULs are), ``line`` the lines consumed (including dropped oversized lines, so
    ``line + 1`` is the next chunk's ``first_line``). ``head`` is the hex sha1 of the first ``head_len``
    bytes of the file (``head_len = min(size, 1024)`` when recorded; ``-1`` means unknown, then
    ``min(size, 1024)`` of the file at resume time is hashed). ``forgotten``: the path was given to
    :meth:`Tailer.forget`; it is not read again unless it grows beyond ``offset`` or is replaced.
    """

    path: str
    dev: int
    ino: int
    offset: int
    line: int
    head: str
    head_len: int = -1
    forgotten: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FilePosition:
        def num(key: str, default: int | None = None) -> int:
            v = d.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"FilePosition.{key} must be an int, got {v!r}")
            return v

        path, head, forgotten = d.get("path"), d.get("head"), d.get("forgotten", False)
        if not isinstance(path, str) or not isinstance(head, str):
            raise ValueError(f"FilePosition.path and .head must be strings, got {path!r}, {head!r}")
        if not isinstance(forgotten, bool):
            raise ValueError(f"FilePosition.forgotten must be a bool, got {forgotten!r}")
        return cls(
            path=path,
            dev=num("dev"),
            ino=num("ino"),
            offset=num("offset"),
            line=num("line"),
            head=head,
            head_len=num("head_len", -1),
            forgotten=forgotten,
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    """Complete lines of one file (or none: then only ``end`` moves)."""

    path: str
    """The path as discovered (not symlink-resolved); ``"-"`` for stdin."""
    text: str
    """Complete lines, each ending in ``"\\n"``; NULs removed; UTF-8 decoded with ``errors="replace"``.
    ``""`` when bytes were consumed without a line to emit (see ``end``)."""
    first_line: int
    """1-based line number within the file of the first line (dropped oversized lines are counted)."""
    file_start: bool
    """True for the first chunk with text read from offset 0 of a file (new file, rotated-in file, after
    truncation, a forgotten file read again); never set on a chunk with ``text == ""``."""
    mtime: float
    """st_mtime of the file when it was first opened (0.0 for streams)."""
    end: FilePosition | None = None
    """The file's position just after this chunk's last line: commit it once the chunk is applied. None
    for streams and the documented exceptions (module docstring)."""


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


class _File(_Lines):
    """A regular file being tailed; ``fd == -1`` while idle-closed."""

    __slots__ = ("closed_mtime", "digest", "draining", "fd", "grown_at", "head", "ident", "pos")

    def __init__(self, path: str, fd: int, st: os.stat_result, max_line: int, stats: TailStats, now: float) -> None:
        super().__init__(path, max_line, stats, st.st_mtime)
        self.fd = fd
        self.ident: FileId = (st.st_dev, st.st_ino)
        self.pos = 0  # raw read position
        self.head = b""  # the first bytes of the file (up to HEAD_BYTES) as last seen
        self.digest: str | None = None  # sha1 of head, computed when first needed
        self.grown_at = now  # monotonic time of the last read that returned data (or of the open)
        self.closed_mtime = 0  # st_mtime_ns when idle-closed
        self.draining = False  # renamed away to a name no source matches: read until idle, then closed

    def set_head(self, head: bytes) -> None:
        if head != self.head:
            self.head = head
            self.digest = None

    def end_at(self, offset: int, line: int) -> FilePosition | None:
        if self.draining:
            return None
        if len(self.head) < HEAD_BYTES and offset > len(self.head) and self.fd >= 0:
            try:  # the file was shorter than HEAD_BYTES when its head was read
                head = os.pread(self.fd, HEAD_BYTES, 0)
            except OSError:
                head = self.head
            if len(head) > len(self.head) and head.startswith(self.head):
                self.set_head(head)
        if self.digest is None:
            self.digest = hashlib.sha1(self.head).hexdigest()
        return FilePosition(path=self.path, dev=self.ident[0], ino=self.ident[1], offset=offset, line=line,
                            head=self.digest, head_len=len(self.head))


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: str
    explicit: bool


def _err_key(op: str, e: OSError) -> str:
    return f"{op}:{errno.errorcode.get(e.errno or 0, str(e.errno))}"


def _compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED_SUFFIXES)


def _stream_order(path: str) -> tuple[str, str, int, int, str]:
    """Sort key putting rotated siblings oldest first (``.2``, ``.1``, dated ascending) before the live file."""
    d, name = os.path.split(path)
    m = _ROTATED.fullmatch(name)
    if m is None:
        return d, name, 1, 0, ""
    n = m.group("n")
    return d, m.group("base"), 0, -int(n) if n is not None else 0, m.group("date") or ""


class Tailer:
    """Follows files named by paths, globs and directories; see the module docstring.

    ``monotonic`` times ``idle_close`` and ``rotate_wait``; ``clock`` (wall time) only stamps
    ``TailStats.last_read_time``.
    """

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
        max_open_files: int = 256,
        idle_close: float = 30.0,
        rotate_wait: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_line_bytes < 1 or read_bytes < 1 or max_open_files < 1:
            raise ValueError("max_line_bytes, read_bytes and max_open_files must be positive")
        self._sources = list(sources)
        self._start_at_end = start_at_end
        self._max_line = max_line_bytes
        self._read_bytes = read_bytes
        self.stats = stats if stats is not None else TailStats()
        self._saved = {p: pos for p, pos in (positions or {}).items() if not pos.forgotten}
        self._forgotten = {p: pos for p, pos in (positions or {}).items() if pos.forgotten}
        self._clock = clock
        self._monotonic = monotonic
        self._max_open = max_open_files
        self._idle_close = idle_close
        self._rotate_wait = rotate_wait
        self._now = monotonic()
        self._files: dict[str, _File] = {}  # followed files, open or idle-closed
        self._lru: OrderedDict[_File, None] = OrderedDict()  # the open ones, least recently grown first
        self._draining: list[_File] = []
        self._ids: dict[FileId, str] = {}
        self._errors: dict[str, str] = {}  # path -> key of the failure episode already counted
        self._vanished: set[str] = set()  # paths whose file was closed because it went away
        self._polled = False
        self._rebound: set[str] = set()  # saved positions moved to another path by _rebind
        self._lock = threading.Lock()  # guards the requests and the tracked set, shared with other threads
        self._requests: list[tuple[str, object]] = []
        self._tracked: set[str] = set(self._saved) | set(self._forgotten)

    # thread-safe requests ---------------------------------------------------------------------

    def forget(self, path: str) -> None:
        """Stop reading ``path`` without re-reading it (its run was dropped); applied at the next poll.

        The file is closed; it is read again, from offset 0 as a new file, once it grows beyond where
        reading stopped or the path names another file. :meth:`positions` reports it with ``forgotten``
        set, and the next poll yields a chunk without text whose ``end`` is that position.
        """
        with self._lock:
            self._requests.append(("forget", path))

    def set_sources(self, sources: Sequence[str]) -> None:
        """Replace the sources (configuration reload); applied at the next poll. Files no source covers
        any more are closed (their unterminated last line counted as partial) and no longer tracked."""
        with self._lock:
            self._requests.append(("sources", list(sources)))

    def tracked_paths(self) -> frozenset[str]:
        """Paths whose position still means something: followed (open or idle-closed), forgotten, or
        restored and not used yet. A committed position of any other path can be dropped."""
        with self._lock:
            return frozenset(self._tracked)

    def _track(self, path: str) -> None:
        with self._lock:
            self._tracked.add(path)

    def _untrack(self, path: str) -> None:
        if path not in self._files and path not in self._forgotten and path not in self._saved:
            with self._lock:
                self._tracked.discard(path)

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
                for p in sorted(_glob(src), key=_stream_order):
                    if not _compressed(p) and not os.path.isdir(p):
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
        """Discover new files, then read every followed file to EOF, handling rotation, truncation,
        deletion, idle files and the requests of :meth:`forget` and :meth:`set_sources`.

        Iterate it to the end: the tailer's offsets advance as chunks are produced, so chunks of an
        abandoned iteration are not produced again.
        """
        first = not self._polled
        self._polled = True
        self._now = self._monotonic()
        with self._lock:
            requests, self._requests = self._requests, []
        forgets: list[str] = []
        for kind, arg in requests:
            if kind == "sources":
                assert isinstance(arg, list)
                self._sources = arg
                self._drop_uncovered({c.path for c in self._discover()})
            else:
                assert isinstance(arg, str)
                forgets.append(arg)
        for path in forgets:
            yield from self._forget(path)
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

        if first and (self._saved or self._forgotten):
            self._rebind(candidates)
        for d in list(self._draining):
            yield from self._service_draining(d)
        for path in list(self._files):
            f = self._files.get(path)
            if f is not None:
                yield from self._service(f, candidates, ident)
        for path in list(self._forgotten):
            if path in self._forgotten:
                yield from self._check_forgotten(path, candidates, ident)
        for cand in candidates:
            if cand.path not in self._files and cand.path not in self._forgotten:
                yield from self._open(cand, first)
        self._close_idle()
        live = {c.path for c in candidates} | set(self._files)
        for path in [p for p in self._errors if p not in live]:
            del self._errors[path]
        self.stats.files_unreadable = len(self._errors)

    def _service(
        self, f: _File, candidates: list[_Candidate], ident: Callable[[str], FileId | None]
    ) -> Iterator[Chunk]:
        path = f.path
        st: os.stat_result | None = None
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
        was_open = f.fd >= 0
        if was_open:
            yield from self._drain(f)
            if now == f.ident:
                return
        elif now == f.ident:
            if st is None or (st.st_size == f.pos and st.st_mtime_ns == f.closed_mtime):
                return
            if self._reopen(f, path):
                yield from self._drain(f)
            return
        # The path names another file now, or nothing. If the old file is still matched under another
        # path (app.log -> app.log.1 with a glob app.log*), keep following it there; else finish it.
        moved = next((c.path for c in candidates if c.path not in self._files and ident(c.path) == f.ident), None)
        del self._files[path]
        if moved is not None and (was_open or self._reopen(f, moved)):
            f.path = moved
            self._files[moved] = f
            self._ids[f.ident] = moved
            self._track(moved)
            yield from f.empty()  # its position now lives under the new name
            if not was_open:
                yield from self._drain(f)
        else:
            self._retire(f)
        self._untrack(path)
        if now is None:
            self._vanished.add(path)
        else:
            self.stats.rotations += 1
            self._vanished.discard(path)
            yield from self._open(_Candidate(path, True), False)

    def _retire(self, f: _File) -> None:
        """``f`` is no longer at a source path: drain it until idle if renamed, else finish it now."""
        self.stats.files_watched -= 1
        if f.fd >= 0:
            try:
                renamed = os.fstat(f.fd).st_nlink > 0
            except OSError:
                renamed = False
            if renamed:
                f.draining = True
                f.grown_at = self._now
                self._lru.pop(f, None)
                self._draining.append(f)
                return
        self._finish(f)

    def _finish(self, f: _File) -> None:
        """Close ``f`` for good (it stopped being followed: counted in files_watched already)."""
        f.discard()
        self._ids.pop(f.ident, None)
        self._close_fd(f)

    def _close_fd(self, f: _File) -> None:
        if f.fd >= 0:
            try:
                f.closed_mtime = os.fstat(f.fd).st_mtime_ns
            except OSError:
                f.closed_mtime = -1
            os.close(f.fd)
            f.fd = -1
            self.stats.files_open -= 1
        self._lru.pop(f, None)

    def _service_draining(self, f: _File) -> Iterator[Chunk]:
        yield from self._drain(f)
        if f.fd >= 0 and self._now - f.grown_at < self._rotate_wait:
            return
        self._draining.remove(f)
        self._finish(f)

    def _drain(self, f: _File) -> Iterator[Chunk]:
        """Read ``f`` to EOF; detect truncation (size below our position, or a rewritten head)."""
        try:
            st = os.fstat(f.fd)
            truncated = st.st_size < f.pos
            if not truncated and st.st_size > f.pos:  # grew: is it still the content we read?
                head = os.pread(f.fd, HEAD_BYTES, 0)
                truncated = not head.startswith(f.head)
                if not truncated and len(head) > len(f.head):
                    f.set_head(head)
        except OSError as e:
            self._error(f.path, _err_key("read", e))
            return
        if truncated:
            f.discard()
            f.reset(st.st_mtime)
            f.pos = 0
            try:
                f.set_head(os.pread(f.fd, HEAD_BYTES, 0))
            except OSError:
                f.set_head(b"")
            self.stats.truncations += 1
            yield from f.empty()
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
            if f.grown_at != self._now:
                f.grown_at = self._now
                if f in self._lru:
                    self._lru.move_to_end(f)
            stats.bytes_read += len(raw)
            stats.last_read_time = self._clock()
            yield from f.feed(raw)
            if len(raw) < n:
                break

    # descriptors ------------------------------------------------------------------------------

    def _make_room(self) -> None:
        """Before opening a descriptor: close the least recently grown ones beyond ``max_open_files``."""
        while len(self._lru) + len(self._draining) >= self._max_open:
            if self._lru:
                self._close_fd(next(iter(self._lru)))
            else:
                self._finish(self._draining.pop(0))

    def _close_idle(self) -> None:
        limit = self._now - self._idle_close
        while self._lru:
            f = next(iter(self._lru))
            if f.grown_at > limit:
                break
            self._close_fd(f)

    def _reopen(self, f: _File, path: str) -> bool:
        """Reopen idle-closed ``f`` at ``path``; False (and ``f`` stays closed) if another file is there."""
        self._make_room()
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as e:
            if not isinstance(e, (FileNotFoundError, NotADirectoryError)):
                self._error(path, _err_key("open", e))
            return False
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return False
        if (st.st_dev, st.st_ino) != f.ident:
            os.close(fd)  # replaced between stat and open: the next poll sees the new file
            return False
        f.fd = fd
        f.grown_at = self._now
        self._lru[f] = None
        self.stats.files_open += 1
        return True

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
        self._make_room()
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
            f = _File(path, fd, st, self._max_line, self.stats, self._now)
            announce = self._place(f, st, first)
        except OSError as e:
            os.close(fd)
            self._error(path, _err_key("open", e))
            return
        self._ok(path, "open")
        if path in self._vanished:
            self._vanished.discard(path)
            self.stats.rotations += 1
        self._files[path] = f
        self._lru[f] = None
        self._ids[f.ident] = path
        self._track(path)
        self.stats.files_watched += 1
        self.stats.files_open += 1
        if announce:
            yield from f.empty()
        yield from self._drain(f)

    def _place(self, f: _File, st: os.stat_result, first: bool) -> bool:
        """Choose where reading of a newly opened file starts: saved position, end, or 0.

        Returns whether the start moved without a line to emit (a chunk without text must say so).
        """
        f.set_head(os.pread(f.fd, HEAD_BYTES, 0))
        saved = self._saved.pop(f.path, None)
        if saved is not None and self._resumable(f.fd, st.st_size, saved):
            f.pos = f.consumed = saved.offset
            f.line, f.fresh = saved.line, saved.offset == 0
            moved = f.path in self._rebound or (saved.dev, saved.ino) != f.ident
            self._rebound.discard(f.path)
            return f.pos > 0 and moved
        if first and self._start_at_end:
            f.pos, f.line = _last_line_end(f.fd, st.st_size)
            f.consumed = f.pos
            f.fresh = f.pos == 0
            return f.pos > 0
        return False

    @staticmethod
    def _resumable(fd: int, size: int, saved: FilePosition) -> bool:
        """The file holds what ``saved`` was recorded on: its head hashes alike and it is long enough.
        (st_dev, st_ino) are not compared: a copy+rename or a remount changes them, not the content."""
        if not 0 <= saved.offset <= size:
            return False
        n = saved.head_len if saved.head_len >= 0 else min(size, HEAD_BYTES)
        if n > size:
            return False
        return hashlib.sha1(os.pread(fd, n, 0)).hexdigest() == saved.head

    def _matches(self, path: str, saved: FilePosition) -> bool:
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            return stat.S_ISREG(st.st_mode) and self._resumable(fd, st.st_size, saved)
        except OSError:
            return False
        finally:
            os.close(fd)

    def _rebind(self, candidates: list[_Candidate]) -> None:
        """First poll: a restored position whose path now holds other content goes to the discovered file
        that holds its content (the log was rotated while the exporter was down), preferring the file
        with the saved identity. Forgotten positions move the same way, so a dropped run's log stays
        dropped under its rotated name."""
        tables = (self._saved, self._forgotten)
        unmatched = [{p: pos for p, pos in t.items() if not self._matches(p, pos)} for t in tables]
        if not any(unmatched):
            return
        claimed = {p for t, u in zip(tables, unmatched, strict=True) for p in t if p not in u}
        idents: dict[str, FileId | None] = {}
        for c in candidates:
            try:
                st = os.stat(c.path)
                idents[c.path] = (st.st_dev, st.st_ino)
            except OSError:
                idents[c.path] = None
        moves: list[tuple[dict[str, FilePosition], str, str]] = []
        for t, u in zip(tables, unmatched, strict=True):
            for p, pos in u.items():
                free = [c.path for c in candidates if c.path not in claimed and idents[c.path] is not None]
                free.sort(key=lambda q: idents[q] != (pos.dev, pos.ino))
                target = next((q for q in free if self._matches(q, pos)), None)
                if target is not None:
                    claimed.add(target)
                    moves.append((t, p, target))
        if not moves:
            return
        moved = [(t, p, target, t[p]) for t, p, target in moves]
        for t, p, _, _ in moved:
            del t[p]
        for t, _, target, pos in moved:
            t[target] = dataclasses.replace(pos, path=target)
            self._rebound.add(target)
            self._track(target)
        for _, p, _, _ in moved:
            self._untrack(p)

    # lifecycle --------------------------------------------------------------------------------

    def _forget(self, path: str) -> Iterator[Chunk]:
        for d in [d for d in self._draining if d.path == path]:  # the rotated file of that log too
            self._draining.remove(d)
            self._finish(d)
        if path in self._forgotten:
            return
        f = self._files.pop(path, None)
        pos: FilePosition | None = None
        if f is not None:
            f.partial.clear()  # not a partial line lost: the file is read from 0 if it grows
            self._ids.pop(f.ident, None)
            self.stats.files_watched -= 1
            reported = f.end_at(f.pos, f.line)
            self._close_fd(f)
            if reported is not None:
                pos = dataclasses.replace(reported, forgotten=True)
        else:  # not opened yet: dormant where it ends now
            self._saved.pop(path, None)
            pos = _position_now(path)
        if pos is None:  # nothing at the path: nothing to keep from being read
            self._untrack(path)
            return
        self._forgotten[path] = pos
        self._track(path)
        yield Chunk(path, "", pos.line + 1, False, 0.0, pos)

    def _check_forgotten(self, path: str, candidates: list[_Candidate],
                         ident: Callable[[str], FileId | None]) -> Iterator[Chunk]:
        """A forgotten file stays dormant until it grows or is replaced; then it is read as a new file.
        Renamed to another matched name (``caffe.log.1``), it stays dormant there."""
        pos = self._forgotten[path]
        if path in self._rebound:  # moved by _rebind: the consumer learns the new path
            self._rebound.discard(path)
            yield Chunk(path, "", pos.line + 1, False, 0.0, pos)
        try:
            st = os.stat(path)
            now: FileId | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None
        if now is not None and st.st_size == pos.offset:
            if now == (pos.dev, pos.ino):
                return
            if self._matches(path, pos):  # the same content under a new identity (restart, remount)
                self._forgotten[path] = dataclasses.replace(pos, dev=st.st_dev, ino=st.st_ino)
                return
        del self._forgotten[path]
        if now != (pos.dev, pos.ino):
            moved = next((c.path for c in candidates if c.path not in self._files and c.path not in self._forgotten
                          and ident(c.path) == (pos.dev, pos.ino)), None)
            if moved is not None:
                new = dataclasses.replace(pos, path=moved)
                self._forgotten[moved] = new
                self._track(moved)
                yield Chunk(moved, "", new.line + 1, False, 0.0, new)
                yield from self._check_forgotten(moved, candidates, ident)
        if now is not None:
            yield from self._open(_Candidate(path, True), False)
        self._untrack(path)

    def _drop_uncovered(self, covered: set[str]) -> None:
        for path in [p for p in self._files if p not in covered]:
            f = self._files.pop(path)
            self.stats.files_watched -= 1
            self._finish(f)
            self._untrack(path)
        for d in (self._forgotten, self._saved):
            for path in [p for p in d if p not in covered]:
                del d[path]
                self._untrack(path)

    # reporting --------------------------------------------------------------------------------

    def positions(self) -> dict[str, FilePosition]:
        """Per path: bytes and lines consumed (complete lines only) plus the file's identity.

        Covers the followed files, the forgotten ones (``forgotten=True``), and the positions given to
        the constructor that have not been used yet (their file was not opened so far), so a checkpoint
        taken early loses nothing. This is how far the tailer has *read*; what a consumer has applied
        is the ``end`` of the last chunk it applied.
        """
        out: dict[str, FilePosition] = dict(self._saved)
        out.update(self._forgotten)
        for path, f in self._files.items():
            pos = f.end_at(f.pos - f.pending, f.line)
            if pos is not None:
                out[path] = pos
        return out

    def close(self) -> None:
        """Close every open file (pending partial lines are dropped, not emitted)."""
        for f in list(self._files.values()) + self._draining:
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
                self.stats.files_open -= 1
        self.stats.files_watched -= len(self._files)
        self._files.clear()
        self._draining.clear()
        self._lru.clear()
        self._ids.clear()


def _position_now(path: str) -> FilePosition | None:
    """A forgotten position for a file not followed yet: where it ends now."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        head = os.pread(fd, HEAD_BYTES, 0)
        lines = _last_line_end(fd, st.st_size)[1]
        return FilePosition(path=path, dev=st.st_dev, ino=st.st_ino, offset=st.st_size, line=lines,
                            head=hashlib.sha1(head).hexdigest(), head_len=len(head), forgotten=True)
    except OSError:
        return None
    finally:
        os.close(fd)


def _is_under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def _walk_logs(root: str) -> list[str]:
    """Files under ``root`` named ``*.log`` or like a glog INFO file (not WARNING/ERROR). Directory
    symlinks are not followed (``os.walk`` default), so a symlink loop cannot trap the walk."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".log") or _GLOG_INFO.fullmatch(name):
                out.append(os.path.join(dirpath, name))
    return out


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)`` that enters every directory at most once per ``**``.

    ``glob`` follows directory symlinks under ``**`` without memory, so ``jobA/self -> .`` makes it
    enumerate ``self/self/self/...`` for ever. Here a directory already visited (by st_dev, st_ino) is
    not entered again. Hidden names match only a pattern part that starts with ``.``, as in ``glob``.
    """
    parts = pattern.split(os.sep)
    root = ""
    if parts and parts[0] == "":
        root, parts = os.sep, parts[1:]
    out: list[str] = []

    def listdir(d: str) -> list[str]:
        try:
            return sorted(os.listdir(d or "."))
        except OSError:
            return []

    def join(d: str, name: str) -> str:
        return os.path.join(d, name) if d else name

    def subdirs(base: str) -> list[str]:
        """``base`` and every directory below it, each (st_dev, st_ino) once, hidden ones skipped.

        Real directories are walked first, directory symlinks afterwards and only into directories not
        seen yet: a loop (``self -> .``) ends, and a file reachable both ways keeps its real path.
        """
        try:
            st = os.stat(base or ".")
        except OSError:
            return []
        seen = {(st.st_dev, st.st_ino)}
        found = [base]
        stack = [base]
        links: list[str] = []
        while stack or links:
            if not stack:
                link = links.pop(0)
                try:
                    s = os.stat(link)
                except OSError:
                    continue
                if (s.st_dev, s.st_ino) in seen:
                    continue
                seen.add((s.st_dev, s.st_ino))
                found.append(link)
                stack.append(link)
                continue
            d = stack.pop()
            below = []
            for name in listdir(d):
                if name.startswith("."):
                    continue
                p = join(d, name)
                try:
                    s = os.stat(p)
                except OSError:
                    continue
                if not stat.S_ISDIR(s.st_mode):
                    continue
                if os.path.islink(p):
                    links.append(p)
                elif (s.st_dev, s.st_ino) not in seen:
                    seen.add((s.st_dev, s.st_ino))
                    below.append(p)
            found += below
            stack += reversed(below)
        return found

    def step(base: str, i: int) -> None:
        if i == len(parts):
            if base:
                out.append(base)
            return
        part = parts[i]
        last = i == len(parts) - 1
        if part == "**":
            for d in subdirs(base):
                if last:  # a trailing ** matches files too
                    if d != base:
                        out.append(d)
                    elif base:
                        out.append(os.path.join(base, ""))
                    out.extend(join(d, n) for n in listdir(d) if not n.startswith(".")
                               and not os.path.isdir(join(d, n)))
                else:
                    step(d, i + 1)
        elif glob.has_magic(part):
            for name in listdir(base):
                if name.startswith(".") and not part.startswith("."):
                    continue
                if fnmatch.fnmatchcase(name, part):
                    p = join(base, name)
                    if last or os.path.isdir(p):
                        step(p, i + 1)
        elif part == "":
            step(base, i + 1)
        else:
            p = join(base, part)
            if (last and os.path.lexists(p)) or os.path.isdir(p):
                step(p, i + 1)

    step(root, 0)
    return list(dict.fromkeys(out))


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
    back until a buffer fills. A final unterminated line is dropped at EOF and counted in
    ``TailStats.lines_partial`` (its end is unknown). Chunks carry ``end=None``: a pipe cannot be resumed.
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
        lines.discard()
    finally:
        st.files_watched -= 1
