"""The pipeline stage: chunks into runs under the lock, every line accounted for, a failing chunk survived."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.pipeline import Pipeline
from exporter.state import RunRegistry, RunState
from exporter.tail import Chunk

LOG = Path(__file__).parent / "fixtures" / "real-caffe" / "lenet_healthy" / "caffe.log"


def _chunk(text: str, first_line: int = 1) -> Chunk:
    return Chunk("jobs/lenet/caffe.log", text, first_line, first_line == 1, 0.0)


def test_every_line_is_parsed_or_skipped() -> None:
    text = LOG.read_text()
    pipeline = Pipeline(RunRegistry(identify=lambda p: ("lenet", {})))
    pipeline.on_chunk(_chunk(text))
    assert pipeline.lines.parsed + pipeline.lines.skipped == text.count("\n")
    # FACTS.json: 1460 [Forward] + 450 [Backward] + 30 "All net params"; plus the 110 solver lines
    # (display, lr, outputs, tests, snapshots, Solving, Optimization Done, the two net dumps' headers)
    assert pipeline.lines.parsed == 1460 + 450 + 30 + 110
    assert pipeline.lines.failed == 0


def test_a_chunk_that_raises_is_logged_counted_and_the_next_one_is_read(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lines = LOG.read_text().splitlines(keepends=True)
    pipeline = Pipeline(RunRegistry(identify=lambda p: ("lenet", {})))
    real_feed = RunState.feed
    calls = iter([True, False])

    def feed_failing_once(self: RunState, chunk: Chunk) -> int:
        if next(calls, False):
            raise RuntimeError("a bug in the parser")
        return real_feed(self, chunk)

    monkeypatch.setattr(RunState, "feed", feed_failing_once)
    pipeline.on_chunk(_chunk("".join(lines[:100])))
    pipeline.on_chunk(_chunk("".join(lines[100:]), first_line=101))
    assert pipeline.lines.failed == 100
    assert pipeline.lines.parsed + pipeline.lines.skipped == len(lines) - 100
    assert pipeline.registry.runs["lenet"].loss == 0.0234004
    assert "a bug in the parser" in caplog.text
