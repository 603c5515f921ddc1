"""exploding: a diff beyond bounds, or the gradient norm growing while the loss does not improve."""

from __future__ import annotations

import pytest

from exporter.detectors import DetectorConfig, ExplodingConfig

from . import block, replay_run, run_blocks


def test_exploding_absolute_threshold_edge() -> None:
    assert run_blocks([block(0, w2=10000)]).findings == []
    a = run_blocks([block(0, w2=10000.1)])
    (f,) = a.findings
    assert (f.type, f.iteration, f.layers) == ("exploding", 0, ["ip2"])


def test_exploding_growth_factor_edge_with_loss_gate() -> None:
    below = run_blocks([block(0, loss=1.0, l2=1.0), block(5, loss=1.5, l2=9.99)])
    assert below.findings == []
    at = run_blocks([block(0, loss=1.0, l2=1.0), block(5, loss=1.5, l2=10.0, w2=0.5)])
    (f,) = at.findings
    assert (f.type, f.iteration, f.layers) == ("exploding", 5, ["ip2"])
    assert f.values["grew_most"] == "ip2, param blob 0" and f.values["growth"] == pytest.approx(25)
    # the same growth while the loss improves is a net leaving its initial plateau, not an explosion
    improving = run_blocks([block(0, loss=1.0, l2=1.0), block(5, loss=0.9, l2=50.0)])
    assert improving.findings == []


def test_exploding_window_is_bounded() -> None:
    cfg = DetectorConfig(exploding=ExplodingConfig(window=2))
    # the low point (1.0) leaves the 2-block window before the norm reaches 10x it
    blocks = [block(0, l2=1.0), block(1, l2=3.0), block(2, l2=6.0), block(3, l2=10.0)]
    assert run_blocks(blocks, cfg).findings == []
    assert [f.iteration for f in run_blocks(blocks).findings] == [3]


def test_an_overflowed_norm_holds_at_once() -> None:
    (f,) = run_blocks([block(0, l2="inf")]).findings
    assert f.type == "exploding" and f.values["l2_diff_norm"] == "inf"
    assert "All net params L2 diff norm overflowed to inf" in f.message


def test_explode_log_from_iteration_10_in_fc1() -> None:
    """real-caffe/explode: L2 diff norm 7.09 -> 88.9 while the loss goes 0.99 -> 40 at iteration 10."""
    a = replay_run("explode")
    (f,) = a.findings
    assert (f.type, f.iteration, f.last_iteration, f.display_iterations, f.layers) == ("exploding", 10, 145, 28,
                                                                                     ["fc1"])
    assert f.evidence_lines == [245, 257]
    assert f.values["grew_most"] == "fc1, param blob 1" and f.values["from_iteration"] == 0
    assert (f.values["from"], f.values["to"], f.values["l2_diff_norm"]) == (0.109085, 2.21727, 88.8635)


def test_lenet_nan_explodes_at_2_in_ip2_absolute() -> None:
    a = replay_run("lenet_nan")
    (f,) = [f for f in a.findings if f.type == "exploding"]
    assert (f.iteration, f.last_iteration, f.layers, f.open) == (2, 2, ["ip2"], False)
    assert f.values["l2_diff_norm"] == "inf" and f.values["largest"][0]["key"] == "ip2, param blob 0"
    assert "grew_most" not in f.values
