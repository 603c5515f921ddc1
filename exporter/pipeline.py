"""Wiring of the stages: chunks from the tailer go into the run registry under one lock.

The lock is shared with the collectors so a scrape never sees a half-applied chunk.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from exporter.state import RunRegistry
from exporter.tail import Chunk, TailStats


@dataclass
class LineStats:
    parsed: int = 0  # lines that carried Caffe state
    skipped: int = 0  # every other line (setup noise, protobuf dumps, junk)


@dataclass
class Pipeline:
    registry: RunRegistry
    tail_stats: TailStats = field(default_factory=TailStats)
    lines: LineStats = field(default_factory=LineStats)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_chunk(self, chunk: Chunk) -> None:
        total = chunk.text.count("\n")
        with self.lock:
            parsed = self.registry.feed(chunk)
            self.lines.parsed += parsed
            self.lines.skipped += total - parsed
