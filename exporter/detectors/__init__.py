"""Anomaly detectors over the run state: one implementation for the live metrics and `diagnose`.

An :class:`Analysis` is a :class:`~exporter.state.BlockObserver`: `RunState` calls `observe(block)` at every
training display line (`Iteration N ..., loss = v`), when `run.forward["train"]`, `run.backward`,
`run.norms`, ... hold the values of that display block. Each detector (one module each, listed in
:data:`DETECTORS` in evaluation order) decides from those values and the shared :class:`History` whether
its condition holds there; :data:`SUPPRESSIONS` declares which hits are consequences of others; the
:class:`Tracker` turns the rest into the gauge, the counts and the findings.

A new detector is one module (its settings dataclass, advice and `observe`) and one entry in DETECTORS:
its keys reach the `detectors:` YAML schema through :class:`DetectorConfig`, its type the metrics.

Cost: every detector first decides with C-level builtins over the block's values (`max(map(float, ...))`,
`min`, `in`) whether anything can trip, and only then looks at single layers. Memory is constant per run
(trailing windows are bounded deques). No clock: only log iterations and line numbers are used.
Thresholds and their defaults are documented in docs/detectors.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

from exporter.detectors.base import Detector, Finding, Hit, Scope, Suppression, View
from exporter.detectors.dead import Dead, DeadConfig
from exporter.detectors.exploding import Exploding, ExplodingConfig
from exporter.detectors.history import History
from exporter.detectors.loss_saturated import SATURATED_LOSS, LossSaturated, LossSaturatedConfig
from exporter.detectors.loss_spike import LossSpike, LossSpikeConfig
from exporter.detectors.nan_loss import NanLoss, NanLossConfig
from exporter.detectors.nonfinite import ORDER_FIELDS, Nonfinite, NonfiniteConfig, nv_dict
from exporter.detectors.schema import Settings, checked, section, show
from exporter.detectors.tracker import Tracker
from exporter.detectors.vanishing import Vanishing, VanishingConfig
from exporter.detectors.zero_gradient import ZeroGradient, ZeroGradientConfig
from exporter.state import Block, BlockObserver, RunState

__all__ = [
    "DETECTORS", "FORMAT", "ORDER_FIELDS", "SATURATED_LOSS", "SUPPRESSIONS", "TYPES", "Analysis", "DeadConfig",
    "Detector", "DetectorConfig", "ExplodingConfig", "Finding", "Hit", "LossSaturatedConfig", "LossSpikeConfig",
    "NanLossConfig", "NonfiniteConfig", "Scope", "Settings", "Suppression", "VanishingConfig", "View",
    "ZeroGradientConfig", "analysis_of", "make_observers", "nv_dict",
]

# evaluated in this order at every display line; findings of one block are recorded in it
DETECTORS: tuple[type[Detector], ...] = (
    Nonfinite, NanLoss, LossSaturated, Exploding, Vanishing, ZeroGradient, Dead, LossSpike,
)
SUPPRESSIONS: tuple[Suppression, ...] = (
    # a loss spike while the net explodes or turns NaN is their consequence: their findings show the loss.
    # exploding is evaluated on debug blocks only; on a display line between them its open episode counts.
    Suppression("loss_spike", by=("nonfinite", "nan_loss", "exploding"), held=("exploding",)),
)
TYPES: tuple[str, ...] = tuple(d.name for d in DETECTORS)
FORMAT = 3  # of Analysis.to_dict(); another format is refused (the checkpoint is then not used)

S = TypeVar("S", bound=Settings)
_MAX_FINDINGS = ("an integer >= 1", 20)  # max_findings_per_type: expectation, default


class DetectorConfig:
    """The `detectors:` section of config.yaml: each detector's settings and `max_findings_per_type`.

    Immutable and compared by value. `config.exploding` is the `exploding` detector's settings (typed:
    `config.get(ExplodingConfig)`); `DetectorConfig(exploding=ExplodingConfig(window=2))` overrides one.
    """

    __slots__ = ("_sections", "max_findings_per_type")
    _sections: dict[str, Settings]
    max_findings_per_type: int  # episodes kept per type and run (later ones are only counted)

    def __init__(self, max_findings_per_type: int = _MAX_FINDINGS[1], **sections: Settings) -> None:
        classes = {d.name: d.Config for d in DETECTORS}
        for name, value in sections.items():
            if name not in classes or not isinstance(value, classes[name]):
                raise TypeError(f"DetectorConfig: {name}={value!r} is not a detector's settings")
        object.__setattr__(self, "_sections", {n: sections.get(n) or c() for n, c in classes.items()})
        object.__setattr__(self, "max_findings_per_type", max_findings_per_type)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (copy, pickle): no section is named so
            raise AttributeError(name)
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"DetectorConfig is immutable (set {name} through its constructor)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DetectorConfig):
            return NotImplemented
        return (self._sections, self.max_findings_per_type) == (other._sections, other.max_findings_per_type)

    def __hash__(self) -> int:
        return hash((tuple(self._sections.values()), self.max_findings_per_type))

    def __reduce__(self) -> tuple[Any, ...]:
        """Copies and pickles are rebuilt through the constructor (attributes cannot be set one by one)."""
        return _rebuild, (self.max_findings_per_type, dict(self._sections))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={s!r}" for n, s in self._sections.items())
        return f"DetectorConfig({inner}, max_findings_per_type={self.max_findings_per_type})"

    def get(self, cls: type[S]) -> S:
        """The settings of type `cls` (the defaults for a detector this configuration does not know)."""
        for s in self._sections.values():
            if type(s) is cls:
                return s
        return cls()

    def of(self, detector: type[Detector]) -> Settings:
        return self._sections.get(detector.name) or detector.Config()

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None, where: str = "config.yaml") -> DetectorConfig:
        """Validate a parsed `detectors:` mapping; ValueError names the key and what was expected."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: detectors: expected a mapping, got {show(data)}")
        classes = {d.name: d.Config for d in DETECTORS}
        sections: dict[str, Settings] = {}
        limit = _MAX_FINDINGS[1]
        for key, value in data.items():
            path = f"{where}: detectors.{key}"
            if key == "max_findings_per_type":
                n = checked(path, value, int, (lambda v: v >= 1, _MAX_FINDINGS[0]))
                assert isinstance(n, int)
                limit = n
            elif key in classes:
                sections[key] = section(classes[key], value, path)
            else:
                known = ", ".join([*classes, "max_findings_per_type"])
                raise ValueError(f"{where}: detectors.{key}: unknown detector (expected one of {known})")
        return cls(limit, **sections)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {n: asdict(s) for n, s in self._sections.items()}
        return {**out, "max_findings_per_type": self.max_findings_per_type}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectorConfig:
        """From `to_dict()` (saved in checkpoints); detectors it does not name get their defaults."""
        sections = {det.name: det.Config(**d[det.name]) for det in DETECTORS if det.name in d}
        return cls(d.get("max_findings_per_type", _MAX_FINDINGS[1]), **sections)


def _rebuild(max_findings_per_type: int, sections: dict[str, Settings]) -> DetectorConfig:
    return DetectorConfig(max_findings_per_type, **sections)


class Analysis:
    """Per-run anomaly state, fed by `RunState` at every training display line (a `BlockObserver`)."""

    def __init__(self, config: DetectorConfig | None = None, detectors: Sequence[type[Detector]] = DETECTORS,
                 suppressions: Sequence[Suppression] = SUPPRESSIONS) -> None:
        self._config = config or DetectorConfig()
        self.detectors: list[Detector] = [d(self._config.of(d)) for d in detectors]
        self.suppressions = tuple(suppressions)
        self.types = tuple(d.name for d in detectors)
        self._advice = {d.name: d.ADVICE for d in detectors}
        self.tracker = Tracker(self.types, self._config.max_findings_per_type)
        self.history = History(max(d.window() for d in self.detectors) if self.detectors else 0)
        self._plans: dict[tuple[bool, bool], list[Detector]] = {}
        self._schedule()
        # solver summary (the report's)
        self.first_iteration: int | None = None
        self.first_loss: float | None = None
        self.last_iteration: int | None = None

    @property
    def config(self) -> DetectorConfig:
        return self._config

    @config.setter
    def config(self, config: DetectorConfig) -> None:
        """A reloaded configuration: thresholds change, state stays (the History keeps its length)."""
        self._config = config
        for d in self.detectors:
            d.config = config.of(type(d))
        self.tracker.max_findings = config.max_findings_per_type
        self._schedule()

    def _schedule(self) -> None:
        """Which enabled detectors run on a display line (with a debug block?, with non-finite values?), in
        list order: decided once per configuration, not per line."""
        self._plans = {(debug, nonfinite): [d for d in self.detectors
                                            if d.config.enabled and d.scope.covers(debug, nonfinite)]
                       for debug in (False, True) for nonfinite in (False, True)}

    def observe(self, block: Block) -> None:
        it = block.iteration
        history = self.history
        if history.prev_display is not None and it < history.prev_display:
            self._restart()
        if self.first_iteration is None:
            self.first_iteration, self.first_loss = it, block.loss
        self.last_iteration = it
        open_ = self.tracker.open
        view = View.of(block, history, open_)
        hits = {d.name: d.observe(block, view) for d in self._plans[view.debug, bool(block.nonfinite)]}
        for rule in self.suppressions:
            if hits.get(rule.target) is not None and rule.applies(hits, open_):
                hits[rule.target] = None
        if view.debug:
            history.remember(block, view.backward)
        for name, hit in hits.items():
            self.tracker.update(name, hit, it, self._advice[name])
        history.advance(block)

    def _restart(self) -> None:
        """The iteration went back (a new solver run in the same log): trailing windows start over."""
        self.history.restart()
        for d in self.detectors:
            d.restart()

    def detector(self, name: str) -> Detector | None:
        return next((d for d in self.detectors if d.name == name), None)

    # -- reading out (the metrics and the report) -----------------------------------------------------

    @property
    def active(self) -> dict[tuple[str, str], bool]:
        return self.tracker.active

    @property
    def counts(self) -> dict[str, int]:
        return self.tracker.counts

    @property
    def findings(self) -> list[Finding]:
        return self.tracker.findings

    @property
    def suppressed(self) -> dict[str, int]:
        return self.tracker.suppressed

    @property
    def open(self) -> dict[str, int]:
        return self.tracker.open

    @property
    def nonfinite_order(self) -> list[dict[str, Any]]:
        d = self.detector(Nonfinite.name)
        return d.order if isinstance(d, Nonfinite) else []

    @property
    def largest_before(self) -> list[dict[str, Any]]:
        d = self.detector(Nonfinite.name)
        return d.largest_before if isinstance(d, Nonfinite) else []

    def anomaly_samples(self) -> list[tuple[str, str, float]]:
        """(type, layer, 0/1) for `caffe_anomaly`; a type never seen yet is one `layer=""` series at 0."""
        return self.tracker.samples()

    # -- checkpointing ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Floats stay floats, NaN and inf included: checkpoint.write has the one encoding for them."""
        return {
            "format": FORMAT,
            "config": self.config.to_dict(),
            "first_iteration": self.first_iteration,
            "first_loss": None if self.first_loss is None else float(self.first_loss),
            "last_iteration": self.last_iteration,
            "history": self.history.to_dict(),
            "tracker": self.tracker.to_dict(),
            "detectors": {d.name: d.to_dict() for d in self.detectors},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], config: DetectorConfig | None = None,
                  detectors: Sequence[type[Detector]] = DETECTORS,
                  suppressions: Sequence[Suppression] = SUPPRESSIONS) -> Analysis:
        """Rebuild from `to_dict()`; `config` (the current configuration) wins over the saved one.

        ValueError for another format. A detector the saved state does not name starts fresh.
        """
        if d.get("format") != FORMAT:
            raise ValueError(f"analysis state of format {d.get('format')!r}, expected {FORMAT}")
        a = cls(config or DetectorConfig.from_dict(d["config"]), detectors, suppressions)
        a.first_iteration, a.last_iteration = d["first_iteration"], d["last_iteration"]
        a.first_loss = None if d["first_loss"] is None else float(d["first_loss"])
        a.history.load(d["history"])
        a.tracker.load(d["tracker"])
        saved = d["detectors"]
        for det in a.detectors:
            if det.name in saved:
                det.load(saved[det.name])
        return a


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
