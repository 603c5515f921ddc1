"""The Tailer: discovery, the file streams and the positions put together, one poll at a time.

Lifecycle. :meth:`Tailer.forget` stops reading a path without re-reading it (its position is kept with
``forgotten=True``; it is read from 0 as a new file once it grows or is replaced); :meth:`Tailer.set_sources`
replaces the sources. Both may be called from any thread and take effect at the next poll.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

from exporter.events import Chunk, FilePosition
from exporter.tail.discover import Candidate, Discovery
from exporter.tail.files import Limits, Streams
from exporter.tail.resume import FileId, Positions, matches, position_now
from exporter.tail.stats import TailStats


def _ident(path: str) -> FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _ident_cache() -> Callable[[str], FileId | None]:
    """(st_dev, st_ino) of the regular file at a path, stat'ed at most once per poll."""
    cache: dict[str, FileId | None] = {}

    def ident(path: str) -> FileId | None:
        if path not in cache:
            try:
                st = os.stat(path)
                cache[path] = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
            except OSError:
                cache[path] = None
        return cache[path]

    return ident


class Tailer:
    """Follows files named by paths, globs and directories; see the package docstring.

    ``monotonic`` times ``idle_close``, ``rotate_wait`` and ``rewalk_every`` (the longest a directory or glob
    source goes without being listed again, see :mod:`exporter.tail.discover`); ``clock`` (wall time) stamps
    ``TailStats.last_read_time`` and is compared with directory times to tell whether a walk can be reused.
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
        rewalk_every: float = 60.0,
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        if max_line_bytes < 1 or read_bytes < 1 or max_open_files < 1:
            raise ValueError("max_line_bytes, read_bytes and max_open_files must be positive")
        self.stats = stats if stats is not None else TailStats()
        self._monotonic = monotonic
        self._discovery = Discovery(sources, rewalk_every=rewalk_every, wall=clock)
        self._positions = Positions(positions)
        limits = Limits(max_line_bytes, read_bytes, max_open_files, idle_close, rotate_wait, start_at_end)
        self._streams = Streams(self.stats, self._positions, limits, clock, monotonic())
        self._polled = False
        self._start_at_end = start_at_end
        self._paths: list[str] = []  # the candidates of the last full poll
        self._lock = threading.Lock()  # guards the requests, shared with other threads
        self._requests: list[tuple[str, object]] = []
        self._accept = accept  # paths it refuses are never opened (sharding: another exporter reads them)

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

    def set_accept(self, accept: Callable[[str], bool] | None) -> None:
        """Replace the path filter (a reload that changes the shard); applied at the next poll. Files it
        refuses are closed and no longer tracked, as by :meth:`set_sources`; files it now accepts are read
        from their start at that poll."""
        with self._lock:
            self._requests.append(("accept", accept))

    def tracked_paths(self) -> frozenset[str]:
        """Paths whose position still means something: followed (open or idle-closed), forgotten, or
        restored and not used yet. A committed position of any other path can be dropped."""
        return self._positions.tracked()

    # watching ---------------------------------------------------------------------------------

    def watch_roots(self) -> list[str]:
        """Existing directories to watch for changes: parents of files, directories, glob bases."""
        return self._discovery.watch_plan()[0]

    def watch_recursive(self) -> bool:
        """Whether the roots must be watched recursively (a directory source or a multi-level glob)."""
        return self._discovery.watch_plan()[1]

    # polling ----------------------------------------------------------------------------------

    def poll(self) -> Iterator[Chunk]:
        """Discover new files, then read every followed file to EOF, handling rotation, truncation,
        deletion, idle files and the requests of :meth:`forget` and :meth:`set_sources`.

        Iterate it to the end: the tailer's offsets advance as chunks are produced, so chunks of an
        abandoned iteration are not produced again.
        """
        first = not self._polled
        self._polled = True
        streams, positions = self._streams, self._positions
        now = streams.now = self._monotonic()
        yield from self._apply_requests(now)
        candidates = self._candidates(now)
        paths = [c.path for c in candidates]
        ident = _ident_cache()
        if first and (positions.saved or positions.forgotten):
            positions.rebind(paths, lambda p: p in streams.files)
        if first:
            self._expect(paths)
        for d in list(streams.draining):
            yield from streams.service_draining(d)
        for path in list(streams.files):
            f = streams.files.get(path)
            if f is not None:
                yield from streams.service(f, paths, ident)
        for path in list(positions.forgotten):
            if path in positions.forgotten:
                yield from self._check_forgotten(path, paths, ident)
        for cand in candidates:
            if cand.path not in streams.files and cand.path not in positions.forgotten:
                yield from streams.open(cand.path, cand.explicit, first)
        streams.close_idle()
        streams.errors.keep_only(set(paths) | set(streams.files))
        self._paths = paths
        streams.backlog.recount(set(streams.files.values()))

    def poll_changed(self, changed: Collection[str]) -> Iterator[Chunk]:
        """Read only the followed files at ``changed`` (paths a watcher reported), if that is all there is
        to do: each still names the file followed there, and no request is pending. Anything else (a new
        name, a directory, a rotation, a deletion) makes it a full :meth:`poll`. An idle watched tree then
        costs nothing per change set but the changed files' stats."""
        streams = self._streams
        files = [streams.files.get(p) for p in changed]
        with self._lock:
            pending = bool(self._requests)
        if not self._polled or pending or not files or any(f is None or _ident(f.path) != f.ident for f in files):
            yield from self.poll()
            return
        streams.now = self._monotonic()
        ident = _ident_cache()
        for f in files:
            assert f is not None
            if streams.files.get(f.path) is f:
                yield from streams.service(f, self._paths, ident)
        streams.close_idle()

    def _expect(self, paths: Sequence[str]) -> None:
        """Before the first poll opens anything: the bytes waiting in each candidate (its size less a saved
        offset; none with ``start_at_end``), so ``backlog_bytes`` shows the whole backlog while it is read."""
        saved = self._positions.saved
        for path in paths:
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            pos = saved.get(path)
            if pos is not None or not self._start_at_end:
                self._streams.backlog.expect(path, max(0, size - (pos.offset if pos else 0)))

    def _apply_requests(self, now: float) -> Iterator[Chunk]:
        with self._lock:
            requests, self._requests = self._requests, []
        forgets: list[str] = []
        for kind, arg in requests:
            if kind == "sources":
                assert isinstance(arg, list)
                self._discovery.set_sources(arg)
                self._drop_uncovered({c.path for c in self._candidates(now)})
            elif kind == "accept":
                self._accept = arg  # type: ignore[assignment]
                self._drop_uncovered({c.path for c in self._candidates(now)})
            else:
                assert isinstance(arg, str)
                forgets.append(arg)
        for path in forgets:
            yield from self._forget(path)

    def _candidates(self, now: float) -> list[Candidate]:
        found = self._discovery.candidates(now)
        accept = self._accept
        return found if accept is None else [c for c in found if accept(c.path)]

    # lifecycle --------------------------------------------------------------------------------

    def _forget(self, path: str) -> Iterator[Chunk]:
        streams, positions = self._streams, self._positions
        for d in [d for d in streams.draining if d.path == path]:  # the rotated file of that log too
            streams.draining.remove(d)
            streams.finish(d)
        if path in positions.forgotten:
            return
        f = streams.files.pop(path, None)
        pos: FilePosition | None = None
        if f is not None:
            f.partial.clear()  # not a partial line lost: the file is read from 0 if it grows
            streams.ids.pop(f.ident, None)
            self.stats.files_watched -= 1
            reported = f.end_at(f.pos, f.line)
            streams.close_fd(f)
            if reported is not None:
                pos = dataclasses.replace(reported, forgotten=True)
        else:  # not opened yet: dormant where it ends now
            positions.saved.pop(path, None)
            pos = position_now(path)
        if pos is None:  # nothing at the path: nothing to keep from being read
            streams.untrack(path)
            return
        positions.forgotten[path] = pos
        positions.track(path)
        yield Chunk(path, "", pos.line + 1, False, 0.0, pos)

    def _check_forgotten(self, path: str, candidates: Sequence[str],
                         ident: Callable[[str], FileId | None]) -> Iterator[Chunk]:
        """A forgotten file stays dormant until it grows or is replaced; then it is read as a new file.
        Renamed to another matched name (``caffe.log.1``), it stays dormant there."""
        streams, positions = self._streams, self._positions
        pos = positions.forgotten[path]
        if path in positions.rebound:  # moved by rebind: the consumer learns the new path
            positions.rebound.discard(path)
            yield Chunk(path, "", pos.line + 1, False, 0.0, pos)
        try:
            st = os.stat(path)
            now: FileId | None = (st.st_dev, st.st_ino)
        except OSError:
            now = None
        if now is not None and st.st_size == pos.offset:
            if now == (pos.dev, pos.ino):
                return
            if matches(path, pos):  # the same content under a new identity (restart, remount)
                positions.forgotten[path] = dataclasses.replace(pos, dev=st.st_dev, ino=st.st_ino)
                return
        del positions.forgotten[path]
        if now != (pos.dev, pos.ino):
            moved = next((c for c in candidates if c not in streams.files and c not in positions.forgotten
                          and ident(c) == (pos.dev, pos.ino)), None)
            if moved is not None:
                new = dataclasses.replace(pos, path=moved)
                positions.forgotten[moved] = new
                positions.track(moved)
                yield Chunk(moved, "", new.line + 1, False, 0.0, new)
                yield from self._check_forgotten(moved, candidates, ident)
        if now is not None:
            yield from streams.open(path, True, False)
        streams.untrack(path)

    def _drop_uncovered(self, covered: set[str]) -> None:
        streams, positions = self._streams, self._positions
        for path in [p for p in streams.files if p not in covered]:
            f = streams.files.pop(path)
            self.stats.files_watched -= 1
            streams.finish(f)
            streams.untrack(path)
        for d in (positions.forgotten, positions.saved):
            for path in [p for p in d if p not in covered]:
                del d[path]
                streams.untrack(path)

    # reporting --------------------------------------------------------------------------------

    def positions(self) -> dict[str, FilePosition]:
        """Per path: bytes and lines consumed (complete lines only) plus the file's identity.

        Covers the followed files, the forgotten ones (``forgotten=True``), and the positions given to
        the constructor that have not been used yet (their file was not opened so far), so a checkpoint
        taken early loses nothing. This is how far the tailer has *read*; what a consumer has applied
        is the ``end`` of the last chunk it applied.
        """
        out: dict[str, FilePosition] = dict(self._positions.saved)
        out.update(self._positions.forgotten)
        for path, f in self._streams.files.items():
            pos = f.end_at(f.pos - f.pending, f.line)
            if pos is not None:
                out[path] = pos
        return out

    def close(self) -> None:
        """Close every open file (pending partial lines are dropped, not emitted)."""
        streams = self._streams
        for f in list(streams.files.values()) + streams.draining:
            if f.fd >= 0:
                os.close(f.fd)
                f.fd = -1
                self.stats.files_open -= 1
        self.stats.files_watched -= len(streams.files)
        streams.files.clear()
        streams.draining.clear()
        streams.lru.clear()
        streams.ids.clear()
