"""The small records the run state is made of: per-thread reading position, a non-finite value, a block.

Plain data shared by run.py (the state), feed.py (reading) and the detectors (which observe blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

from exporter.events import GlogPrefix
from exporter.state.clock import SourceClock

if TYPE_CHECKING:
    from exporter.state.run import RunState

PHASES = ("train", "test")


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
class ThreadState:
    """Where one glog thread is: old multi-GPU builds interleave several solver threads in one file."""

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


class Origin(NamedTuple):
    """Where an event was read: its line, file, glog prefix, and the file's clock (glog time -> Unix)."""

    line: int
    path: str
    prefix: GlogPrefix | None
    clock: SourceClock
