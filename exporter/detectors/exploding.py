"""`exploding`: gradients grow without bound.

Holds when (a) the largest per-layer `[Backward]` value exceeds `max_abs_diff`, or the `All net params`
L2 diff norm overflowed to inf; or (b) the L2 diff norm (the largest per-layer diff when the log prints no
norm line) is at least `factor` times its lowest value in the trailing window of debug blocks **and the
loss did not improve** since that low point: a net leaving its initial plateau grows its gradients while
the loss falls, and is not flagged. The finding names the layer whose diff grew most against the low
point (or the layer with the largest diff for (a)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from exporter.detectors.base import Detector, Hit, Scope, View, jnum, largest
from exporter.detectors.history import Entry, History
from exporter.detectors.schema import Settings, setting
from exporter.parse import split_key
from exporter.state import Block


@dataclass(frozen=True)
class ExplodingConfig(Settings):
    # a per-layer mean |diff| above this holds at once
    max_abs_diff: float = setting(1e4, lambda v: v > 0, "a number > 0")
    # growth of the net's L2 diff norm or largest diff over the window ...
    factor: float = setting(10.0, lambda v: v > 1, "a number > 1")
    # ... of this many trailing debug display iterations, while the loss did not improve
    window: int = setting(5, lambda v: v >= 1, "an integer >= 1")


class Exploding(Detector):
    name: ClassVar[str] = "exploding"
    Config: ClassVar[type[Settings]] = ExplodingConfig
    ADVICE: ClassVar[str] = (
        "Gradients are exploding. Lower base_lr (or use a warm-up), set clip_gradients in the solver, check "
        "input normalisation (scale: 0.00390625 for 8-bit images), reduce loss_weight of large losses."
    )
    scope: ClassVar[Scope] = Scope.DEBUG
    config: ExplodingConfig

    def __init__(self, config: ExplodingConfig) -> None:
        self.config = config

    def window(self) -> int:
        return self.config.window

    def observe(self, block: Block, view: View) -> Hit | None:
        norms = block.run.norms
        mx = max(view.backward) if view.backward else 0.0
        l2 = norms[3] if norms is not None else -1.0
        reason = self._absolute(mx, l2, norms is not None)
        low: int | None = None
        if not reason and view.history.window:
            reason, low = self._growth(view.history.window, mx, l2, block.loss)
        if not reason:
            return None
        values: dict[str, Any] = {
            "largest_diff": mx,
            "l2_diff_norm": jnum(l2) if norms is not None else None,
            "loss": jnum(block.loss),
        }
        layer = self._layer(block, view.history, low, values)
        name = split_key(layer)
        layer_name = name[0] if name else layer
        msg = f"exploding gradients at iteration {block.iteration}: {reason}"
        if layer_name:
            msg += f"; layer {layer_name} ({layer})"
        return Hit([""], msg, values, view.history.evidence(block), None, [layer_name] if layer_name else [])

    def _absolute(self, mx: float, l2: float, has_norms: bool) -> str:
        """(a): the reason, or "" when neither the largest diff nor the norm is beyond bounds."""
        if mx > self.config.max_abs_diff:
            return f"largest per-layer mean |diff| {mx:.6g} > {self.config.max_abs_diff:g}"
        if has_norms and math.isinf(l2):
            return f"All net params L2 diff norm overflowed to {l2!r}"
        return ""

    def _growth(self, window: Sequence[Entry], mx: float, l2: float, loss: float) -> tuple[str, int | None]:
        """(b): the reason and the window index of the low point, or ("", None)."""
        entries = list(window)
        use_l2 = l2 >= 0 and all(e.l2 >= 0 for e in entries)
        if use_l2:
            i = min(range(len(entries)), key=lambda j: entries[j].l2)
            cur, base = l2, entries[i].l2
        else:
            i = min(range(len(entries)), key=lambda j: entries[j].largest)
            cur, base = mx, entries[i].largest
        low = entries[i]
        if not (base > 0 and cur >= self.config.factor * base and not loss < low.loss):
            return "", None
        what = "All net params L2 diff norm" if use_l2 else "largest per-layer mean |diff|"
        return (
            f"{what} grew {cur / base:.3g}x ({base:.6g} at iteration {low.iteration} -> {cur:.6g}) "
            f"while the loss did not improve ({low.loss:.6g} -> {loss:.6g})"
        ), i

    @staticmethod
    def _layer(block: Block, history: History, low: int | None, values: dict[str, Any]) -> str:
        """The key of the layer that grew most against the low point, else of the largest diff (into `values`)."""
        backward = block.run.backward
        if low is None:
            top = largest(backward, block.iteration, 3)
            values["largest"] = top
            return str(top[0]["key"]) if top else ""
        before = history.snapshots[low]
        best, layer = 0.0, ""
        for key, v in backward.items():
            b = before.get(key)
            if b is None:
                continue
            fb, fv = float(b), float(v)
            if fb > 0 and math.isfinite(fv) and fv / fb > best:
                best, layer = fv / fb, key
        if layer:
            values.update({
                "grew_most": layer,
                "from": float(before[layer]),
                "to": float(backward[layer]),
                "from_iteration": history.window[low].iteration,
                "growth": best,
            })
        return layer
