"""`loss_saturated`: the loss is stuck at -log(FLT_MIN) = 87.3365.

SoftmaxWithLoss clamps the true-class probability at FLT_MIN, so a fully diverged classifier prints exactly
this loss instead of inf. The onset is the iteration the value belongs to: a train output printed after
the previous display line belongs to that one, a test output to its test iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from exporter.detectors.base import Detector, Hit, Scope, View
from exporter.detectors.schema import Settings, setting
from exporter.state import Block

SATURATED_LOSS = 87.3365  # -log(FLT_MIN): SoftmaxWithLoss clamps the probability at FLT_MIN


@dataclass(frozen=True)
class LossSaturatedConfig(Settings):
    value: float = setting(SATURATED_LOSS, lambda v: v > 0, "a number > 0")  # the saturation value
    tolerance: float = setting(5e-4, lambda v: v >= 0, "a number >= 0")  # absolute; Caffe prints 6 digits


class LossSaturated(Detector):
    name: ClassVar[str] = "loss_saturated"
    Config: ClassVar[type[Settings]] = LossSaturatedConfig
    ADVICE: ClassVar[str] = (
        "Loss 87.3365 = -log(FLT_MIN): SoftmaxWithLoss assigns probability ~0 to the true class (diverged "
        "logits). Lower base_lr, check input scale and labels, consider clip_gradients or BatchNorm."
    )
    scope: ClassVar[Scope] = Scope.DISPLAY
    config: LossSaturatedConfig

    def __init__(self, config: LossSaturatedConfig) -> None:
        self.config = config

    def observe(self, block: Block, view: View) -> Hit | None:
        run = block.run
        target, tol = self.config.value, self.config.tolerance
        found: dict[str, float] = {}
        onset: int | None = None
        if abs(block.loss - target) <= tol:
            found["loss"] = block.loss
            onset = block.iteration
        for k, v in run.train_outputs.items():  # printed after the previous display line
            if abs(v - target) <= tol:
                found[f"train_output:{k}"] = v
                if onset is None:
                    prev = view.history.prev_display
                    onset = prev if prev is not None else block.iteration
        for (n, k), v in run.test_outputs.items():
            if abs(v - target) <= tol:
                found[f"test_output:{n}:{k}"] = v
                if onset is None:
                    onset = run.test_iteration.get(n, block.iteration)
        if not found:
            return None
        return Hit([""], f"loss saturated at {target} (-log(FLT_MIN)): {found}", dict(found), [block.line], onset)
