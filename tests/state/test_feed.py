"""exporter/state/feed.py: reading chunks, glog threads demultiplexed; the same state however chunked."""

from __future__ import annotations

import json

from exporter.state import RunState

from . import DISPLAY_0, HEALTHY, TEST_PHASE, TRAIN_BLOCK, Recorder, feed, with_tid


def test_interleaved_threads_keep_their_own_phase() -> None:
    """Old multi-GPU Caffe: two solver threads in one file. Thread 18205 runs the real test phase while the
    real first train block and display lines are printed by another thread (its id changed to 18206)."""
    other = with_tid(TRAIN_BLOCK + DISPLAY_0, "18206")
    mixed: list[str] = []
    for i, line in enumerate(TEST_PHASE):
        mixed.append(line)
        if 100 <= i < 100 + len(other):
            mixed.append(other[i - 100])
    rec = Recorder()
    run = RunState(run="r", observers=[rec])
    feed(mixed, run=run)
    assert run.debug_lines["test", "forward"] == 230
    assert run.debug_lines["train", "forward"] == 18
    assert run.debug_lines["train", "backward"] == 15
    assert [(b.iteration, b.debug_lines) for b in rec.blocks] == [(0, 33)]
    assert run.thread("18205").phase == "train" and run.thread("18206").phase == "train"


def test_another_threads_solver_line_does_not_move_the_debug_threads_lines() -> None:
    """NVCaffe prints `Solving <net>` once per GPU thread; one arriving amid the root's test-net lines (the real
    lenet_healthy `Solving LeNet` line, thread id changed to 18300) must not pull the rest of them into train.
    Chunked or line by line, the result is the same."""
    solving = with_tid([next(ln for ln in HEALTHY if ln.endswith("Solving LeNet"))], "18300")
    assert solving[0].endswith("Solving LeNet")
    lines = TEST_PHASE[:100] + solving + TEST_PHASE[100:]
    whole = feed(lines)
    assert whole.debug_lines["test", "forward"] == 230
    assert whole.debug_lines["train", "forward"] == 0
    by_line = RunState(run="r")
    for i, line in enumerate(lines, 1):
        by_line.apply_line(line, i, "caffe.log")
    assert json.dumps(by_line.to_dict(), sort_keys=True) == json.dumps(whole.to_dict(), sort_keys=True)
