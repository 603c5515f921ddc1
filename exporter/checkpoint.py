"""Checkpoints: applied offsets, run state and detector state saved to one JSON file, so a restarted exporter
continues where it stopped: nothing re-read (history that was rotated away is kept), nothing counted twice,
and the counters on /metrics continue instead of resetting.

The offsets saved are those of the lines already applied to the run state (the pipeline commits each chunk's
end position under its lock), never how far the tailer has read ahead: a save taken at any moment describes
the same lines in both halves.

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.detectors import Analysis, DetectorConfig, analysis_of
from exporter.events import FilePosition
from exporter.state import RunRegistry, RunState

log = logging.getLogger("caffe_exporter.checkpoint")
VERSION = 1
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
    runs = []
    for run in registry.runs.values():
        if run.sources == ["-"]:
            continue  # a pipe cannot be re-read from an offset: a restarted exporter reads a new stream
        analysis = analysis_of(run)
        runs.append({"state": run.to_dict(), "analysis": None if analysis is None else analysis.to_dict()})
    return {"version": VERSION, "positions": {p: pos.to_dict() for p, pos in positions.items()}, "runs": runs,
            "counters": dict(counters or {})}


def _tmp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp-"


def write(path: str, data: Mapping[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, allow_nan=True, separators=(",", ":"))
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
        raw_positions, raw_runs = data["positions"], data["runs"]
        if not isinstance(raw_positions, Mapping) or not isinstance(raw_runs, list):
            raise TypeError("positions must be a mapping and runs a list")
        positions = {p: _position(p, d) for p, d in raw_positions.items()}
        runs = [_run(item, registry, detectors) for item in raw_runs]
        counters = _counters(data.get("counters", {}))
        if len({r.run for r in runs}) != len(runs):
            raise ValueError("two saved runs have the same name")
    except Exception as e:  # whatever shape a foreign or damaged file has, it is not ours to use
        raise CheckpointError(f"checkpoint does not match this version of caffe-exporter: {e!r}") from None
    for run in runs:  # all or nothing
        registry.restore(run)
    return Restored(positions, counters)


def _run(item: Mapping[str, Any], registry: RunRegistry, detectors: DetectorConfig) -> RunState:
    run = RunState.from_dict(item["state"])
    run.check()
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
class Checkpointer:
    """Saves at most every `interval` seconds, and once more at shutdown.

    `state()` returns the snapshot to save, taken under the pipeline lock by the caller's wiring, or None when
    no consistent snapshot can be taken right now (the save is then skipped: the previous file stays valid).
    A save that fails (full disk, unwritable directory, anything) is logged and counted, and never stops
    reading.
    """

    path: str
    interval: float
    state: Callable[[], Mapping[str, Any] | None]
    clock: Callable[[], float]
    on_error: Callable[[BaseException], None] = lambda e: None
    on_success: Callable[[], None] = lambda: None
    last_save: float = field(default=0.0)

    def due(self) -> bool:
        return self.clock() - self.last_save >= self.interval

    def maybe_save(self) -> None:
        if self.due():
            self.save()

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
