"""What a detector is, what it sees and what it returns.

A detector is one class in its own module (see :class:`Detector`): its name (the `type` label and the
YAML key), its settings class, its advice, when it is evaluated (:class:`Scope`) and `observe`, which
decides from one display block (and the :class:`View` of what came before) whether its condition holds
there: a :class:`Hit`, or None. Everything else (the `caffe_anomaly` gauge, counts, episodes as
:class:`Finding`, suppression between detectors) is done for every detector alike by the Analysis.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, ClassVar, NamedTuple, Protocol

from exporter.detectors.history import History, Streaks, finite
from exporter.detectors.schema import Settings
from exporter.jsonvalue import finite_or_repr
from exporter.parse import split_key
from exporter.state import Block


class Scope(Enum):
    """Which display lines a detector is evaluated on (on the others its state stays as it was)."""

    DISPLAY = "every display line"
    DEBUG = "display lines with a debug_info block"
    DEBUG_OR_NONFINITE = "display lines with a debug_info block or a non-finite value"

    def covers(self, debug: bool, nonfinite: bool) -> bool:
        """Whether a display line with (or without) a debug block and non-finite values is in this scope."""
        return self is Scope.DISPLAY or debug or (self is Scope.DEBUG_OR_NONFINITE and nonfinite)


class View(NamedTuple):
    """What every detector may read at one display block besides the block itself."""

    debug: bool  # the block carries per-layer (debug_info) lines
    backward: list[float]  # its finite [Backward] values (debug blocks only, else [])
    history: History  # the earlier blocks, not yet including this one
    open: Collection[str]  # types whose episode is open (held at their last evaluated block)

    @classmethod
    def of(cls, block: Block, history: History, open: Collection[str]) -> View:
        run = block.run
        debug = block.debug_lines > 0 and bool(run.backward or run.forward["train"])
        return cls(debug, finite(run.backward.values()) if debug else [], history, open)


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
        self.iteration = iteration  # onset, if before this block (None: this block's iteration)


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


class Detector(Protocol):
    """One anomaly condition. Subclass it to inherit the defaults of a detector that keeps no state."""

    name: ClassVar[str]  # the `type` label of caffe_anomaly and the key under `detectors:` in config.yaml
    Config: ClassVar[type[Settings]]  # its thresholds (a frozen dataclass in the detector's module)
    ADVICE: ClassVar[str]  # what to do about it, from Caffe practice (every finding carries it)
    scope: ClassVar[Scope]
    config: Any  # an instance of Config; replaced when the configuration is reloaded

    def __init__(self, config: Any) -> None: ...

    def observe(self, block: Block, view: View) -> Hit | None:
        """Whether the condition holds at this display block, and where."""
        ...

    def window(self) -> int:
        """How many earlier debug blocks it reads from the History (the History keeps the most any needs)."""
        return 0

    def restart(self) -> None:
        """The iteration went back (a new solver run in the same log): trailing state starts over."""
        return None  # (a body: a detector without trailing state need not define it)

    def to_dict(self) -> dict[str, Any]:
        """Its own state for a checkpoint (JSON-ready; floats may be NaN/inf)."""
        return {}

    def load(self, d: Mapping[str, Any]) -> None:
        """Take back the state of `to_dict()`."""
        return None


class StreakDetector(Detector):
    """A per-layer condition that must hold for `need` consecutive debug displays (vanishing, dead...)."""

    streaks: Streaks

    def persisting(self, layers: Collection[str], block: Block, view: View, need: int) -> tuple[list[str], int | None]:
        """The layers whose streak reached `need`, and the onset of a new episode (first display of the streak)."""
        held = self.streaks.update(layers, block.iteration, need)
        onset = self.streaks.onset(held) if held and self.name not in view.open else None
        return held, onset

    def restart(self) -> None:
        self.streaks.clear()

    def to_dict(self) -> dict[str, Any]:
        return {"streaks": self.streaks.to_dict()}

    def load(self, d: Mapping[str, Any]) -> None:
        self.streaks.load(d["streaks"])


@dataclass(frozen=True)
class Suppression:
    """A hit of `target` is not reported in a display block where one of `by` holds (it is their consequence).

    A detector of `held` that was not evaluated at the block (a display line without debug_info) holds
    while its episode is open. The target is still evaluated, so its own trailing state moves on.
    """

    target: str
    by: tuple[str, ...]
    held: tuple[str, ...] = ()

    def applies(self, hits: Mapping[str, Hit | None], open: Collection[str]) -> bool:
        return any(hits.get(t) is not None for t in self.by) or any(
            t not in hits and t in open for t in self.held
        )


jnum = finite_or_repr  # JSON values of a finding: NaN/inf as their repr (the one helper, shared with diagnose)


def largest(values: Mapping[str, str | float], iteration: int, n: int) -> list[dict[str, Any]]:
    """The n largest finite values of a key -> value mapping (the explosion before a NaN)."""
    fin = ((f, k) for k, v in values.items() if math.isfinite(f := float(v)))
    out = []
    for f, k in heapq.nlargest(n, fin):
        parts = split_key(k)
        out.append({"iteration": iteration, "key": k, "layer": parts[0] if parts else "", "value": f})
    return out
