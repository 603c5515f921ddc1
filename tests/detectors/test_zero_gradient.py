"""zero_gradient: every param diff of a layer exactly 0 for N debug displays."""

from __future__ import annotations

from . import block, pdiff, replay_run, run_blocks


def test_exact_zero_is_zero_gradient_not_vanishing() -> None:
    a = run_blocks([block(i, w1=0) for i in range(3)])
    assert [(f.type, f.layers) for f in a.findings] == [("zero_gradient", ["ip1"])]
    assert run_blocks([block(i, w1=0) for i in range(2)]).findings == []
    # one param blob of the layer still learns: not a zero-gradient layer
    partial = [[*block(i)[:8], pdiff("ip1", 0, 0), pdiff("ip1", 1, 0.01), *block(i)[10:]] for i in range(4)]
    assert run_blocks(partial).findings == []


def test_zero_gradient_streak_resets() -> None:
    a = run_blocks([block(0, w1=0), block(1, w1=0), block(2), block(3, w1=0), block(4, w1=0)])
    assert a.findings == []


def test_dead_relu_log_ip2_and_ip1() -> None:
    """real-caffe/dead_relu: below the dead relu2 no gradient flows into ip2 and ip1."""
    a = replay_run("dead_relu")
    (f,) = [f for f in a.findings if f.type == "zero_gradient"]
    assert (f.iteration, f.last_iteration, f.display_iterations, f.layers) == (0, 190, 18, ["ip2", "ip1"])
    assert f.values == {"layers": ["ip2", "ip1"]} and f.evidence_lines == [560, 588]
