"""`zero_gradient`: every param diff of a layer is exactly 0, so it does not learn.

Layers frozen with `lr_mult: 0` print no param diff lines (Caffe skips params that do not propagate), so
they are not flagged; neither is a layer with one param blob still learning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from exporter.detectors.base import Hit, Scope, StreakDetector, View
from exporter.detectors.history import Streaks
from exporter.detectors.schema import Settings, setting
from exporter.parse import split_key
from exporter.state import Block


@dataclass(frozen=True)
class ZeroGradientConfig(Settings):
    # all param diffs of a layer exactly 0 for this many consecutive debug displays
    iterations: int = setting(3, lambda v: v >= 1, "an integer >= 1")


def zero_param_layers(backward: Mapping[str, str | float]) -> dict[str, float]:
    """The layers all of whose `param blob` diffs are exactly 0 (-> 0.0), in log order."""
    per: dict[str, bool] = {}
    for key, v in backward.items():
        parts = split_key(key)
        if parts is None or parts[1] != "param":
            continue
        per[parts[0]] = per.get(parts[0], True) and float(v) == 0.0
    return {layer: 0.0 for layer, z in per.items() if z}


class ZeroGradient(StreakDetector):
    name: ClassVar[str] = "zero_gradient"
    Config: ClassVar[type[Settings]] = ZeroGradientConfig
    ADVICE: ClassVar[str] = (
        "These layers get exactly zero gradient, so they do not learn. Usually a dead ReLU above them (see "
        "'dead'), a Dropout/threshold that zeroes everything, or propagate_down: false; check the bias "
        "initialisation (bias_filler) and the input normalisation."
    )
    scope: ClassVar[Scope] = Scope.DEBUG
    config: ZeroGradientConfig

    def __init__(self, config: ZeroGradientConfig) -> None:
        self.config = config
        self.streaks = Streaks()

    def observe(self, block: Block, view: View) -> Hit | None:
        need = self.config.iterations
        zero = zero_param_layers(block.run.backward) if 0.0 in view.backward else {}
        layers, onset = self.persisting(zero, block, view, need)
        if not layers:
            return None
        msg = f"zero gradient: every param diff of {', '.join(layers)} is exactly 0 for {need} display iterations"
        return Hit(layers, msg, {"layers": layers}, view.history.evidence(block), onset)

