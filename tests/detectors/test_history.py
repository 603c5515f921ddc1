"""History (the shared trailing blocks) and Streaks (a detector's consecutive displays per layer)."""

from __future__ import annotations

import json

from exporter.detectors.history import History, Streaks, finite
from exporter.tail import Chunk

from . import block, make


def test_streaks_count_consecutive_displays_and_start_over() -> None:
    s = Streaks()
    assert s.update({"a": 0.0, "b": 0.0}, 10, 2) == []
    assert s.update({"a": 0.0}, 20, 2) == ["a"]  # b did not hold: it starts over
    assert s.onset(["a"]) == 10 and s.onset(["b"]) is None
    assert s.update({"a": 0.0, "b": 0.0}, 30, 2) == ["a"]
    back = Streaks()
    back.load(json.loads(json.dumps(s.to_dict())))
    assert (back.counts, back.start) == ({"a": 3, "b": 1}, {"a": 10, "b": 30})


def test_the_window_keeps_the_newest_debug_blocks_and_the_previous_display_line() -> None:
    run, a = make()
    for i in range(7):
        run.feed(Chunk("t.log", "\n".join(block(i * 10, loss=1.0, l2=float(i + 1))) + "\n", 100 + 12 * i, False, 0.0))
    h = a.history
    assert [e.iteration for e in h.window] == [20, 30, 40, 50, 60] and len(h.snapshots) == 5
    assert h.window[-1].l2 == 7.0 and h.window[-1].largest == 0.02
    assert (h.prev_line, h.prev_display) == (100 + 12 * 6 + 11, 60)


def test_a_restored_shorter_window_keeps_the_newest_entries() -> None:
    h = History(3)
    h.load({"prev_line": 5, "prev_display": 4, "window": [[i, 1.0, 2.0, 3.0] for i in range(5)],
            "snapshots": {"keys": ["ip1, param blob 0"], "rows": [[0.5] for _ in range(5)]}})
    assert [e.iteration for e in h.window] == [2, 3, 4] and h.snapshots[0] == {"ip1, param blob 0": 0.5}


def test_finite_drops_nan_and_inf_only() -> None:
    assert finite(["1", 2.0, "nan", "-inf", "0"]) == [1.0, 2.0, 0.0]
    assert finite([]) == []


def test_trailing_backward_values_are_saved_with_each_key_once_and_restore_exactly() -> None:
    """The checkpoint's largest part was five copies of every layer key; the dicts come back in the same order."""
    h = History(5)
    rows: list[dict[str, str | float]] = [
        {"ip2, bottom blob ip1": 0.25, "ip1, param blob 0": 1e-08},
        {"ip2, bottom blob ip1": float("nan"), "ip1, param blob 0": float("inf"), "conv1, param blob 0": 3.0},
        {"conv1, param blob 0": 2.0, "ip2, bottom blob ip1": 0.5},  # another order: kept as its own pairs
    ]
    h.snapshots.extend(rows)
    saved = json.loads(json.dumps(h.to_dict()))
    assert saved["snapshots"]["keys"] == ["ip2, bottom blob ip1", "ip1, param blob 0", "conv1, param blob 0"]
    assert saved["snapshots"]["rows"][0] == [0.25, 1e-08, None]
    back = History(5)
    back.load(saved)
    assert [list(s.items()) for s in back.snapshots][2] == list(rows[2].items())
    assert json.dumps([list(s.items()) for s in back.snapshots]) == json.dumps([list(s.items()) for s in rows])
