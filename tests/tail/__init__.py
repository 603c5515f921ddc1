"""Tests for exporter/tail/ (the tailer package), one file per filesystem scenario; shared helpers live here."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from exporter.tail import Chunk, Tailer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LENET_LOG = FIXTURES / "real-caffe" / "lenet_healthy" / "caffe.log"
GLOG_DIR = FIXTURES / "real-caffe" / "glog_dir" / "glog"
GLOG_INFO = GLOG_DIR / "caffe.vm.root.log.INFO.20261126-143014.22388"
GLOG_WARNING = GLOG_DIR / "caffe.vm.root.log.WARNING.20261126-143014.22388"
GLOG_ERROR = GLOG_DIR / "caffe.vm.root.log.ERROR.20261126-143014.22388"


def caffe_lines(n: int | None = None, start: int = 0) -> list[bytes]:
    """Real lines (with their newlines) from the healthy LeNet run."""
    lines = LENET_LOG.read_bytes().splitlines(keepends=True)
    return lines[start:] if n is None else lines[start : start + n]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def text(chunks: Iterable[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def decoded(lines: Iterable[bytes]) -> str:
    return b"".join(lines).decode("utf-8", "replace")


def poll_all(tailer: Tailer) -> list[Chunk]:
    """One poll, chunks without text included; checks the chunk invariants every consumer relies on."""
    chunks = list(tailer.poll())
    for c in chunks:
        assert c.first_line >= 1
        if c.text:
            assert c.text.endswith("\n"), c
        else:  # only moves the committed position
            assert c.end is not None and not c.file_start, c
        if c.end is not None:
            assert c.end.path == c.path and c.end.line + 1 >= c.first_line + c.text.count("\n"), c
    return chunks


def poll(tailer: Tailer) -> list[Chunk]:
    """One poll: the chunks with lines (see poll_all)."""
    return [c for c in poll_all(tailer) if c.text]


def by_path(chunks: Iterable[Chunk]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in chunks:
        out[c.path] = out.get(c.path, "") + c.text
    return out


class Clock:
    """A clock the test advances by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def long_caffe_lines(n: int) -> list[bytes]:
    """Real lines of at least 60 bytes (glog-prefixed solver/net lines), to split in the middle."""
    return [line for line in caffe_lines() if len(line) >= 60][:n]
