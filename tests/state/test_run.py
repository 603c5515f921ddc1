"""exporter/state/run.py: how events change a run (phases, display blocks, speed, checkpoints), on real lines."""

from __future__ import annotations

import json
import math

import pytest

from exporter.state import RunState

from . import DISPLAY_0, HEALTHY, REAL, TEST_PHASE, TRAIN_BLOCK, Recorder, feed, log_lines


def test_test_net_forward_lines_belong_to_phase_test() -> None:
    run = feed(TEST_PHASE + TRAIN_BLOCK + DISPLAY_0)
    assert run.debug_lines["test", "forward"] == 230
    assert run.debug_lines["train", "forward"] == 18
    assert float(run.forward["test"]["mnist, top blob data"]) == 0.88362  # the test net's last batch
    assert float(run.forward["test"]["loss, top blob loss"]) == 2.50143
    assert float(run.forward["train"]["mnist, top blob data"]) == 0.882982  # the train block, line 751
    assert float(run.forward["train"]["loss, top blob loss"]) == 2.58179
    assert run.test_outputs == {("0", "accuracy"): 0.104, ("0", "loss"): 2.58026}
    assert run.test_iteration == {"0": 0}


def test_phase_is_test_only_until_the_first_test_output() -> None:
    run = feed(TEST_PHASE[:-2])  # cut before `Test net output`: still testing
    assert run.thread("18205").phase == "test"
    feed(TEST_PHASE[-2:-1], run=run)
    assert run.thread("18205").phase == "train"


def test_debug_lines_before_iteration_n_belong_to_iteration_n() -> None:
    rec = Recorder()
    run = RunState(run="r", observers=[rec])
    feed(TRAIN_BLOCK + DISPLAY_0, run=run, first_line=751)
    assert len(rec.blocks) == 1
    block = rec.blocks[0]
    assert (block.iteration, block.loss, block.debug_lines, block.passes, block.line) == (0, 2.58179, 33, 1, 785)
    # each following block holds its own 33 lines, and goes to the display line after it
    feed(HEALTHY[787:1120], run=run, first_line=788)
    assert [b.iteration for b in rec.blocks] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert all(b.debug_lines == 33 and b.passes == 1 for b in rec.blocks)
    assert [HEALTHY[b.line - 1].split("] ")[1].split(" (")[0] for b in rec.blocks[1:3]] == [
        "Iteration 10", "Iteration 20"]


def test_test_net_lines_are_not_part_of_the_next_display_block() -> None:
    """lenet_healthy tests every 100 iterations: the blocks after a test phase still hold the 33 train lines."""
    rec = Recorder()
    feed(HEALTHY, run=RunState(run="r", observers=[rec]))
    assert [b.debug_lines for b in rec.blocks] == [33] * 30 + [0]  # the final `Iteration 300` has no block
    assert any("Testing net" in ln for ln in HEALTHY[1120:])


def test_iter_size_repeats_count_as_passes() -> None:
    """iter_size: 2 prints Forward/Backward/All-net-params twice per display line: the real block, twice."""
    rec = Recorder()
    run = RunState(run="r", observers=[rec])
    feed(TRAIN_BLOCK + TRAIN_BLOCK + DISPLAY_0, run=run)
    assert [(b.iteration, b.passes, b.debug_lines) for b in rec.blocks] == [(0, 2, 66)]
    assert run.debug_lines["train", "net"] == 2


def test_resumed_run_in_one_file() -> None:
    run = feed(log_lines("resumed"), str(REAL / "resumed/caffe.log"))
    assert run.solver_starts == 2
    assert run.finished
    assert run.display_iterations == 22  # 10 + final `Iteration 100, loss` of run 1, 10 + final of run 2
    assert run.iteration == 200 and run.loss == 0.0478221


def test_nvcaffe_016_two_level_form() -> None:
    """The catalog's NVCaffe 0.16 lines (net.cpp:966-1009, printed after the glog prefix)."""
    run = feed([
        "[Forward] Layer conv1",
        " -> top blob conv1, count: 290400 data: 0.0123",
        " -> param blob 0, count: 34848 data: 0.00456",
        "[Backward] Layer conv1",
        " -> bottom blob data, count: 154587, diff: 0.000123",
        " -> param blob 0, count: 34848, diff: 0.0000789",
    ])
    assert {k: float(v) for k, v in run.forward["train"].items()} == {
        "conv1, top blob conv1": 0.0123, "conv1, param blob 0": 0.00456}
    assert {k: float(v) for k, v in run.backward.items()} == {
        "conv1, bottom blob data": 0.000123, "conv1, param blob 0": 7.89e-05}
    assert run.debug_lines["train", "forward"] == 2 and run.debug_lines["train", "backward"] == 2


def test_speed_from_the_display_line() -> None:
    last = max(i for i, ln in enumerate(HEALTHY) if "iter/s" in ln)
    assert HEALTHY[last].endswith("Iteration 290 (19.7628 iter/s, 0.506s/10 iters), loss = 0.0159222")
    run = feed(HEALTHY[: last + 1])
    assert run.speed == 19.7628


def test_speed_from_timestamps_on_the_final_display_line() -> None:
    """`Iteration 300, loss = X` after training has no iter/s: speed from 290 (14:26:42.003316) to 300."""
    run = feed(HEALTHY)
    assert run.iteration == 300
    assert run.speed == pytest.approx(10 / (42.511475 - 42.003316), rel=1e-4)


def test_speed_from_glog_timestamps_when_the_line_has_none() -> None:
    """The 2015 build prints `Iteration N, loss = X`: speed = iterations / seconds between display lines."""
    lines = log_lines("shared_params_2015")
    run = feed(lines)
    # lines 1151 (`Iteration 90`, 14:36:24.034416) and 1214 (final `Iteration 100`, 14:36:24.041898)
    assert run.speed == pytest.approx((100 - 90) / (24.041898 - 24.034416), rel=1e-4)  # float seconds


@pytest.mark.parametrize("name", ["lenet_nan", "lenet_nan_2015", "resumed", "slash_names"])
def test_to_dict_from_dict_round_trip(name: str) -> None:
    run = feed(log_lines(name), str(REAL / name / "caffe.log"))
    text = json.dumps(run.to_dict())
    again = RunState.from_dict(json.loads(text))
    assert json.dumps(again.to_dict()) == text
    if name.startswith("lenet_nan"):
        assert again.loss is not None and math.isnan(again.loss)
        assert again.norms is not None and all(math.isnan(v) for v in again.norms)
        assert again.first_nonfinite == run.first_nonfinite
        assert again.nonfinite == run.nonfinite


def test_a_restored_state_continues_like_the_original() -> None:
    """Checkpoint in the middle of lenet_nan (inside a train debug block), restore, read the rest."""
    lines = log_lines("lenet_nan")
    cut = 800
    path = str(REAL / "lenet_nan/caffe.log")
    first = feed(lines[:cut], path)
    restored = RunState.from_dict(json.loads(json.dumps(first.to_dict())))
    feed(lines[cut:], path, run=restored, first_line=cut + 1)
    whole = feed(lines, path)
    assert json.dumps(restored.to_dict(), sort_keys=True) == json.dumps(whole.to_dict(), sort_keys=True)
