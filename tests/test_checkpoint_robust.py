"""Checkpoints survive every value a log can hold and reject damaged files as a whole."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import checkpoint, config
from exporter.daemon import build, restore
from exporter.detectors import DetectorConfig, make_observers
from exporter.identity import RunNamer, SourceRule
from exporter.state import RunRegistry, RunState
from exporter.tail import Chunk, FilePosition
from tests.e2e_util import E2E_MARKS, free_port, http_get, running, samples, wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "real-caffe"
HEALTHY = FIXTURES / "lenet_healthy" / "caffe.log"
PREFIX = "I1126 14:29:58.977000 21713 solver.cpp:218] "


def _registry() -> RunRegistry:
    return RunRegistry(identify=RunNamer(), make_observers=make_observers(DetectorConfig()))


def _nonfinite_log() -> str:
    """lenet_healthy with every solver value the review saw stop reading: lr = nan, loss = inf, NaN iter/s,
    NaN test outputs."""
    text = HEALTHY.read_text()
    text = text.replace("Iteration 20, lr = ", "Iteration 20, lr = nan #", 1)
    text = re.sub(r"Iteration 40 \([^ ]+ iter/s", "Iteration 40 (nan iter/s", text, count=1)
    text = text.replace("Test net output #0: accuracy = ", "Test net output #0: accuracy = nan #", 1)
    text = re.sub(r"(Iteration 40 \(.*\), loss = )\S+", r"\1inf", text, count=1)
    return text


def _save_and_restore(reg: RunRegistry, tmp_path: Path) -> RunRegistry:
    path = tmp_path / "checkpoint.json"
    checkpoint.write(str(path), checkpoint.snapshot(reg, {}))
    data = checkpoint.read(str(path))
    assert data is not None
    back = _registry()
    checkpoint.restore(data, back, DetectorConfig())
    return back


def test_nan_learning_rate_inf_loss_and_nan_speed_survive_a_checkpoint(tmp_path: Path) -> None:
    reg = _registry()
    text = _nonfinite_log()
    lines = text.splitlines(keepends=True)
    cut = next(i for i, ln in enumerate(lines) if "Iteration 40 (" in ln) + 1
    reg.feed(Chunk("jobs/x/caffe.log", "".join(lines[:cut]), 1, True, 0.0))
    run = reg.runs["x"]
    assert run.loss == math.inf and math.isnan(run.speed or 0.0)
    back = _save_and_restore(reg, tmp_path)
    assert json.dumps(back.runs["x"].to_dict(), sort_keys=True) == json.dumps(run.to_dict(), sort_keys=True)
    assert back.runs["x"].loss == math.inf


def test_a_learning_rate_of_nan_is_saved_as_nan(tmp_path: Path) -> None:
    reg = _registry()
    reg.feed(Chunk("jobs/x/caffe.log", f"{PREFIX}Iteration 10, loss = 1\n{PREFIX}Iteration 20, lr = nan\n", 1, True,
                   0.0))
    back = _save_and_restore(reg, tmp_path)
    lr = back.runs["x"].lr
    assert lr is not None and math.isnan(lr)


_names = st.text(min_size=1, max_size=12)
_values = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 5e-324, 0.0])


@settings(max_examples=200, deadline=None)
@given(forward=st.dictionaries(_names, _values, max_size=5), backward=st.dictionaries(_names, _values, max_size=5),
       lr=_values, speed=_values, loss=_values, outputs=st.dictionaries(_names, _values, max_size=3))
def test_every_float_and_name_round_trips_through_a_checkpoint(
        tmp_path_factory: pytest.TempPathFactory, forward: dict[str, float], backward: dict[str, float], lr: float,
        speed: float, loss: float, outputs: dict[str, float]) -> None:
    run = RunState(run="r", sources=["/l/caffe.log"])
    run.forward["train"] = {f"{k}, top blob {k}": v for k, v in forward.items()}
    run.backward = {f"{k}, bottom blob {k}": v for k, v in backward.items()}
    run.lr, run.speed, run.loss, run.iteration = lr, speed, loss, 7
    run.train_outputs = outputs
    run.test_outputs = {("0", k): v for k, v in outputs.items()}
    reg = _registry()
    reg.restore(run)
    back = _save_and_restore(reg, tmp_path_factory.mktemp("ck")).runs["r"]

    def same(a: float | str | None, b: float | str | None) -> bool:
        if a is None or b is None:
            return a is b
        fa, fb = float(a), float(b)
        return (math.isnan(fa) and math.isnan(fb)) or fa == fb

    assert list(back.forward["train"]) == list(run.forward["train"])
    assert all(same(back.forward["train"][k], v) for k, v in run.forward["train"].items())
    assert all(same(back.backward[k], v) for k, v in run.backward.items())
    assert same(back.lr, lr) and same(back.speed, speed) and same(back.loss, loss)
    assert all(same(back.train_outputs[k], v) for k, v in outputs.items())
    assert all(same(back.test_outputs["0", k], v) for k, v in outputs.items())


def test_every_field_of_a_run_is_saved() -> None:
    """A field missing from both to_dict and from_dict would silently reset at every restart."""
    saved = set(RunState(run="r", sources=["a"]).to_dict())
    derived = {"observers", "fast_path", "budget", "series", "layers"}  # rebuilt from config / recount()
    fields = {f for f in RunState.__dataclass_fields__} - derived
    assert fields <= saved, fields - saved


@pytest.mark.parametrize("damage", [
    {"positions": []},
    {"positions": None},
    {"positions": {"/x": 1}},
    {"positions": {"/x": {"path": "/x", "dev": 1, "ino": 2, "offset": -5, "line": 0, "head": ""}}},
    {"positions": {"/x": {"path": "/y", "dev": 1, "ino": 2, "offset": 5, "line": 0, "head": ""}}},
    {"runs": None},
    {"runs": [None]},
    {"counters": []},
    {"counters": {"lines_parsed": -1}},
])
def test_a_checkpoint_of_foreign_structure_is_an_error_not_a_crash(damage: dict[str, object]) -> None:
    data = {"version": 1, "positions": {}, "runs": [], **damage}
    reg = _registry()
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        checkpoint.restore(data, reg, DetectorConfig())
    assert reg.runs == {}


@pytest.mark.parametrize("field, value", [("forward", {}), ("forward", {"train": {}}), ("sources", []),
                                          ("display_iterations", -1), ("test_outputs", [["0"]]), ("labels", {"a": 1})])
def test_a_run_that_collectors_could_not_render_is_rejected_with_all_others(field: str, value: object) -> None:
    reg = _registry()
    reg.feed(Chunk("jobs/x/caffe.log", HEALTHY.read_text(), 1, True, 0.0))
    reg.feed(Chunk("jobs/y/caffe.log", HEALTHY.read_text(), 1, True, 0.0))
    data = json.loads(json.dumps(checkpoint.snapshot(reg, {})))
    data["runs"][1]["state"][field] = value
    fresh = _registry()
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.restore(data, fresh, DetectorConfig())
    assert fresh.runs == {}  # the good run is not used either: all or nothing


def test_a_save_leaves_no_temporary_file_and_a_killed_save_is_cleaned_at_start(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    checkpoint.write(str(path), {"version": 1, "positions": {}, "runs": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]
    leftover = tmp_path / ".checkpoint.json.tmp-abc123"  # what SIGKILL during a save leaves
    leftover.write_text('{"version": 1, "posit')
    legacy = tmp_path / ".checkpoint-old"  # the prefix of earlier versions, long abandoned
    legacy.write_text("{")
    old = time.time() - 2 * 3600
    os.utime(legacy, (old, old))
    recent_legacy = tmp_path / ".checkpoint-inflight"  # maybe another exporter's save in progress
    recent_legacy.write_text("{")
    other = tmp_path / ".other.json.tmp-1"  # another checkpoint's temporary file in the same directory
    other.write_text("{")
    removed = checkpoint.remove_leftovers(str(path))
    assert sorted(Path(p).name for p in removed) == [".checkpoint-old", ".checkpoint.json.tmp-abc123"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoint-inflight", ".other.json.tmp-1",
                                                           "checkpoint.json"]


def test_a_failing_save_is_counted_and_reading_goes_on(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    saver = checkpoint.Checkpointer(str(tmp_path / "missing-dir" / "c.json"), 0.0, lambda: {"version": 1},
                                    time.monotonic, on_error=errors.append)
    assert saver.save() is False
    assert len(errors) == 1 and isinstance(errors[0], OSError)

    def boom() -> dict[str, object]:
        raise RuntimeError("a bug while taking the snapshot")

    assert checkpoint.Checkpointer(str(tmp_path / "c.json"), 0.0, boom, time.monotonic,
                                   on_error=errors.append).save() is False
    assert isinstance(errors[1], RuntimeError)


def test_an_unusable_checkpoint_gives_a_fresh_pipeline_and_a_full_read(tmp_path: Path) -> None:
    ck = tmp_path / "c.json"
    reg = _registry()
    reg.feed(Chunk(str(tmp_path / "x" / "caffe.log"), HEALTHY.read_text(), 1, True, 0.0))
    data = json.loads(json.dumps(checkpoint.snapshot(reg, {})))
    data["runs"][0]["state"]["test_outputs"] = [["0", "accuracy"]]  # one element short
    ck.write_text(json.dumps(data))
    cfg = config.Config(sources=(SourceRule(str(tmp_path)),), checkpoint_file=str(ck))
    pipeline, registry = build(cfg)
    pipeline, registry, restored = restore(cfg, pipeline, registry)
    assert pipeline.registry.runs == {} and restored.positions == {}


def test_counters_of_the_exporter_continue_from_the_checkpoint(tmp_path: Path) -> None:
    cfg = config.Config(sources=(SourceRule(str(tmp_path)),), checkpoint_file=str(tmp_path / "c.json"))
    pipeline, _ = build(cfg)
    pipeline.on_chunk(Chunk(str(tmp_path / "x" / "caffe.log"), HEALTHY.read_text(), 1, True, 0.0,
                            FilePosition(str(tmp_path / "x" / "caffe.log"), 1, 2, 10, 2564, "")))
    pipeline.tail_stats.bytes_read = 1234
    pipeline.errors.counts["parse"] = 2
    checkpoint.write(cfg.checkpoint_file, checkpoint.snapshot(pipeline.registry, pipeline.applied,
                                                              pipeline.counters()))
    before = pipeline.counters()
    again, registry = build(cfg)
    again, registry, _ = restore(cfg, again, registry)
    assert again.counters() == before
    assert before["lines_parsed"] > 0 and before["errors_parse"] == 2 and before["bytes_read"] == 1234


@E2E_MARKS[0]
@E2E_MARKS[1]
def test_non_finite_solver_values_with_checkpoints_on_do_not_stop_reading(tmp_path: Path) -> None:
    """Review D1: `lr = nan` made the checkpoint write raise and the tail thread die, all reading stopped."""
    lines = _nonfinite_log().splitlines(keepends=True)
    cut = next(i for i, ln in enumerate(lines) if "Iteration 40 (" in ln) + 1
    log_dir = tmp_path / "logs" / "job"
    log_dir.mkdir(parents=True)
    log = log_dir / "caffe.log"
    log.write_text("".join(lines[:cut]))
    ck = tmp_path / "checkpoint.json"
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"checkpoint_file: {ck}\ncheckpoint_interval: 0.1\n")
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", "--config", str(cfg),
           "--poll-interval", "0.2", str(tmp_path / "logs")]
    url = f"http://127.0.0.1:{port}/metrics"
    total = sum(1 for ln in lines if ", loss = " in ln and "Iteration" in ln)

    def displays(n: int) -> str | None:
        text = http_get(url)
        return text if [v for _, v in samples(text, "caffe_display_iterations_total")] == [n] else None

    with running("exporter-1", cmd, tmp_path / "exporter-1.log") as proc:
        wait_until("the non-finite part to be read", lambda: displays(cut and sum(
            1 for ln in lines[:cut] if ", loss = " in ln and "Iteration" in ln)), 30, procs=[proc])
        with log.open("a") as f:
            f.write("".join(lines[cut:]))
        text = wait_until("lines after the NaN learning rate", lambda: displays(total), 30, procs=[proc])
        assert [v for lb, v in samples(text, "caffe_exporter_errors_total") if v] == []
        wait_until("a checkpoint with everything", lambda: ck.exists() and json.loads(
            ck.read_text())["runs"][0]["state"]["display_iterations"] == total, 30, procs=[proc])
        proc.stop()
        assert proc.popen.returncode == 0, proc.tail()
    with running("exporter-2", cmd, tmp_path / "exporter-2.log") as proc:
        text = wait_until("the restored run", lambda: displays(total), 30, procs=[proc])
        assert "restored 1 runs" in proc.log.read_text()
        assert [v for lb, v in samples(text, "caffe_exporter_lines_total") if lb["outcome"] == "failed"] == [0]
