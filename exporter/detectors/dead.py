"""`dead`: a layer's output is exactly 0 on every displayed pass.

Values are mean absolute values, so 0 means every element is 0. Layers whose output may legitimately be 0
are skipped (types ending in `Loss` or `Data`, `Accuracy`, `Input`, `ArgMax`, `Silence`). A `ReLU`
(type from the net dump) is reported as a dead ReLU.
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

NOT_DEAD_SUFFIXES = ("Loss", "Data")  # layer types whose outputs may legitimately be exactly 0
NOT_DEAD_TYPES = frozenset({"Accuracy", "Input", "ArgMax", "Silence"})
RELU_TYPES = frozenset({"ReLU"})


@dataclass(frozen=True)
class DeadConfig(Settings):
    # top data exactly 0 for this many consecutive debug display iterations
    iterations: int = setting(3, lambda v: v >= 1, "an integer >= 1")


def zero_output_layers(forward: Mapping[str, str | float], types: Mapping[str, str]) -> dict[str, float]:
    """The layers with a `top blob` whose data is exactly 0 (-> 0.0), except those that may be 0."""
    vals = forward.values()
    dead: dict[str, float] = {}
    if "0" not in vals and 0.0 not in vals:
        return dead
    for key, v in forward.items():
        if v != "0" and v != 0.0:
            continue
        parts = split_key(key)
        if parts is None or parts[1] != "top":
            continue
        typ = types.get(parts[0], "")
        if typ in NOT_DEAD_TYPES or typ.endswith(NOT_DEAD_SUFFIXES) or parts[0] == "input":
            continue
        dead[parts[0]] = 0.0
    return dead


class Dead(StreakDetector):
    name: ClassVar[str] = "dead"
    Config: ClassVar[type[Settings]] = DeadConfig
    ADVICE: ClassVar[str] = (
        "Activations are exactly zero on every displayed pass. For ReLU: dead units, set relu_param "
        "{ negative_slope: 0.01 } or use PReLU, initialise biases to 0 / small positive values (bias_filler), "
        "use msra/xavier init, normalise the input and lower base_lr."
    )
    scope: ClassVar[Scope] = Scope.DEBUG
    config: DeadConfig

    def __init__(self, config: DeadConfig) -> None:
        self.config = config
        self.streaks = Streaks()

    def observe(self, block: Block, view: View) -> Hit | None:
        need = self.config.iterations
        types = block.run.layer_types
        layers, onset = self.persisting(zero_output_layers(block.run.forward["train"], types), block, view, need)
        if not layers:
            return None
        kinds = {x: types.get(x, "") for x in layers}
        relu = [x for x in layers if kinds[x] in RELU_TYPES]
        msg = f"dead activations: top data of {', '.join(layers)} exactly 0 for {need} display iterations"
        if relu:
            msg += f" (dead ReLU: {', '.join(relu)})"
        return Hit(layers, msg, {"layer_types": kinds, "dead_relu": relu}, view.history.evidence(block), onset)

