"""Run lifecycle (exporter/lifecycle.py): deleted, finished and stale runs are dropped on time, from the
registry, the checkpoint and the routes; a log read again from its start is a fresh run.

Real files in tmp_path and os.path.lexists; only the clock is fake (no sleeps)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from exporter import checkpoint
from exporter.config import ConfigError, from_mapping
from exporter.detectors import DetectorConfig, make_observers
from exporter.identity import RunNamer
from exporter.lifecycle import Lifecycle, LifecycleConfig, parse_duration
from exporter.state import RunRegistry
from exporter.tail import Chunk

REAL = Path(__file__).parent / "fixtures" / "real-caffe"
HEALTHY = (REAL / "lenet_healthy/caffe.log").read_text()  # ends with `Optimization Done`
TRAINING = HEALTHY[:HEALTHY.rfind("\n", 0, HEALTHY.index("Iteration 200,")) + 1]  # still training


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class World:
    """A registry, a lifecycle over it and the paths it handed to on_drop."""

    def __init__(self, tmp: Path, config: LifecycleConfig) -> None:
        self.tmp = tmp
        self.clock = Clock()
        self.registry = RunRegistry(identify=RunNamer(), make_observers=make_observers(), clock=self.clock)
        self.forgotten: list[str] = []
        self.lifecycle = Lifecycle(config, self.registry, clock=self.clock, exists=os.path.lexists,
                                   on_drop=self.on_drop)

    def on_drop(self, paths: Sequence[str]) -> None:
        self.forgotten += paths

    def log(self, run: str, text: str, name: str = "caffe.log") -> str:
        path = self.tmp / run / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        self.registry.feed(Chunk(str(path), text, 1, True, 0.0))
        return str(path)

    def after(self, seconds: float) -> list[tuple[str, str]]:
        self.clock.now += seconds
        return self.lifecycle.sweep()


CFG = LifecycleConfig(deleted_grace=300, finished_ttl=3600, stale_ttl=7 * 86400)


def test_a_run_whose_files_are_all_gone_is_dropped_after_the_grace(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    first = w.log("job", TRAINING, "caffe.log")
    second = w.log("job", "I1126 14:30:00.000000 18205 solver.cpp:239] Iteration 210, loss = 0.1\n", "train.log")
    assert w.registry.runs["job"].sources == [first, second]
    os.unlink(first)
    assert w.after(1000) == []  # one file left
    os.unlink(second)
    assert w.after(10) == []  # seen gone now
    assert w.after(299) == []
    assert w.after(1) == [("job", "deleted")]
    assert w.registry.runs == {} and w.registry.expired == {"deleted": 1}
    assert w.forgotten == [first, second]
    assert checkpoint.snapshot(w.registry, {})["runs"] == []


def test_a_file_back_within_the_grace_keeps_its_run(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    path = w.log("job", TRAINING)
    os.rename(path, path + ".tmp")
    w.after(200)
    os.rename(path + ".tmp", path)
    w.after(1)
    assert w.after(200) == [] and "job" in w.registry.runs


def test_a_finished_run_is_dropped_finished_ttl_after_its_last_read(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    w.log("job", HEALTHY)
    assert w.registry.runs["job"].finished
    assert w.after(3599) == []
    assert w.after(1) == [("job", "finished")] and w.registry.expired == {"finished": 1}


def test_reading_again_restarts_the_time_to_live(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    path = w.log("job", TRAINING)
    w.after(7 * 86400 - 1)
    w.registry.feed(Chunk(path, "I1126 14:30:00.000000 18205 solver.cpp:239] Iteration 210, loss = 0.1\n",
                          300, False, 0.0))
    assert w.after(7 * 86400 - 1) == []
    assert w.after(1) == [("job", "stale")] and w.registry.expired == {"stale": 1}


def test_zero_disables_a_rule(tmp_path: Path) -> None:
    w = World(tmp_path, LifecycleConfig(deleted_grace=0, finished_ttl=0, stale_ttl=0))
    os.unlink(w.log("gone", TRAINING))
    w.log("done", HEALTHY)
    w.log("old", TRAINING)
    assert w.after(1e9) == [] and sorted(w.registry.runs) == ["done", "gone", "old"]


def test_standard_input_is_never_deleted(tmp_path: Path) -> None:
    w = World(tmp_path, LifecycleConfig(deleted_grace=1, finished_ttl=0, stale_ttl=0))
    w.registry.feed(Chunk("-", TRAINING, 1, True, 0.0))
    assert w.after(100) == [] and list(w.registry.runs) == ["stdin"]


def test_a_dropped_log_read_again_from_its_start_is_a_fresh_run(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    path = w.log("job", TRAINING)
    w.after(7 * 86400)
    assert w.registry.runs == {} and w.forgotten == [path]
    more = "I1126 14:30:00.000000 18205 solver.cpp:239] Iteration 210, loss = 0.1\n"
    # what the tailer read before it forgot the path: the rest of the old file, not a run of its own
    assert w.registry.feed(Chunk(path, more, 300, False, 0.0)) == 0 and w.registry.runs == {}
    # Tailer.forget: the file again from offset 0
    w.registry.feed(Chunk(path, TRAINING + more, 1, True, 0.0))
    run = w.registry.runs["job"]
    assert run.display_iterations == TRAINING.count(", loss = ") + 1 and run.read_at == w.clock.now


def test_the_times_survive_a_restart_through_the_checkpoint(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    w.log("job", HEALTHY)
    w.after(3000)
    data = checkpoint.snapshot(w.registry, {})
    restarted = World(tmp_path, CFG)
    restarted.clock.now = w.clock.now
    checkpoint.restore(data, restarted.registry, DetectorConfig())
    assert restarted.after(599) == []
    assert restarted.after(1) == [("job", "finished")]  # 3600 s after the read before the restart


def test_a_deleted_run_restored_keeps_the_time_its_files_went(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    os.unlink(w.log("job", TRAINING))
    w.after(200)
    restarted = World(tmp_path, CFG)
    restarted.clock.now = w.clock.now
    checkpoint.restore(checkpoint.snapshot(w.registry, {}), restarted.registry, DetectorConfig())
    assert restarted.after(299) == [] and restarted.after(1) == [("job", "deleted")]  # 300 s after it went


def test_a_run_restored_without_a_read_time_starts_its_time_at_the_first_sweep(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    w.log("job", HEALTHY)
    data = checkpoint.snapshot(w.registry, {})
    del data["runs"][0]["state"]["read_at"]  # a checkpoint of the version before the lifecycle
    restarted = World(tmp_path, CFG)
    restarted.clock.now = w.clock.now + 86400
    checkpoint.restore(data, restarted.registry, DetectorConfig())
    assert restarted.after(0) == [] and restarted.after(3599) == [] and restarted.after(1) != []


def test_dropped_paths_carried_to_a_new_process_start_no_run_mid_file(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    path = w.log("job", TRAINING)
    w.after(7 * 86400)
    restarted = World(tmp_path, CFG)
    restarted.registry.mark_dropped(w.registry.dropped_paths())
    more = "I1126 14:30:00.000000 18205 solver.cpp:239] Iteration 210, loss = 0.1\n"
    assert restarted.registry.feed(Chunk(path, more, 300, False, 0.0)) == 0 and restarted.registry.runs == {}
    restarted.registry.feed(Chunk(path, TRAINING + more, 1, True, 0.0))
    assert list(restarted.registry.runs) == ["job"]


def test_marks_of_dropped_paths_go_with_their_files(tmp_path: Path) -> None:
    w = World(tmp_path, CFG)
    path = w.log("job", TRAINING)
    w.after(7 * 86400)
    assert w.registry.dropped_paths() == [path]
    os.unlink(path)
    w.after(1)
    assert w.registry.dropped_paths() == []


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("5m", 300), ("1h", 3600), ("7d", 604800), ("1h30m", 5400), ("2w", 1209600), ("1y", 31536000),
    ("1d12h", 129600), ("500ms", 0.5), ("0", 0), (0, 0), ("0s", 0),
])
def test_durations_are_prometheus_style(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", 5, "1.5h", "5 m", "m", "1m1h", "-1s", True, None, "5min"])
def test_other_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_runs_config_defaults_and_values() -> None:
    assert from_mapping({}, "c.yml").runs == LifecycleConfig(300, 3600, 604800)
    cfg = from_mapping({"runs": {"deleted_grace": "90s", "finished_ttl": 0, "stale_ttl": "1h30m"}}, "c.yml")
    assert cfg.runs == LifecycleConfig(90, 0, 5400)
    assert cfg.runs.sweep_interval() == 5.0
    assert LifecycleConfig(2, 0, 4).sweep_interval() == 0.5


@pytest.mark.parametrize(("runs", "message"), [
    ({"stale_ttl": "7 days"}, "c.yml: runs.stale_ttl: expected a duration such as 90s"),
    ({"deleted_grace": 300}, "c.yml: runs.deleted_grace: expected a duration"),
    ({"finished": "1h"}, "c.yml: runs: unknown key(s) ['finished']"),
])
def test_bad_runs_config_names_the_key(runs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        from_mapping({"runs": runs}, "c.yml")
