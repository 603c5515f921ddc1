"""Rotated siblings under a glob that matches them (``caffe.log*``). Before, ``caffe.log.1`` was read after
``caffe.log`` (plain sort) and became a second run named ``caffe.log.1``; ``.gz`` files were read as text."""

from __future__ import annotations

import gzip
from pathlib import Path

from exporter.identity import identify_default
from exporter.state import RunRegistry
from exporter.tail import Tailer, TailStats

from . import LENET_LOG, poll, text

LINES = LENET_LOG.read_bytes().splitlines(keepends=True)


def test_fresh_read_goes_oldest_sibling_first_and_all_are_one_run(tmp_path: Path) -> None:
    job = tmp_path / "lenet"
    job.mkdir()
    parts = [LINES[:800], LINES[800:1600], LINES[1600:]]
    (job / "caffe.log.2").write_bytes(b"".join(parts[0]))
    (job / "caffe.log.1").write_bytes(b"".join(parts[1]))
    (job / "caffe.log").write_bytes(b"".join(parts[2]))
    stats = TailStats()
    chunks = poll(Tailer([str(job / "caffe.log*")], stats=stats))

    assert text(chunks) == b"".join(LINES).decode()  # stream order: .2, .1, live
    assert [c.path for c in chunks if c.file_start] == [str(job / n) for n in ("caffe.log.2", "caffe.log.1",
                                                                                "caffe.log")]
    registry = RunRegistry(identify=identify_default)
    for c in chunks:
        registry.feed(c)
    assert list(registry.runs) == ["lenet"]
    assert registry.runs["lenet"].sources == [str(job / n) for n in ("caffe.log.2", "caffe.log.1", "caffe.log")]


def test_dated_siblings_oldest_first(tmp_path: Path) -> None:
    (tmp_path / "caffe.log-20261127").write_bytes(LINES[1])
    (tmp_path / "caffe.log").write_bytes(LINES[2])
    (tmp_path / "caffe.log-20261126").write_bytes(LINES[0])
    chunks = poll(Tailer([str(tmp_path / "caffe.log*")]))
    assert text(chunks) == b"".join(LINES[:3]).decode()


def test_compressed_siblings_are_skipped_not_errors(tmp_path: Path) -> None:
    (tmp_path / "caffe.log.3.gz").write_bytes(gzip.compress(b"".join(LINES[:100])))
    for suffix in (".bz2", ".xz", ".zst", ".lz4", ".zip"):
        (tmp_path / f"caffe.log.2{suffix}").write_bytes(b"\x00\x01binary\xff\n" * 10)
    (tmp_path / "caffe.log").write_bytes(b"".join(LINES[100:110]))
    stats = TailStats()
    chunks = poll(Tailer([str(tmp_path / "caffe.log*")], stats=stats))
    assert text(chunks) == b"".join(LINES[100:110]).decode()
    assert {c.path for c in chunks} == {str(tmp_path / "caffe.log")}
    assert stats.read_errors == stats.files_unreadable == 0
    assert stats.files_watched == 1
