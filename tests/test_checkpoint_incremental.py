"""Checkpoints saved one run at a time (checkpoint.Snapshotter): the same file as a whole snapshot, each run's
record with the offsets of its own files, and a run that did not change is not encoded again."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from exporter import checkpoint
from exporter.detectors import DetectorConfig, make_observers
from exporter.identity import RunNamer
from exporter.state import RunRegistry
from exporter.tail import Chunk, FilePosition

FIXTURES = Path(__file__).parent / "fixtures" / "real-caffe"
LOGS = {"jobs/nan/caffe.log": FIXTURES / "lenet_nan" / "caffe.log",
        "jobs/healthy/caffe.log": FIXTURES / "lenet_healthy" / "caffe.log",
        "jobs/vanish/caffe.log": FIXTURES / "vanish" / "caffe.log"}


class _Fleet:
    """A registry fed the first `lines` lines of each fixture, with the offsets a pipeline would commit."""

    def __init__(self, lines: int = 400) -> None:
        self.registry = RunRegistry(identify=RunNamer(), make_observers=make_observers(DetectorConfig()),
                                    clock=lambda: 0.0)
        self.applied: dict[str, FilePosition] = {}
        self.lock = threading.Lock()
        self.text = {p: f.read_text().splitlines(keepends=True) for p, f in LOGS.items()}
        self.unowned = FilePosition("jobs/notes.txt", 1, 9, 20, 2, "cd" * 20)  # a file no run owns
        self.applied[self.unowned.path] = self.unowned
        for path in LOGS:
            self.feed(path, 0, lines)

    def feed(self, path: str, start: int, end: int) -> None:
        lines = self.text[path][start:end]
        self.registry.feed(Chunk(path, "".join(lines), start + 1, start == 0, 0.0))
        offset = sum(len(x.encode()) for x in self.text[path][:end])
        self.applied[path] = FilePosition(path, 1, 2, offset, end, "ab" * 20)

    def snapshotter(self, clock: Any = None) -> checkpoint.Snapshotter:
        return checkpoint.Snapshotter(self.lock, self.registry, self.applied, lambda: {"lines_parsed": 7.0},
                                      **({} if clock is None else {"clock": clock}))

    def whole(self) -> Any:
        return json.loads(json.dumps(checkpoint.snapshot(self.registry, self.applied, {"lines_parsed": 7.0})))


def test_the_file_built_run_by_run_equals_a_whole_snapshot() -> None:
    fleet = _Fleet()
    data = json.loads(fleet.snapshotter()())
    assert data == fleet.whole()
    assert data["version"] == checkpoint.VERSION == 2
    assert data["positions"] == {"jobs/notes.txt": fleet.unowned.to_dict()}
    assert [sorted(r["positions"]) for r in data["runs"]] == [[p] for p in LOGS]


def test_each_run_is_taken_in_a_lock_hold_of_its_own() -> None:
    fleet = _Fleet()
    held: list[bool] = []

    def clock() -> float:  # called at the start and the end of each hold
        held.append(fleet.lock.locked())
        return 0.0

    fleet.snapshotter(clock)()
    assert len(held) == 2 * (1 + len(LOGS) + 1)  # the prune, one per run, the unowned offsets and counters
    assert all(held)
    assert not fleet.lock.locked()


def test_a_run_that_did_not_change_is_not_encoded_again() -> None:
    fleet = _Fleet()
    snap = fleet.snapshotter()
    snap()
    assert snap.encoded == 3
    first = snap()
    assert snap.encoded == 0
    fleet.feed("jobs/healthy/caffe.log", 400, 900)
    second = snap()
    assert snap.encoded == 1
    assert json.loads(second) == fleet.whole() != json.loads(first)


def test_a_moved_offset_or_a_reload_encodes_again() -> None:
    fleet = _Fleet()
    snap = fleet.snapshotter()
    snap()
    old = fleet.applied["jobs/nan/caffe.log"]
    fleet.applied[old.path] = FilePosition(old.path, 1, 2, old.offset + 10, old.line + 1, old.head)  # a skipped line
    snap()
    assert snap.encoded == 1
    fleet.registry.set_limits(fleet.registry.limits)
    snap()
    assert snap.encoded == 3


def test_a_run_dropped_during_the_save_is_left_out_and_one_created_is_saved() -> None:
    fleet = _Fleet()
    calls = [0]

    def clock() -> float:
        calls[0] += 1
        if calls[0] == 4:  # the end of the first run's hold: the lock is ours, act as the lifecycle would
            fleet.registry.drop("nan", "deleted")
            fleet.text["jobs/lenet/caffe.log"] = fleet.text["jobs/nan/caffe.log"]
            fleet.feed("jobs/lenet/caffe.log", 0, 300)
        return 0.0

    data = json.loads(fleet.snapshotter(clock)())
    assert data == fleet.whole()
    assert [r["state"]["run"] for r in data["runs"]] == ["healthy", "vanish", "lenet"]
    assert "jobs/nan/caffe.log" in data["positions"]  # a dropped run's file: its offset is kept on its own


def _saved(fleet: _Fleet) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fleet.snapshotter()())
    return data


def test_restore_gives_each_run_its_offsets_back() -> None:
    fleet = _Fleet()
    restored = RunRegistry(identify=RunNamer(), make_observers=make_observers(DetectorConfig()))
    back = checkpoint.restore(_saved(fleet), restored, DetectorConfig())
    assert back.positions == fleet.applied
    assert sorted(restored.runs) == ["healthy", "nan", "vanish"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: d["positions"].update(d["runs"][0]["positions"]), "saved twice"),
    (lambda d: d["runs"][0]["positions"].update(d["runs"][1]["positions"]), "not its own"),
    (lambda d: d["runs"][1].pop("positions"), "positions"),
])
def test_a_file_whose_offsets_do_not_belong_is_refused_whole(damage: Any, message: str) -> None:
    fleet = _Fleet()
    data = _saved(fleet)
    damage(data)
    restored = RunRegistry(identify=RunNamer(), make_observers=make_observers(DetectorConfig()))
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.restore(data, restored, DetectorConfig())
    assert restored.runs == {}


def test_a_version_1_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text('{"version": 1, "positions": {}, "runs": [], "counters": {}}')
    with pytest.raises(checkpoint.CheckpointError, match="not a caffe-exporter checkpoint of version 2"):
        checkpoint.read(str(path))
