"""`vanishing`: the lower layers get (almost) no gradient.

Holds for a layer whose largest param diff stays below `ratio` x the net's largest param diff for
`iterations` consecutive debug displays. Exact zeros are `zero_gradient`, not vanishing. The onset is the
first display of the streak.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from exporter.detectors.base import Hit, Scope, StreakDetector, View
from exporter.detectors.history import Streaks
from exporter.detectors.schema import Settings, setting
from exporter.parse import split_key
from exporter.state import Block


@dataclass(frozen=True)
class VanishingConfig(Settings):
    # a layer's largest param diff below ratio x the net's largest param diff ...
    ratio: float = setting(1e-8, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
    # ... for this many consecutive debug display iterations
    iterations: int = setting(3, lambda v: v >= 1, "an integer >= 1")


def largest_param_diffs(backward: Mapping[str, str | float]) -> dict[str, float]:
    """layer -> its largest finite `param blob` diff."""
    per: dict[str, float] = {}
    for key, v in backward.items():
        parts = split_key(key)
        if parts is None or parts[1] != "param":
            continue
        f = float(v)
        if math.isfinite(f) and f > per.get(parts[0], -1.0):
            per[parts[0]] = f
    return per


class Vanishing(StreakDetector):
    name: ClassVar[str] = "vanishing"
    Config: ClassVar[type[Settings]] = VanishingConfig
    ADVICE: ClassVar[str] = (
        "Gradients vanish in the lower layers. Use ReLU instead of Sigmoid/TanH, initialise with a larger "
        'variance (weight_filler "xavier" or "msra" instead of a small gaussian std), add BatchNorm or skip '
        "connections, or raise lr_mult of those layers."
    )
    scope: ClassVar[Scope] = Scope.DEBUG
    config: VanishingConfig

    def __init__(self, config: VanishingConfig) -> None:
        self.config = config
        self.streaks = Streaks()

    def observe(self, block: Block, view: View) -> Hit | None:
        c = self.config
        bvals = view.backward
        hit_layers: dict[str, float] = {}
        if bvals and min(bvals) < c.ratio * max(bvals):  # something may be far below: look closer
            per = largest_param_diffs(block.run.backward)
            top = max(per.values(), default=0.0)
            if top > 0:
                hit_layers = {layer: f / top for layer, f in per.items() if 0 < f < c.ratio * top}
        layers, onset = self.persisting(hit_layers, block, view, c.iterations)
        if not layers:
            return None
        values = {"ratios": {x: hit_layers[x] for x in layers}, "ratio_threshold": c.ratio}
        msg = (
            f"vanishing gradients: largest param diff of {', '.join(layers)} below {c.ratio:g} x the "
            f"net's largest param diff for {c.iterations} display iterations"
        )
        return Hit(layers, msg, values, view.history.evidence(block), onset)

