"""Tracker: the gauge, the counts and the episodes, the same for every detector."""

from __future__ import annotations

from exporter.detectors.base import Hit
from exporter.detectors.tracker import Tracker


def hit(*layers: str, onset: int | None = None) -> Hit:
    return Hit(layers or [""], "m", {"v": 1}, [7], onset)


def test_an_episode_runs_from_onset_to_the_last_display_that_held() -> None:
    t = Tracker(["dead"], 5)
    t.update("dead", hit("relu1", onset=0), 20, "advice")
    t.update("dead", hit("relu1", "relu2"), 30, "advice")
    t.update("dead", None, 40, "advice")
    (f,) = t.findings
    assert (f.iteration, f.last_iteration, f.display_iterations, f.layers, f.open) == (0, 30, 2, ["relu1", "relu2"],
                                                                                     False)
    assert t.active == {("dead", "relu1"): False, ("dead", "relu2"): False} and t.counts == {"dead": 2}
    assert t.open == {}


def test_a_layer_that_stops_holding_goes_to_zero_while_others_hold() -> None:
    t = Tracker(["dead"], 5)
    t.update("dead", hit("a", "b"), 0, "")
    t.update("dead", hit("b"), 1, "")
    assert t.active == {("dead", "a"): False, ("dead", "b"): True}
    assert t.samples() == [("dead", "a", 0.0), ("dead", "b", 1.0)]


def test_types_never_seen_are_one_zero_series() -> None:
    assert Tracker(["x", "y"], 1).samples() == [("x", "", 0.0), ("y", "", 0.0)]


def test_episodes_beyond_the_cap_are_only_counted() -> None:
    t = Tracker(["s"], 1)
    for it, h in enumerate([hit(), None, hit(), hit(), None, hit()]):
        t.update("s", h, it, "")
    assert len(t.findings) == 1 and t.suppressed == {"s": 2} and t.counts == {"s": 4}
    assert t.open == {"s": -1}
