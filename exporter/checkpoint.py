"""Checkpoints: applied offsets, run state and detector state saved to one JSON file, so a restarted exporter
continues where it stopped: nothing re-read (history that was rotated away is kept), nothing counted twice,
and the counters on /metrics continue instead of resetting.

The offsets saved are those of the lines already applied to the run state (the pipeline commits each chunk's
end position under its lock), never how far the tailer has read ahead. Each run's record carries the offsets
of its own files, taken in the same lock hold as its state: a record describes exactly the lines in it, so a
save need not freeze every run at once (`Snapshotter` holds the lock for one run at a time). Offsets of files
no run owns (not Caffe logs, forgotten files) are saved on their own.

Non-finite floats (a NaN learning rate, an inf loss) are written as JSON's common extension tokens `NaN`,
`Infinity`, `-Infinity`, which Python's json module reads back: one encoding for every saved float, so no
value a log can hold can make a save fail.

The file is written to a temporary file in the same directory, fsynced, renamed over the old one, and the
directory fsynced: a crash or power cut leaves the old or the new file, never a torn one. Temporary files a
killed process left behind are removed at start. A missing file starts fresh; an unreadable, foreign or
inconsistent one is reported and ignored as a whole, never fatal and never half used.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.detectors import Analysis, DetectorConfig, analysis_of
from exporter.events import FilePosition
from exporter.state import RunRegistry, RunState

log = logging.getLogger("caffe_exporter.checkpoint")
VERSION = 2  # 2: offsets inside each run's record; version 1 files are refused (a full re-read)
_LEGACY_TMP = ".checkpoint-"  # temporary-file prefix of versions before 0.2 (shared by every checkpoint)
_LEGACY_TMP_AGE = 3600.0  # a legacy temporary file this old belongs to no write in progress


class CheckpointError(ValueError):
    """The file exists but cannot be used."""


@dataclass
class Restored:
    """What a checkpoint gives back: offsets to resume from and the exporter's own counters."""

    positions: dict[str, FilePosition]
    counters: dict[str, float]


def snapshot(registry: RunRegistry, positions: Mapping[str, FilePosition],
             counters: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The whole checkpoint at one moment (the caller holds the pipeline lock); `Snapshotter` builds the
    same file one run at a time."""
    runs = [record(run, positions) for run in saved_runs(registry)]
    return {"version": VERSION, "positions": _encode_positions(unowned(registry, positions)), "runs": runs,
            "counters": dict(counters or {})}


def saved_runs(registry: RunRegistry) -> list[RunState]:
    # a pipe cannot be re-read from an offset: a restarted exporter reads a new stream
    return [run for run in registry.runs.values() if run.sources != ["-"]]


def record(run: RunState, positions: Mapping[str, FilePosition]) -> dict[str, Any]:
    """One run's state, analysis and the offsets of its own files: restored together, its files resume
    right after the last line in its state."""
    analysis = analysis_of(run)
    own = {p: positions[p] for p in run.sources if p in positions}
    return {"state": run.to_dict(), "analysis": None if analysis is None else analysis.to_dict(),
            "positions": _encode_positions(own)}


def unowned(registry: RunRegistry, positions: Mapping[str, FilePosition]) -> dict[str, FilePosition]:
    """Offsets of the files no run owns (no Caffe state yet, dropped or refused runs' files)."""
    owned = {p for run in registry.runs.values() for p in run.sources}
    return {p: pos for p, pos in positions.items() if p not in owned}


def _encode_positions(positions: Mapping[str, FilePosition]) -> dict[str, Any]:
    return {p: pos.to_dict() for p, pos in positions.items()}


def _dumps(data: Any) -> bytes:
    return json.dumps(data, allow_nan=True, separators=(",", ":")).encode()


def _tmp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def write(path: str, data: Mapping[str, Any] | bytes) -> None:
    """`data`: the checkpoint, or its encoded bytes (`Snapshotter`). One `json.dumps` and one write: `json.dump`
    to a file encodes piece by piece in Python, several times slower."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data if isinstance(data, bytes) else _dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    """Makes the rename durable; some filesystems cannot open a directory for this, which is not an error."""
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def remove_leftovers(path: str, now: Callable[[], float] = time.time) -> list[str]:
    """Temporary files of saves a killed process never finished (SIGKILL and the OOM killer run no cleanup)."""
    directory = os.path.dirname(os.path.abspath(path))
    removed = []
    candidates = glob.glob(os.path.join(glob.escape(directory), glob.escape(_tmp_prefix(path)) + "*"))
    for p in glob.glob(os.path.join(glob.escape(directory), _LEGACY_TMP + "*")):
        with contextlib.suppress(OSError):
            if now() - os.stat(p).st_mtime > _LEGACY_TMP_AGE:
                candidates.append(p)
    for p in candidates:
        try:
            os.unlink(p)
            removed.append(p)
        except OSError as e:
            log.warning("cannot remove leftover checkpoint file %s: %s", p, e)
    return removed


def read(path: str) -> dict[str, Any] | None:
    """The saved checkpoint, None when there is none yet."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a caffe-exporter checkpoint of version {VERSION}")
    return data


def _position(p: Any, d: Any) -> FilePosition:
    if not isinstance(p, str) or not isinstance(d, Mapping):
        raise ValueError(f"position {p!r}: expected a path and a mapping")
    pos = FilePosition.from_dict(d)
    if pos.offset < 0 or pos.line < 0 or pos.path != p:
        raise ValueError(f"position {p!r}: offset and line must be >= 0 and the path must match")
    return pos


def restore(data: Mapping[str, Any], registry: RunRegistry, detectors: DetectorConfig) -> Restored:
    """Put the saved runs into `registry` (with the current detector thresholds); returns offsets and counters.

    Everything is parsed and checked before the registry is touched: a checkpoint is used whole or not at all.
    """
    try:
        raw_runs = data["runs"]
        if not isinstance(raw_runs, list):
            raise TypeError("runs must be a list")
        positions = _positions(data["positions"])
        runs = [_run(item, registry, detectors, positions) for item in raw_runs]
        counters = _counters(data.get("counters", {}))
        if len({r.run for r in runs}) != len(runs):
            raise ValueError("two saved runs have the same name")
    except Exception as e:  # whatever shape a foreign or damaged file has, it is not ours to use
        raise CheckpointError(f"checkpoint does not match this version of caffe-exporter: {e!r}") from None
    for run in runs:  # all or nothing
        registry.restore(run)
    return Restored(positions, counters)


def _positions(raw: Any) -> dict[str, FilePosition]:
    if not isinstance(raw, Mapping):
        raise TypeError("positions must be a mapping")
    return {p: _position(p, d) for p, d in raw.items()}


def _run(item: Mapping[str, Any], registry: RunRegistry, detectors: DetectorConfig,
         positions: dict[str, FilePosition]) -> RunState:
    run = RunState.from_dict(item["state"])
    run.check()
    own = _positions(item["positions"])
    if not set(own) <= set(run.sources):
        raise ValueError(f"run {run.run!r}: offsets of files that are not its own")
    if set(own) & set(positions):
        raise ValueError(f"run {run.run!r}: offsets saved twice (a file is one run's or none's)")
    positions.update(own)
    run.observers = registry.make_observers(run)
    if item["analysis"] is not None:
        run.observers = [Analysis.from_dict(item["analysis"], detectors) if isinstance(o, Analysis) else o
                         for o in run.observers]
    return run


def _counters(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise TypeError("counters must be a mapping")
    counters = {str(k): float(v) for k, v in raw.items()}
    if any(v < 0 for v in counters.values()):
        raise ValueError("counters must be >= 0")
    return counters


@dataclass
class _Record:
    run: RunState  # the run it encodes (a run dropped and re-created under the same name is another one)
    key: tuple[Any, ...]  # what it was encoded from: the same key, the same bytes
    sources: list[str]
    taken: dict[str, Any] | None  # the record as taken under the lock, until it is encoded
    data: bytes = b""

    def encode(self) -> _Record:
        if self.taken is not None:
            self.data, self.taken = _dumps(self.taken), None
        return self


class Snapshotter:
    """Builds the checkpoint file's bytes without freezing the pipeline: `lock` is held for one run at a time
    (its state, analysis and own offsets in one hold: the record is self-consistent), then once more for the
    runs that appeared or gained a file meanwhile, the offsets no run owns and the counters. A run unchanged
    since the last save (same feed count, reload epoch, lifecycle stamps and offsets) reuses its bytes.

    Under the lock a record is only taken (`to_dict`: fresh lists and dicts of immutable values, from
    exporter/codec.py and dataclasses.asdict); it is JSON-encoded after the lock is released, and the file is
    joined and written outside it. `prune` runs under the lock first (the daemon drops offsets of files the
    tailer has finished with); `longest_hold` is the longest the last call held `lock`, measured with `clock`.
    """

    def __init__(self, lock: threading.Lock, registry: RunRegistry, applied: Mapping[str, FilePosition],
                 counters: Callable[[], Mapping[str, float]], prune: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.lock, self.registry, self.applied, self.counters = lock, registry, applied, counters
        self.prune, self.clock = prune, clock
        self.longest_hold = 0.0
        self.encoded = 0  # runs encoded by the last call (the others reused)
        self._cache: dict[str, _Record] = {}

    def __call__(self) -> bytes:
        self.longest_hold, self.encoded = 0.0, 0
        with self._hold():
            self.prune()
            runs = saved_runs(self.registry)
        records: dict[str, _Record] = {}
        for run in runs:
            with self._hold():
                if self.registry.runs.get(run.run) is not run:
                    continue  # dropped since
                rec = self._take(run)
            records[run.run] = rec.encode()
        with self._hold():
            current = saved_runs(self.registry)
            for run in current:  # new runs, and runs that gained a file since their hold
                prev = records.get(run.run)
                if prev is None or prev.run is not run or prev.sources != run.sources:
                    records[run.run] = self._take(run)
            head = _encode_positions(unowned(self.registry, self.applied))
            counters = dict(self.counters())
        self._cache = {run.run: records[run.run].encode() for run in current}
        parts = [b'{"version":%d,"positions":%s,"runs":[' % (VERSION, _dumps(head))]
        for i, rec in enumerate(self._cache.values()):
            parts += [b",", rec.data] if i else [rec.data]
        parts.append(b'],"counters":%s}' % _dumps(counters))
        return b"".join(parts)  # one copy of the records (they stay cached for the next save)

    def _take(self, run: RunState) -> _Record:
        """Call under the lock."""
        own = tuple((p, self.applied[p]) for p in run.sources if p in self.applied)
        key = (self.registry.changes[run.run], self.registry.epoch, run.read_at, run.gone_at, own)
        cached = self._cache.get(run.run)
        if cached is not None and cached.run is run and cached.key == key:
            return cached
        self.encoded += 1
        return _Record(run, key, list(run.sources), record(run, self.applied))

    @contextlib.contextmanager
    def _hold(self) -> Iterator[None]:
        with self.lock:
            start = self.clock()
            try:
                yield
            finally:
                self.longest_hold = max(self.longest_hold, self.clock() - start)


@dataclass
class Checkpointer:
    """One save of the checkpoint file; the daemon calls it every `interval` seconds while chunks arrive, and
    once more at shutdown.

    `state()` returns the checkpoint to save (a mapping, or its bytes from a `Snapshotter`, which takes the
    pipeline lock itself), or None when no consistent snapshot can be taken right now (the save is then
    skipped: the previous file stays valid).
    A save that fails (full disk, unwritable directory, anything) is logged and counted, and never stops
    reading.
    """

    path: str
    interval: float
    state: Callable[[], Mapping[str, Any] | bytes | None]
    clock: Callable[[], float]
    on_error: Callable[[BaseException], None] = lambda e: None
    on_success: Callable[[], None] = lambda: None
    last_save: float = field(default=0.0)

    def save(self) -> bool:
        self.last_save = self.clock()
        try:
            data = self.state()
            if data is None:
                return False
            write(self.path, data)
        except Exception as e:
            log.error("cannot write checkpoint %s: %s", self.path, e)
            self.on_error(e)
            return False
        self.on_success()
        return True
