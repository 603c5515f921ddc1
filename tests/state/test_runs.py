"""exporter/state/runs.py: the registry routes chunks to runs and names them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from exporter.identity import RunNamer
from exporter.state import RunRegistry
from exporter.tail import Chunk

from . import DISPLAY_0, REAL, feed, log_lines


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
