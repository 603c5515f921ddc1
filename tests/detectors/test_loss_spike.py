"""loss_spike: the loss far above its running minimum, or no improvement for N iterations (a stall)."""

from __future__ import annotations

from exporter.detectors import DetectorConfig, LossSpikeConfig

from . import block, replay_run, run_blocks, types


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


def test_stall_on_the_healthy_lenet_log_with_a_short_window() -> None:
    """real-caffe/lenet_healthy plateaus twice for 50 iterations (best 0.0744324 at 90, 0.035743 at 170)."""
    a = replay_run("lenet_healthy", DetectorConfig(loss_spike=LossSpikeConfig(stall_iterations=50)))
    assert [(f.iteration, f.last_iteration, f.values["best_iteration"]) for f in a.findings] == [
        (140, 150, 90), (220, 230, 170)]
    assert a.findings[0].message == "loss has not improved by 1% for 50 iterations (best 0.0744324 at iteration 90)"
    assert replay_run("lenet_healthy").findings == []  # 10000 by default


def test_explode_log_spike_is_reported_only_without_exploding() -> None:
    """real-caffe/explode: loss 0.99 -> 40.1 at iteration 10; the exploding finding explains it."""
    assert "loss_spike" not in types(replay_run("explode"))
    a = replay_run("explode", DetectorConfig.from_mapping({"exploding": {"enabled": False}}))
    (f,) = a.findings
    assert (f.type, f.iteration, f.last_iteration, f.display_iterations) == ("loss_spike", 10, 150, 29)
    assert f.values == {"kind": "spike", "loss": 40.1481, "running_min": 0.990465, "running_min_iteration": 0}
    assert f.evidence_lines == [257]
