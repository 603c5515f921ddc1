"""Wiring of the stages: chunks from the tailer go into the run registry under one lock.

The lock is shared with the collectors so a scrape never sees a half-applied chunk.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.state import RunRegistry
from exporter.tail import Chunk, TailStats

log = logging.getLogger(__name__)


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
    after_chunk: Callable[[], None] | None = None  # called under the lock once a chunk is applied (checkpoints)

    def on_chunk(self, chunk: Chunk) -> None:
        total = chunk.text.count("\n")
        with self.lock:
            try:
                parsed = self.registry.feed(chunk)
            except Exception:
                # A tailing thread that died would leave every run frozen with no sign: keep reading.
                log.exception("failed to process %d lines of %s from line %d", total, chunk.path, chunk.first_line)
                self.lines.failed += total
                return
            self.lines.parsed += parsed
            self.lines.skipped += total - parsed
            if self.after_chunk is not None:
                self.after_chunk()
