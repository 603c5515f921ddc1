"""A partial last line is never parsed as a whole line. Before, at deletion, truncation, rotation and end
of stdin the fragment was emitted with a newline added: ``loss = 0.147174`` cut inside the number was
exported as ``loss = 0.1``."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from exporter.tail import Chunk, Tailer, TailStats, read_stream

from . import LENET_LOG, Clock, poll_all

LINES = LENET_LOG.read_bytes().splitlines(keepends=True)
LOSS = LINES[1461]  # I1126 14:26:32.671810 18205 solver.cpp:239] Iteration 120 (...), loss = 0.147174
BEFORE = LINES[1440:1461]
CUT = LOSS[: LOSS.index(b"loss = 0.1") + len(b"loss = 0.1")]


def lines_of(chunks: list[Chunk]) -> list[str]:
    return [line for c in chunks for line in c.text.splitlines()]


def test_the_fixture_line() -> None:
    assert LOSS.endswith(b"loss = 0.147174\n") and CUT.endswith(b"loss = 0.1")


@pytest.mark.parametrize("end", ["delete", "copytruncate", "rename"])
def test_fragment_dropped_and_counted_when_the_file_ends(tmp_path: Path, end: str) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(b"".join(BEFORE) + CUT)
    stats, mono = TailStats(), Clock(0.0)
    tailer = Tailer([str(log)], stats=stats, monotonic=mono, rotate_wait=5.0)
    chunks = poll_all(tailer)
    if end == "delete":
        log.unlink()
    elif end == "copytruncate":
        os.truncate(log, 0)
    else:
        os.rename(log, tmp_path / "caffe.log.1")
        log.write_bytes(b"")
    chunks += poll_all(tailer)
    mono.now = 10.0  # past rotate_wait: the renamed file is closed
    chunks += poll_all(tailer)

    got = lines_of(chunks)
    assert got == [line.decode().rstrip("\n") for line in BEFORE]
    assert not any(line.endswith("loss = 0.1") for line in got)
    assert stats.lines_partial == 1


def test_fragment_dropped_and_counted_at_end_of_stdin() -> None:
    stats = TailStats()
    chunks = list(read_stream(io.BytesIO(b"".join(BEFORE) + CUT), stats=stats))
    assert lines_of(chunks) == [line.decode().rstrip("\n") for line in BEFORE]
    assert stats.lines_partial == 1


def test_a_completed_fragment_is_not_counted(tmp_path: Path) -> None:
    log = tmp_path / "caffe.log"
    log.write_bytes(CUT)
    stats = TailStats()
    tailer = Tailer([str(log)], stats=stats)
    assert poll_all(tailer) == []
    with open(log, "ab") as fh:
        fh.write(LOSS[len(CUT) :])
    assert lines_of(poll_all(tailer)) == [LOSS.decode().rstrip("\n")]
    log.unlink()
    poll_all(tailer)
    assert stats.lines_partial == 0


def test_counted_as_lines_total_outcome_partial() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from exporter.collectors.selfmetrics import ExporterCollector
    from exporter.identity import identify_default
    from exporter.pipeline import Pipeline
    from exporter.state import RunRegistry

    pipeline = Pipeline(RunRegistry(identify=identify_default))
    for chunk in read_stream(io.BytesIO(b"".join(BEFORE) + CUT), stats=pipeline.tail_stats):
        pipeline.on_chunk(chunk)
    registry = CollectorRegistry()
    registry.register(ExporterCollector(pipeline))
    exposition = generate_latest(registry).decode()
    assert 'caffe_exporter_lines_total{outcome="partial"} 1.0' in exposition
    assert "partial (an unterminated last line dropped" in exposition
