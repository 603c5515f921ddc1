"""Wiring of the stages: chunks from the tailer go into the run registry under one lock.

The lock is shared with the collectors so a scrape never sees a half-applied chunk. Applying a chunk and
committing the file position it ends at happen under the same lock, so a checkpoint taken at any moment, by
any thread, saves offsets that describe exactly the lines in the run state: a restart neither skips nor
repeats a line.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.errors import StageErrors, stage_of
from exporter.events import Chunk, FilePosition
from exporter.state import RunRegistry
from exporter.tail import TailStats

log = logging.getLogger("caffe_exporter.pipeline")


@dataclass
class LineStats:
    parsed: int = 0  # lines that carried Caffe state
    skipped: int = 0  # every other line (setup noise, protobuf dumps, junk)
    failed: int = 0  # lines of chunks whose processing raised (a bug): logged, counted, and the daemon goes on


@dataclass
class Pipeline:
    registry: RunRegistry
    tail_stats: TailStats = field(default_factory=TailStats)
    lines: LineStats = field(default_factory=LineStats)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: StageErrors = field(default_factory=StageErrors)
    # per path, where the lines applied to the run state end (what a checkpoint may save)
    applied: dict[str, FilePosition] = field(default_factory=dict)
    generation: int = 0  # chunks applied so far: a checkpoint is due only when it moved
    # (last reload successful, Unix time of the last successful load): the start counts as one
    reload_status: tuple[bool, float] = (True, 0.0)
    # whether this exporter exports a path's run (sharding, see exporter/shard.py); None: every path. A path
    # it refuses leaves no trace (no run, no committed position, no line counted): another exporter reads it.
    # Called for every chunk (the tailer filters first, so this catches what was in flight across a reload):
    # make it cheap (ShardFilter caches per path).
    accept: Callable[[str], bool] | None = None
    shard: tuple[int, int] = (0, 1)  # (index, total) for caffe_exporter_shard_info

    def on_chunk(self, chunk: Chunk) -> None:
        total = chunk.text.count("\n")
        with self.lock:  # accept is asked under the lock: a reload that changes it is never half seen
            if self.accept is not None and not self.accept(chunk.path):
                return
            if not chunk.text:  # only moves the position (a dropped oversized line, a skip, a forget)
                if chunk.end is not None:
                    self.applied[chunk.path] = chunk.end
                    self.generation += 1
                return
            self._apply(chunk, total)

    def _apply(self, chunk: Chunk, total: int) -> None:
        try:
            parsed = self.registry.feed(chunk)
        except Exception as e:
            # A tailing thread that died would leave every run frozen with no sign: keep reading.
            self.errors.report(stage_of(e, "state"), chunk.path, e, f"(lines {chunk.first_line}-"
                               f"{chunk.first_line + max(total - 1, 0)})")
            self.lines.failed += total
        else:
            self.errors.ok("state", chunk.path)
            self.lines.parsed += parsed
            self.lines.skipped += total - parsed
        self.generation += 1
        if chunk.end is not None:
            self.applied[chunk.path] = chunk.end

    def counters(self) -> dict[str, float]:
        """The exporter's own counters that continue across restarts (saved in checkpoints); call under the lock."""
        t = self.tail_stats
        out: dict[str, float] = {
            "lines_parsed": self.lines.parsed, "lines_skipped": self.lines.skipped, "lines_failed": self.lines.failed,
            "lines_oversized": t.lines_oversized, "bytes_read": t.bytes_read, "rotations": t.rotations,
            "truncations": t.truncations, "read_errors": t.read_errors,
        }
        out.update({f"errors_{stage}": n for stage, n in self.errors.counts.items()})
        out.update({f"runs_expired_{reason}": n for reason, n in self.registry.expired.items()})
        out.update({f"series_dropped_{reason}": n for reason, n in self.registry.budget.dropped.items()})
        return out

    def restore_counters(self, saved: Mapping[str, Any]) -> None:
        """Continue the counters of a checkpoint; names this version does not know are ignored."""
        t = self.tail_stats

        def get(name: str) -> int:
            v = saved.get(name, 0)
            return int(v) if isinstance(v, int | float) and v >= 0 else 0

        self.lines.parsed, self.lines.skipped, self.lines.failed = (get("lines_parsed"), get("lines_skipped"),
                                                                    get("lines_failed"))
        t.lines_oversized, t.bytes_read = get("lines_oversized"), get("bytes_read")
        t.rotations, t.truncations, t.read_errors = get("rotations"), get("truncations"), get("read_errors")
        for stage in self.errors.counts:
            self.errors.counts[stage] = get(f"errors_{stage}")
        for name in saved:
            if name.startswith("runs_expired_"):
                self.registry.expired[name.removeprefix("runs_expired_")] = get(name)
            elif name.startswith("series_dropped_"):
                self.registry.budget.dropped[name.removeprefix("series_dropped_")] = get(name)
