"""Sources (files, globs, directories) -> the paths to follow, and the directories to watch.

Directory sources yield ``*.log`` files and glog INFO files (not WARNING/ERROR) below them, without
following directory symlinks. ``**`` globs follow directory symlinks only into directories not visited yet
(a ``self -> .`` loop ends). Compressed files (``.gz``, ``.bz2``, ``.xz``, ``.zst``, ``.lz4``, ``.zip``)
matched by a glob are skipped. Rotated siblings (``caffe.log.2``, ``caffe.log.1``, ``caffe.log-20261126``)
are ordered oldest first, before the live file, so a fresh read follows the order the lines were written in.

Not re-walked on every poll: a walk records the signature (st_dev, st_ino, st_mtime_ns, st_ctime_ns) of
every directory it lists, taken before listing it, and the identity (st_dev, st_ino, or none) of every
name it looks up without listing (a glob's literal parts: ``/data`` and ``jobs`` of
``/data/jobs/*/caffe.log`` and each ``caffe.log``). While every signature is the same, no entry was added,
removed or renamed in those directories (the ctime also moves when a tool puts an old mtime back) and every
looked-up name still names the same thing, so the last result is reused: an idle poll stats instead of
listing. A walk is not reused when one of its directories changed less than :data:`MTIME_MARGIN` seconds
before it was listed (a later change in the same timestamp tick could leave both times alone: the "racy
git" problem), nor once it is ``rewalk_every`` seconds old: the safety net for what directory times do not
show (the target of a directory symlink appearing, an NFS attribute cache).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
"""Rotated-and-compressed files: binary, never read (skipped at discovery)."""

MTIME_MARGIN = 2.0
"""Seconds: a directory modified this recently before a walk listed it is listed again at the next one
(FAT has 2 s mtimes; ext4 and NFS timestamps are coarser than their nanosecond fields)."""

_GLOG_INFO = re.compile(r".+\.log\.INFO\.\d{8}-\d{6}\.\d+")
_ROTATED = re.compile(r"(?P<base>.+\.(?:log|txt))(?:\.(?P<n>\d+)|[-.](?P<date>\d{8}))", re.IGNORECASE)

Record = Callable[[str, str], None]
"""Called before a walk looks at a path its result depends on: ``(path, how)``, ``how`` one of ``"list"``
(a directory listed), ``"stat"`` (a name looked up, symlinks followed) or ``"lstat"`` (not followed)."""

Signature = tuple[int, int, int, int] | None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A path to follow; ``explicit``: named by a source itself (may not exist yet: not an error)."""

    path: str
    explicit: bool


def _ignore(_: str, __: str) -> None:
    return None


def compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED_SUFFIXES)


def stream_order(path: str) -> tuple[str, str, int, int, str]:
    """Sort key putting rotated siblings oldest first (``.2``, ``.1``, dated ascending) before the live file."""
    d, name = os.path.split(path)
    m = _ROTATED.fullmatch(name)
    if m is None:
        return d, name, 1, 0, ""
    n = m.group("n")
    return d, m.group("base"), 0, -int(n) if n is not None else 0, m.group("date") or ""


def is_under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip(os.sep) + os.sep)


def walk_logs(root: str, record: Record = _ignore) -> list[str]:
    """Files under ``root`` named ``*.log`` or like a glog INFO file (not WARNING/ERROR), in ``os.walk``'s
    top-down order with sorted names. Directory symlinks are not entered (``os.walk``'s default), so a
    symlink loop cannot trap the walk."""
    out: list[str] = []
    stack = [root]
    while stack:
        d = stack.pop()
        record(d, "list")
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        dirs: list[str] = []
        for e in sorted(entries, key=lambda e: e.name):
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                dirs.append(e.path)
            elif e.name.endswith(".log") or _GLOG_INFO.fullmatch(e.name):
                out.append(e.path)
        stack.extend(p for p in reversed(dirs) if not os.path.islink(p))
    return out


class _Glob:
    """``glob.glob(pattern, recursive=True)`` that enters every directory at most once per ``**``.

    ``glob`` follows directory symlinks under ``**`` without memory, so ``jobA/self -> .`` makes it
    enumerate ``self/self/self/...`` for ever. Here a directory already visited (by st_dev, st_ino) is
    not entered again. Hidden names match only a pattern part that starts with ``.``, as in ``glob``.
    """

    def __init__(self, pattern: str, record: Record) -> None:
        parts = pattern.split(os.sep)
        self.root = ""
        if parts and parts[0] == "":
            self.root, parts = os.sep, parts[1:]
        self.parts = parts
        self.record = record
        self.out: list[str] = []

    def listdir(self, d: str) -> list[str]:
        self.record(d or ".", "list")
        try:
            return sorted(os.listdir(d or "."))
        except OSError:
            return []

    @staticmethod
    def join(d: str, name: str) -> str:
        return os.path.join(d, name) if d else name

    def subdirs(self, base: str) -> list[str]:
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
                if (s.st_dev, s.st_ino) not in seen:
                    seen.add((s.st_dev, s.st_ino))
                    found.append(link)
                    stack.append(link)
                continue
            below = self._below(stack.pop(), seen, links)
            found += below
            stack += reversed(below)
        return found

    def _below(self, d: str, seen: set[tuple[int, int]], links: list[str]) -> list[str]:
        """The real directories in ``d`` not seen yet (marked seen); its directory symlinks go to ``links``."""
        below = []
        for name in self.listdir(d):
            if name.startswith("."):
                continue
            p = self.join(d, name)
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
        return below

    def step(self, base: str, i: int) -> None:
        if i == len(self.parts):
            if base:
                self.out.append(base)
            return
        part = self.parts[i]
        last = i == len(self.parts) - 1
        if part == "**":
            for d in self.subdirs(base):
                if last:
                    self._everything_in(base, d)
                else:
                    self.step(d, i + 1)
        elif glob.has_magic(part):
            self._matching(base, i, part, last)
        elif part == "":
            self.step(base, i + 1)
        else:
            p = self.join(base, part)
            self.record(p, "lstat" if last else "stat")
            if (last and os.path.lexists(p)) or os.path.isdir(p):
                self.step(p, i + 1)

    def _matching(self, base: str, i: int, part: str, last: bool) -> None:
        """The names in ``base`` that ``part`` (with wildcards) matches; hidden ones only by ``.*``."""
        for name in self.listdir(base):
            if name.startswith(".") and not part.startswith("."):
                continue
            if fnmatch.fnmatchcase(name, part):
                p = self.join(base, name)
                if last or os.path.isdir(p):
                    self.step(p, i + 1)

    def _everything_in(self, base: str, d: str) -> None:
        """A trailing ``**`` matches the directories below ``base`` and the files in them too."""
        if d != base:
            self.out.append(d)
        elif base:
            self.out.append(os.path.join(base, ""))
        self.out.extend(self.join(d, n) for n in self.listdir(d) if not n.startswith(".")
                        and not os.path.isdir(self.join(d, n)))


def glob_paths(pattern: str, record: Record = _ignore) -> list[str]:
    """The paths ``pattern`` matches (see :class:`_Glob`), each once, in the order found."""
    g = _Glob(pattern, record)
    g.step(g.root, 0)
    return list(dict.fromkeys(g.out))


def _watch_root(src: str) -> tuple[str, bool]:
    """The directory to watch for one source, and whether recursively."""
    if os.path.isdir(src):
        return src, True
    if glob.has_magic(src) and not os.path.lexists(src):
        parts = src.split(os.sep)
        i = next(n for n, part in enumerate(parts) if glob.has_magic(part))
        base = os.sep.join(parts[:i]) or (os.sep if src.startswith(os.sep) else ".")
        return base, i < len(parts) - 1 or "**" in src
    return os.path.dirname(src) or ".", False


def watch_plan(sources: Sequence[str]) -> tuple[list[str], bool]:
    """Existing directories to watch (parents of files, directories, glob bases) and whether recursively."""
    planned = [_watch_root(src) for src in sources]
    recursive = any(r for _, r in planned)
    uniq: list[str] = []
    for root, _ in planned:
        root = os.path.normpath(root)
        if root not in uniq and os.path.isdir(root):
            uniq.append(root)
    if recursive:  # a root inside another recursive root adds nothing
        uniq = [r for r in uniq if not any(o != r and is_under(r, o) for o in uniq)]
    return uniq, recursive


def _signature(path: str, how: str) -> Signature:
    """A listed directory's identity and times; a looked-up name's identity only (times 0: never racy)."""
    try:
        st = os.lstat(path) if how == "lstat" else os.stat(path)
    except OSError:
        return None
    if how == "list":
        return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns
    return st.st_dev, st.st_ino, 0, 0


@dataclass(frozen=True, slots=True)
class _Walk:
    paths: list[str]
    seen: dict[tuple[str, str], Signature]  # (path, how) -> signature, taken before the walk looked
    reusable: bool  # none of them had changed within MTIME_MARGIN of the listing
    at: float  # monotonic time of the walk


def _glob_logs(src: str, record: Record) -> list[str]:
    return [p for p in sorted(glob_paths(src, record), key=stream_order)
            if not compressed(p) and not os.path.isdir(p)]


class Discovery:
    """The candidates of a list of sources, each directory or glob walked again only when it may have changed.

    ``wall`` (wall time) is compared with directory times; the ``now`` given to :meth:`candidates`
    (monotonic) times ``rewalk_every``. A ``wall`` that is not the real time only makes walks reused less
    (behind it: never) or sooner than :data:`MTIME_MARGIN` allows (ahead of it).
    """

    def __init__(self, sources: Sequence[str], *, rewalk_every: float = 60.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.sources = list(sources)
        self._rewalk_every = rewalk_every
        self._wall = wall
        self._walks: dict[tuple[str, str], _Walk] = {}

    def set_sources(self, sources: Sequence[str]) -> None:
        self.sources = list(sources)
        self._walks = {k: w for k, w in self._walks.items() if k[0] in self.sources}

    def candidates(self, now: float) -> list[Candidate]:
        seen: set[str] = set()
        out: list[Candidate] = []

        def add(path: str, explicit: bool) -> None:
            if path not in seen:
                seen.add(path)
                out.append(Candidate(path, explicit))

        for src in self.sources:
            if os.path.isdir(src):
                for p in self._walked((src, "dir"), walk_logs, now):
                    add(p, False)
            elif glob.has_magic(src) and not os.path.lexists(src):
                for p in self._walked((src, "glob"), _glob_logs, now):
                    add(p, False)
            else:
                add(src, True)
        return out

    def watch_plan(self) -> tuple[list[str], bool]:
        return watch_plan(self.sources)

    def _walked(self, key: tuple[str, str], walk: Callable[[str, Record], list[str]], now: float) -> list[str]:
        last = self._walks.get(key)
        if (last is not None and last.reusable and now - last.at < self._rewalk_every
                and all(_signature(*k) == sig for k, sig in last.seen.items())):
            return last.paths
        seen: dict[tuple[str, str], Signature] = {}

        def record(path: str, how: str) -> None:
            if (path, how) not in seen:
                seen[path, how] = _signature(path, how)

        listed = self._wall()
        paths = walk(key[0], record)
        settled = int((listed - MTIME_MARGIN) * 1e9)
        reusable = all(sig is None or max(sig[2], sig[3]) < settled for sig in seen.values())
        self._walks[key] = _Walk(paths, seen, reusable, now)
        return paths
