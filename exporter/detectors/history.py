"""What the detectors remember of earlier display blocks: bounded, so memory per run stays constant.

:class:`History` is shared by every detector of a run and updated by the Analysis after all of them have
seen a block, so a detector always reads the blocks *before* the current one. :class:`Streaks` is a
detector's own count of consecutive debug displays per layer (vanishing, zero_gradient, dead).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

from exporter.state import Block


class Entry(NamedTuple):
    """One earlier debug display block, as the growth checks compare it."""

    iteration: int
    l2: float  # the `All net params` L2 diff norm, -1 when the log prints none
    largest: float  # the largest finite per-layer [Backward] value
    loss: float


class History:
    """The trailing debug blocks (summary and the [Backward] values) and where the previous display was."""

    def __init__(self, window: int) -> None:
        self.prev_line = 0  # line of the previous display line (start of a block's evidence range)
        self.prev_display: int | None = None  # its iteration
        self.window: deque[Entry] = deque(maxlen=window)
        self.snapshots: deque[dict[str, str | float]] = deque(maxlen=window)  # backward values per entry

    def evidence(self, block: Block) -> list[int]:
        """The lines of this display block: previous display line + 1 .. this display line."""
        return [self.prev_line + 1, block.line] if self.prev_line else [block.line]

    def remember(self, block: Block, backward: list[float]) -> None:
        """Keep a debug block (after every detector has seen it)."""
        norms = block.run.norms
        l2 = norms[3] if norms is not None else -1.0
        self.window.append(Entry(block.iteration, l2, max(backward) if backward else 0.0, block.loss))
        self.snapshots.append(dict(block.run.backward))

    def advance(self, block: Block) -> None:
        self.prev_line = block.line
        self.prev_display = block.iteration

    def restart(self) -> None:
        """A new solver run from scratch in the same log: its blocks are not compared with the old run's."""
        self.window.clear()
        self.snapshots.clear()

    def to_dict(self) -> dict[str, Any]:
        """Floats stay floats, NaN and inf included: checkpoint.write has the one encoding for them."""
        return {
            "prev_line": self.prev_line,
            "prev_display": self.prev_display,
            "window": [[e.iteration, float(e.l2), float(e.largest), float(e.loss)] for e in self.window],
            "snapshots": _columns(list(self.snapshots)),
        }

    def load(self, d: Mapping[str, Any]) -> None:
        """The state of `to_dict()`; a window longer than this one's keeps its newest entries."""
        self.prev_line, self.prev_display = int(d["prev_line"]), d["prev_display"]
        self.window.extend(Entry(int(i), float(a), float(b), float(c)) for i, a, b, c in d["window"])
        self.snapshots.extend(_rows(d["snapshots"]))


def _columns(snapshots: list[dict[str, str | float]]) -> dict[str, Any]:
    """The trailing [Backward] values with each layer key written once: five copies of every key were the largest
    part of a checkpoint. A row whose keys are not in the shared order (never seen: the values only grow) keeps
    its own pairs, so the restored dicts iterate exactly as the saved ones."""
    keys: dict[str, None] = {}
    for snap in snapshots:
        keys.update(dict.fromkeys(snap))
    order = list(keys)
    rows: list[Any] = []
    for snap in snapshots:
        if list(snap) == [k for k in order if k in snap]:
            rows.append([float(snap[k]) if k in snap else None for k in order])
        else:
            rows.append({"pairs": [[k, float(v)] for k, v in snap.items()]})
    return {"keys": order, "rows": rows}


def _rows(saved: Mapping[str, Any]) -> list[dict[str, str | float]]:
    keys = [str(k) for k in saved["keys"]]
    out: list[dict[str, str | float]] = []
    for row in saved["rows"]:
        if isinstance(row, Mapping):
            out.append({str(k): float(v) for k, v in row["pairs"]})
        else:
            if len(row) != len(keys):
                raise ValueError("a saved backward row does not match its keys")
            out.append({k: float(v) for k, v in zip(keys, row, strict=True) if v is not None})
    return out


class Streaks:
    """Consecutive debug displays per layer in which a detector's condition held, and when each began."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.start: dict[str, int] = {}

    def update(self, layers: Collection[str], iteration: int, need: int) -> list[str]:
        """Count this display for `layers` (every other layer starts over); those whose streak reached `need`."""
        for layer in [x for x in self.counts if x not in layers]:
            del self.counts[layer]
            self.start.pop(layer, None)
        out = []
        for layer in layers:
            n = self.counts.get(layer, 0) + 1
            self.counts[layer] = n
            if n == 1:
                self.start[layer] = iteration
            if n >= need:
                out.append(layer)
        return out

    def onset(self, layers: Iterable[str]) -> int | None:
        """The first display of the earliest streak among `layers`."""
        return min((self.start[x] for x in layers if x in self.start), default=None)

    def clear(self) -> None:
        self.counts.clear()
        self.start.clear()

    def to_dict(self) -> list[list[Any]]:
        return [[layer, n, self.start.get(layer)] for layer, n in self.counts.items()]

    def load(self, d: Iterable[list[Any]]) -> None:
        for layer, n, start in d:
            self.counts[str(layer)] = int(n)
            if start is not None:
                self.start[str(layer)] = int(start)


def finite(values: Iterable[str | float]) -> list[float]:
    """Per-layer values as floats, without NaN/inf (checked with one sum first: they are rare)."""
    out = list(map(float, values))
    return out if not out or math.isfinite(sum(out)) else [v for v in out if math.isfinite(v)]
