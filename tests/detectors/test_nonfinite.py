"""nonfinite: a display block with a NaN/inf per-layer value, and both of its origins."""

from __future__ import annotations

import pytest

from exporter.detectors import DetectorConfig, NonfiniteConfig

from . import bdiff, block, display, feed, fwd, make, norms, replay_run, run_blocks, types


def test_nonfinite_first_per_layer_line_and_origin_any_kind() -> None:
    blocks = [
        block(0, loss=2.3),
        block(2, loss=5.0, l2="inf"),  # only the net-wide norm overflows: no per-layer non-finite yet
        [
            fwd("ip1", "ip1", "nan"),
            fwd("relu1", "ip1", "-nan"),
            bdiff("ip2", "ip1", "nan"),
            norms("nan"),
            display(4, "-nan"),
        ],
    ]
    run, a = make()
    for b in blocks[:2]:
        feed(run, b)
    assert "nonfinite" not in types(a)
    feed(run, blocks[2])
    (f,) = [f for f in a.findings if f.type == "nonfinite"]
    assert f.iteration == 4 and f.layers == ["ip1"]
    assert f.values["first_layer"]["stage"] == "forward" and f.values["first_layer"]["kind"] == "data"
    assert f.values["first_observed"]["iteration"] == 2 and f.values["first_observed"]["blob"] == "l2_diff"
    assert [o["layer"] for o in f.values["order"]] == ["ip1", "relu1", "ip2"]
    assert f.values["largest_before"][0]["value"] == pytest.approx(0.02)
    assert a.active["nonfinite", ""] is True
    assert "first observed" in f.message


def test_nonfinite_held_then_cleared() -> None:
    a = run_blocks([block(0), block(2, w1="nan"), block(4)])
    (f,) = [f for f in a.findings if f.type == "nonfinite"]
    assert (f.iteration, f.last_iteration, f.open) == (2, 2, False)
    assert a.active["nonfinite", ""] is False and a.counts["nonfinite"] == 1


def test_disabled_nonfinite_is_never_evaluated() -> None:
    a = run_blocks([block(0), block(2, w1="nan")], DetectorConfig(nonfinite=NonfiniteConfig(enabled=False)))
    assert "nonfinite" not in types(a) and a.counts["nonfinite"] == 0
    assert ("nonfinite", "") not in a.active


def test_lenet_nan_origin_order_and_the_explosion_before() -> None:
    """real-caffe/lenet_nan: the L2 diff norm overflows at 2, conv1's forward data turns NaN at 4 (line 826)."""
    a = replay_run("lenet_nan")
    (f,) = [f for f in a.findings if f.type == "nonfinite"]
    assert (f.iteration, f.last_iteration, f.display_iterations, f.layers, f.open) == (4, 58, 28, ["conv1"], True)
    assert f.evidence_lines[:2] == [826, 827]
    assert f.values["first_observed"]["line"] == 820 and f.values["first_observed"]["stage"] == "net"
    assert f.values["first_layer"]["line"] == 826 and f.values["first_layer"]["value"] == "nan"
    assert a.nonfinite_order[:2] == [
        {"stage": "forward", "layer": "conv1", "blob": "conv1", "kind": "data", "value": "nan", "line": 826},
        {"stage": "forward", "layer": "pool1", "blob": "pool1", "kind": "data", "value": "inf", "line": 829},
    ]
    assert a.largest_before[0] == {"iteration": 2, "key": "ip2, param blob 0", "layer": "ip2", "value": 1.03241e22}
    assert f.values["order"] == a.nonfinite_order and f.values["largest_before"] == a.largest_before
