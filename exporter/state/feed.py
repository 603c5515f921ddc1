"""Chunk -> events -> run state: the per-chunk reading loop.

A chunk is scanned once (exporter/scan.py). Plain per-layer values are stored straight into the run's
tables (by the C scanner or from the regex's named groups) and counted; every other line the scan finds
goes through `parse.parse_line` to `RunState.apply`. The loop also demultiplexes glog threads (a chunk
whose debug lines come from one thread takes the fast path; several threads go line by line), collects
the protobuf dump after `Initializing net from parameters:`, keeps each file's glog clock, and stamps the
run's last log time. The result does not depend on how the text was cut into chunks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from exporter import scan
from exporter.events import Chunk
from exporter.parse import (
    PREFIX_AT_LINE_START,
    STAGES,
    is_dump_line,
    line_at,
    parse_line,
    parse_net_dump,
    prefix_from_match,
    split_key,
)
from exporter.scan import BACKWARD, FORWARD, NONFINITE
from exporter.state import limits
from exporter.state.clock import SourceClock, clock_for
from exporter.state.records import Origin, ThreadState

if TYPE_CHECKING:
    from exporter.state.run import RunState

MAX_DUMP_LINES = 200_000  # a NetParameter dump longer than this is no dump (keeps memory bounded)
_HEADER = "Log file created at: "


def feed(run: RunState, chunk: Chunk) -> int:
    """Apply a chunk of complete lines to `run`; returns how many lines carried Caffe state."""
    path = chunk.path
    if path not in run.sources:
        run.sources.append(path)
    clock = run.clocks.get(path)
    if clock is None or chunk.file_start:
        clock = run.clocks[path] = clock_for(path, chunk.mtime)
    parsed = _ChunkReader(run, chunk, clock).read()
    pristine = ThreadState()
    for key in [k for k, t in run.threads.items() if t == pristine]:
        # thread() recreates it identically: dropping it keeps the state independent of the chunking
        del run.threads[key]
    _stamp(run, chunk.text, clock)
    return parsed


class _ChunkReader:
    """One pass over one chunk: where it is (position, line number), and the fast stores not counted yet."""

    def __init__(self, run: RunState, chunk: Chunk, clock: SourceClock) -> None:
        self.run, self.text, self.path, self.clock = run, chunk.text, chunk.path, clock
        self.line_no = chunk.first_line
        self.counted = 0  # text position up to which newlines are counted into line_no
        self.done_to = -1  # end of the last line handed to parse_line (a line is read once)
        self.parsed = 0
        self.counts = [0, 0, 0]  # per-layer lines stored by the fast path, not counted yet (fwd, bwd, update)
        self.tid = scan.debug_tid(self.text)
        self.fast = self.tid is not None and run.fast_path.stores
        self.th = run.thread(self.tid or "")
        # glog's file header is the one unprefixed line SCAN_GLOG cannot see: at the start of the file
        # (read here) or, in glog files concatenated into one, anywhere (then the chunk takes SCAN)
        self.scanner = scan.SCAN_GLOG if self.tid and "\n" + _HEADER not in self.text else scan.SCAN
        self.c = (self.fast and run.fast_path.c and scan.C_SCANNER is not None and self.scanner is scan.SCAN_GLOG
                  and self.text.isascii())

    def read(self) -> int:
        pos = 0
        if self.run.dump is not None:
            pos = _consume_dump(self.run, self.text, 0)
        if self.scanner is scan.SCAN_GLOG and pos == 0 and self.text.startswith(_HEADER):
            end = self.text.find("\n")
            self._line(self.text[:end])
            pos = end + 1
        while pos >= 0:
            pos = self._read_from(pos)
        self._flush()
        return self.parsed

    def _tables(self) -> scan.Tables:
        r = self.run
        return r.forward[self.th.phase], r.backward, r.update_data, r.update_diff

    def _read_from(self, pos: int) -> int:
        """Read from pos on; returns where to resume after a dump began, or -1 at the chunk's end."""
        text, fast, counts, run = self.text, self.fast, self.counts, self.run
        bwd, udata, udiff = run.backward, run.update_data, run.update_diff
        matches = scan.accelerated(text, pos, self._tables, counts) if self.c else self.scanner.finditer(text, pos)
        fwd = run.forward[self.th.phase]
        for m in matches:
            kind = m.lastgroup
            if kind is not None and fast and kind != NONFINITE:
                # the hot loop of the pure-Python fast path: a known key's value stored inline (a call
                # per line costs a quarter of the throughput); new keys go through the limits in _store
                if kind == FORWARD:
                    key, v = m.group("fwd_key", FORWARD)
                    if key in fwd:
                        fwd[key] = float(v)
                        counts[0] += 1
                        continue
                elif kind == BACKWARD:
                    key, v = m.group("bwd_key", BACKWARD)
                    if key in bwd:
                        bwd[key] = float(v)
                        counts[1] += 1
                        continue
                elif (key := m["upd_key"]) in udiff and key in udata:
                    udata[key], udiff[key] = float(m["upd_data"]), float(m[kind])
                    counts[2] += 1
                    continue
                self._store(m, kind, fwd)
                continue
            if (resume := self._other(m, kind)) is not None:
                return resume
            fwd = run.forward[self.th.phase]  # the line may have changed the phase
        return -1

    def _other(self, m: re.Match[str], kind: str | None) -> int | None:
        """Any other line the scan found, in order after the stores before it; where to resume when it
        opened a protobuf dump."""
        text = self.text
        start, end = line_at(text, m.start())
        if start <= self.done_to:
            return None  # a second keyword on a line already handled
        self.done_to = end
        self._flush()
        self.line_no += text.count("\n", self.counted, start)
        self.counted = start
        if self.fast and kind == NONFINITE and self._nonfinite(m):
            return None
        if self._line(text[start:end]):
            return _consume_dump(self.run, text, end + 1)
        return None

    def _store(self, m: re.Match[str], kind: str, fwd: dict[str, float]) -> None:
        """A plain per-layer value, stored without parse_line (the limits admit a new key first)."""
        run = self.run
        if kind == scan.FORWARD:
            key = m["fwd_key"]
            admitted = key if key in fwd else limits.admit(run, key, self.th.phase)
            if admitted is not None:
                fwd[admitted] = float(m[kind])
            self.counts[0] += 1
        elif kind == scan.BACKWARD:
            key, bwd = m["bwd_key"], run.backward
            admitted = key if key in bwd else limits.admit(run, key, "train", bwd)
            if admitted is not None:
                bwd[admitted] = float(m[kind])
            self.counts[1] += 1
        else:
            key, udata, udiff = m["upd_key"], run.update_data, run.update_diff
            admitted = key if key in udata and key in udiff else limits.admit_update(run, key)
            if admitted is not None:
                udata[admitted] = float(m["upd_data"])
                udiff[admitted] = float(m[kind])
            self.counts[2] += 1

    def _nonfinite(self, m: re.Match[str]) -> bool:
        """A per-layer NaN/Inf as glibc prints it (after a divergence every line is one): recorded without
        parse_line. False if the key is none (parse_line then decides)."""
        parts = split_key(m["nf_key"])
        if parts is None:
            return False
        self.parsed += 1
        self.run.layer_value(self.th, STAGES[m["nf_stage"]], parts[0], parts[1], parts[2], float(m[scan.NONFINITE]),
                             self.line_no, self.path)
        return True

    def _line(self, line: str) -> bool:
        """Parse and apply one line; whether it opened a protobuf dump."""
        pl = parse_line(line)
        if pl is None:
            return False
        self.parsed += 1
        p = pl.prefix
        th = self.run.thread(p.tid if p is not None else (self.tid or ""))
        self.run.apply(pl.event, th, Origin(self.line_no, self.path, p, self.clock))
        return self.run.dump is not None

    def _flush(self) -> None:
        """Count the fast stores so far (before a line applied in order after them)."""
        nfwd, nbwd, nupd = self.counts
        if nfwd or nbwd or nupd:
            self.run.count_debug(self.th, nfwd, nbwd, nupd)
            self.parsed += nfwd + nbwd + nupd
            self.counts[:] = [0, 0, 0]


def _consume_dump(run: RunState, text: str, pos: int) -> int:
    """Collect protobuf dump lines from pos; returns where scanning resumes (-1: chunk used up)."""
    assert run.dump is not None
    n = len(text)
    while pos < n:
        end = text.find("\n", pos)
        end = n if end < 0 else end
        line = text[pos:end]
        if not is_dump_line(line) or len(run.dump) >= MAX_DUMP_LINES:
            net = parse_net_dump(run.dump)
            run.dump = None
            run.define(net)
            return pos
        run.dump.append(line)
        pos = end + 1
    return -1


def _stamp(run: RunState, text: str, clock: SourceClock) -> None:
    """The run's last log time: the newest glog prefix of the chunk."""
    last = None
    for m in PREFIX_AT_LINE_START.finditer(text, max(0, len(text) - 4096)):
        last = m
    if last is None and len(text) > 4096:  # a long unprefixed tail (a protobuf dump)
        for m in PREFIX_AT_LINE_START.finditer(text):
            last = m
    if last is not None:
        run.last_timestamp = clock.unix(prefix_from_match(last))
