"""`loss_spike`: the display loss jumped far above its running minimum, or stopped improving (a stall).

`values.kind` is `spike` or `stall`. A spike while an explosion or a NaN holds is their consequence, not a
finding of its own: that is declared as a suppression rule in `exporter/detectors/__init__.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from exporter.detectors.base import Detector, Hit, Scope, View
from exporter.detectors.schema import Settings, setting
from exporter.state import Block


@dataclass(frozen=True)
class LossSpikeConfig(Settings):
    # loss above factor x running minimum
    factor: float = setting(10.0, lambda v: v > 1, "a number > 1")
    # running minimum used is at least this (tiny losses make 10x meaningless)
    floor: float = setting(0.01, lambda v: v >= 0, "a number >= 0")
    # no new minimum for this many solver iterations (0: off)
    stall_iterations: int = setting(10000, lambda v: v >= 0, "an integer >= 0 (0 disables the stall check)")
    # a new minimum must be this much (relative) below the old one
    min_improvement: float = setting(0.01, lambda v: 0 <= v < 1, "a number >= 0 and < 1")


class LossSpike(Detector):
    name: ClassVar[str] = "loss_spike"
    Config: ClassVar[type[Settings]] = LossSpikeConfig
    ADVICE: ClassVar[str] = (
        "The loss jumped far above its running minimum (or stopped improving). Lower base_lr or use a "
        "step/poly lr_policy, check the data for corrupt batches or shuffling problems, consider "
        "clip_gradients; resume from the last good snapshot if it does not recover."
    )
    scope: ClassVar[Scope] = Scope.DISPLAY
    config: LossSpikeConfig

    def __init__(self, config: LossSpikeConfig) -> None:
        self.config = config
        self.restart()

    def restart(self) -> None:
        self.min_loss = math.inf
        self.min_loss_iteration: int | None = None
        self.best_loss = math.inf
        self.best_iteration: int | None = None  # iteration of the last relevant improvement (stall)

    def observe(self, block: Block, view: View) -> Hit | None:
        loss = block.loss
        if not math.isfinite(loss):
            return None
        hit = self._spike(block)
        if loss < self.min_loss:
            self.min_loss, self.min_loss_iteration = loss, block.iteration
        if self.best_iteration is None or loss < self.best_loss * (1 - self.config.min_improvement):
            self.best_loss, self.best_iteration = loss, block.iteration
        elif hit is None:
            hit = self._stall(block, self.best_iteration)
        return hit

    def _spike(self, block: Block) -> Hit | None:
        c, loss = self.config, block.loss
        if not (self.min_loss < math.inf and loss > c.factor * max(self.min_loss, c.floor)):
            return None
        return Hit(
            [""],
            f"loss spike at iteration {block.iteration}: {loss:.6g} > {c.factor:g} x running minimum "
            f"{self.min_loss:.6g} (iteration {self.min_loss_iteration})",
            {"kind": "spike", "loss": loss, "running_min": self.min_loss,
             "running_min_iteration": self.min_loss_iteration},
            [block.line],
        )

    def _stall(self, block: Block, best: int) -> Hit | None:
        c, it = self.config, block.iteration
        if not c.stall_iterations or it - best < c.stall_iterations:
            return None
        return Hit(
            [""],
            f"loss has not improved by {c.min_improvement:.0%} for {it - best} "
            f"iterations (best {self.best_loss:.6g} at iteration {best})",
            {"kind": "stall", "loss": block.loss, "best": self.best_loss, "best_iteration": best},
            [block.line],
        )

    def to_dict(self) -> dict[str, Any]:
        """Floats stay floats, inf included: checkpoint.write has the one encoding for them."""
        return {
            "min_loss": float(self.min_loss),
            "min_loss_iteration": self.min_loss_iteration,
            "best_loss": float(self.best_loss),
            "best_iteration": self.best_iteration,
        }

    def load(self, d: Mapping[str, Any]) -> None:
        self.min_loss, self.min_loss_iteration = float(d["min_loss"]), d["min_loss_iteration"]
        self.best_loss, self.best_iteration = float(d["best_loss"]), d["best_iteration"]
