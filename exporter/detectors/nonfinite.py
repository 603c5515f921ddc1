"""`nonfinite`: a display block holds a NaN/inf per-layer value; where it came from.

The report gives two origins, because they differ on real logs: the first non-finite value of any kind
(often the `All net params` L2 diff norm overflowing while every layer is still finite) and the first
per-layer one (the finding's iteration and layer). At the onset it also keeps the order in which layers
turned non-finite and the largest finite diffs of the debug block before (the explosion that led there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from exporter.detectors.base import Detector, Hit, Scope, View, largest
from exporter.detectors.schema import Settings
from exporter.state import Block, NonfiniteValue

ORDER_FIELDS = ("stage", "layer", "blob", "kind", "value", "line")  # of the "turned non-finite" order
MAX_ORDER = 50  # (stage, layer) pairs kept in the order


@dataclass(frozen=True)
class NonfiniteConfig(Settings):
    pass


def nv_dict(nv: NonfiniteValue | None) -> dict[str, Any] | None:
    """A non-finite value as JSON (the origin records of the report)."""
    if nv is None:
        return None
    return {
        "iteration": nv.iteration,
        "phase": nv.phase,
        "block": nv.block,
        "stage": nv.stage,
        "layer": nv.layer,
        "blob": nv.blob,
        "kind": nv.kind,
        "value": nv.value,
        "line": nv.line,
        "path": nv.path,
    }


class Nonfinite(Detector):
    name: ClassVar[str] = "nonfinite"
    Config: ClassVar[type[Settings]] = NonfiniteConfig
    ADVICE: ClassVar[str] = (
        "Training diverged to NaN/inf. Lower base_lr (e.g. by 10x), enable clip_gradients in the solver, "
        "check the input data for NaN/inf and its normalisation (scale / mean subtraction), then resume from "
        "the last snapshot taken before the first non-finite iteration."
    )
    scope: ClassVar[Scope] = Scope.DEBUG_OR_NONFINITE
    config: NonfiniteConfig

    def __init__(self, config: NonfiniteConfig) -> None:
        self.config = config
        self.order: list[dict[str, Any]] = []  # first line per (stage, layer) of the onset block
        self.largest_before: list[dict[str, Any]] = []  # the five largest finite diffs of the block before

    def window(self) -> int:
        return 1  # the debug block before the onset

    def observe(self, block: Block, view: View) -> Hit | None:
        per_layer = [nv for nv in block.nonfinite if nv.layer]
        if not per_layer:
            return None
        run = block.run
        first = per_layer[0]
        if not self.order and self.name not in view.open:
            self._onset(per_layer, view)
        values: dict[str, Any] = {
            "first_observed": nv_dict(run.first_nonfinite),
            "first_layer": nv_dict(run.first_nonfinite_layer),
            "order": self.order,
            "largest_before": self.largest_before,
            "count": len(block.nonfinite),
        }
        onset = min((nv.iteration for nv in per_layer if nv.iteration is not None), default=block.iteration)
        msg = (
            f"first observed non-finite per-layer value at iteration {onset}: [{first.stage}] layer "
            f"{first.layer}, blob {first.blob} {first.kind} = {first.value} (line {first.line})"
        )
        f0 = run.first_nonfinite
        if f0 is not None and not f0.layer:
            msg += (
                f"; the first non-finite value of any kind was observed at iteration {f0.iteration}: "
                f"All net params {f0.blob} = {f0.value} (line {f0.line})"
            )
        lines = sorted({nv.line for nv in per_layer[:10]} | {block.line})
        return Hit([""], msg, values, lines, onset, [first.layer])

    def _onset(self, per_layer: list[NonfiniteValue], view: View) -> None:
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for nv in per_layer:
            if (nv.stage, nv.layer) not in seen and len(seen) < MAX_ORDER:
                record = nv_dict(nv) or {}
                seen[nv.stage, nv.layer] = {k: record[k] for k in ORDER_FIELDS}
        self.order = list(seen.values())
        h = view.history
        if h.snapshots:
            self.largest_before = largest(h.snapshots[-1], h.window[-1].iteration, 5)

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "largest_before": self.largest_before}

    def load(self, d: Mapping[str, Any]) -> None:
        self.order, self.largest_before = list(d["order"]), list(d["largest_before"])
