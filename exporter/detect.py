"""Anomaly detectors over the run state: one implementation for the live metrics and `diagnose`.

An :class:`Analysis` is a :class:`~exporter.state.BlockObserver`: `RunState` calls `observe(block)` at every
training display line (`Iteration N ..., loss = v`), when `run.forward["train"]`, `run.backward`,
`run.norms`, ... hold the values of that display block. Each detector decides, from those values only,
whether its condition holds at this display iteration and for which layers; `Analysis` keeps

* `active[(type, layer)]`: the `caffe_anomaly` gauge (1 while the condition holds at the newest display
  iteration; layers seen before stay at 0);
* `counts[type]`: `caffe_anomalies_total`, display iterations in which the condition held;
* `findings`: one :class:`Finding` per episode (onset until the condition stops holding), with the layers,
  the values that show it, log line numbers as evidence and advice from Caffe practice.

Cost: every detector first decides with C-level builtins over the block's values (`max(map(float, ...))`,
`min`, `in`) whether anything can trip, and only then looks at single layers. Memory is constant per run
(trailing windows are bounded deques). No clock: only log iterations and line numbers are used.
Thresholds and their defaults are documented in docs/detectors.md.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from exporter.parse import split_key
from exporter.state import Block, BlockObserver, NonfiniteValue, RunState

TYPES = (
    "nonfinite",
    "nan_loss",
    "loss_saturated",
    "exploding",
    "vanishing",
    "zero_gradient",
    "dead",
    "loss_spike",
)
SATURATED_LOSS = 87.3365  # -log(FLT_MIN): SoftmaxWithLoss clamps the probability at FLT_MIN
_NOT_DEAD_SUFFIXES = ("Loss", "Data")  # layer types whose outputs may legitimately be exactly 0
_NOT_DEAD_TYPES = frozenset({"Accuracy", "Input", "ArgMax", "Silence"})
_RELU_TYPES = frozenset({"ReLU"})

ADVICE = {
    "nonfinite": (
        "Training diverged to NaN/inf. Lower base_lr (e.g. by 10x), enable clip_gradients in the solver, "
        "check the input data for NaN/inf and its normalisation (scale / mean subtraction), then resume from "
        "the last snapshot taken before the first non-finite iteration."
    ),
    "nan_loss": (
        "The loss is NaN/inf: the weights or activations diverged. Lower base_lr, set clip_gradients, check "
        "input normalisation and labels (out of range labels in SoftmaxWithLoss), resume from the last good "
        "snapshot."
    ),
    "loss_saturated": (
        "Loss 87.3365 = -log(FLT_MIN): SoftmaxWithLoss assigns probability ~0 to the true class (diverged "
        "logits). Lower base_lr, check input scale and labels, consider clip_gradients or BatchNorm."
    ),
    "exploding": (
        "Gradients are exploding. Lower base_lr (or use a warm-up), set clip_gradients in the solver, check "
        "input normalisation (scale: 0.00390625 for 8-bit images), reduce loss_weight of large losses."
    ),
    "vanishing": (
        "Gradients vanish in the lower layers. Use ReLU instead of Sigmoid/TanH, initialise with a larger "
        'variance (weight_filler "xavier" or "msra" instead of a small gaussian std), add BatchNorm or skip '
        "connections, or raise lr_mult of those layers."
    ),
    "zero_gradient": (
        "These layers get exactly zero gradient, so they do not learn. Usually a dead ReLU above them (see "
        "'dead'), a Dropout/threshold that zeroes everything, or propagate_down: false; check the bias "
        "initialisation (bias_filler) and the input normalisation."
    ),
    "dead": (
        "Activations are exactly zero on every displayed pass. For ReLU: dead units, set relu_param "
        "{ negative_slope: 0.01 } or use PReLU, initialise biases to 0 / small positive values (bias_filler), "
        "use msra/xavier init, normalise the input and lower base_lr."
    ),
    "loss_spike": (
        "The loss jumped far above its running minimum (or stopped improving). Lower base_lr or use a "
        "step/poly lr_policy, check the data for corrupt batches or shuffling problems, consider "
        "clip_gradients; resume from the last good snapshot if it does not recover."
    ),
}


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NonfiniteConfig:
    enabled: bool = True


@dataclass(frozen=True)
class NanLossConfig:
    enabled: bool = True


@dataclass(frozen=True)
class LossSaturatedConfig:
    enabled: bool = True
    value: float = SATURATED_LOSS  # the saturation value to look for
    tolerance: float = 5e-4  # absolute; Caffe prints 6 significant digits


@dataclass(frozen=True)
class ExplodingConfig:
    enabled: bool = True
    max_abs_diff: float = 1e4  # a per-layer mean |diff| above this holds at once
    factor: float = 10.0  # growth of the net's L2 diff norm or largest diff over the window ...
    window: int = 5  # ... of this many trailing debug display iterations, while the loss did not improve


@dataclass(frozen=True)
class VanishingConfig:
    enabled: bool = True
    ratio: float = 1e-8  # a layer's largest param diff below ratio x the net's largest param diff
    iterations: int = 3  # for this many consecutive debug display iterations


@dataclass(frozen=True)
class ZeroGradientConfig:
    enabled: bool = True
    iterations: int = 3  # all param diffs of a layer exactly 0 for this many consecutive debug displays


@dataclass(frozen=True)
class DeadConfig:
    enabled: bool = True
    iterations: int = 3  # top data exactly 0 for this many consecutive debug display iterations


@dataclass(frozen=True)
class LossSpikeConfig:
    enabled: bool = True
    factor: float = 10.0  # loss above factor x running minimum
    floor: float = 0.01  # running minimum used is at least this (tiny losses make 10x meaningless)
    stall_iterations: int = 10000  # no new minimum for this many solver iterations (0: off)
    min_improvement: float = 0.01  # a new minimum must be this much (relative) below the old one


_SECTIONS: dict[str, type[Any]] = {
    "nonfinite": NonfiniteConfig,
    "nan_loss": NanLossConfig,
    "loss_saturated": LossSaturatedConfig,
    "exploding": ExplodingConfig,
    "vanishing": VanishingConfig,
    "zero_gradient": ZeroGradientConfig,
    "dead": DeadConfig,
    "loss_spike": LossSpikeConfig,
}

# (check, expectation) per key that is not a plain type check
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "tolerance": (lambda v: v >= 0, "a number >= 0"),
    "value": (lambda v: v > 0, "a number > 0"),
    "max_abs_diff": (lambda v: v > 0, "a number > 0"),
    "factor": (lambda v: v > 1, "a number > 1"),
    "window": (lambda v: v >= 1, "an integer >= 1"),
    "ratio": (lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)"),
    "iterations": (lambda v: v >= 1, "an integer >= 1"),
    "floor": (lambda v: v >= 0, "a number >= 0"),
    "stall_iterations": (lambda v: v >= 0, "an integer >= 0 (0 disables the stall check)"),
    "min_improvement": (lambda v: 0 <= v < 1, "a number >= 0 and < 1"),
    "max_findings_per_type": (lambda v: v >= 1, "an integer >= 1"),
}


@dataclass(frozen=True)
class DetectorConfig:
    """The `detectors:` section of config.yaml; every key optional (defaults: docs/detectors.md)."""

    nonfinite: NonfiniteConfig = field(default_factory=NonfiniteConfig)
    nan_loss: NanLossConfig = field(default_factory=NanLossConfig)
    loss_saturated: LossSaturatedConfig = field(default_factory=LossSaturatedConfig)
    exploding: ExplodingConfig = field(default_factory=ExplodingConfig)
    vanishing: VanishingConfig = field(default_factory=VanishingConfig)
    zero_gradient: ZeroGradientConfig = field(default_factory=ZeroGradientConfig)
    dead: DeadConfig = field(default_factory=DeadConfig)
    loss_spike: LossSpikeConfig = field(default_factory=LossSpikeConfig)
    max_findings_per_type: int = 20  # episodes kept per type and run (later ones are only counted)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None, where: str = "config.yaml") -> DetectorConfig:
        """Validate a parsed `detectors:` mapping; ValueError names the key and what was expected."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: detectors: expected a mapping, got {_show(data)}")
        kwargs: dict[str, Any] = {}
        for key, section in data.items():
            path = f"{where}: detectors.{key}"
            if key == "max_findings_per_type":
                kwargs[key] = _value(path, key, section, int)
                continue
            klass = _SECTIONS.get(str(key))
            if klass is None:
                known = ", ".join([*_SECTIONS, "max_findings_per_type"])
                raise ValueError(f"{where}: detectors.{key}: unknown detector (expected one of {known})")
            if section is None:
                kwargs[str(key)] = klass()
                continue
            if not isinstance(section, Mapping):
                raise ValueError(f"{path}: expected a mapping, got {_show(section)}")
            types = {f.name: f.type for f in fields(klass)}
            values: dict[str, Any] = {}
            for k, v in section.items():
                if k not in types:
                    raise ValueError(f"{path}.{k}: unknown key (expected one of {', '.join(types)})")
                values[str(k)] = _value(f"{path}.{k}", str(k), v, {"bool": bool, "int": int}.get(str(types[k]), float))
            kwargs[str(key)] = klass(**values)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _show(v: object) -> str:
    return repr(v) if isinstance(v, str) else f"{v!r} ({type(v).__name__})"


def _value(path: str, key: str, v: object, want: type) -> object:
    if want is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{path}: expected true or false, got {_show(v)}")
        return v
    rule = _RULES.get(key)
    expect = rule[1] if rule else ("an integer" if want is int else "a number")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{path}: expected {expect}, got {_show(v)}")
    if want is int and (not isinstance(v, int) and not float(v).is_integer()):
        raise ValueError(f"{path}: expected {expect}, got {_show(v)}")
    num: float = float(v)
    if not math.isfinite(num) or (rule is not None and not rule[0](num)):
        raise ValueError(f"{path}: expected {expect}, got {_show(v)}")
    return int(num) if want is int else num


# --- findings ------------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One episode of one anomaly type: from `iteration` (onset) to `last_iteration`."""

    type: str
    iteration: int  # first display iteration at which the condition held (onset)
    last_iteration: int
    display_iterations: int  # display iterations in which it held during this episode
    layers: list[str]
    message: str
    values: dict[str, Any]  # the values that show it (JSON-ready)
    evidence_lines: list[int]  # log line numbers (display lines; exact value lines where known)
    advice: str
    open: bool = True  # the condition still held at the newest display iteration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        return cls(**{f.name: d[f.name] for f in fields(cls)})


ORDER_FIELDS = ("stage", "layer", "blob", "kind", "value", "line")  # of the "turned non-finite" order


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


def _jnum(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)


def _float(v: object) -> float:
    return float(v)  # type: ignore[arg-type]


class Hit:
    """What a detector found in one block: layers ("" = net-wide) and the details for a new finding."""

    __slots__ = ("iteration", "layers", "lines", "message", "named", "values")

    def __init__(
        self,
        layers: Iterable[str],
        message: str,
        values: dict[str, Any],
        lines: list[int],
        iteration: int | None = None,
        named: list[str] | None = None,
    ) -> None:
        self.layers = list(layers)  # the `layer` labels of caffe_anomaly
        self.named = named if named is not None else [x for x in self.layers if x]  # the finding's layers
        self.message = message
        self.values = values
        self.lines = lines
        self.iteration = iteration


# --- the analysis ------------------------------------------------------------------------------------


class Analysis:
    """Per-run anomaly state, fed by `RunState` at every training display line (a `BlockObserver`)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self.active: dict[tuple[str, str], bool] = {}
        self.counts: dict[str, int] = dict.fromkeys(TYPES, 0)
        self.findings: list[Finding] = []
        self.suppressed: dict[str, int] = dict.fromkeys(TYPES, 0)  # episodes beyond max_findings_per_type
        self.open: dict[str, int] = {}  # type -> index in findings of the open episode (-1: not kept)
        # solver summary
        self.first_iteration: int | None = None
        self.first_loss: float | None = None
        self.last_iteration: int | None = None
        self.prev_line = 0  # line of the previous display line (start of a block's evidence range)
        self.prev_display: int | None = None
        # trailing windows (debug display blocks): (iteration, l2 diff norm or -1, largest diff, loss)
        win = self.config.exploding.window
        self.window: deque[tuple[int, float, float, float]] = deque(maxlen=win)
        self.snapshots: deque[dict[str, str | float]] = deque(maxlen=win)  # backward values per entry
        self.streaks: dict[tuple[str, str], int] = {}  # (type, layer) -> consecutive debug displays
        self.streak_start: dict[tuple[str, str], int] = {}
        self.min_loss = math.inf
        self.min_loss_iteration: int | None = None
        self.best_iteration: int | None = None  # iteration of the last relevant improvement (stall)
        self.best_loss = math.inf
        # the non-finite origin: order of layers and the largest finite values just before
        self.nonfinite_order: list[dict[str, Any]] = []
        self.largest_before: list[dict[str, Any]] = []

    # -- observer ---------------------------------------------------------------------------------

    def observe(self, block: Block) -> None:
        run = block.run
        it = block.iteration
        if self.prev_display is not None and it < self.prev_display:
            self._restart()
        if self.first_iteration is None:
            self.first_iteration, self.first_loss = it, block.loss
        self.last_iteration = it
        cfg = self.config
        hits: dict[str, Hit | None] = {}
        debug = block.debug_lines > 0 and bool(run.backward or run.forward["train"])
        # per-layer values: only a block with debug lines tells anything new
        bvals: list[float] = []
        if debug:
            bvals = list(map(float, run.backward.values()))
            if bvals and not math.isfinite(sum(bvals)):
                bvals = [v for v in bvals if math.isfinite(v)]
        if cfg.nonfinite.enabled and (debug or block.nonfinite):
            hits["nonfinite"] = self._nonfinite(block)
        if cfg.nan_loss.enabled:
            hits["nan_loss"] = self._nan_loss(block)
        if cfg.loss_saturated.enabled:
            hits["loss_saturated"] = self._saturated(block)
        if debug:
            if cfg.exploding.enabled:
                hits["exploding"] = self._exploding(block, bvals)
            if cfg.vanishing.enabled:
                hits["vanishing"] = self._vanishing(block, bvals)
            if cfg.zero_gradient.enabled:
                hits["zero_gradient"] = self._zero_gradient(block, bvals)
            if cfg.dead.enabled:
                hits["dead"] = self._dead(block)
            self._remember(block, bvals)
        if cfg.loss_spike.enabled:
            hits["loss_spike"] = self._loss_spike(block, hits)
        for typ, hit in hits.items():
            self._update(typ, hit, block)
        self.prev_line = block.line
        self.prev_display = it

    def _restart(self) -> None:
        """The iteration went back (a new solver run in the same log): trailing windows start over."""
        self.window.clear()
        self.snapshots.clear()
        self.streaks.clear()
        self.streak_start.clear()
        self.min_loss, self.min_loss_iteration = math.inf, None
        self.best_loss, self.best_iteration = math.inf, None

    def _remember(self, block: Block, bvals: list[float]) -> None:
        norms = block.run.norms
        l2 = norms[3] if norms is not None else -1.0
        self.window.append((block.iteration, l2, max(bvals) if bvals else 0.0, block.loss))
        self.snapshots.append(dict(block.run.backward))

    def _update(self, typ: str, hit: Hit | None, block: Block) -> None:
        layers = set(hit.layers) if hit is not None else set()
        for key in [k for k in self.active if k[0] == typ]:
            if key[1] not in layers:
                self.active[key] = False
        if hit is None:
            idx = self.open.pop(typ, None)
            if idx is not None and idx >= 0:
                self.findings[idx].open = False
            return
        for layer in layers:
            self.active[typ, layer] = True
        self.counts[typ] += 1
        idx = self.open.get(typ)
        if idx is None:
            kept = sum(1 for f in self.findings if f.type == typ)
            if kept >= self.config.max_findings_per_type:
                self.suppressed[typ] += 1
                self.open[typ] = -1
                return
            onset = hit.iteration if hit.iteration is not None else block.iteration
            self.findings.append(
                Finding(
                    typ, onset, block.iteration, 1, list(hit.named), hit.message, hit.values, hit.lines, ADVICE[typ]
                )
            )
            self.open[typ] = len(self.findings) - 1
            return
        if idx < 0:
            return
        f = self.findings[idx]
        f.last_iteration = block.iteration
        f.display_iterations += 1
        for x in hit.named:
            if x not in f.layers:
                f.layers.append(x)

    def _range(self, block: Block) -> list[int]:
        """Evidence: the lines of this display block (previous display line + 1 .. this display line)."""
        return [self.prev_line + 1, block.line] if self.prev_line else [block.line]

    # -- detectors --------------------------------------------------------------------------------

    def _nonfinite(self, block: Block) -> Hit | None:
        per_layer = [nv for nv in block.nonfinite if nv.layer]
        if not per_layer:
            return None
        run = block.run
        first = per_layer[0]
        if not self.nonfinite_order and "nonfinite" not in self.open:
            seen: dict[tuple[str, str], dict[str, Any]] = {}
            for nv in per_layer:
                if (nv.stage, nv.layer) not in seen and len(seen) < 50:
                    record = nv_dict(nv) or {}
                    seen[nv.stage, nv.layer] = {k: record[k] for k in ORDER_FIELDS}
            self.nonfinite_order = list(seen.values())
            if self.snapshots:
                self.largest_before = _largest(self.snapshots[-1], self.window[-1][0], 5)
        origin = run.first_nonfinite_layer
        values: dict[str, Any] = {
            "first_observed": nv_dict(run.first_nonfinite),
            "first_layer": nv_dict(origin),
            "order": self.nonfinite_order,
            "largest_before": self.largest_before,
            "count": len(block.nonfinite),
        }
        onset = min((nv.iteration for nv in per_layer if nv.iteration is not None), default=block.iteration)
        msg = (
            f"first observed non-finite per-layer value at iteration {onset}: [{first.stage}] layer "
            f"{first.layer}, blob {first.blob} {first.kind} = {first.value} (line {first.line})"
        )
        if run.first_nonfinite is not None and not run.first_nonfinite.layer:
            f0 = run.first_nonfinite
            msg += (
                f"; the first non-finite value of any kind was observed at iteration {f0.iteration}: "
                f"All net params {f0.blob} = {f0.value} (line {f0.line})"
            )
        lines = sorted({nv.line for nv in per_layer[:10]} | {block.line})
        return Hit([""], msg, values, lines, onset, [first.layer])

    def _nan_loss(self, block: Block) -> Hit | None:
        run = block.run
        loss = block.loss
        bad: dict[str, Any] = {}
        if not math.isfinite(loss):
            bad["loss"] = repr(loss)
        tr, te = run.train_outputs, run.test_outputs
        if tr and not math.isfinite(sum(tr.values())):
            bad.update({f"train_output:{k}": repr(v) for k, v in tr.items() if not math.isfinite(v)})
        if te and not math.isfinite(sum(te.values())):
            bad.update({f"test_output:{n}:{k}": repr(v) for (n, k), v in te.items() if not math.isfinite(v)})
        if not bad:
            return None
        return Hit([""], f"non-finite loss at iteration {block.iteration}: {bad}", bad, [block.line])

    def _saturated(self, block: Block) -> Hit | None:
        c = self.config.loss_saturated
        run = block.run
        target, tol = c.value, c.tolerance
        found: dict[str, float] = {}
        onset: int | None = None
        if abs(block.loss - target) <= tol:
            found["loss"] = block.loss
            onset = block.iteration
        for k, v in run.train_outputs.items():  # printed after the previous display line
            if abs(v - target) <= tol:
                found[f"train_output:{k}"] = v
                if onset is None:
                    onset = self.prev_display if self.prev_display is not None else block.iteration
        for (n, k), v in run.test_outputs.items():
            if abs(v - target) <= tol:
                found[f"test_output:{n}:{k}"] = v
                if onset is None:
                    onset = run.test_iteration.get(n, block.iteration)
        if not found:
            return None
        return Hit([""], f"loss saturated at {target} (-log(FLT_MIN)): {found}", dict(found), [block.line], onset)

    def _exploding(self, block: Block, bvals: list[float]) -> Hit | None:
        c = self.config.exploding
        run = block.run
        mx = max(bvals) if bvals else 0.0
        norms = run.norms
        l2 = norms[3] if norms is not None else -1.0
        l2_bad = norms is not None and math.isinf(l2)
        reason = ""
        ref: tuple[int, float, float, float] | None = None
        if mx > c.max_abs_diff or l2_bad:
            reason = (
                f"largest per-layer mean |diff| {mx:.6g} > {c.max_abs_diff:g}"
                if mx > c.max_abs_diff
                else f"All net params L2 diff norm overflowed to {l2!r}"
            )
        elif self.window:
            loss = block.loss
            use_l2 = l2 >= 0 and all(w[1] >= 0 for w in self.window)
            if use_l2:
                low = min(self.window, key=lambda w: w[1])
                cur, base = l2, low[1]
            else:
                low = min(self.window, key=lambda w: w[2])
                cur, base = mx, low[2]
            if base > 0 and cur >= c.factor * base and not loss < low[3]:
                ref = low
                what = "All net params L2 diff norm" if use_l2 else "largest per-layer mean |diff|"
                reason = (
                    f"{what} grew {cur / base:.3g}x ({base:.6g} at iteration {low[0]} -> {cur:.6g}) "
                    f"while the loss did not improve ({low[3]:.6g} -> {loss:.6g})"
                )
        if not reason:
            return None
        values: dict[str, Any] = {
            "largest_diff": mx,
            "l2_diff_norm": _jnum(l2) if norms else None,
            "loss": _jnum(block.loss),
        }
        # the layer that grew most (against the window's low point), else the largest diff
        layer = ""
        if ref is not None:
            before = self.snapshots[list(self.window).index(ref)]
            best = 0.0
            for key, v in run.backward.items():
                b = before.get(key)
                if b is None:
                    continue
                fb, fv = float(b), float(v)
                if fb > 0 and math.isfinite(fv) and fv / fb > best:
                    best, layer = fv / fb, key
            if layer:
                values.update(
                    {
                        "grew_most": layer,
                        "from": float(before[layer]),
                        "to": float(run.backward[layer]),
                        "from_iteration": ref[0],
                        "growth": best,
                    }
                )
        else:
            top = _largest(run.backward, block.iteration, 3)
            values["largest"] = top
            layer = top[0]["key"] if top else ""
        name = split_key(layer)
        layer_name = name[0] if name else layer
        msg = f"exploding gradients at iteration {block.iteration}: {reason}"
        if layer_name:
            msg += f"; layer {layer_name} ({layer})"
        return Hit([""], msg, values, self._range(block), None, [layer_name] if layer_name else [])

    def _vanishing(self, block: Block, bvals: list[float]) -> Hit | None:
        c = self.config.vanishing
        run = block.run
        hit_layers: dict[str, float] = {}
        ratio_min = c.ratio
        if bvals and min(bvals) < c.ratio * max(bvals):  # something may be far below: look closer
            per: dict[str, float] = {}
            for key, v in run.backward.items():
                parts = split_key(key)
                if parts is None or parts[1] != "param":
                    continue
                f = float(v)
                if math.isfinite(f) and f > per.get(parts[0], -1.0):
                    per[parts[0]] = f
            top = max(per.values(), default=0.0)
            if top > 0:
                for layer, f in per.items():
                    if 0 < f < ratio_min * top:
                        hit_layers[layer] = f / top
        layers = self._streak("vanishing", hit_layers, block.iteration, c.iterations)
        if not layers:
            return None
        values = {"ratios": {x: hit_layers[x] for x in layers}, "ratio_threshold": c.ratio}
        msg = (
            f"vanishing gradients: largest param diff of {', '.join(layers)} below {c.ratio:g} x the "
            f"net's largest param diff for {c.iterations} display iterations"
        )
        return Hit(layers, msg, values, self._range(block), self._onset("vanishing", layers))

    def _zero_gradient(self, block: Block, bvals: list[float]) -> Hit | None:
        c = self.config.zero_gradient
        run = block.run
        zero: dict[str, float] = {}
        if 0.0 in bvals:
            per: dict[str, bool] = {}
            for key, v in run.backward.items():
                parts = split_key(key)
                if parts is None or parts[1] != "param":
                    continue
                per[parts[0]] = per.get(parts[0], True) and float(v) == 0.0
            zero = {layer: 0.0 for layer, z in per.items() if z}
        layers = self._streak("zero_gradient", zero, block.iteration, c.iterations)
        if not layers:
            return None
        msg = (
            f"zero gradient: every param diff of {', '.join(layers)} is exactly 0 for {c.iterations} display iterations"
        )
        return Hit(layers, msg, {"layers": layers}, self._range(block), self._onset("zero_gradient", layers))

    def _dead(self, block: Block) -> Hit | None:
        c = self.config.dead
        run = block.run
        fwd = run.forward["train"]
        vals = fwd.values()
        dead: dict[str, float] = {}
        if 0.0 in vals:
            types = run.layer_types
            for key, v in fwd.items():
                if v != 0.0:
                    continue
                parts = split_key(key)
                if parts is None or parts[1] != "top":
                    continue
                typ = types.get(parts[0], "")
                if typ in _NOT_DEAD_TYPES or typ.endswith(_NOT_DEAD_SUFFIXES) or parts[0] == "input":
                    continue
                dead[parts[0]] = 0.0
        layers = self._streak("dead", dead, block.iteration, c.iterations)
        if not layers:
            return None
        types = run.layer_types
        kinds = {x: types.get(x, "") for x in layers}
        relu = [x for x in layers if kinds[x] in _RELU_TYPES]
        msg = f"dead activations: top data of {', '.join(layers)} exactly 0 for {c.iterations} display iterations"
        if relu:
            msg += f" (dead ReLU: {', '.join(relu)})"
        return Hit(
            layers, msg, {"layer_types": kinds, "dead_relu": relu}, self._range(block), self._onset("dead", layers)
        )

    def _loss_spike(self, block: Block, hits: Mapping[str, Hit | None]) -> Hit | None:
        c = self.config.loss_spike
        loss, it = block.loss, block.iteration
        if not math.isfinite(loss):
            return None
        result: Hit | None = None
        explained = any(hits.get(t) is not None for t in ("nonfinite", "nan_loss", "exploding")) or (
            "exploding" not in hits and self.open.get("exploding") is not None
        )
        ref = max(self.min_loss, c.floor)
        if self.min_loss < math.inf and loss > c.factor * ref and not explained:
            result = Hit(
                [""],
                f"loss spike at iteration {it}: {loss:.6g} > {c.factor:g} x running minimum "
                f"{self.min_loss:.6g} (iteration {self.min_loss_iteration})",
                {
                    "kind": "spike",
                    "loss": loss,
                    "running_min": self.min_loss,
                    "running_min_iteration": self.min_loss_iteration,
                },
                [block.line],
            )
        if loss < self.min_loss:
            self.min_loss, self.min_loss_iteration = loss, it
        if self.best_iteration is None or loss < self.best_loss * (1 - c.min_improvement):
            self.best_loss, self.best_iteration = loss, it
        elif result is None and c.stall_iterations and not explained and it - self.best_iteration >= c.stall_iterations:
            result = Hit(
                [""],
                f"loss has not improved by {c.min_improvement:.0%} for {it - self.best_iteration} "
                f"iterations (best {self.best_loss:.6g} at iteration {self.best_iteration})",
                {"kind": "stall", "loss": loss, "best": self.best_loss, "best_iteration": self.best_iteration},
                [block.line],
            )
        return result

    # -- helpers ----------------------------------------------------------------------------------

    def _streak(self, typ: str, layers: Mapping[str, float], it: int, need: int) -> list[str]:
        """Count consecutive debug displays per layer; the layers whose streak reached `need`."""
        out = []
        for key in [k for k in self.streaks if k[0] == typ and k[1] not in layers]:
            del self.streaks[key]
            self.streak_start.pop(key, None)
        for layer in layers:
            key = (typ, layer)
            n = self.streaks.get(key, 0) + 1
            self.streaks[key] = n
            if n == 1:
                self.streak_start[key] = it
            if n >= need:
                out.append(layer)
        return out

    def _onset(self, typ: str, layers: list[str]) -> int | None:
        """The iteration the condition started (first display of the streak) for a new episode."""
        starts = [self.streak_start[typ, x] for x in layers if (typ, x) in self.streak_start]
        return min(starts) if starts and typ not in self.open else None

    # -- reading out --------------------------------------------------------------------------------

    def anomaly_samples(self) -> list[tuple[str, str, float]]:
        """(type, layer, 0/1) for `caffe_anomaly`; a type never seen yet is one `layer=""` series at 0."""
        seen = {t for t, _ in self.active}
        out = [(t, layer, 1.0 if on else 0.0) for (t, layer), on in self.active.items()]
        out += [(t, "", 0.0) for t in TYPES if t not in seen]
        return sorted(out)

    # -- checkpointing ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Floats stay floats, NaN and inf included: checkpoint.write has the one encoding for them."""
        def snap(d: Mapping[str, str | float]) -> list[list[Any]]:
            return [[k, v if isinstance(v, str) else float(v)] for k, v in d.items()]

        return {
            "config": self.config.to_dict(),
            "active": [[t, layer, on] for (t, layer), on in self.active.items()],
            "counts": dict(self.counts),
            "findings": [f.to_dict() for f in self.findings],
            "suppressed": dict(self.suppressed),
            "open": dict(self.open),
            "first_iteration": self.first_iteration,
            "first_loss": None if self.first_loss is None else float(self.first_loss),
            "last_iteration": self.last_iteration,
            "prev_line": self.prev_line,
            "prev_display": self.prev_display,
            "window": [[i, float(a), float(b), float(c)] for i, a, b, c in self.window],
            "snapshots": [snap(s) for s in self.snapshots],
            "streaks": [[t, layer, n, self.streak_start.get((t, layer))] for (t, layer), n in self.streaks.items()],
            "min_loss": float(self.min_loss),
            "min_loss_iteration": self.min_loss_iteration,
            "best_loss": float(self.best_loss),
            "best_iteration": self.best_iteration,
            "nonfinite_order": self.nonfinite_order,
            "largest_before": self.largest_before,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], config: DetectorConfig | None = None) -> Analysis:
        """Rebuild from `to_dict()`; `config` (the current configuration) wins over the saved one."""
        if config is None:
            config = _config_from_dict(d["config"])
        a = cls(config)
        a.active = {(t, layer): bool(on) for t, layer, on in d["active"]}
        a.counts.update(d["counts"])
        a.findings = [Finding.from_dict(f) for f in d["findings"]]
        a.suppressed.update(d["suppressed"])
        a.open = dict(d["open"])
        a.first_iteration = d["first_iteration"]
        a.first_loss = None if d["first_loss"] is None else float(d["first_loss"])
        a.last_iteration, a.prev_line, a.prev_display = d["last_iteration"], d["prev_line"], d["prev_display"]
        a.window.extend((int(i), float(x), float(y), float(z)) for i, x, y, z in d["window"])
        a.snapshots.extend({k: v for k, v in s} for s in d["snapshots"])
        for t, layer, n, start in d["streaks"]:
            a.streaks[t, layer] = n
            if start is not None:
                a.streak_start[t, layer] = start
        a.min_loss, a.min_loss_iteration = float(d["min_loss"]), d["min_loss_iteration"]
        a.best_loss, a.best_iteration = float(d["best_loss"]), d["best_iteration"]
        a.nonfinite_order, a.largest_before = list(d["nonfinite_order"]), list(d["largest_before"])
        return a


def _config_from_dict(d: Mapping[str, Any]) -> DetectorConfig:
    kwargs: dict[str, Any] = {k: _SECTIONS[k](**v) for k, v in d.items() if k in _SECTIONS}
    if "max_findings_per_type" in d:
        kwargs["max_findings_per_type"] = d["max_findings_per_type"]
    return DetectorConfig(**kwargs)


def _largest(values: Mapping[str, str | float], iteration: int, n: int) -> list[dict[str, Any]]:
    """The n largest finite values of a key -> value mapping (the explosion before a NaN)."""
    finite = ((f, k) for k, v in values.items() if math.isfinite(f := float(v)))
    out = []
    for f, k in heapq.nlargest(n, finite):
        parts = split_key(k)
        out.append({"iteration": iteration, "key": k, "layer": parts[0] if parts else "", "value": f})
    return out


def analysis_of(run: RunState) -> Analysis | None:
    """The run's Analysis observer, if it has one."""
    for obs in run.observers:
        if isinstance(obs, Analysis):
            return obs
    return None


def make_observers(config: DetectorConfig | None = None) -> Callable[[RunState], list[BlockObserver]]:
    """For `RunRegistry(make_observers=...)`: one Analysis per run."""
    cfg = config or DetectorConfig()

    def make(run: RunState) -> list[BlockObserver]:
        return [Analysis(cfg)]

    return make


def metric_tuples(run: RunState) -> list[tuple[str, dict[str, str], float]]:
    """The anomaly metrics of one run as (name, labels, value), for comparing the daemon with diagnose."""
    out: list[tuple[str, dict[str, str], float]] = []
    a = analysis_of(run)
    base = {"run": run.run, **run.labels}
    if a is not None:
        for t, layer, v in a.anomaly_samples():
            out.append(("caffe_anomaly", {**base, "type": t, "layer": layer}, v))
        for t in TYPES:
            out.append(("caffe_anomalies_total", {**base, "type": t}, float(a.counts[t])))
    f0 = run.first_nonfinite
    if f0 is not None and f0.iteration is not None:
        out.append(("caffe_first_nonfinite_iteration", base, float(f0.iteration)))
    f1 = run.first_nonfinite_layer
    if f1 is not None and f1.iteration is not None:
        out.append(("caffe_first_nonfinite_layer_iteration", base, float(f1.iteration)))
    if f1 is not None:
        out.append(
            (
                "caffe_first_nonfinite_info",
                {**base, "phase": f1.phase, "stage": f1.stage, "layer": f1.layer, "blob": f1.blob, "value": f1.value},
                1.0,
            )
        )
    out.append(("caffe_loss_nonfinite_total", base, float(run.loss_nonfinite)))
    return out
