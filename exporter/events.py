"""The records the stages share: what the tailer hands on (:class:`Chunk`, :class:`FilePosition`) and one
immutable record per kind of Caffe line (the parser's vocabulary, applied by the run state).

Nothing here imports from the rest of the package, so every stage can depend on it (the run state and the
checkpoint need a chunk's type, not the tailer and its file watcher).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
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


@dataclass
class FilePosition:
    """Where reading of one path stopped; serialisable for checkpoints.

    ``offset`` counts bytes of complete lines consumed (a pending partial line is not consumed; dropped
    oversized lines and NULs are), ``line`` the lines consumed (including dropped oversized lines, so
    ``line + 1`` is the next chunk's ``first_line``). ``head`` is the hex sha1 of the first ``head_len``
    bytes of the file (``head_len = min(size, 1024)`` when recorded; ``-1`` means unknown, then
    ``min(size, 1024)`` of the file at resume time is hashed). ``forgotten``: the path was given to
    ``Tailer.forget``; it is not read again unless it grows beyond ``offset`` or is replaced.
    """

    path: str
    dev: int
    ino: int
    offset: int
    line: int
    head: str
    head_len: int = -1
    forgotten: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> FilePosition:
        def num(key: str, default: int | None = None) -> int:
            v = d.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"FilePosition.{key} must be an int, got {v!r}")
            return v

        path, head, forgotten = d.get("path"), d.get("head"), d.get("forgotten", False)
        if not isinstance(path, str) or not isinstance(head, str):
            raise ValueError(f"FilePosition.path and .head must be strings, got {path!r}, {head!r}")
        if not isinstance(forgotten, bool):
            raise ValueError(f"FilePosition.forgotten must be a bool, got {forgotten!r}")
        return cls(
            path=path,
            dev=num("dev"),
            ino=num("ino"),
            offset=num("offset"),
            line=num("line"),
            head=head,
            head_len=num("head_len", -1),
            forgotten=forgotten,
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    """Complete lines of one file (or none: then only ``end`` moves)."""

    path: str
    """The path as discovered (not symlink-resolved); ``"-"`` for stdin."""
    text: str
    """Complete lines, each ending in ``"\\n"``; NULs removed; UTF-8 decoded with ``errors="replace"``.
    ``""`` when bytes were consumed without a line to emit (see ``end``)."""
    first_line: int
    """1-based line number within the file of the first line (dropped oversized lines are counted)."""
    file_start: bool
    """True for the first chunk with text read from offset 0 of a file (new file, rotated-in file, after
    truncation, a forgotten file read again); never set on a chunk with ``text == ""``."""
    mtime: float
    """st_mtime of the file when it was first opened (0.0 for streams)."""
    end: FilePosition | None = None
    """The file's position just after this chunk's last line: commit it once the chunk is applied. None
    for streams and for a file drained after it was renamed away (``exporter.tail``'s docstring)."""
