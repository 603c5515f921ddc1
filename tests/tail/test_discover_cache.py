"""Discovery is not re-walked on every poll: a directory or glob source is listed again only when one of the
directories it depends on changed (st_mtime/st_ctime/identity), when it changed too recently to trust its
times, or when ``rewalk_every`` has passed. Files appearing are still found at the next poll."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.tail import Tailer, TailStats
from exporter.tail.discover import walk_logs

from . import GLOG_INFO, Clock, caffe_lines, decoded, poll, text

LATER = 60.0  # the wall clock the tailer sees is this far ahead: every directory looks settled


def later() -> float:
    return time.time() + LATER


def jobs(tmp_path: Path, n: int) -> list[Path]:
    """n job directories with one real log each."""
    logs = []
    for i in range(n):
        d = tmp_path / f"job{i}"
        d.mkdir()
        (d / "caffe.log").write_bytes(b"".join(caffe_lines(3, start=3 * i)))
        logs.append(d / "caffe.log")
    return logs


SOURCES: dict[str, Callable[[Path], str]] = {
    "directory": lambda root: str(root),
    "glob": lambda root: str(root / "*" / "caffe.log"),
    "recursive glob": lambda root: str(root / "**" / "*.log"),
}


@pytest.fixture(params=list(SOURCES))
def source(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    make = SOURCES[request.param]
    return make(tmp_path)


def test_a_new_log_in_a_settled_directory_is_found_at_the_next_poll(tmp_path: Path, source: str) -> None:
    jobs(tmp_path, 3)
    tailer = Tailer([source], clock=later, monotonic=Clock())
    assert len(poll(tailer)) == 3
    assert poll(tailer) == []
    (tmp_path / "job9").mkdir()
    new = tmp_path / "job9" / "caffe.log"
    new.write_bytes(b"".join(caffe_lines(4, start=20)))
    got = poll(tailer)  # the monotonic clock has not moved: found because the root's times changed
    assert text(got) == decoded(caffe_lines(4, start=20)) and got[0].path == str(new)


def test_a_log_created_in_an_existing_job_directory_is_found_at_the_next_poll(tmp_path: Path, source: str) -> None:
    """The root's times stay; the job directory's change (for ``*/caffe.log``: the directory where the
    literal name was looked up)."""
    jobs(tmp_path, 2)
    (tmp_path / "job5").mkdir()
    tailer = Tailer([source], clock=later, monotonic=Clock())
    assert len(poll(tailer)) == 2
    (tmp_path / "job5" / "caffe.log").write_bytes(b"".join(caffe_lines(2, start=50)))
    assert text(poll(tailer)) == decoded(caffe_lines(2, start=50))


@pytest.mark.parametrize("kind", ["directory", "recursive glob"])
def test_a_new_log_two_levels_down_is_found_at_the_next_poll(tmp_path: Path, kind: str) -> None:
    jobs(tmp_path, 2)
    tailer = Tailer([SOURCES[kind](tmp_path)], clock=later, monotonic=Clock())
    poll(tailer)
    (tmp_path / "job1" / "retry").mkdir()  # the root's times stay; job1's change
    (tmp_path / "job1" / "retry" / "caffe.log").write_bytes(b"".join(caffe_lines(2, start=30)))
    assert text(poll(tailer)) == decoded(caffe_lines(2, start=30))


def test_a_log_replacing_another_in_a_settled_directory_is_read(tmp_path: Path, source: str) -> None:
    logs = jobs(tmp_path, 2)
    stats = TailStats()
    tailer = Tailer([source], stats=stats, clock=later, monotonic=Clock())
    poll(tailer)
    os.unlink(logs[0])
    logs[0].write_bytes(b"".join(caffe_lines(2, start=30)))
    assert text(poll(tailer)) == decoded(caffe_lines(2, start=30))
    assert stats.files_watched == 2


def test_an_old_mtime_put_back_does_not_hide_a_new_log(tmp_path: Path, source: str) -> None:
    """rsync -t, cp -p, tar: a tool may set a directory's mtime back; its ctime still moves."""
    jobs(tmp_path, 2)
    old = os.stat(tmp_path)
    tailer = Tailer([source], clock=later, monotonic=Clock())
    poll(tailer)
    (tmp_path / "job9").mkdir()
    (tmp_path / "job9" / "caffe.log").write_bytes(b"".join(caffe_lines(2, start=40)))
    os.utime(tmp_path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(tmp_path).st_mtime_ns == old.st_mtime_ns
    assert text(poll(tailer)) == decoded(caffe_lines(2, start=40))


def _dangling_run(tmp_path: Path) -> tuple[Path, Path]:
    """``jobs/run0/caffe.log`` and ``jobs/run1 -> ../store/run1``, not there yet."""
    jobs_dir = tmp_path / "jobs"
    (jobs_dir / "run0").mkdir(parents=True)
    (jobs_dir / "run0" / "caffe.log").write_bytes(b"".join(caffe_lines(2)))
    (tmp_path / "store").mkdir()
    os.symlink(tmp_path / "store" / "run1", jobs_dir / "run1")
    return jobs_dir, tmp_path / "store" / "run1"


def test_a_directory_symlink_target_appearing_is_found_by_the_periodic_rewalk(tmp_path: Path) -> None:
    """The one change no time of a listed directory shows: the target of a dangling directory symlink is
    created. It is found once ``rewalk_every`` has passed."""
    jobs_dir, target = _dangling_run(tmp_path)
    clock = Clock()
    tailer = Tailer([str(jobs_dir / "*" / "caffe.log")], clock=later, monotonic=clock, rewalk_every=30.0)
    assert text(poll(tailer)) == decoded(caffe_lines(2))
    target.mkdir()
    (target / "caffe.log").write_bytes(b"".join(caffe_lines(3, start=2)))
    clock.now += 29.0
    assert poll(tailer) == []  # the walk of jobs/ is reused: nothing it listed changed
    clock.now += 1.0
    got = poll(tailer)
    assert text(got) == decoded(caffe_lines(3, start=2)) and got[0].path == str(jobs_dir / "run1" / "caffe.log")


def test_a_recently_changed_directory_is_listed_again_at_every_poll(tmp_path: Path) -> None:
    """Racy times: a change in the same timestamp tick as the one before can leave a directory's times
    alone, so a walk whose directories changed within the margin of the listing is not reused. Shown with
    the change no time shows (as above), the wall clock half a second after jobs/ last changed."""
    jobs_dir, target = _dangling_run(tmp_path)
    just_after = os.stat(jobs_dir).st_mtime + 0.5
    tailer = Tailer([str(jobs_dir / "*" / "caffe.log")], clock=lambda: just_after, monotonic=Clock(),
                    rewalk_every=3600.0)
    assert text(poll(tailer)) == decoded(caffe_lines(2))
    target.mkdir()
    (target / "caffe.log").write_bytes(b"".join(caffe_lines(3, start=2)))
    assert text(poll(tailer)) == decoded(caffe_lines(3, start=2))


def test_an_idle_poll_lists_no_directory(tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes idle polls cheap: settled directories are stat'ed, not listed."""
    jobs(tmp_path, 5)
    tailer = Tailer([source], clock=later, monotonic=Clock())
    poll(tailer)
    listed: list[str] = []
    real_scandir, real_listdir = os.scandir, os.listdir

    def scandir(path: str) -> object:
        listed.append(path)
        return real_scandir(path)

    def listdir(path: str) -> list[str]:
        listed.append(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)
    for _ in range(3):
        assert poll(tailer) == []
    assert listed == []


def _os_walk_logs(root: str) -> list[str]:
    """The previous implementation: os.walk, sorted, *.log and glog INFO files."""
    glog_info = re.compile(r".+\.log\.INFO\.\d{8}-\d{6}\.\d+")
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".log") or glog_info.fullmatch(name):
                out.append(os.path.join(dirpath, name))
    return out


def test_walk_logs_lists_what_os_walk_lists(tmp_path: Path) -> None:
    for rel in ["b/caffe.log", "a/z.log", "a/b/c/train.log", "a/.hidden/x.log", ".top/y.log", "a/caffe.log.1",
                "a/notes.txt", "a/caffe.log.gz", "Z.log", "a/b/readme", "glog/" + GLOG_INFO.name,
                "glog/caffe.vm.root.log.WARNING.20261126-143014.22388"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x\n")
    os.symlink(".", tmp_path / "a" / "self")
    os.symlink(tmp_path / "b", tmp_path / "a" / "link.log")  # a directory symlink named like a log
    os.symlink(tmp_path / "nothere", tmp_path / "a" / "dangling.log")
    assert walk_logs(str(tmp_path)) == _os_walk_logs(str(tmp_path))
    assert walk_logs(str(tmp_path / "nothere")) == _os_walk_logs(str(tmp_path / "nothere")) == []


def test_a_busy_parent_of_a_glob_does_not_make_it_listed_again(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the identity of a glob's literal parts counts (``/tmp`` changes all the time)."""
    root = tmp_path / "jobs"
    root.mkdir()
    jobs(root, 3)
    tailer = Tailer([str(root / "*" / "caffe.log")], clock=later, monotonic=Clock())
    assert len(poll(tailer)) == 3
    listed: list[str] = []
    real_listdir = os.listdir

    def listdir(path: str) -> list[str]:
        listed.append(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    (tmp_path / "unrelated.txt").write_bytes(b"x\n")
    assert poll(tailer) == []
    assert listed == []
