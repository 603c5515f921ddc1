"""A glog log directory: only INFO files are read (WARNING/ERROR duplicate them), symlinks skipped."""

from __future__ import annotations

import shutil
from pathlib import Path

from exporter.tail import Tailer, TailStats

from . import GLOG_ERROR, GLOG_INFO, GLOG_WARNING, by_path, poll


def make_glog_dir(root: Path) -> Path:
    """Copy the real glog files and recreate glog's ``caffe.<SEVERITY>`` symlinks."""
    d = root / "glog"
    d.mkdir()
    for f in (GLOG_INFO, GLOG_WARNING, GLOG_ERROR):
        shutil.copy2(f, d / f.name)
        severity = f.name.split(".")[4]
        (d / f"caffe.{severity}").symlink_to(f.name)
    return d


def test_only_info_file_is_read(tmp_path: Path) -> None:
    d = make_glog_dir(tmp_path)
    stats = TailStats()
    tailer = Tailer([str(d)], stats=stats)
    chunks = poll(tailer)
    info = d / GLOG_INFO.name
    assert by_path(chunks) == {str(info): GLOG_INFO.read_text()}
    assert chunks[0].text.startswith("Log file created at: ")
    assert chunks[0].mtime == info.stat().st_mtime
    assert stats.files_watched == 1
    assert stats.bytes_read == GLOG_INFO.stat().st_size


def test_symlink_and_its_target_are_read_once(tmp_path: Path) -> None:
    d = make_glog_dir(tmp_path)
    stats = TailStats()
    tailer = Tailer([str(d / "caffe.INFO"), str(d)], stats=stats)
    chunks = poll(tailer)
    # The explicitly named symlink comes first and wins; the directory's INFO file is the same inode.
    assert by_path(chunks) == {str(d / "caffe.INFO"): GLOG_INFO.read_text()}
    assert stats.files_watched == 1
    assert poll(tailer) == []


def test_new_glog_run_in_directory_is_picked_up(tmp_path: Path) -> None:
    d = make_glog_dir(tmp_path)
    tailer = Tailer([str(d)], start_at_end=True)
    assert poll(tailer) == []
    second = d / "caffe.vm.root.log.INFO.20261126-150102.23001"
    second.write_bytes(GLOG_INFO.read_bytes()[:2000].rsplit(b"\n", 1)[0] + b"\n")
    (d / "caffe.vm.root.log.WARNING.20261126-150102.23001").write_bytes(GLOG_WARNING.read_bytes())
    got = by_path(poll(tailer))
    assert list(got) == [str(second)]
    assert got[str(second)] == second.read_text()
