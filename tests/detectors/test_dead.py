"""dead: a layer's top data exactly 0 for N debug displays (a dead ReLU named as such)."""

from __future__ import annotations

from . import block, replay_run, run_blocks


def test_dead_relu_after_n_displays() -> None:
    assert run_blocks([block(i, relu=0) for i in range(2)]).findings == []
    a = run_blocks([block(i, relu=0) for i in range(3)])
    (f,) = a.findings
    assert (f.type, f.layers, f.values["dead_relu"]) == ("dead", ["relu1"], ["relu1"])
    assert "dead ReLU" in f.message and "negative_slope" in f.advice
    assert a.active["dead", "relu1"] is True


def test_dead_tiny_but_nonzero_is_alive_and_accuracy_zero_is_not_dead() -> None:
    assert run_blocks([block(i, relu=1e-30) for i in range(5)]).findings == []
    assert run_blocks([block(i, acc=0) for i in range(5)]).findings == []


def test_dead_then_alive_sets_gauge_to_zero() -> None:
    a = run_blocks([block(i, relu=0) for i in range(3)] + [block(3)])
    assert a.active["dead", "relu1"] is False
    assert a.findings[0].open is False and a.findings[0].last_iteration == 2


def test_dead_relu_log_relu2() -> None:
    a = replay_run("dead_relu")
    (f,) = [f for f in a.findings if f.type == "dead"]
    assert (f.iteration, f.last_iteration, f.display_iterations, f.layers, f.open) == (0, 190, 18, ["relu2"], True)
    assert f.values == {"layer_types": {"relu2": "ReLU"}, "dead_relu": ["relu2"]}
    assert a.active["dead", "relu2"] is True
