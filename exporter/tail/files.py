"""One stream per file: reading to EOF, rotation, truncation, read errors, idle closing and draining.

Each followed file is read to EOF at every poll, then its path is stat'ed: a new (st_dev, st_ino) at the
path is a rotation, a size below our offset (or a changed first KiB) is a truncation. A path naming a file
already followed under another path is skipped. When a rotated file still matches a source under its new
name (``app.log`` -> ``app.log.1`` with the glob ``app.log*``), it keeps being followed under that name. A
file renamed to a name that matches nothing keeps its descriptor and is read until it has not grown for
``rotate_wait`` seconds (a writer that has not reopened yet still appends to it, as Promtail and mtail
allow), then closed; a deleted file is drained and closed. A file closed for good, or truncated, drops its
unterminated last line (``TailStats.lines_partial``). A path that vanished and later names a file again
counts as a rotation.

Descriptors are bounded: a followed file that has not grown for ``idle_close`` seconds, or the least
recently grown ones beyond ``max_open_files``, are closed while their path, identity, offset, line count,
head and pending partial line are kept; a poll reopens one (by path, identity checked) when its stat shows
it grew or changed. A closed file that was rotated away is found again under a matched name, else it is
finished (an idle file has nothing left to drain).

Errors: see :class:`exporter.tail.stats.Errors`. An explicitly named file that does not exist yet is not an
error (it may be created later); a file listed in a directory or matched by a glob that then cannot be
opened is.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from exporter.events import Chunk, FilePosition
from exporter.tail.lines import Lines
from exporter.tail.resume import HEAD_BYTES, OPEN_FLAGS, FileId, Positions, last_line_end, resumable
from exporter.tail.stats import Backlog, Errors, TailStats, err_key


class File(Lines):
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
class Limits:
    """How the streams read and how many descriptors they hold (the Tailer's constructor arguments)."""

    max_line: int
    read_bytes: int
    max_open: int
    idle_close: float
    rotate_wait: float
    start_at_end: bool


class Streams:
    """The followed files (``files``: path -> open or idle-closed file) and the rotated ones being drained.

    ``now`` is the monotonic time of the current poll (set by the Tailer); ``clock`` (wall time) only
    stamps ``TailStats.last_read_time``.
    """

    def __init__(self, stats: TailStats, positions: Positions, limits: Limits, clock: Callable[[], float],
                 now: float) -> None:
        self.stats = stats
        self.positions = positions
        self.limits = limits
        self.clock = clock
        self.now = now
        self.errors = Errors(stats)
        self.files: dict[str, File] = {}
        self.lru: OrderedDict[File, None] = OrderedDict()  # the open ones, least recently grown first
        self.draining: list[File] = []
        self.ids: dict[FileId, str] = {}
        self.vanished: set[str] = set()  # paths whose file was closed because it went away
        self.backlog = Backlog(stats)

    def untrack(self, path: str) -> None:
        self.positions.untrack(path, path in self.files)

    # following ----------------------------------------------------------------------------------

    def service(self, f: File, candidates: Sequence[str], ident: Callable[[str], FileId | None]) -> Iterator[Chunk]:
        """Read ``f`` to EOF, then see whether its path still names it (else: rotation or deletion)."""
        path = f.path
        st: os.stat_result | None = None
        now: FileId | None
        try:
            st = os.stat(path)
            now = (st.st_dev, st.st_ino)
            self.errors.ok(path, "stat")
            if now == f.ident:
                self.backlog.stat(f, f.path, st.st_size - f.pos)
        except (FileNotFoundError, NotADirectoryError):
            now = None
        except OSError as e:
            self.errors.error(path, err_key("stat", e))
            now = f.ident  # cannot tell; keep reading the open file
        was_open = f.fd >= 0
        if was_open:
            yield from self.drain(f)
            if now == f.ident:
                return
        elif now == f.ident:
            if st is None or (st.st_size == f.pos and st.st_mtime_ns == f.closed_mtime):
                return
            if self._reopen(f, path):
                yield from self.drain(f)
            return
        yield from self._replaced(f, now, was_open, candidates, ident)

    def _replaced(self, f: File, now: FileId | None, was_open: bool, candidates: Sequence[str],
                  ident: Callable[[str], FileId | None]) -> Iterator[Chunk]:
        """The path names another file now, or nothing. If the old file is still matched under another
        path (app.log -> app.log.1 with a glob app.log*), keep following it there; else finish it."""
        path = f.path
        moved = next((c for c in candidates if c not in self.files and ident(c) == f.ident), None)
        del self.files[path]
        if moved is not None and (was_open or self._reopen(f, moved)):
            f.path = moved
            self.files[moved] = f
            self.ids[f.ident] = moved
            self.positions.track(moved)
            yield from f.empty()  # its position now lives under the new name
            if not was_open:
                yield from self.drain(f)
        else:
            self._retire(f)
        self.untrack(path)
        if now is None:
            self.vanished.add(path)
        else:
            self.stats.rotations += 1
            self.vanished.discard(path)
            yield from self.open(path, True, False)

    def _retire(self, f: File) -> None:
        """``f`` is no longer at a source path: drain it until idle if renamed, else finish it now."""
        self.stats.files_watched -= 1
        if f.fd >= 0:
            try:
                renamed = os.fstat(f.fd).st_nlink > 0
            except OSError:
                renamed = False
            if renamed:
                f.draining = True
                f.grown_at = self.now
                self.lru.pop(f, None)
                self.draining.append(f)
                return
        self.finish(f)

    def finish(self, f: File) -> None:
        """Close ``f`` for good (it stopped being followed: counted in files_watched already)."""
        f.discard()
        self.ids.pop(f.ident, None)
        self.close_fd(f)

    def close_fd(self, f: File) -> None:
        if f.fd >= 0:
            try:
                f.closed_mtime = os.fstat(f.fd).st_mtime_ns
            except OSError:
                f.closed_mtime = -1
            os.close(f.fd)
            f.fd = -1
            self.stats.files_open -= 1
        self.lru.pop(f, None)

    def service_draining(self, f: File) -> Iterator[Chunk]:
        yield from self.drain(f)
        if f.fd >= 0 and self.now - f.grown_at < self.limits.rotate_wait:
            return
        self.draining.remove(f)
        self.finish(f)

    # reading ------------------------------------------------------------------------------------

    def drain(self, f: File) -> Iterator[Chunk]:
        """Read ``f`` to EOF; detect truncation (size below our position, or a rewritten head)."""
        try:
            st = self._truncated(f)
        except OSError as e:
            self.errors.error(f.path, err_key("read", e))
            return
        if st is not None:
            f.discard()
            f.reset(st.st_mtime)
            f.pos = 0
            try:
                f.set_head(os.pread(f.fd, HEAD_BYTES, 0))
            except OSError:
                f.set_head(b"")
            self.stats.truncations += 1
            yield from f.empty()
        yield from self._read(f)

    @staticmethod
    def _truncated(f: File) -> os.stat_result | None:
        """The file's stat if it was truncated since we read it, else None (its head grows as it does)."""
        st = os.fstat(f.fd)
        if st.st_size < f.pos:
            return st
        if st.st_size > f.pos:  # grew: is it still the content we read?
            head = os.pread(f.fd, HEAD_BYTES, 0)
            if not head.startswith(f.head):
                return st
            if len(head) > len(f.head):
                f.set_head(head)
        return None

    def _read(self, f: File) -> Iterator[Chunk]:
        stats, fd, n = self.stats, f.fd, self.limits.read_bytes
        while True:
            try:
                raw = os.pread(fd, n, f.pos)
            except OSError as e:
                self.errors.error(f.path, err_key("read", e))
                return
            if not raw:
                break
            self.errors.ok(f.path, "read")
            f.pos += len(raw)
            if f.grown_at != self.now:
                f.grown_at = self.now
                if f in self.lru:
                    self.lru.move_to_end(f)
            stats.bytes_read += len(raw)
            self.backlog.read(f, len(raw))
            stats.last_read_time = self.clock()
            yield from f.feed(raw)
            if len(raw) < n:
                break

    # descriptors --------------------------------------------------------------------------------

    def _make_room(self) -> None:
        """Before opening a descriptor: close the least recently grown ones beyond ``max_open_files``."""
        while len(self.lru) + len(self.draining) >= self.limits.max_open:
            if self.lru:
                self.close_fd(next(iter(self.lru)))
            else:
                self.finish(self.draining.pop(0))

    def close_idle(self) -> None:
        limit = self.now - self.limits.idle_close
        while self.lru:
            f = next(iter(self.lru))
            if f.grown_at > limit:
                break
            self.close_fd(f)

    def _reopen(self, f: File, path: str) -> bool:
        """Reopen idle-closed ``f`` at ``path``; False (and ``f`` stays closed) if another file is there."""
        self._make_room()
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as e:
            if not isinstance(e, (FileNotFoundError, NotADirectoryError)):
                self.errors.error(path, err_key("open", e))
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
        f.grown_at = self.now
        self.lru[f] = None
        self.stats.files_open += 1
        return True

    # opening ------------------------------------------------------------------------------------

    def open(self, path: str, explicit: bool, first: bool) -> Iterator[Chunk]:
        """Start following the file at ``path`` (a new candidate, or the new file at a rotated path)."""
        if not self._openable(path, explicit):
            return
        self._make_room()
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as e:
            self.errors.error(path, err_key("open", e))
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in self.ids:
                os.close(fd)
                return
            f = File(path, fd, st, self.limits.max_line, self.stats, self.now)
            announce = self._place(f, st, first)
            self.backlog.stat(f, f.path, st.st_size - f.pos)
        except OSError as e:
            os.close(fd)
            self.errors.error(path, err_key("open", e))
            return
        self.errors.ok(path, "open")
        if path in self.vanished:
            self.vanished.discard(path)
            self.stats.rotations += 1
        self.files[path] = f
        self.lru[f] = None
        self.ids[f.ident] = path
        self.positions.track(path)
        self.stats.files_watched += 1
        self.stats.files_open += 1
        if announce:
            yield from f.empty()
        yield from self.drain(f)

    def _openable(self, path: str, explicit: bool) -> bool:
        """A regular file not followed under another path (symlink, rotated name); errors counted."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError) as e:
            if not explicit:  # listed a moment ago (or a dangling symlink): it vanished
                self.errors.error(path, err_key("open", e))
            return False
        except OSError as e:
            self.errors.error(path, err_key("open", e))
            return False
        if not stat.S_ISREG(st.st_mode):
            if explicit:
                self.errors.error(path, "open:not-a-regular-file")
            return False
        return (st.st_dev, st.st_ino) not in self.ids

    def _place(self, f: File, st: os.stat_result, first: bool) -> bool:
        """Choose where reading of a newly opened file starts: saved position, end, or 0.

        Returns whether the start moved without a line to emit (a chunk without text must say so).
        """
        f.set_head(os.pread(f.fd, HEAD_BYTES, 0))
        saved = self.positions.saved.pop(f.path, None)
        if saved is not None and resumable(f.fd, st.st_size, saved):
            f.pos = f.consumed = saved.offset
            f.line, f.fresh = saved.line, saved.offset == 0
            moved = f.path in self.positions.rebound or (saved.dev, saved.ino) != f.ident
            self.positions.rebound.discard(f.path)
            return f.pos > 0 and moved
        if first and self.limits.start_at_end:
            f.pos, f.line = last_line_end(f.fd, st.st_size)
            f.consumed = f.pos
            f.fresh = f.pos == 0
            return f.pos > 0
        return False
