"""Per-run training state, updated from chunks of log text.

A run is everything one log source tells about one training job: the solver's loss and learning rate,
the newest value of every per-layer blob, counters of what was read, and the first non-finite value.
State is plain data (no file handles, no locks, no clock) so it can be checkpointed with
`to_dict()` / `from_dict()` and rebuilt by a restarted exporter.

Attribution rules (from the Caffe sources, see docs/log-format.md):
* debug lines before `Iteration N ..., loss = ...` belong to display iteration N;
* `[Forward]` lines after `Iteration N, Testing net (#k)` and before its first `Test net output` belong to
  phase `test`;
* each glog thread id has its own phase and open block, for old multi-GPU builds whose solver threads
  interleave their lines in one file.
"""

from __future__ import annotations

import calendar
import math
import posixpath
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from exporter.events import (
    ChildBlob,
    Chunk,
    DisplayIteration,
    Event,
    GlogHeader,
    GlogPrefix,
    LayerBlob,
    LayerHeader,
    LearningRate,
    NetInitStart,
    NetNorms,
    NetOutput,
    OptimizationDone,
    ParsedLine,
    Restore,
    Snapshot,
    Solving,
    TestingNet,
    TestLoss,
    UpdateValue,
)
from exporter.parse import (
    PREFIX_AT_LINE_START,
    SCAN,
    SCAN_GLOG,
    STAGES,
    is_dump_line,
    layer_key,
    line_at,
    parse_line,
    parse_net_dump,
    prefix_from_match,
    split_key,
    split_update_key,
)

try:
    from exporter import _scan as _accel

    _accel.scan("", 0, 0, {}, {}, {}, {}, False)  # a build older than the `insert` flag: not usable
except (ImportError, TypeError):  # built without a C compiler: the pure-Python loop does the same, slower
    _accel = None  # type: ignore[assignment]

Value = str | float  # the fast path stores the number as printed; float() reads both
PHASES = ("train", "test")
MAX_DUMP_LINES = 200_000  # a NetParameter dump longer than this is no dump (keeps memory bounded)
_DEBUG_TID = re.compile(r" (\d+) net\.cpp:\d+\]")
_GLOG_NAME_DATE = re.compile(r"\.(\d{4})(\d\d)(\d\d)-\d{6}\.\d+$")


# A glog prefix whose source file is one of Caffe's (NVCaffe and Intel Caffe included): the line is Caffe's
# even when no event is parsed from it. Any other glog program's lines, and bare glog file headers, are not.
_CAFFE_SOURCE = re.compile(
    r"^[IWEF]\d{4}(?:\d{4})? \d\d:\d\d:\d\d(?:\.\d+)? +\d+ (?:"
    r"\w*_(?:layer|solver)|solver|net|caffe|layer_factory|parallel|data_transformer|data_reader|internal_thread|"
    r"blocking_queue|db_lmdb|db_leveldb|upgrade_proto|gpu_memory|cudnn\w*|syncedmem|insert_splits|hdf5|"
    r"device_alternate|cpu_info|solver_factory|net_parameter\w*"
    r")\.(?:cpp|hpp|cu):\d+\]",
    re.M,
)
UNLIMITED = 1 << 62
DROP_REASONS = ("max_series_per_run", "max_series", "max_runs", "name_too_long", "layer_filter")


def carries_caffe_state(text: str) -> bool:
    """Whether a chunk holds a line only Caffe prints: a glog prefix naming a Caffe source file, or a line
    the parser reads as an event (a glog file header alone is any glog program's)."""
    if _CAFFE_SOURCE.search(text):
        return True
    for m in SCAN.finditer(text):
        start, end = line_at(text, m.start())
        pl = parse_line(text[start:end])
        if pl is not None and not isinstance(pl.event, GlogHeader):
            return True
    return False


@dataclass(frozen=True)
class Limits:
    """What one exporter stores at most (docs/configuration.md, `limits:`); over a limit is not stored."""

    max_series_per_run: int = 20000
    max_series: int = 1_000_000
    max_runs: int = 10_000
    max_name_bytes: int = 256
    layer_include: re.Pattern[str] | None = None  # fullmatch on the layer name; None keeps every layer
    layer_exclude: re.Pattern[str] | None = None

    @classmethod
    def unlimited(cls) -> Limits:
        return cls(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED)

    def keeps_layer(self, layer: str) -> bool:
        if self.layer_include is not None and not self.layer_include.fullmatch(layer):
            return False
        return self.layer_exclude is None or not self.layer_exclude.fullmatch(layer)


@dataclass
class SeriesBudget:
    """Series stored by all runs of a registry, against `limits`; what was refused, by reason (a counter)."""

    limits: Limits = field(default_factory=Limits.unlimited)
    total: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


# uncached: a key is admitted once, and a flood of refused keys must not fill parse's cache of stored ones
_split_key = split_key.__wrapped__
_split_update_key = split_update_key.__wrapped__


def _cut(name: str, max_bytes: int) -> str:
    b = name.encode()
    return name if len(b) <= max_bytes else b[:max_bytes].decode("utf-8", "ignore")


def is_finite(v: Value) -> bool:
    return math.isfinite(float(v))


class NonfiniteValue(NamedTuple):
    """One NaN/Inf value in the log, with where it was read (for the report and the first-origin metric)."""

    iteration: int | None  # display iteration (train) or test iteration; None until the block closes
    phase: str
    block: int  # index of the Forward/Backward pass inside the iteration (iter_size > 1 repeats it)
    stage: str  # forward | backward | update | net | loss
    layer: str
    blob: str
    kind: str  # data | diff
    value: str
    line: int
    path: str


@dataclass(slots=True)
class Block:
    """What observers (the anomaly detectors) see at each display line of the training net."""

    run: RunState
    iteration: int
    loss: float
    debug_lines: int  # per-layer lines since the previous display line (0: no debug_info block)
    passes: int  # Forward/Backward passes in the block (iter_size)
    line: int  # line number of the display line
    path: str
    nonfinite: list[NonfiniteValue]


class BlockObserver(Protocol):
    def observe(self, block: Block) -> None: ...


@dataclass
class SourceClock:
    """Turns glog prefixes into Unix time: old glog prints no year, so it is inferred and carried over."""

    year: int
    last_month: int = 0
    utc: bool = False
    # month of the file time the year was taken from: a first line from a later month was written the
    # year before (a log begun in December, read after New Year)
    mtime_month: int = 0

    def unix(self, p: GlogPrefix) -> float:
        if p.year is not None:
            year = p.year
        else:
            if not self.last_month and self.mtime_month and p.month > self.mtime_month:
                self.year -= 1
            elif self.last_month and p.month < self.last_month - 6:  # December -> January
                self.year += 1
            year = self.year
        self.last_month = p.month
        tt = (year, p.month, p.day, 0, 0, 0, 0, 0, -1)
        midnight = calendar.timegm(tt) if self.utc else time.mktime(tt)
        return midnight + p.seconds_of_day


@dataclass
class ThreadState:
    phase: str = "train"
    test_net: str = "0"
    test_iteration: int = 0
    nv_stage: str = "forward"  # NVCaffe 0.16 header lines name the layer of the lines below
    nv_layer: str = ""
    block_lines: int = 0
    passes: int = 0
    last_display: int | None = None
    outputs_seen: set[str] = field(default_factory=set)
    pending: list[NonfiniteValue] = field(default_factory=list)


def _tuple_items(d: Mapping[Any, Any]) -> list[list[Any]]:
    return [[*k, v] if isinstance(k, tuple) else [k, v] for k, v in d.items()]


def _num(v: Value) -> float:
    """The one saved form of a value: a float (checkpoint.write encodes non-finite ones; old files that saved
    "nan"/"inf" strings still read back through float())."""
    return float(v)


@dataclass
class RunState:
    run: str
    labels: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    net: str = ""
    layer_types: dict[str, str] = field(default_factory=dict)
    # Newest per-layer values by key as Caffe prints it ("conv1, top blob conv1", "ip1, param blob 0";
    # `parse.split_key` takes keys apart). Forward data per phase; Backward diffs exist only in train.
    # Insertion order is log order, so the first Forward block gives the net's layer order.
    forward: dict[str, dict[str, Value]] = field(default_factory=lambda: {p: {} for p in PHASES})
    backward: dict[str, Value] = field(default_factory=dict)
    update_data: dict[str, Value] = field(default_factory=dict)  # key "conv1, param 0"
    update_diff: dict[str, Value] = field(default_factory=dict)
    norms: tuple[float, float, float, float] | None = None
    # solver
    iteration: int | None = None
    loss: float | None = None
    lr: float | None = None
    speed: float | None = None
    train_outputs: dict[str, float] = field(default_factory=dict)
    test_outputs: dict[tuple[str, str], float] = field(default_factory=dict)
    test_loss: dict[str, float] = field(default_factory=dict)
    test_iteration: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    last_timestamp: float | None = None
    last_snapshot_iteration: int | None = None
    # counters
    display_iterations: int = 0
    debug_lines: Counter[tuple[str, str]] = field(default_factory=Counter)
    nonfinite: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    loss_nonfinite: int = 0
    solver_starts: int = 0
    snapshots: int = 0
    # first non-finite value of any kind (the net-wide norm often overflows first) and per-layer
    first_nonfinite: NonfiniteValue | None = None
    first_nonfinite_layer: NonfiniteValue | None = None
    threads: dict[str, ThreadState] = field(default_factory=dict)
    clocks: dict[str, SourceClock] = field(default_factory=dict)
    dump: list[str] | None = None  # lines of an open `Initializing net from parameters` dump
    prev_display: tuple[int, float] | None = None  # (iteration, time) for speed from timestamps
    observers: list[BlockObserver] = field(default_factory=list, repr=False, compare=False)
    # use the C scanner (exporter/_scan.c) when it was built; tests switch it off to compare both paths
    accelerate: bool = field(default=True, repr=False, compare=False)
    # lifecycle (exporter/lifecycle.py): wall-clock time the exporter last applied a chunk of the run, and
    # since when all of its log files are gone (None while one exists); both checkpointed
    read_at: float | None = None
    gone_at: float | None = None
    # limits: the registry's shared budget; `series` counts what this run holds against it (per-layer
    # values, one caffe_layer_info per layer and phase, nonfinite counters); `layers` names those layers
    budget: SeriesBudget = field(default_factory=SeriesBudget, repr=False, compare=False)
    series: int = field(default=0, repr=False, compare=False)
    layers: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PHASES}, repr=False,
                                        compare=False)

    # -- reading -------------------------------------------------------------------------------------

    def feed(self, chunk: Chunk) -> int:
        """Apply a chunk of complete lines; returns how many lines carried Caffe state (the rest skipped)."""
        text = chunk.text
        path = chunk.path
        if path not in self.sources:
            self.sources.append(path)
        clock = self.clocks.get(path)
        if clock is None or chunk.file_start:
            clock = self.clocks[path] = _clock_for(path, chunk.mtime)
        pos = 0
        line_no = chunk.first_line
        counted = 0  # text position up to which newlines are counted into line_no
        parsed = 0
        if self.dump is not None:
            pos = self._consume_dump(text, 0)
        tid = self._debug_tid(text)
        fast = tid is not None
        # glog's file header is the one unprefixed line SCAN_GLOG cannot see: at the start of the file
        # (read here) or, in glog files concatenated into one, anywhere (then the chunk takes SCAN)
        scanner = SCAN_GLOG if tid and "\nLog file created at: " not in text else SCAN
        if scanner is SCAN_GLOG and pos == 0 and text.startswith("Log file created at: "):
            end = text.find("\n")
            pl = parse_line(text[:end])
            if pl is not None:
                self._apply(pl, tid, clock, line_no, path)
                parsed += 1
            pos = end + 1
        th = self.thread(tid or "")
        fwd, bwd = self.forward[th.phase], self.backward
        udata, udiff = self.update_data, self.update_diff
        nfwd = nbwd = nupd = 0
        tally = [0, 0, 0]  # per-layer lines the C scanner stored (forward, backward, update)
        accelerated = fast and self.accelerate and _accel is not None and scanner is SCAN_GLOG and text.isascii()
        done_to = -1
        while pos >= 0:
            resume = -1
            matches = self._accelerated(text, pos, th, tally) if accelerated else scanner.finditer(text, pos)
            for m in matches:
                li = m.lastindex
                if li == 2 and fast:
                    key, v = m.group(1, 2)
                    admitted = key if key in fwd else self._admit(key, th.phase)
                    if admitted is not None:
                        fwd[admitted] = v
                    nfwd += 1
                    continue
                if li == 4 and fast:
                    key, v = m.group(3, 4)
                    admitted = key if key in bwd else self._admit(key, "train", bwd)
                    if admitted is not None:
                        bwd[admitted] = v
                    nbwd += 1
                    continue
                if li == 7 and fast:
                    key, v, g = m.group(5, 6, 7)
                    admitted = key if key in udata and key in udiff else self._admit_update(key)
                    if admitted is not None:
                        udata[admitted] = v
                        udiff[admitted] = g
                    nupd += 1
                    continue
                start, end = line_at(text, m.start())
                if start <= done_to:
                    continue  # a second keyword on a line already handled
                done_to = end
                if tally[0] or tally[1] or tally[2]:
                    nfwd, nbwd, nupd = nfwd + tally[0], nbwd + tally[1], nupd + tally[2]
                    tally[:] = [0, 0, 0]
                if nfwd or nbwd or nupd:
                    self._count_debug(th, nfwd, nbwd, nupd)
                    parsed += nfwd + nbwd + nupd
                    nfwd = nbwd = nupd = 0
                line_no += text.count("\n", counted, start)
                counted = start
                if li == 10 and fast:
                    stage, key, v = m.group(8, 9, 10)
                    parts = split_key(key)
                    if parts is not None:
                        parsed += 1
                        self._layer_value(th, STAGES[stage], parts[0], parts[1], parts[2], float(v), line_no,
                                          path)
                        continue
                pl = parse_line(text[start:end])
                if pl is None:
                    continue
                parsed += 1
                self._apply(pl, tid, clock, line_no, path)  # fast lines stay with the chunk's debug thread
                if self.dump is not None:
                    resume = self._consume_dump(text, end + 1)
                    break
                fwd = self.forward[th.phase]
            else:
                break
            pos = resume
        nfwd, nbwd, nupd = nfwd + tally[0], nbwd + tally[1], nupd + tally[2]
        if nfwd or nbwd or nupd:
            self._count_debug(th, nfwd, nbwd, nupd)
            parsed += nfwd + nbwd + nupd
        pristine = ThreadState()
        for key in [k for k, t in self.threads.items() if t == pristine]:
            # thread() recreates it identically: dropping it keeps the state independent of the chunking
            del self.threads[key]
        self._stamp(text, clock)
        return parsed

    def _accelerated(self, text: str, pos: int, th: ThreadState, tally: list[int]) -> Iterator[re.Match[str]]:
        """SCAN_GLOG's matches from pos, except the plain per-layer value lines, which the C scanner stores
        itself (into the dicts of the thread's current phase) and counts in `tally`.

        The scanner stops at every other line, and at every line with a key not stored yet (new series go
        through the limits in _admit); the regex takes over from there for `burst` bytes, which
        doubles while the scanner keeps stopping at once (a diverged run prints nothing but NaN lines) and
        falls back to one line as soon as it gets through plain lines again."""
        assert _accel is not None
        n = len(text)
        burst = 0
        while pos < n:
            stop, nf, nb, nu = _accel.scan(text, pos, n, self.forward[th.phase], self.backward, self.update_data,
                                           self.update_diff, False)  # new keys: admitted by _admit
            tally[0] += nf
            tally[1] += nb
            tally[2] += nu
            if stop >= n:
                return
            burst = min(2 * burst or 1, 1 << 20) if stop == pos else 0
            end = text.find("\n", stop + burst)
            end = n if end < 0 else end
            yield from SCAN_GLOG.finditer(text, stop, end)
            pos = end + 1

    # -- limits ------------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        self.budget.dropped[reason] += 1

    def _room(self, units: int) -> bool:
        """Whether `units` more series fit, the run's and the registry's limits both; counts a refusal."""
        b = self.budget
        if self.series + units > b.limits.max_series_per_run:
            self._refuse("max_series_per_run")
            return False
        if b.total + units > b.limits.max_series:
            self._refuse("max_series")
            return False
        self.series += units
        b.total += units
        return True

    def _name(self, name: str) -> str:
        cut = _cut(name, self.budget.limits.max_name_bytes)
        if cut is not name:
            self._refuse("name_too_long")
        return cut

    def _admit(self, key: str, phase: str, values: Mapping[str, Value] | None = None) -> str | None:
        """The key under which a new per-layer value of `phase` is stored (names cut to max_name_bytes);
        None when the layer filter or a series limit refuses it (counted). `values`: the dict it goes to,
        when the cut key may already be in it."""
        parts = _split_key(key)
        if parts is None:  # no layer/blob key: rendered nowhere, so stored nowhere
            return None
        layer, role, blob = parts
        lim = self.budget.limits
        if 4 * len(key) > lim.max_name_bytes:  # some part may be over max_name_bytes once UTF-8 encoded
            layer, blob = self._name(layer), self._name(blob)
            key = layer_key(layer, role, blob)
            target = values if values is not None else self.forward[phase]
            if key in target:
                return key
        if not lim.keeps_layer(layer):
            self._refuse("layer_filter")
            return None
        new_layer = layer not in self.layers[phase]
        if not self._room(1 + new_layer):
            return None
        if new_layer:
            self.layers[phase].add(layer)
        return key

    def _admit_update(self, key: str) -> str | None:
        """As _admit, for an `[Update]` key ("conv1, param 0"): two series (data and diff), no layer_info."""
        parts = _split_update_key(key)
        if parts is None:
            return None
        layer, param = parts
        lim = self.budget.limits
        if 4 * len(key) > lim.max_name_bytes:
            layer, param = self._name(layer), self._name(param)
            key = f"{layer}, param {param}"
            if key in self.update_diff:
                return key
        if not lim.keeps_layer(layer):
            self._refuse("layer_filter")
            return None
        return key if self._room((key not in self.update_data) + (key not in self.update_diff)) else None

    def recount(self) -> None:
        """Rebuild `series` and `layers` from the stored values (a run restored from a checkpoint)."""
        self.layers = {p: set() for p in PHASES}
        for phase in PHASES:
            for layer, _, _, _ in self.blobs(phase, "forward"):
                self.layers[phase].add(layer)
        for layer, _, _, _ in self.blobs("train", "backward"):
            self.layers["train"].add(layer)
        self.series = (sum(len(d) for d in self.forward.values()) + len(self.backward) + len(self.update_data)
                       + len(self.update_diff) + sum(len(x) for x in self.layers.values()) + len(self.nonfinite))

    def thread(self, tid: str) -> ThreadState:
        th = self.threads.get(tid)
        if th is None:
            th = self.threads[tid] = ThreadState()
        return th

    @staticmethod
    def _debug_tid(text: str) -> str | None:
        """The one thread id printing debug lines in this chunk, "" if unprefixed, None if several."""
        m = _DEBUG_TID.search(text)
        if m is None:
            return ""
        if text.count("net.cpp:") != text.count(f" {m[1]} net.cpp:"):
            return None
        return m[1]

    def _count_debug(self, th: ThreadState, nfwd: int, nbwd: int, nupd: int) -> None:
        if nfwd:
            self.debug_lines[th.phase, "forward"] += nfwd
        if nbwd:
            self.debug_lines[th.phase, "backward"] += nbwd
        if nupd:
            self.debug_lines[th.phase, "update"] += nupd
        if th.phase == "train":  # a display block is the training net's lines; test-net lines are not in it
            th.block_lines += nfwd + nbwd

    def _stamp(self, text: str, clock: SourceClock) -> None:
        last = None
        for m in PREFIX_AT_LINE_START.finditer(text, max(0, len(text) - 4096)):
            last = m
        if last is None and len(text) > 4096:  # a long unprefixed tail (a protobuf dump)
            for m in PREFIX_AT_LINE_START.finditer(text):
                last = m
        if last is not None:
            self.last_timestamp = clock.unix(prefix_from_match(last))

    def _consume_dump(self, text: str, pos: int) -> int:
        """Collect protobuf dump lines from pos; returns where scanning resumes (-1: chunk used up)."""
        assert self.dump is not None
        n = len(text)
        while pos < n:
            end = text.find("\n", pos)
            end = n if end < 0 else end
            line = text[pos:end]
            if not is_dump_line(line) or len(self.dump) >= MAX_DUMP_LINES:
                self._close_dump()
                return pos
            self.dump.append(line)
            pos = end + 1
        return -1

    def _close_dump(self) -> None:
        assert self.dump is not None
        net = parse_net_dump(self.dump)
        self.dump = None
        if net.name and not self.net:
            self.net = net.name
        for name, typ in net.layers:
            self.layer_types.setdefault(name, typ)

    # -- events ------------------------------------------------------------------------------------

    def apply_line(self, line: str, line_no: int = 0, path: str = "") -> None:
        """Apply one line (the slow path on its own; used by tests and tools)."""
        self.feed(Chunk(path=path, text=line.rstrip("\n") + "\n", first_line=line_no or 1,
                        file_start=False, mtime=0.0))

    def _apply(self, pl: ParsedLine, chunk_tid: str | None, clock: SourceClock, line_no: int,
               path: str) -> ThreadState:
        ev: Event = pl.event
        p = pl.prefix
        th = self.thread(p.tid if p is not None else (chunk_tid or ""))
        if isinstance(ev, LayerBlob):
            self._layer_value(th, ev.stage, ev.layer, ev.role, ev.blob, ev.value, line_no, path)
        elif isinstance(ev, ChildBlob):
            self._layer_value(th, th.nv_stage, th.nv_layer, ev.role, ev.blob, ev.value, line_no, path)
        elif isinstance(ev, LayerHeader):
            th.nv_stage, th.nv_layer = ev.stage, ev.layer
        elif isinstance(ev, NetNorms):
            self.norms = (ev.l1_data, ev.l1_diff, ev.l2_data, ev.l2_diff)
            self.debug_lines[th.phase, "net"] += 1
            for blob, v in zip(("l1_data", "l1_diff", "l2_data", "l2_diff"), self.norms, strict=True):
                if not math.isfinite(v):
                    self._nonfinite(th, "net", "", blob, blob[3:], v, line_no, path)
            th.passes += 1
        elif isinstance(ev, UpdateValue):
            self.debug_lines[th.phase, "update"] += 1
            ukey = f"{ev.layer}, param {ev.param}"
            known = ukey in self.update_diff and (ev.data is None or ukey in self.update_data)
            key = ukey if known else self._admit_update(ukey)
            if key is not None:
                if ev.data is not None:
                    self.update_data[key] = ev.data
                self.update_diff[key] = ev.diff
            if ev.data is not None and not math.isfinite(ev.data):
                self._nonfinite(th, "update", ev.layer, ev.param, "data", ev.data, line_no, path)
            if not math.isfinite(ev.diff):
                self._nonfinite(th, "update", ev.layer, ev.param, "diff", ev.diff, line_no, path)
        elif isinstance(ev, DisplayIteration):
            self._display(th, ev, p, clock, line_no, path)
        elif isinstance(ev, NetOutput):
            self._output(th, ev, line_no, path)
        elif isinstance(ev, LearningRate):
            self.lr = ev.lr
            self.iteration = ev.iteration
        elif isinstance(ev, TestingNet):
            th.phase, th.test_net, th.test_iteration = "test", ev.net, ev.iteration
            th.outputs_seen.clear()
            self.test_iteration[ev.net] = ev.iteration
            self.iteration = ev.iteration
        elif isinstance(ev, TestLoss):
            self.test_loss[th.test_net] = ev.value
        elif isinstance(ev, Snapshot):
            if not ev.path.endswith((".solverstate", ".solverstate.h5")):
                self.snapshots += 1
                if ev.iteration is not None:
                    self.last_snapshot_iteration = ev.iteration
        elif isinstance(ev, Solving):
            self.solver_starts += 1
            self.finished = False
            self.net = self.net or ev.net
            th.phase = "train"
        elif isinstance(ev, Restore):
            self.finished = False
        elif isinstance(ev, OptimizationDone):
            self.finished = True
        elif isinstance(ev, NetInitStart):
            self.dump = []
        elif isinstance(ev, GlogHeader):
            clock.year, clock.utc, clock.last_month = ev.year, ev.utc, ev.month
        return th

    def _layer_value(self, th: ThreadState, stage: str, layer: str, role: str, blob: str, v: float,
                     line_no: int, path: str) -> None:
        phase = th.phase
        if role == "input":  # `[Forward] Input B data: v` (2015-2016): the net's input blobs
            layer, role = "input", "top"
        lkey = layer_key(layer, role, blob)
        if stage == "forward":
            values = self.forward[phase]
            kind = "data"
        else:
            values = self.backward
            kind = "diff"
        key = lkey if lkey in values else self._admit(lkey, phase if stage == "forward" else "train", values)
        if key is not None:
            values[key] = v
        self.debug_lines[phase, stage] += 1
        if phase == "train":
            th.block_lines += 1
        if not math.isfinite(v):
            self._nonfinite(th, stage, layer, blob, kind, v, line_no, path)

    def _nonfinite(self, th: ThreadState, stage: str, layer: str, blob: str, kind: str, v: float,
                   line_no: int, path: str) -> None:
        layer, blob = self._name(layer), self._name(blob)
        self._count_nonfinite((th.phase, stage, layer, blob))
        if th.phase == "test":
            iteration: int | None = th.test_iteration
        elif stage == "update":  # [Update] lines follow the display line they belong to
            iteration = th.last_display
        else:
            iteration = None
        nv = NonfiniteValue(iteration, th.phase, th.passes, stage, layer, blob, kind, _spelling(v), line_no,
                            path)
        if th.phase == "train":
            th.pending.append(nv)
        if iteration is not None:
            self._origin(nv)

    def _count_nonfinite(self, key: tuple[str, str, str, str]) -> None:
        if key in self.nonfinite:
            self.nonfinite[key] += 1
        elif key[2] and not self.budget.limits.keeps_layer(key[2]):
            self._refuse("layer_filter")
        elif self._room(1):
            self.nonfinite[key] = 1

    def _origin(self, nv: NonfiniteValue) -> None:
        if self.first_nonfinite is None:
            self.first_nonfinite = nv
        if nv.layer and self.first_nonfinite_layer is None:
            self.first_nonfinite_layer = nv

    def _display(self, th: ThreadState, ev: DisplayIteration, p: GlogPrefix | None, clock: SourceClock,
                 line_no: int, path: str) -> None:
        self.iteration = ev.iteration
        self.loss = ev.loss
        self.display_iterations += 1
        now = clock.unix(p) if p is not None else None
        if ev.iters_per_second is not None:
            self.speed = ev.iters_per_second
        elif now is not None and self.prev_display is not None:
            it0, t0 = self.prev_display
            if now > t0 and ev.iteration > it0:
                self.speed = (ev.iteration - it0) / (now - t0)
        if now is not None:
            self.prev_display = (ev.iteration, now)
        if not math.isfinite(ev.loss):
            self.loss_nonfinite += 1
            self._count_nonfinite(("train", "loss", "", "loss"))
        pending = []
        for nv in th.pending:
            nv = nv._replace(iteration=ev.iteration) if nv.iteration is None else nv
            self._origin(nv)
            pending.append(nv)
        block = Block(self, ev.iteration, ev.loss, th.block_lines, th.passes, line_no, path, pending)
        th.phase = "train"
        th.block_lines = th.passes = 0
        th.pending = []
        th.outputs_seen.clear()
        th.last_display = ev.iteration
        for obs in self.observers:
            obs.observe(block)

    def _output(self, th: ThreadState, ev: NetOutput, line_no: int, path: str) -> None:
        base = name = self._name(ev.name)
        if name in th.outputs_seen:  # a multi-element output prints one line per element
            name = f"{name}#{ev.number}"
        th.outputs_seen.add(base)
        if ev.phase == "train":
            self.train_outputs[name] = ev.value
        else:
            if th.phase == "test":  # the test net's forward lines end with its first output
                th.phase = "train"
            self.test_outputs[th.test_net, name] = ev.value
        if not math.isfinite(ev.value):
            self._count_nonfinite((ev.phase, "loss", "", name))

    # -- derived -----------------------------------------------------------------------------------

    def blobs(self, phase: str, stage: str) -> Iterator[tuple[str, str, str, Value]]:
        """(layer, role, blob, value) of the newest values; stage forward (per phase) or backward."""
        values = self.forward[phase] if stage == "forward" else self.backward
        for key, v in values.items():
            parts = split_key(key)
            if parts is not None:
                yield parts[0], parts[1], parts[2], v

    def updates(self) -> Iterator[tuple[str, str, Value | None, Value]]:
        """(layer, param, data, diff) of the newest `[Update]` lines."""
        for key, g in self.update_diff.items():
            parts = split_update_key(key)
            if parts is not None:
                yield parts[0], parts[1], self.update_data.get(key), g

    def layer_order(self, phase: str) -> list[str]:
        """Layers in forward order (first appearance in the phase's `[Forward]` lines)."""
        seen: dict[str, None] = {}
        for layer, _, _, _ in self.blobs(phase, "forward"):
            seen.setdefault(layer, None)
        if phase == "train":  # layers that only show up in Backward go last
            for layer, _, _, _ in self.blobs(phase, "backward"):
                seen.setdefault(layer, None)
        return list(seen)

    # -- checkpointing -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ValueError unless the state has the shape the collectors and detectors rely on: a restored
        checkpoint is checked as a whole before any of it is used (a damaged file must not break scrapes)."""
        def floats(d: Mapping[Any, Any]) -> bool:
            return all(isinstance(v, float | int | str) and not isinstance(v, bool) for v in d.values())

        problems = []
        if not isinstance(self.run, str) or not self.run:
            problems.append("run must be a non-empty string")
        if not self.sources or not all(isinstance(s, str) and s for s in self.sources):
            problems.append("sources must be non-empty strings")
        if sorted(self.forward) != sorted(PHASES) or not all(floats(d) for d in self.forward.values()):
            problems.append(f"forward must hold the phases {PHASES}")
        if not all(floats(d) for d in (self.backward, self.update_data, self.update_diff)):
            problems.append("per-layer values must be numbers")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in {**self.labels, **self.layer_types}.items()):
            problems.append("labels and layer types must be strings")
        if not all(isinstance(v, int) and v >= 0 for v in (self.display_iterations, self.loss_nonfinite,
                                                           self.solver_starts, self.snapshots)):
            problems.append("counters must be integers >= 0")
        if not all(isinstance(n, int) and n >= 0 for n in (*self.debug_lines.values(), *self.nonfinite.values())):
            problems.append("counters must be integers >= 0")
        if self.iteration is not None and not isinstance(self.iteration, int):
            problems.append("iteration must be an integer")
        for k, c in self.clocks.items():
            if not isinstance(c.year, int) or not isinstance(k, str):
                problems.append("clocks must hold a year")
        if problems:
            raise ValueError(f"run {self.run!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (observers excluded: they are rebuilt from configuration)."""
        def vals(d: Mapping[str, Value]) -> list[list[Any]]:
            return [[k, _num(v)] for k, v in d.items()]

        def nv(x: NonfiniteValue | None) -> list[Any] | None:
            return None if x is None else list(x)

        return {
            "run": self.run, "labels": self.labels, "sources": self.sources, "net": self.net,
            "layer_types": self.layer_types,
            "forward": {p: vals(d) for p, d in self.forward.items()}, "backward": vals(self.backward),
            "update_data": vals(self.update_data), "update_diff": vals(self.update_diff),
            "norms": None if self.norms is None else [_num(v) for v in self.norms],
            "iteration": self.iteration, "loss": None if self.loss is None else _num(self.loss),
            "lr": None if self.lr is None else _num(self.lr), "speed": None if self.speed is None else _num(self.speed),
            "train_outputs": {k: _num(v) for k, v in self.train_outputs.items()},
            "test_outputs": [[n, o, _num(v)] for (n, o), v in self.test_outputs.items()],
            "test_loss": {k: _num(v) for k, v in self.test_loss.items()},
            "test_iteration": self.test_iteration, "finished": self.finished,
            "last_timestamp": self.last_timestamp, "last_snapshot_iteration": self.last_snapshot_iteration,
            "display_iterations": self.display_iterations,
            "debug_lines": _tuple_items(self.debug_lines), "nonfinite": _tuple_items(self.nonfinite),
            "loss_nonfinite": self.loss_nonfinite, "solver_starts": self.solver_starts,
            "snapshots": self.snapshots,
            "first_nonfinite": nv(self.first_nonfinite), "first_nonfinite_layer": nv(self.first_nonfinite_layer),
            "threads": {t: {"phase": s.phase, "test_net": s.test_net, "test_iteration": s.test_iteration,
                            "nv_stage": s.nv_stage, "nv_layer": s.nv_layer, "block_lines": s.block_lines,
                            "passes": s.passes, "last_display": s.last_display,
                            "outputs_seen": sorted(s.outputs_seen), "pending": [list(x) for x in s.pending]}
                        for t, s in self.threads.items()},
            "clocks": {k: [c.year, c.last_month, c.utc, c.mtime_month] for k, c in self.clocks.items()},
            "dump": self.dump, "prev_display": None if self.prev_display is None else list(self.prev_display),
            "read_at": self.read_at,
            "gone_at": self.gone_at,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunState:
        def vals(rows: Iterable[list[Any]]) -> dict[str, Value]:
            return {k: float(v) for k, v in rows}

        def nv(x: list[Any] | None) -> NonfiniteValue | None:
            return None if x is None else NonfiniteValue(*x)

        def opt(v: Any) -> float | None:
            return None if v is None else float(v)

        st = cls(run=d["run"], labels=dict(d["labels"]), sources=list(d["sources"]), net=d["net"],
                 layer_types=dict(d["layer_types"]))
        st.forward = {p: vals(r) for p, r in d["forward"].items()}
        st.backward = vals(d["backward"])
        st.update_data, st.update_diff = vals(d["update_data"]), vals(d["update_diff"])
        n = d["norms"]
        st.norms = None if n is None else (float(n[0]), float(n[1]), float(n[2]), float(n[3]))
        st.iteration, st.loss, st.lr, st.speed = d["iteration"], opt(d["loss"]), opt(d["lr"]), opt(d["speed"])
        st.train_outputs = {k: float(v) for k, v in d["train_outputs"].items()}
        st.test_outputs = {(a, b): float(v) for a, b, v in d["test_outputs"]}
        st.test_loss = {k: float(v) for k, v in d["test_loss"].items()}
        st.test_iteration = dict(d["test_iteration"])
        st.finished, st.last_timestamp = d["finished"], d["last_timestamp"]
        st.last_snapshot_iteration, st.display_iterations = d["last_snapshot_iteration"], d["display_iterations"]
        st.debug_lines = Counter({(a, b): c for a, b, c in d["debug_lines"]})
        st.nonfinite = Counter({(a, b, c, e): n for a, b, c, e, n in d["nonfinite"]})
        st.loss_nonfinite, st.solver_starts, st.snapshots = d["loss_nonfinite"], d["solver_starts"], d["snapshots"]
        st.first_nonfinite, st.first_nonfinite_layer = nv(d["first_nonfinite"]), nv(d["first_nonfinite_layer"])
        for t, s in d["threads"].items():
            st.threads[t] = ThreadState(s["phase"], s["test_net"], s["test_iteration"], s["nv_stage"],
                                        s["nv_layer"], s["block_lines"], s["passes"], s["last_display"],
                                        set(s["outputs_seen"]), [NonfiniteValue(*x) for x in s["pending"]])
        st.clocks = {k: SourceClock(*c) for k, c in d["clocks"].items()}
        st.dump = d["dump"]
        pd = d["prev_display"]
        st.prev_display = None if pd is None else (int(pd[0]), float(pd[1]))
        st.read_at = opt(d.get("read_at"))
        st.gone_at = opt(d.get("gone_at"))
        st.recount()
        return st


def _spelling(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _disambiguations(name: str, path: str) -> Iterator[str]:
    yield name
    parts = [p for p in posixpath.dirname(path).split("/") if p not in ("", ".")]
    for depth in range(1, len(parts)):
        yield "/".join([*parts[-depth - 1 : -1], name])
    n = 2
    while True:
        yield f"{name}~{n}"
        n += 1


def _clock_for(path: str, mtime: float) -> SourceClock:
    """Year of a classic glog prefix: glog's file name, else the file's time (refined by the header)."""
    m = _GLOG_NAME_DATE.search(path)
    if m:
        return SourceClock(int(m[1]), int(m[2]))
    t = time.localtime(mtime if mtime > 0 else None)
    return SourceClock(t.tm_year, 0, mtime_month=t.tm_mon)


@dataclass
class RunRegistry:
    """All runs of this exporter, keyed by run name; routes each chunk to its run.

    A path becomes a run only at its first chunk that carries Caffe state (`carries_caffe_state`); until
    then nothing of it is kept, so a directory of unrelated logs costs no memory. `limits` bound what is
    stored; `clock` (wall time) stamps `RunState.read_at` for the lifecycle's time-to-live rules."""

    identify: Callable[[str], tuple[str, dict[str, str]]]
    make_observers: Callable[[RunState], list[BlockObserver]] = lambda run: []
    runs: dict[str, RunState] = field(default_factory=dict)
    _by_path: dict[str, RunState] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.time
    budget: SeriesBudget = field(init=False)
    expired: Counter[str] = field(default_factory=Counter)  # runs dropped by the lifecycle, by reason
    # paths of dropped runs: their next chunk must start a file (the tailer re-reads it from offset 0)
    _dropped: set[str] = field(default_factory=set)
    _refused: set[str] = field(default_factory=set)  # Caffe paths refused by max_runs (counted once each)

    def __post_init__(self) -> None:
        self.budget = SeriesBudget(self.limits)

    def feed(self, chunk: Chunk) -> int:
        run = self._by_path.get(chunk.path)
        if run is None:
            run = self._admit(chunk)
            if run is None:
                return 0
        run.read_at = self.clock()
        return run.feed(chunk)

    def _admit(self, chunk: Chunk) -> RunState | None:
        path = chunk.path
        if path in self._dropped:
            if not chunk.file_start:
                return None  # the rest of a dropped run's file; it comes again from offset 0
            self._dropped.discard(path)
        if not carries_caffe_state(chunk.text):
            return None
        run = self._run_for(path)
        if run is None:
            if path not in self._refused:
                self._refused.add(path)
                self.budget.dropped["max_runs"] += 1
            return None
        self._refused.discard(path)
        self._by_path[path] = run
        return run

    def restore(self, run: RunState) -> None:
        """Take back a run from a checkpoint: its sources route to it again."""
        run.budget = self.budget
        run.recount()
        self.budget.total += run.series
        self.runs[run.run] = run
        for src in run.sources:
            self._by_path[src] = run

    def drop(self, name: str, reason: str) -> list[str]:
        """Forget a run (lifecycle): its series, its routes; returns its paths. A dropped path's next chunk
        starts a new run only if it is read from the file's start."""
        run = self.runs.pop(name)
        self.budget.total -= run.series
        for src in run.sources:
            if self._by_path.get(src) is run:
                del self._by_path[src]
                self._dropped.add(src)
        self.expired[reason] += 1
        return list(run.sources)

    def dropped_paths(self) -> list[str]:
        """Paths of dropped runs not read from their start since (to carry across a restart)."""
        return list(self._dropped)

    def mark_dropped(self, paths: Iterable[str]) -> None:
        """Restore `dropped_paths()` of a previous process: their chunks start no run until one is read from
        the file's start (the tailer told to forget them again)."""
        self._dropped.update(p for p in paths if p not in self._by_path)

    def set_limits(self, limits: Limits) -> None:
        """New limits (a reloaded configuration): they apply to series not stored yet; none is removed."""
        self.limits = limits
        self.budget.limits = limits

    def forget_dropped(self, path: str) -> None:
        """A dropped path that is gone from disk needs no mark any more (keeps the set bounded)."""
        self._dropped.discard(path)
        self._refused.discard(path)

    def refused_paths(self) -> list[str]:
        return list(self._refused)

    def _run_for(self, path: str) -> RunState | None:
        """The run of a new path: files of one directory share a run (glog starts a new file on restart);
        two jobs whose names collide (`/a/exp1/caffe.log`, `/b/exp1/caffe.log`) are told apart by the
        directories above, else by a `~N` suffix. None when a new run would exceed limits.max_runs."""
        name, labels = self.identify(path)
        for candidate in _disambiguations(name, path):
            run = self.runs.get(candidate)
            if run is None:
                if len(self.runs) >= self.limits.max_runs:
                    return None
                run = self.runs[candidate] = RunState(run=candidate, labels=labels, budget=self.budget)
                run.observers = self.make_observers(run)
                return run
            if any(posixpath.dirname(src) == posixpath.dirname(path) for src in run.sources) or not run.sources:
                return run
        raise AssertionError("unreachable: _disambiguations ends with unused names")
