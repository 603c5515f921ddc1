"""The vocabulary shared by the parser and the run state: one immutable record per kind of Caffe line.

Nothing here imports from the rest of the package, so every stage can depend on it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Stage = Literal["forward", "backward", "update"]
Role = Literal["top", "bottom", "param", "input"]
Phase = Literal["train", "test"]


class GlogPrefix(NamedTuple):
    """`I1126 14:26:20.074826 18205 net.cpp:593]`; `year` is set only by glog >= 0.5 (`I20261126 ...`)."""

    severity: str
    year: int | None
    month: int
    day: int
    seconds_of_day: float
    tid: str


class LayerBlob(NamedTuple):
    """A per-layer debug_info value: the blob's mean absolute value (asum/count).

    Forward lines carry `data`, Backward lines `diff`. `[Forward] Input B data: v` has role `input` and
    layer `input`.
    """

    stage: Stage
    layer: str
    role: Role
    blob: str
    value: float


class LayerHeader(NamedTuple):
    """NVCaffe 0.16 two-level form: `[Forward] Layer conv1` names the layer of the ` -> ...` lines below."""

    stage: Stage
    layer: str


class ChildBlob(NamedTuple):
    """NVCaffe 0.16 ` -> top blob conv1, count: 290400 data: 0.0123` (layer taken from the header)."""

    role: Role
    blob: str
    value: float


class UpdateValue(NamedTuple):
    """`[Update] Layer L, param P data: v; diff: w` or the shared form with `(owned by layer O, param Q)`."""

    layer: str
    param: str
    data: float | None
    diff: float


class NetNorms(NamedTuple):
    """`[Backward] All net params (data, diff): L1 norm = (a, b); L2 norm = (c, d)`: sums over all params."""

    l1_data: float
    l1_diff: float
    l2_data: float
    l2_diff: float


class DisplayIteration(NamedTuple):
    """`Iteration N (x iter/s, ys/K iters), loss = v`: the smoothed loss of a display iteration."""

    iteration: int
    loss: float
    iters_per_second: float | None


class LearningRate(NamedTuple):
    iteration: int
    lr: float


class NetOutput(NamedTuple):
    """`Train net output #i: name = v (* w = x loss)` or `Test net output #i: ...`."""

    phase: Phase
    number: int  # the `#i` (multi-element outputs print one line per element)
    name: str
    value: float


class TestingNet(NamedTuple):
    """`Iteration N, Testing net (#k)`: test-net `[Forward]` lines follow until the outputs."""

    iteration: int
    net: str


class TestLoss(NamedTuple):
    value: float


class Snapshot(NamedTuple):
    path: str
    iteration: int | None


class Restore(NamedTuple):
    """`Resuming from X` / `Restoring previous solver status from X`: the same run continues."""

    path: str


class Solving(NamedTuple):
    """`Solving <net>`: a solver (re)starts."""

    net: str


class OptimizationDone(NamedTuple):
    early: bool


class NetInitStart(NamedTuple):
    """`Initializing net from parameters:` opens a protobuf text dump on the following lines."""


class GlogHeader(NamedTuple):
    """`Log file created at: 2026/11/26 14:30:14`: the only year an old glog file holds."""

    year: int
    month: int
    day: int
    utc: bool


Event = (
    LayerBlob
    | LayerHeader
    | ChildBlob
    | UpdateValue
    | NetNorms
    | DisplayIteration
    | LearningRate
    | NetOutput
    | TestingNet
    | TestLoss
    | Snapshot
    | Restore
    | Solving
    | OptimizationDone
    | NetInitStart
    | GlogHeader
)


class ParsedLine(NamedTuple):
    prefix: GlogPrefix | None
    event: Event


class NetDef(NamedTuple):
    """What the `Initializing net from parameters` dump tells: the net's name and its layers' types."""

    name: str
    layers: tuple[tuple[str, str], ...]
