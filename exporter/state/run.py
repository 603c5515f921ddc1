"""Per-run training state, as plain data, and how each parsed event changes it.

A run is everything one log source tells about one training job: the solver's loss and learning rate,
the newest value of every per-layer blob (floats), counters of what was read, and the first non-finite
value. State holds no file handles, locks or clock, so it is checkpointed with `to_dict()` /
`from_dict()` (exporter/codec.py: every field unless declared derived) and rebuilt by a restarted
exporter. Reading chunks is exporter/state/feed.py; `RunState.feed` is its entry point.

Attribution rules (from the Caffe sources, see docs/log-format.md):
* debug lines before `Iteration N ..., loss = ...` belong to display iteration N;
* `[Forward]` lines after `Iteration N, Testing net (#k)` and before its first `Test net output` belong to
  phase `test`;
* each glog thread id has its own phase and open block, for old multi-GPU builds whose solver threads
  interleave their lines in one file.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter import codec
from exporter.events import (
    ChildBlob,
    Chunk,
    DisplayIteration,
    Event,
    GlogHeader,
    LayerBlob,
    LayerHeader,
    LearningRate,
    NetDef,
    NetInitStart,
    NetNorms,
    NetOutput,
    OptimizationDone,
    Restore,
    Snapshot,
    Solving,
    TestingNet,
    TestLoss,
    UpdateValue,
)
from exporter.parse import layer_key, split_key, split_update_key
from exporter.scan import FAST, FastPath
from exporter.state import feed as feeding
from exporter.state import limits
from exporter.state.clock import SourceClock
from exporter.state.limits import SeriesBudget
from exporter.state.records import PHASES, Block, BlockObserver, NonfiniteValue, Origin, ThreadState


def _spelling(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _no_blocks() -> list[BlockObserver]:
    return []


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
    forward: dict[str, dict[str, float]] = field(default_factory=lambda: {p: {} for p in PHASES})
    backward: dict[str, float] = field(default_factory=dict)
    update_data: dict[str, float] = field(default_factory=dict)  # key "conv1, param 0"
    update_diff: dict[str, float] = field(default_factory=dict)
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
    # lifecycle (exporter/lifecycle.py): wall-clock time the exporter last applied a chunk of the run, and
    # since when all of its log files are gone (None while one exists); both checkpointed
    read_at: float | None = None
    gone_at: float | None = None
    # not saved: observers are rebuilt from configuration, the rest by recount()
    observers: list[BlockObserver] = field(default_factory=_no_blocks, repr=False, compare=False,
                                           metadata=codec.DERIVED)
    fast_path: FastPath = field(default=FAST, repr=False, compare=False, metadata=codec.DERIVED)  # tests force it off
    # limits: the registry's shared budget; `series` counts what this run holds against it (per-layer
    # values, one caffe_layer_info per layer and phase, nonfinite counters); `layers` names those layers
    budget: SeriesBudget = field(default_factory=SeriesBudget, repr=False, compare=False, metadata=codec.DERIVED)
    series: int = field(default=0, repr=False, compare=False, metadata=codec.DERIVED)
    layers: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PHASES}, repr=False,
                                        compare=False, metadata=codec.DERIVED)

    # -- reading -------------------------------------------------------------------------------------

    def feed(self, chunk: Chunk) -> int:
        """Apply a chunk of complete lines; returns how many lines carried Caffe state (the rest skipped)."""
        return feeding.feed(self, chunk)

    def apply_line(self, line: str, line_no: int = 0, path: str = "") -> None:
        """Apply one line (the slow path on its own; used by tests and tools)."""
        self.feed(Chunk(path=path, text=line.rstrip("\n") + "\n", first_line=line_no or 1,
                        file_start=False, mtime=0.0))

    def thread(self, tid: str) -> ThreadState:
        th = self.threads.get(tid)
        if th is None:
            th = self.threads[tid] = ThreadState()
        return th

    def apply(self, event: Event, th: ThreadState, at: Origin) -> None:
        """Apply one parsed event, read by glog thread `th` at `at`."""
        _HANDLERS[type(event)](self, event, th, at)

    def define(self, net: NetDef) -> None:
        """The net's name and layer types from its `Initializing net from parameters` dump."""
        if net.name and not self.net:
            self.net = net.name
        for name, typ in net.layers:
            self.layer_types.setdefault(name, typ)

    def count_debug(self, th: ThreadState, nfwd: int, nbwd: int, nupd: int) -> None:
        """Per-layer lines stored by the fast path (the slow path counts in `layer_value`)."""
        if nfwd:
            self.debug_lines[th.phase, "forward"] += nfwd
        if nbwd:
            self.debug_lines[th.phase, "backward"] += nbwd
        if nupd:
            self.debug_lines[th.phase, "update"] += nupd
        if th.phase == "train":  # a display block is the training net's lines; test-net lines are not in it
            th.block_lines += nfwd + nbwd

    def layer_value(self, th: ThreadState, stage: str, layer: str, role: str, blob: str, v: float,
                    line_no: int, path: str) -> None:
        phase = th.phase
        if role == "input":  # `[Forward] Input B data: v` (2015-2016): the net's input blobs
            layer, role = "input", "top"
        lkey = layer_key(layer, role, blob)
        values, kind = (self.forward[phase], "data") if stage == "forward" else (self.backward, "diff")
        key = lkey if lkey in values else limits.admit(self, lkey, phase if stage == "forward" else "train", values)
        if key is not None:
            values[key] = v
        self.debug_lines[phase, stage] += 1
        if phase == "train":
            th.block_lines += 1
        if not math.isfinite(v):
            self._nonfinite(th, stage, layer, blob, kind, v, line_no, path)

    # -- events ------------------------------------------------------------------------------------

    def _on_layer_blob(self, ev: LayerBlob, th: ThreadState, at: Origin) -> None:
        self.layer_value(th, ev.stage, ev.layer, ev.role, ev.blob, ev.value, at.line, at.path)

    def _on_child_blob(self, ev: ChildBlob, th: ThreadState, at: Origin) -> None:
        self.layer_value(th, th.nv_stage, th.nv_layer, ev.role, ev.blob, ev.value, at.line, at.path)

    def _on_layer_header(self, ev: LayerHeader, th: ThreadState, at: Origin) -> None:
        th.nv_stage, th.nv_layer = ev.stage, ev.layer

    def _on_norms(self, ev: NetNorms, th: ThreadState, at: Origin) -> None:
        self.norms = (ev.l1_data, ev.l1_diff, ev.l2_data, ev.l2_diff)
        self.debug_lines[th.phase, "net"] += 1
        for blob, v in zip(("l1_data", "l1_diff", "l2_data", "l2_diff"), self.norms, strict=True):
            if not math.isfinite(v):
                self._nonfinite(th, "net", "", blob, blob[3:], v, at.line, at.path)
        th.passes += 1

    def _on_update(self, ev: UpdateValue, th: ThreadState, at: Origin) -> None:
        self.debug_lines[th.phase, "update"] += 1
        ukey = f"{ev.layer}, param {ev.param}"
        known = ukey in self.update_diff and (ev.data is None or ukey in self.update_data)
        key = ukey if known else limits.admit_update(self, ukey)
        if key is not None:
            if ev.data is not None:
                self.update_data[key] = ev.data
            self.update_diff[key] = ev.diff
        if ev.data is not None and not math.isfinite(ev.data):
            self._nonfinite(th, "update", ev.layer, ev.param, "data", ev.data, at.line, at.path)
        if not math.isfinite(ev.diff):
            self._nonfinite(th, "update", ev.layer, ev.param, "diff", ev.diff, at.line, at.path)

    def _on_display(self, ev: DisplayIteration, th: ThreadState, at: Origin) -> None:
        self.iteration = ev.iteration
        self.loss = ev.loss
        self.display_iterations += 1
        now = at.clock.unix(at.prefix) if at.prefix is not None else None
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
        block = Block(self, ev.iteration, ev.loss, th.block_lines, th.passes, at.line, at.path, pending)
        th.phase = "train"
        th.block_lines = th.passes = 0
        th.pending = []
        th.outputs_seen.clear()
        th.last_display = ev.iteration
        for obs in self.observers:
            obs.observe(block)

    def _on_output(self, ev: NetOutput, th: ThreadState, at: Origin) -> None:
        base = name = limits.name(self, ev.name)
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

    def _on_lr(self, ev: LearningRate, th: ThreadState, at: Origin) -> None:
        self.lr = ev.lr
        self.iteration = ev.iteration

    def _on_testing(self, ev: TestingNet, th: ThreadState, at: Origin) -> None:
        th.phase, th.test_net, th.test_iteration = "test", ev.net, ev.iteration
        th.outputs_seen.clear()
        self.test_iteration[ev.net] = ev.iteration
        self.iteration = ev.iteration

    def _on_test_loss(self, ev: TestLoss, th: ThreadState, at: Origin) -> None:
        self.test_loss[th.test_net] = ev.value

    def _on_snapshot(self, ev: Snapshot, th: ThreadState, at: Origin) -> None:
        if not ev.path.endswith((".solverstate", ".solverstate.h5")):
            self.snapshots += 1
            if ev.iteration is not None:
                self.last_snapshot_iteration = ev.iteration

    def _on_solving(self, ev: Solving, th: ThreadState, at: Origin) -> None:
        self.solver_starts += 1
        self.finished = False
        self.net = self.net or ev.net
        th.phase = "train"

    def _on_restore(self, ev: Restore, th: ThreadState, at: Origin) -> None:
        self.finished = False

    def _on_done(self, ev: OptimizationDone, th: ThreadState, at: Origin) -> None:
        self.finished = True

    def _on_net_init(self, ev: NetInitStart, th: ThreadState, at: Origin) -> None:
        self.dump = []

    def _on_glog_header(self, ev: GlogHeader, th: ThreadState, at: Origin) -> None:
        at.clock.year, at.clock.utc, at.clock.last_month = ev.year, ev.utc, ev.month

    def _nonfinite(self, th: ThreadState, stage: str, layer: str, blob: str, kind: str, v: float,
                   line_no: int, path: str) -> None:
        layer, blob = limits.name(self, layer), limits.name(self, blob)
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
        elif limits.admit_counter(self, key):
            self.nonfinite[key] = 1

    def _origin(self, nv: NonfiniteValue) -> None:
        if self.first_nonfinite is None:
            self.first_nonfinite = nv
        if nv.layer and self.first_nonfinite_layer is None:
            self.first_nonfinite_layer = nv

    # -- derived -----------------------------------------------------------------------------------

    def blobs(self, phase: str, stage: str) -> Iterator[tuple[str, str, str, float]]:
        """(layer, role, blob, value) of the newest values; stage forward (per phase) or backward."""
        values = self.forward[phase] if stage == "forward" else self.backward
        for key, v in values.items():
            parts = split_key(key)
            if parts is not None:
                yield parts[0], parts[1], parts[2], v

    def updates(self) -> Iterator[tuple[str, str, float | None, float]]:
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

    def recount(self) -> None:
        """Rebuild `series` and `layers` from the stored values (a run restored from a checkpoint)."""
        limits.recount(self)

    # -- checkpointing -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ValueError unless the state has the shape the collectors and detectors rely on: a restored
        checkpoint is checked as a whole before any of it is used (a damaged file must not break scrapes)."""
        problems = [msg for ok, msg in _checks(self) if not ok()]
        if problems:
            raise ValueError(f"run {self.run!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (exporter/codec.py; derived fields excluded: observers come from configuration)."""
        return codec.to_json(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunState:
        st = codec.from_json(cls, d)
        st.recount()
        return st


def _floats(d: Mapping[Any, Any]) -> bool:
    return all(type(v) is float for v in d.values())


def _checks(s: RunState) -> list[tuple[Callable[[], bool], str]]:
    counters = (s.display_iterations, s.loss_nonfinite, s.solver_starts, s.snapshots,
                *s.debug_lines.values(), *s.nonfinite.values())
    return [
        (lambda: isinstance(s.run, str) and bool(s.run), "run must be a non-empty string"),
        (lambda: bool(s.sources) and all(isinstance(x, str) and x for x in s.sources),
         "sources must be non-empty strings"),
        (lambda: sorted(s.forward) == sorted(PHASES) and all(_floats(d) for d in s.forward.values()),
         f"forward must hold the phases {PHASES}"),
        (lambda: all(_floats(d) for d in (s.backward, s.update_data, s.update_diff)),
         "per-layer values must be numbers"),
        (lambda: all(isinstance(k, str) and isinstance(v, str) for k, v in {**s.labels, **s.layer_types}.items()),
         "labels and layer types must be strings"),
        (lambda: all(isinstance(v, int) and v >= 0 for v in counters), "counters must be integers >= 0"),
        (lambda: s.iteration is None or isinstance(s.iteration, int), "iteration must be an integer"),
        (lambda: all(isinstance(k, str) and isinstance(c.year, int) for k, c in s.clocks.items()),
         "clocks must hold a year"),
    ]


_HANDLERS: dict[type, Callable[[RunState, Any, ThreadState, Origin], None]] = {
    LayerBlob: RunState._on_layer_blob,
    ChildBlob: RunState._on_child_blob,
    LayerHeader: RunState._on_layer_header,
    NetNorms: RunState._on_norms,
    UpdateValue: RunState._on_update,
    DisplayIteration: RunState._on_display,
    NetOutput: RunState._on_output,
    LearningRate: RunState._on_lr,
    TestingNet: RunState._on_testing,
    TestLoss: RunState._on_test_loss,
    Snapshot: RunState._on_snapshot,
    Solving: RunState._on_solving,
    Restore: RunState._on_restore,
    OptimizationDone: RunState._on_done,
    NetInitStart: RunState._on_net_init,
    GlogHeader: RunState._on_glog_header,
}
