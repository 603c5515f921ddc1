"""Discovery follows no directory symlink loop. Before, a ``**`` glob below ``jobA/self -> .`` never
finished (glob.glob enumerates self/self/self/...): nothing was read, 100% CPU, memory growing.

The tailer runs in a subprocess so that a regression fails within the timeout instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import caffe_lines, decoded

TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parent.parent.parent

_SCRIPT = """
import json, sys
from exporter.tail import Tailer
tailer = Tailer(sys.argv[1:])
out = {}
for c in tailer.poll():
    out[c.path] = out.get(c.path, "") + c.text
print(json.dumps(out))
"""


def discover(*sources: str) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *sources], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, check=True)
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def make_tree(tmp_path: Path) -> tuple[Path, Path]:
    job_a, job_b = tmp_path / "jobA", tmp_path / "jobB" / "logs"
    job_a.mkdir()
    job_b.mkdir(parents=True)
    (job_a / "caffe.log").write_bytes(b"".join(caffe_lines(10)))
    (job_b / "caffe.log").write_bytes(b"".join(caffe_lines(7, start=10)))
    os.symlink(".", job_a / "self")
    os.symlink("..", job_a / "up")
    os.symlink("../../jobA", job_b / "a")  # a symlink to a directory visited anyway
    return job_a / "caffe.log", job_b / "caffe.log"


def test_recursive_glob_below_a_symlink_loop_finishes_and_reads_the_logs(tmp_path: Path) -> None:
    a, b = make_tree(tmp_path)
    got = discover(str(tmp_path / "**" / "caffe.log"))
    # each file once (the first path found for it), whatever the number of symlinked routes to it
    assert sorted(got.values()) == sorted([decoded(caffe_lines(10)), decoded(caffe_lines(7, start=10))])
    assert str(a) in got and str(b) in got


def test_directory_source_below_a_symlink_loop(tmp_path: Path) -> None:
    a, b = make_tree(tmp_path)
    assert discover(str(tmp_path)) == {str(a): decoded(caffe_lines(10)), str(b): decoded(caffe_lines(7, start=10))}


def test_explicit_file_symlink_is_still_read(tmp_path: Path) -> None:
    """glog's ``caffe.INFO`` is a symlink to the current run's file."""
    real = tmp_path / "caffe.vm.root.log.INFO.20261126-143014.22388"
    real.write_bytes(b"".join(caffe_lines(5)))
    link = tmp_path / "caffe.INFO"
    link.symlink_to(real.name)
    os.symlink(".", tmp_path / "self")
    assert discover(str(link)) == {str(link): decoded(caffe_lines(5))}
    assert discover(str(tmp_path / "**" / "caffe.INFO")) == {str(link): decoded(caffe_lines(5))}


def test_glob_through_a_directory_symlink_without_a_loop(tmp_path: Path) -> None:
    real = tmp_path / "store" / "run1"
    real.mkdir(parents=True)
    (real / "caffe.log").write_bytes(b"".join(caffe_lines(4)))
    (tmp_path / "jobs").mkdir()
    os.symlink(real, tmp_path / "jobs" / "run1")
    assert discover(str(tmp_path / "jobs" / "**" / "*.log")) == {
        str(tmp_path / "jobs" / "run1" / "caffe.log"): decoded(caffe_lines(4))
    }


def test_glob_matches_the_standard_glob_without_symlinks(tmp_path: Path) -> None:
    """Same results as glob.glob(recursive=True) on a plain tree (hidden names, character classes)."""
    import glob

    from exporter.tail.discover import glob_paths

    for rel in ["a/caffe.log", "a/b/c/train.log", "a/.hidden/x.log", ".top/y.log", "a/b/caffe.log.1",
                "z.log", "a/b/c/d/e/f.txt", "q/[x].log"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x\n")
    patterns = ["*/caffe.log", "**/*.log", "a/**", "**", "a/**/caffe.log*", "*/.hidden/*", ".*/*.log",
                "**/c/*", "a/*/c/**/*.txt", "q/*.log", "nothere/**/x.log"]
    for pat in patterns:
        full = str(tmp_path / pat)
        assert sorted(glob_paths(full)) == sorted(glob.glob(full, recursive=True)), pat
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        relative = {pat: (sorted(glob_paths(pat)), sorted(glob.glob(pat, recursive=True))) for pat in patterns}
    finally:
        os.chdir(cwd)
    for pat, (ours, theirs) in relative.items():
        assert ours == theirs, pat


def test_a_directory_reached_through_a_symlink_keeps_its_real_path(tmp_path: Path) -> None:
    from exporter.tail.discover import glob_paths

    (tmp_path / "zreal" / "run").mkdir(parents=True)
    (tmp_path / "zreal" / "run" / "caffe.log").write_bytes(b"x\n")
    os.symlink(tmp_path / "zreal", tmp_path / "alias")  # sorts first, still not the path used
    assert glob_paths(str(tmp_path / "**" / "caffe.log")) == [str(tmp_path / "zreal" / "run" / "caffe.log")]
