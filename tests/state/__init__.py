"""RunState behaviours, one per test, on real lines from tests/fixtures/real-caffe (edits are said where made).

Shared here: the fixture lines and small helpers of tests/state/test_*.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter.state import Block, RunState
from exporter.tail import Chunk

REAL = Path(__file__).parent.parent / "fixtures" / "real-caffe"
GLOG_INFO = REAL / "glog_dir/glog/caffe.vm.root.log.INFO.20261126-143014.22388"


def log_lines(run: str, name: str = "caffe.log") -> list[str]:
    return (REAL / run / name).read_text().split("\n")[:-1]


def feed(lines: list[str], path: str = "caffe.log", run: RunState | None = None, mtime: float = 0.0,
         first_line: int = 1) -> RunState:
    run = run or RunState(run="r")
    run.feed(Chunk(path, "".join(line + "\n" for line in lines), first_line, first_line == 1, mtime))
    return run


def with_tid(lines: list[str], tid: str) -> list[str]:
    """The same real lines as printed by another glog thread id (the only edit)."""
    return [re.sub(r"^([IWEF]\d{4,8} \d\d:\d\d:\d\d\.\d+ +)\d+ ", rf"\g<1>{tid} ", line) for line in lines]


class Recorder:
    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def observe(self, block: Block) -> None:
        self.blocks.append(block)


# lenet_healthy/caffe.log, 1-based line numbers: 518 `Iteration 0, Testing net (#0)`, 519-748 the test net's
# [Forward] lines, 749-750 `Test net output`, 751-784 the first train debug block (18 Forward, 15 Backward,
# 1 All net params), 785 `Iteration 0 (...), loss = 2.58179`, 786 Train net output, 787 `Iteration 0, lr`.
HEALTHY = log_lines("lenet_healthy")
TEST_PHASE = HEALTHY[517:750]
TRAIN_BLOCK = HEALTHY[750:784]
DISPLAY_0 = HEALTHY[784:787]
