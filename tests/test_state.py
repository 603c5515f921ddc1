"""RunState behaviours, one per test, on real lines from tests/fixtures/real-caffe (edits are said where made)."""

from __future__ import annotations

import calendar
import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from exporter.identity import RunNamer
from exporter.state import Block, RunRegistry, RunState
from exporter.tail import Chunk

REAL = Path(__file__).parent / "fixtures" / "real-caffe"
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


def test_resumed_run_in_one_file() -> None:
    run = feed(log_lines("resumed"), str(REAL / "resumed/caffe.log"))
    assert run.solver_starts == 2
    assert run.finished
    assert run.display_iterations == 22  # 10 + final `Iteration 100, loss` of run 1, 10 + final of run 2
    assert run.iteration == 200 and run.loss == 0.0478221


def test_resumed_run_as_two_glog_files_in_one_directory(tmp_path: Path) -> None:
    """glog writes a new file per process: the two halves of `resumed` under glog's own names are one run."""
    d = tmp_path / "lenet-resume" / "glog"
    d.mkdir(parents=True)
    first = d / "caffe.vm.root.log.INFO.20261126-142951.21713"
    second = d / "caffe.vm.root.log.INFO.20261126-142959.21826"
    first.write_text((REAL / "resumed/caffe.part1.log").read_text())
    second.write_text((REAL / "resumed/caffe.part2.log").read_text())
    registry = RunRegistry(identify=RunNamer())
    for path in (first, second):
        registry.feed(Chunk(str(path), path.read_text(), 1, True, os.path.getmtime(path)))
    assert list(registry.runs) == ["lenet-resume"]
    run = registry.runs["lenet-resume"]
    assert run.sources == [str(first), str(second)]
    single = feed(log_lines("resumed"))
    assert (run.solver_starts, run.display_iterations, run.finished) == (2, 22, True)
    assert run.debug_lines == single.debug_lines
    assert run.norms == single.norms and run.loss == single.loss
    assert run.last_timestamp == time.mktime((2026, 11, 26, 14, 30, 11, 0, 0, -1)) + 0.178161


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


# -- the year of classic glog prefixes (caffe_last_log_timestamp_seconds) --------------------------------

LAST = "I1126 14:30:14.648727 22388 caffe.cpp:250] Optimization Done."  # last line of the glog_dir INFO file


def local(y: int, mo: int, d: int, h: int, mi: int, s: float) -> float:
    return time.mktime((y, mo, d, h, mi, int(s), 0, 0, -1)) + (s - int(s))


def test_year_from_the_glog_header() -> None:
    """The header says 2026; the path is no glog name and the file time says 2019: the header wins."""
    lines = GLOG_INFO.read_text().split("\n")[:-1]
    assert lines[-1] == LAST
    run = feed(lines, "/logs/caffe.txt", mtime=calendar.timegm((2019, 6, 1, 0, 0, 0)))
    assert run.last_timestamp == local(2026, 11, 26, 14, 30, 14.648727)


def test_year_from_the_glog_file_name() -> None:
    """glog_dir's stderr capture (no header) under a glog file name from 2024."""
    run = feed(log_lines("glog_dir"), "/logs/caffe.vm.root.log.INFO.20241126-143014.22388")
    assert run.last_timestamp == local(2024, 11, 26, 14, 30, 14.648727)


def test_year_from_the_file_time() -> None:
    run = feed(log_lines("glog_dir"), "/logs/caffe.log", mtime=local(2025, 11, 27, 0, 0, 0))
    assert run.last_timestamp == local(2025, 11, 26, 14, 30, 14.648727)


def test_year_from_the_prefix_itself() -> None:
    """glog >= 0.6 prints the year; neither the file name (2019) nor the file time (2020) matter."""
    lines = log_lines("glog_year_prefix")
    last = lines[-1]
    assert last.startswith("I2026")
    run = feed(lines, "/logs/caffe.vm.root.log.INFO.20190101-000000.1", mtime=local(2020, 1, 1, 0, 0, 0))
    m = re.match(r"I(\d{4})(\d\d)(\d\d) (\d\d):(\d\d):(\d\d\.\d+)", last)
    assert m is not None
    y, mo, d, h, mi = (int(x) for x in m.groups()[:5])
    assert run.last_timestamp == local(y, mo, d, h, mi, float(m[6]))


def _dated(line: str, mmdd: str) -> str:
    """A real line with its glog date changed (the only edit)."""
    return line[0] + mmdd + line[5:]


def test_december_to_january_rolls_the_year_over() -> None:
    """Real lenet_healthy display lines, dated 31 Dec and 1 Jan, in a glog file named 2026."""
    path = "/logs/caffe.vm.root.log.INFO.20261231-235900.18205"
    run = feed([_dated(DISPLAY_0[0], "1231")], path)
    assert run.last_timestamp == local(2026, 12, 31, 14, 26, 22.113291)
    feed([_dated(DISPLAY_0[1], "0101")], path, run=run, first_line=2)
    assert run.last_timestamp == local(2027, 1, 1, 14, 26, 22.113305)
    # and it stays in the new year
    feed([_dated(DISPLAY_0[2], "0102")], path, run=run, first_line=3)
    assert run.last_timestamp == local(2027, 1, 2, 14, 26, 22.113322)


def test_december_to_january_within_one_chunk() -> None:
    path = "/logs/caffe.vm.root.log.INFO.20261231-235900.18205"
    run = feed([_dated(DISPLAY_0[0], "1231"), _dated(DISPLAY_0[1], "0101"), _dated(DISPLAY_0[2], "0101")], path)
    assert run.last_timestamp == local(2027, 1, 1, 14, 26, 22.113322)


def test_year_from_the_file_time_across_new_year() -> None:
    """A log begun in December and read after New Year: its December lines are from the file time's year - 1."""
    lines = [_dated(DISPLAY_0[0], "1231"), _dated(DISPLAY_0[1], "0101")]
    run = feed(lines, "/logs/caffe.log", mtime=local(2027, 1, 1, 15, 0, 0))
    assert run.last_timestamp == local(2027, 1, 1, 14, 26, 22.113305)


# -- speed ---------------------------------------------------------------------------------------------


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


# -- checkpoints ---------------------------------------------------------------------------------------


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


# -- run names -----------------------------------------------------------------------------------------


def test_two_jobs_with_the_same_directory_name_stay_two_runs() -> None:
    """`/data/alice/exp1/caffe.log` and `/data/bob/exp1/caffe.log` both default to `exp1`: never merged."""
    registry = RunRegistry(identify=RunNamer())
    for path in ("/data/alice/exp1/caffe.log", "/data/bob/exp1/caffe.log", "/data/alice/exp1/caffe.log"):
        registry.feed(Chunk(path, "".join(ln + "\n" for ln in DISPLAY_0), 1, True, 0.0))
    assert sorted(registry.runs) == ["bob/exp1", "exp1"]
    assert registry.runs["exp1"].sources == ["/data/alice/exp1/caffe.log"]
    assert registry.runs["exp1"].display_iterations == 2


def test_glog_files_of_one_directory_stay_one_run() -> None:
    registry = RunRegistry(identify=RunNamer())
    for pid in ("4242", "4343"):  # a restart: glog opens a new file in the same directory
        path = f"/jobs/exp1/caffe.node1.alice.log.INFO.20261126-143014.{pid}"
        registry.feed(Chunk(path, "".join(ln + "\n" for ln in DISPLAY_0), 1, True, 0.0))
    assert list(registry.runs) == ["exp1"]
    assert registry.runs["exp1"].display_iterations == 2
