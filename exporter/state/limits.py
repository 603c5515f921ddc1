"""What one exporter stores at most, and the admission of each new series against it.

A new per-layer key, `[Update]` key or non-finite counter of a run is admitted once (names cut to
max_name_bytes, the layer filter, the run's and the registry's series budgets); a refusal is counted by
reason in the shared `SeriesBudget.dropped` (caffe_exporter_series_dropped_total).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.parse import layer_key, split_key, split_update_key
from exporter.state.records import PHASES

if TYPE_CHECKING:
    from exporter.state.run import RunState

UNLIMITED = 1 << 62
DROP_REASONS = ("max_series_per_run", "max_series", "max_runs", "name_too_long", "layer_filter")

# uncached: a key is admitted once, and a flood of refused keys must not fill parse's cache of stored ones
_split_key = split_key.__wrapped__
_split_update_key = split_update_key.__wrapped__


@dataclass(frozen=True)
class Limits:
    """What one exporter stores at most (docs/configuration.md, `limits:`); over a limit is not stored."""

    max_series_per_run: int = 20000
    max_series: int = 1_000_000
    max_runs: int = 10_000
    max_name_bytes: int = 256
    layer_include: re.Pattern[str] | None = None  # fullmatch on the layer name; None keeps every layer
    layer_exclude: re.Pattern[str] | None = None

    @classmethod
    def unlimited(cls) -> Limits:
        return cls(UNLIMITED, UNLIMITED, UNLIMITED, UNLIMITED)

    def keeps_layer(self, layer: str) -> bool:
        if self.layer_include is not None and not self.layer_include.fullmatch(layer):
            return False
        return self.layer_exclude is None or not self.layer_exclude.fullmatch(layer)


@dataclass
class SeriesBudget:
    """Series stored by all runs of a registry, against `limits`; what was refused, by reason (a counter)."""

    limits: Limits = field(default_factory=Limits.unlimited)
    total: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def cut(name: str, max_bytes: int) -> str:
    """`name` cut to at most max_bytes of UTF-8 (the same object when it fits)."""
    b = name.encode()
    return name if len(b) <= max_bytes else b[:max_bytes].decode("utf-8", "ignore")


def room(run: RunState, units: int) -> bool:
    """Whether `units` more series fit, the run's and the registry's limits both; counts a refusal."""
    b = run.budget
    if run.series + units > b.limits.max_series_per_run:
        b.dropped["max_series_per_run"] += 1
        return False
    if b.total + units > b.limits.max_series:
        b.dropped["max_series"] += 1
        return False
    run.series += units
    b.total += units
    return True


def name(run: RunState, text: str) -> str:
    """A name as stored (cut to max_name_bytes; a cut is counted)."""
    short = cut(text, run.budget.limits.max_name_bytes)
    if short is not text:
        run.budget.dropped["name_too_long"] += 1
    return short


def admit(run: RunState, key: str, phase: str, values: Mapping[str, float] | None = None) -> str | None:
    """The key under which a new per-layer value of `phase` is stored (names cut to max_name_bytes);
    None when the layer filter or a series limit refuses it (counted). `values`: the dict it goes to,
    when the cut key may already be in it."""
    parts = _split_key(key)
    if parts is None:  # no layer/blob key: rendered nowhere, so stored nowhere
        return None
    layer, role, blob = parts
    lim = run.budget.limits
    if 4 * len(key) > lim.max_name_bytes:  # some part may be over max_name_bytes once UTF-8 encoded
        layer, blob = name(run, layer), name(run, blob)
        key = layer_key(layer, role, blob)
        target = values if values is not None else run.forward[phase]
        if key in target:
            return key
    if not lim.keeps_layer(layer):
        run.budget.dropped["layer_filter"] += 1
        return None
    new_layer = layer not in run.layers[phase]
    if not room(run, 1 + new_layer):
        return None
    if new_layer:
        run.layers[phase].add(layer)
    return key


def admit_update(run: RunState, key: str) -> str | None:
    """As admit, for an `[Update]` key ("conv1, param 0"): two series (data and diff), no layer_info."""
    parts = _split_update_key(key)
    if parts is None:
        return None
    layer, param = parts
    lim = run.budget.limits
    if 4 * len(key) > lim.max_name_bytes:
        layer, param = name(run, layer), name(run, param)
        key = f"{layer}, param {param}"
        if key in run.update_diff:
            return key
    if not lim.keeps_layer(layer):
        run.budget.dropped["layer_filter"] += 1
        return None
    return key if room(run, (key not in run.update_data) + (key not in run.update_diff)) else None


def admit_counter(run: RunState, key: tuple[str, str, str, str]) -> bool:
    """Whether a new non-finite counter (phase, stage, layer, blob) is stored."""
    if key[2] and not run.budget.limits.keeps_layer(key[2]):
        run.budget.dropped["layer_filter"] += 1
        return False
    return room(run, 1)


def recount(run: RunState) -> None:
    """Rebuild `run.series` and `run.layers` from the stored values (a run restored from a checkpoint)."""
    run.layers = {p: set() for p in PHASES}
    for phase in PHASES:
        for layer, _, _, _ in run.blobs(phase, "forward"):
            run.layers[phase].add(layer)
    for layer, _, _, _ in run.blobs("train", "backward"):
        run.layers["train"].add(layer)
    run.series = (sum(len(d) for d in run.forward.values()) + len(run.backward) + len(run.update_data)
                  + len(run.update_diff) + sum(len(x) for x in run.layers.values()) + len(run.nonfinite))
