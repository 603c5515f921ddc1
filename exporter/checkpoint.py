"""Checkpoints: read offsets, run state and detector state saved to one JSON file, so a restarted exporter
continues where it stopped: nothing re-read (history that was rotated away is kept), nothing counted twice,
and the counters on /metrics continue instead of resetting.

The file is written atomically (a temporary file renamed over it). A missing file starts fresh; an
unreadable or foreign one is reported and ignored, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.detect import Analysis, DetectorConfig, analysis_of
from exporter.state import RunRegistry, RunState
from exporter.tail import FilePosition

log = logging.getLogger(__name__)
VERSION = 1


class CheckpointError(ValueError):
    """The file exists but cannot be used."""


def snapshot(registry: RunRegistry, positions: Mapping[str, FilePosition]) -> dict[str, Any]:
    runs = []
    for run in registry.runs.values():
        if run.sources == ["-"]:
            continue  # a pipe cannot be re-read from an offset: a restarted exporter reads a new stream
        analysis = analysis_of(run)
        runs.append({"state": run.to_dict(), "analysis": None if analysis is None else analysis.to_dict()})
    return {"version": VERSION, "positions": {p: pos.to_dict() for p, pos in positions.items()}, "runs": runs}


def write(path: str, data: Mapping[str, Any]) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, allow_nan=False, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def restore(data: Mapping[str, Any], registry: RunRegistry, detectors: DetectorConfig) -> dict[str, FilePosition]:
    """Put the saved runs into `registry` (with the current detector thresholds); returns the offsets."""
    try:
        positions = {p: FilePosition.from_dict(d) for p, d in data["positions"].items()}
        runs = []
        for item in data["runs"]:
            run = RunState.from_dict(item["state"])
            run.observers = registry.make_observers(run)
            if item["analysis"] is not None:
                run.observers = [Analysis.from_dict(item["analysis"], detectors) if isinstance(o, Analysis) else o
                                 for o in run.observers]
            runs.append(run)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint does not match this version of caffe-exporter: {e!r}") from None
    for run in runs:  # all or nothing
        registry.restore(run)
    return positions


@dataclass
class Checkpointer:
    """Saves at most every `interval` seconds, from the thread that feeds the registry (offsets and state
    then describe the same lines), and once more at shutdown."""

    path: str
    interval: float
    registry: RunRegistry
    positions: Callable[[], Mapping[str, FilePosition]]
    clock: Callable[[], float]
    last_save: float = field(default=0.0)

    def maybe_save(self) -> None:
        now = self.clock()
        if now - self.last_save >= self.interval:
            self.save()
            self.last_save = now

    def save(self) -> None:
        try:
            write(self.path, snapshot(self.registry, self.positions()))
        except OSError as e:
            log.error("cannot write checkpoint %s: %s", self.path, e)
