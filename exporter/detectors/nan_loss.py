"""`nan_loss`: the display loss or a newest train/test output is NaN/inf.

Train outputs are printed after their display line, so they are seen at the next one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from exporter.detectors.base import Detector, Hit, Scope, View
from exporter.detectors.schema import Settings
from exporter.state import Block


@dataclass(frozen=True)
class NanLossConfig(Settings):
    pass


class NanLoss(Detector):
    name: ClassVar[str] = "nan_loss"
    Config: ClassVar[type[Settings]] = NanLossConfig
    ADVICE: ClassVar[str] = (
        "The loss is NaN/inf: the weights or activations diverged. Lower base_lr, set clip_gradients, check "
        "input normalisation and labels (out of range labels in SoftmaxWithLoss), resume from the last good "
        "snapshot."
    )
    scope: ClassVar[Scope] = Scope.DISPLAY
    config: NanLossConfig

    def __init__(self, config: NanLossConfig) -> None:
        self.config = config

    def observe(self, block: Block, view: View) -> Hit | None:
        run = block.run
        bad: dict[str, Any] = {}
        if not math.isfinite(block.loss):
            bad["loss"] = repr(block.loss)
        tr, te = run.train_outputs, run.test_outputs
        if tr and not math.isfinite(sum(tr.values())):
            bad.update({f"train_output:{k}": repr(v) for k, v in tr.items() if not math.isfinite(v)})
        if te and not math.isfinite(sum(te.values())):
            bad.update({f"test_output:{n}:{k}": repr(v) for (n, k), v in te.items() if not math.isfinite(v)})
        if not bad:
            return None
        return Hit([""], f"non-finite loss at iteration {block.iteration}: {bad}", bad, [block.line])
