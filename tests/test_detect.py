"""Unit tests per detector: small hand-made sequences of real Caffe line shapes at each threshold's edge."""

from __future__ import annotations

import json

import pytest

from exporter.detectors import (
    Analysis,
    DetectorConfig,
    ExplodingConfig,
    LossSpikeConfig,
    analysis_of,
    make_observers,
)
from exporter.state import RunRegistry, RunState
from exporter.tail import Chunk

NET = "I1126 14:26:20.074826 18205 net.cpp:593]     "
BWD = "I1126 14:26:22.073792 18205 net.cpp:621]     "
SOLVER = "I1126 14:26:22.113291 18205 solver.cpp:239] "


def fwd(layer: str, blob: str, v: object) -> str:
    return f"{NET}[Forward] Layer {layer}, top blob {blob} data: {v}"


def pdiff(layer: str, i: int, v: object) -> str:
    return f"{BWD}[Backward] Layer {layer}, param blob {i} diff: {v}"


def bdiff(layer: str, blob: str, v: object) -> str:
    return f"{BWD}[Backward] Layer {layer}, bottom blob {blob} diff: {v}"


def norms(l2: object, l1: object = 1.0) -> str:
    return (
        "E1126 14:26:22.113255 18205 net.cpp:721]     [Backward] All net params (data, diff): "
        f"L1 norm = (13506.9, {l1}); L2 norm = (24.0999, {l2})"
    )


def display(it: int, loss: object) -> str:
    return f"{SOLVER}Iteration {it} (11.4943 iter/s, 0.174s/2 iters), loss = {loss}"


def output(name: str, v: object) -> str:
    return f"I1126 14:29:21.582772 21301 solver.cpp:258]     Train net output #0: {name} = {v} (* 1 = {v} loss)"


DUMP = [
    "I1126 14:26:19.000000 18205 net.cpp:53] Initializing net from parameters: ",
    'name: "T"',
    "layer {",
    '  name: "ip1"',
    '  type: "InnerProduct"',
    "}",
    "layer {",
    '  name: "relu1"',
    '  type: "ReLU"',
    "}",
    "layer {",
    '  name: "ip2"',
    '  type: "InnerProduct"',
    "}",
    "layer {",
    '  name: "acc"',
    '  type: "Accuracy"',
    "}",
    "I1126 14:26:19.100000 18205 net.cpp:100] Creating Layer ip1",
]


def make(config: DetectorConfig | None = None) -> tuple[RunState, Analysis]:
    reg = RunRegistry(lambda p: ("t", {}), make_observers(config))
    reg.feed(Chunk("t.log", "\n".join(DUMP) + "\n", 1, True, 0.0))
    run = reg.runs["t"]
    a = analysis_of(run)
    assert a is not None
    return run, a


def feed(run: RunState, lines: list[str]) -> None:
    run.feed(Chunk("t.log", "\n".join(lines) + "\n", 100, False, 0.0))


def block(
    it: int,
    loss: object = 1.0,
    w1: object = 0.01,
    w2: object = 0.02,
    relu: object = 0.5,
    l2: object = 1.0,
    acc: object = 0.5,
    extra: list[str] | None = None,
) -> list[str]:
    """One display block of a 2-layer MLP: ip1 -> relu1 -> ip2 (+ a train Accuracy layer)."""
    return [
        fwd("ip1", "ip1", 0.3),
        fwd("relu1", "ip1", relu),
        fwd("ip2", "ip2", 0.2),
        fwd("acc", "acc", acc),
        bdiff("ip2", "ip1", 0.001),
        pdiff("ip2", 0, w2),
        pdiff("ip2", 1, w2),
        bdiff("relu1", "ip1", 0.001),
        pdiff("ip1", 0, w1),
        pdiff("ip1", 1, w1),
        *(extra or []),
        norms(l2),
        display(it, loss),
    ]


def run_blocks(blocks: list[list[str]], config: DetectorConfig | None = None) -> Analysis:
    run, a = make(config)
    for b in blocks:
        feed(run, b)
    return a


def types(a: Analysis) -> list[str]:
    return [f.type for f in a.findings]


def test_healthy_sequence_is_silent() -> None:
    a = run_blocks([block(i * 10, loss=2.0 / (i + 1)) for i in range(10)])
    assert a.findings == []
    assert all(n == 0 for n in a.counts.values())


# --- nonfinite -----------------------------------------------------------------------------------


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


# --- nan_loss / loss_saturated -------------------------------------------------------------------


def test_nan_loss_edges() -> None:
    a = run_blocks([block(0, loss=3.4e38), block(2, loss="inf"), block(4, loss="-nan")])
    (f,) = [f for f in a.findings if f.type == "nan_loss"]
    assert (f.iteration, f.last_iteration, a.counts["nan_loss"]) == (2, 4, 2)


def test_loss_saturated_display_loss_and_train_output() -> None:
    a = run_blocks([block(0, loss=87.3), block(20, loss=87.3365)])
    assert [(f.type, f.iteration) for f in a.findings] == [("loss_saturated", 20)]
    # the train output printed after display 20 is seen at display 40: onset is 20
    b = run_blocks([block(0, loss=7.3), [*block(20, loss=33.6), output("loss", 87.3365)], block(40, loss=37.2)])
    assert [(f.type, f.iteration) for f in b.findings] == [("loss_saturated", 20)]
    c = run_blocks([block(0, loss=7.3), [*block(20, loss=33.6), output("loss", 87.33)], block(40, loss=7.2)])
    assert c.findings == []


# --- exploding -------------------------------------------------------------------------------------


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


def test_loss_spike_suppressed_while_exploding() -> None:
    a = run_blocks([block(0, loss=1.0, l2=1.0), block(5, loss=40.0, l2=12.0)])
    assert types(a) == ["exploding"]


# --- vanishing / zero gradient -----------------------------------------------------------------


def test_vanishing_ratio_and_persistence_edges() -> None:
    # ip1's largest param diff is exactly 1e-8 x ip2's: not below the ratio
    assert run_blocks([block(i, w1=1e-10, w2=0.01) for i in range(5)]).findings == []
    # below the ratio for 2 displays only: not yet
    assert run_blocks([block(i, w1=9.9e-11, w2=0.01) for i in range(2)]).findings == []
    a = run_blocks([block(i, w1=9.9e-11, w2=0.01) for i in range(3)])
    (f,) = a.findings
    assert (f.type, f.iteration, f.layers) == ("vanishing", 0, ["ip1"])
    assert a.active["vanishing", "ip1"] is True and a.counts["vanishing"] == 1


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


# --- dead ---------------------------------------------------------------------------------------------


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


# --- loss spike / stall ------------------------------------------------------------------------


def test_loss_spike_factor_edge() -> None:
    assert run_blocks([block(0, loss=1.0), block(1, loss=10.0)]).findings == []
    a = run_blocks([block(0, loss=1.0), block(1, loss=10.01), block(2, loss=1.0)])
    (f,) = a.findings
    assert (f.type, f.iteration, f.last_iteration, f.values["kind"]) == ("loss_spike", 1, 1, "spike")
    assert a.active["loss_spike", ""] is False


def test_loss_spike_floor() -> None:
    # the running minimum 0.001 is below the floor 0.01: a spike needs > 0.1
    assert run_blocks([block(0, loss=0.001), block(1, loss=0.1)]).findings == []
    assert types(run_blocks([block(0, loss=0.001), block(1, loss=0.11)])) == ["loss_spike"]


def test_loss_stall_window() -> None:
    cfg = DetectorConfig(loss_spike=LossSpikeConfig(stall_iterations=100))
    flat = [block(i * 10, loss=2.3 - 0.001 * (i % 2)) for i in range(11)]  # < 1% better: no improvement
    a = run_blocks(flat[:10], cfg)
    assert a.findings == []
    a = run_blocks(flat, cfg)
    (f,) = a.findings
    assert (f.type, f.iteration, f.values["kind"]) == ("loss_spike", 100, "stall")


def test_restart_resets_trailing_state() -> None:
    # a second solver run from iteration 0 in the same log: its loss is compared with its own minimum
    a = run_blocks([block(0, loss=0.5), block(10, loss=0.05), block(0, loss=2.3)])
    assert a.findings == []


# --- configuration ------------------------------------------------------------------------------


def test_config_defaults_and_mapping() -> None:
    assert DetectorConfig.from_mapping({}, "c.yaml") == DetectorConfig()
    cfg = DetectorConfig.from_mapping(
        {"exploding": {"factor": 20, "window": 8}, "dead": {"enabled": False}, "max_findings_per_type": 3},
        "c.yaml",
    )
    assert cfg.exploding.factor == 20.0 and cfg.exploding.window == 8 and cfg.dead.enabled is False
    assert cfg.max_findings_per_type == 3 and cfg.vanishing.ratio == 1e-8


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"exploding": {"factor": "x"}}, "config.yaml: detectors.exploding.factor: expected a number > 1, got 'x'"),
        ({"exploding": {"factor": 1}}, "detectors.exploding.factor: expected a number > 1, got 1 (int)"),
        ({"vanishing": {"ratio": 2}}, "detectors.vanishing.ratio: expected a number between 0 and 1"),
        ({"dead": {"iterations": 0}}, "detectors.dead.iterations: expected an integer >= 1, got 0"),
        ({"dead": {"iterations": 2.5}}, "detectors.dead.iterations: expected an integer >= 1, got 2.5"),
        ({"dead": {"enabled": "yes"}}, "detectors.dead.enabled: expected true or false, got 'yes'"),
        ({"dead": {"iterations": True}}, "detectors.dead.iterations: expected an integer >= 1, got True"),
        ({"dead": {"treshold": 1}}, "detectors.dead.treshold: unknown key"),
        ({"exploding_grads": {}}, "detectors.exploding_grads: unknown detector"),
        ({"dead": 3}, "detectors.dead: expected a mapping, got 3 (int)"),
        ({"exploding": {"max_abs_diff": float("nan")}}, "detectors.exploding.max_abs_diff: expected a number > 0"),
    ],
)
def test_config_errors_name_key_and_expectation(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as e:
        DetectorConfig.from_mapping(data, "config.yaml")
    assert message in str(e.value)


# --- state ---------------------------------------------------------------------------------------


def test_round_trip_mid_run_gives_the_same_result() -> None:
    blocks = [block(0, loss=1.0, l2=1.0), block(5, loss=1.5, l2=4.0, relu=0), block(10, relu=0, w1="nan")]
    blocks += [block(15, relu=0, loss=2.0, l2=60.0), block(20, relu=0, w1=0), block(25, loss=87.3365)]
    whole = run_blocks(blocks)
    run, a = make()
    for b in blocks[:3]:
        feed(run, b)
    saved = json.loads(json.dumps(a.to_dict()))
    restored = Analysis.from_dict(saved)
    def same(x: Analysis, y: Analysis) -> bool:  # NaN-aware: NaN == NaN in their JSON text
        return json.dumps(x.to_dict(), sort_keys=True) == json.dumps(y.to_dict(), sort_keys=True)

    assert same(restored, a)
    run.observers = [restored]
    for b in blocks[3:]:
        feed(run, b)
    assert same(restored, whole)
    assert {f.type for f in whole.findings} >= {"nonfinite", "dead", "exploding", "loss_saturated"}


def test_findings_per_type_are_capped() -> None:
    cfg = DetectorConfig(max_findings_per_type=2)
    blocks = [block(i, loss=1.0 if i % 2 else 20.0) for i in range(1, 12)]
    a = run_blocks([block(0, loss=1.0), *blocks], cfg)
    assert types(a) == ["loss_spike", "loss_spike"]
    assert a.suppressed["loss_spike"] == 3 and a.counts["loss_spike"] == 5
