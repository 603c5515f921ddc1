"""Checkpoints: a restarted exporter continues where it stopped, losing and double-counting nothing."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exporter import checkpoint, config
from exporter.daemon import build
from exporter.detectors import DetectorConfig, analysis_of, make_observers
from exporter.identity import RunNamer, SourceRule
from exporter.state import RunRegistry
from exporter.tail import Chunk, FilePosition
from tests.e2e_util import E2E_MARKS, free_port, http_get, running, samples, wait_until

LOG = Path(__file__).parent / "fixtures" / "real-caffe" / "lenet_nan" / "caffe.log"
VOLATILE = ("caffe_exporter_", "process_", "python_", "caffe_last_log_timestamp_seconds")


def _registry() -> RunRegistry:
    # a fixed clock: RunState.read_at (the lifecycle's wall time of the last read) is then equal in both
    return RunRegistry(identify=RunNamer(), make_observers=make_observers(DetectorConfig()), clock=lambda: 0.0)


def test_saved_and_restored_runs_are_equal(tmp_path: Path) -> None:
    lines = LOG.read_text().splitlines(keepends=True)
    original = _registry()
    original.feed(Chunk("jobs/nan/caffe.log", "".join(lines[:1500]), 1, True, 0.0))
    pos = FilePosition("jobs/nan/caffe.log", 1, 2, 12345, 1500, "ab" * 20)
    path = tmp_path / "checkpoint.json"
    checkpoint.write(str(path), checkpoint.snapshot(original, {pos.path: pos}))

    restored = _registry()
    data = checkpoint.read(str(path))
    assert data is not None
    assert checkpoint.restore(data, restored, DetectorConfig()).positions == {pos.path: pos}
    run, back = original.runs["nan"], restored.runs["nan"]
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(run.to_dict(), sort_keys=True)
    a, b = analysis_of(run), analysis_of(back)
    assert a is not None and b is not None
    assert json.dumps(b.to_dict(), sort_keys=True) == json.dumps(a.to_dict(), sort_keys=True)  # NaN-aware
    # and it goes on as if never interrupted
    for reg in (original, restored):
        reg.feed(Chunk("jobs/nan/caffe.log", "".join(lines[1500:]), 1501, False, 0.0))
    assert json.dumps(restored.runs["nan"].to_dict(), sort_keys=True) == json.dumps(
        original.runs["nan"].to_dict(), sort_keys=True)


def test_no_checkpoint_yet_is_none_and_a_broken_one_is_an_error(tmp_path: Path) -> None:
    assert checkpoint.read(str(tmp_path / "missing.json")) is None
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1, "positions": ')
    with pytest.raises(checkpoint.CheckpointError, match=r"broken\.json: cannot read checkpoint"):
        checkpoint.read(str(broken))
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"version": 99}')
    with pytest.raises(checkpoint.CheckpointError, match="not a caffe-exporter checkpoint"):
        checkpoint.read(str(foreign))
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        checkpoint.restore({"version": 1, "positions": {}, "runs": [{"state": {}}]}, _registry(), DetectorConfig())


def _stable(exposition: str) -> set[tuple[str, tuple[tuple[str, str], ...], float | str]]:
    out: set[tuple[str, tuple[tuple[str, str], ...], float | str]] = set()
    for line in exposition.splitlines():
        if line.startswith("#") or line.startswith(VOLATILE) or not line:
            continue
        name = line.split("{")[0].split(" ")[0]
        for labels, value in samples(exposition, name):
            labels.pop("source", None)  # the reference reads the file under another path
            out.add((name, tuple(sorted(labels.items())), "NaN" if math.isnan(value) else value))
    return out


@E2E_MARKS[0]
@E2E_MARKS[1]
def test_a_restart_with_a_checkpoint_continues_counters_and_reads_only_new_lines(tmp_path: Path) -> None:
    lines = LOG.read_text().splitlines(keepends=True)
    log_dir = tmp_path / "logs" / "nan"
    log_dir.mkdir(parents=True)
    log = log_dir / "caffe.log"
    log.write_text("".join(lines[:1200]))
    state = tmp_path / "checkpoint.json"
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", "--checkpoint-file",
           str(state), str(tmp_path / "logs")]
    url = f"http://127.0.0.1:{port}/metrics"

    def display_lines(n: int) -> str | None:
        text = http_get(url)
        got = [v for _, v in samples(text, "caffe_display_iterations_total")]
        return text if got == [n] else None

    first_part = sum(1 for ln in lines[:1200] if ", loss = " in ln)
    with running("exporter-1", cmd, tmp_path / "exporter-1.log") as proc:
        wait_until("the first part to be read", lambda: display_lines(first_part), 30, procs=[proc])
        proc.stop()  # SIGTERM: the exporter saves its checkpoint on the way out
        assert proc.popen.returncode == 0, proc.tail()
    assert state.exists()
    with log.open("a") as f:
        f.write("".join(lines[1200:]))
    total = sum(1 for ln in lines if ", loss = " in ln)
    with running("exporter-2", cmd, tmp_path / "exporter-2.log") as proc:
        after = wait_until("the rest to be read", lambda: display_lines(total), 30, procs=[proc])
        assert "restored 1 runs" in proc.log.read_text()
        lines_read = [v for lb, v in samples(after, "caffe_exporter_lines_total")]
        bytes_read = [v for lb, v in samples(after, "caffe_exporter_bytes_read_total")]
    # the self-metrics continue, and the second process read only the new lines: every byte once
    assert sum(lines_read) == len(lines)
    assert bytes_read == [log.stat().st_size]

    reference_dir = tmp_path / "reference" / "nan"
    reference_dir.mkdir(parents=True)
    shutil.copy(LOG, reference_dir / "caffe.log")
    pipeline, registry = build(config.Config(sources=(SourceRule(str(tmp_path / "reference")),)))
    pipeline.on_chunk(Chunk(str(reference_dir / "caffe.log"), "".join(lines), 1, True, log.stat().st_mtime))
    assert _stable(after) == _stable(generate_latest(registry).decode())
