"""loss_saturated: the loss stuck at -log(FLT_MIN) = 87.3365."""

from __future__ import annotations

from exporter.detectors import DetectorConfig, LossSaturatedConfig

from . import FIXTURES, block, output, replay, run_blocks


def test_loss_saturated_display_loss_and_train_output() -> None:
    a = run_blocks([block(0, loss=87.3), block(20, loss=87.3365)])
    assert [(f.type, f.iteration) for f in a.findings] == [("loss_saturated", 20)]
    # the train output printed after display 20 is seen at display 40: onset is 20
    b = run_blocks([block(0, loss=7.3), [*block(20, loss=33.6), output("loss", 87.3365)], block(40, loss=37.2)])
    assert [(f.type, f.iteration) for f in b.findings] == [("loss_saturated", 20)]
    c = run_blocks([block(0, loss=7.3), [*block(20, loss=33.6), output("loss", 87.33)], block(40, loss=7.2)])
    assert c.findings == []


def test_value_and_tolerance_are_configurable() -> None:
    cfg = DetectorConfig(loss_saturated=LossSaturatedConfig(value=2.3, tolerance=0.01))
    a = run_blocks([block(0, loss=2.5), block(10, loss=2.305)], cfg)
    (f,) = a.findings
    assert (f.type, f.iteration, f.values) == ("loss_saturated", 10, {"loss": 2.305})


def test_rmsprop_diverging_public_log() -> None:
    """public-logs/bvlc-rmsprop-diverging-87.3365.log: the train output of iteration 20 is 87.3365."""
    a = replay(FIXTURES / "public-logs" / "bvlc-rmsprop-diverging-87.3365.log")
    (f,) = a.findings
    assert (f.type, f.iteration, f.last_iteration, f.display_iterations) == ("loss_saturated", 20, 40, 1)
    assert f.values == {"train_output:loss": 87.3365} and f.evidence_lines == [1527] and not f.open
