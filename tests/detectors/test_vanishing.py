"""vanishing: a layer's param diffs far below the net's largest, for N debug displays."""

from __future__ import annotations

from exporter.detectors import DetectorConfig, VanishingConfig

from . import block, replay_run, run_blocks


def test_vanishing_ratio_and_persistence_edges() -> None:
    # ip1's largest param diff is exactly 1e-8 x ip2's: not below the ratio
    assert run_blocks([block(i, w1=1e-10, w2=0.01) for i in range(5)]).findings == []
    # below the ratio for 2 displays only: not yet
    assert run_blocks([block(i, w1=9.9e-11, w2=0.01) for i in range(2)]).findings == []
    a = run_blocks([block(i, w1=9.9e-11, w2=0.01) for i in range(3)])
    (f,) = a.findings
    assert (f.type, f.iteration, f.layers) == ("vanishing", 0, ["ip1"])
    assert a.active["vanishing", "ip1"] is True and a.counts["vanishing"] == 1


def test_iterations_is_configurable() -> None:
    cfg = DetectorConfig(vanishing=VanishingConfig(iterations=1))
    (f,) = run_blocks([block(7, w1=9.9e-11, w2=0.01)], cfg).findings
    assert (f.type, f.iteration, f.values["ratio_threshold"]) == ("vanishing", 7, 1e-8)


def test_vanish_log_ip1_to_ip6_from_0() -> None:
    """real-caffe/vanish (10 sigmoid layers, gaussian 0.01): ip1..ip6 below 1e-8; ip7 stays at 1e-7."""
    a = replay_run("vanish")
    (f,) = a.findings
    assert (f.type, f.iteration, f.last_iteration, f.display_iterations) == ("vanishing", 0, 290, 28)
    assert f.layers == ["ip6", "ip5", "ip4", "ip3", "ip2", "ip1"] and f.evidence_lines == [1809, 1901]
    assert all(r < 1e-8 for r in f.values["ratios"].values())
    assert sorted(layer for (t, layer), on in a.active.items() if t == "vanishing" and on) == sorted(f.layers)
