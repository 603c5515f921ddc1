"""From hits to what the metrics and the report show: the same bookkeeping for every detector.

* `active[(type, layer)]`: the `caffe_anomaly` gauge (1 while the condition holds at the newest display
  iteration it was evaluated on; layers seen before stay at 0);
* `counts[type]`: `caffe_anomalies_total`, display iterations in which the condition held;
* `findings`: one :class:`Finding` per episode (onset until the condition stops holding), at most
  `max_findings` per type; later episodes are only counted in `suppressed`;
* `open[type]`: the index in `findings` of the type's open episode (-1 when it is not kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from exporter.detectors.base import Finding, Hit


class Tracker:
    def __init__(self, types: Iterable[str], max_findings: int) -> None:
        self.types = tuple(types)
        self.max_findings = max_findings
        self.active: dict[tuple[str, str], bool] = {}
        self.counts: dict[str, int] = dict.fromkeys(self.types, 0)
        self.findings: list[Finding] = []
        self.suppressed: dict[str, int] = dict.fromkeys(self.types, 0)
        self.open: dict[str, int] = {}

    def update(self, typ: str, hit: Hit | None, iteration: int, advice: str) -> None:
        """Record the outcome of one evaluation of `typ` at display `iteration`."""
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
            self._begin(typ, hit, iteration, advice)
        elif idx >= 0:
            self._extend(self.findings[idx], hit, iteration)

    def _begin(self, typ: str, hit: Hit, iteration: int, advice: str) -> None:
        if sum(1 for f in self.findings if f.type == typ) >= self.max_findings:
            self.suppressed[typ] += 1
            self.open[typ] = -1
            return
        onset = hit.iteration if hit.iteration is not None else iteration
        self.findings.append(
            Finding(typ, onset, iteration, 1, list(hit.named), hit.message, hit.values, hit.lines, advice)
        )
        self.open[typ] = len(self.findings) - 1

    @staticmethod
    def _extend(f: Finding, hit: Hit, iteration: int) -> None:
        f.last_iteration = iteration
        f.display_iterations += 1
        for x in hit.named:
            if x not in f.layers:
                f.layers.append(x)

    def samples(self) -> list[tuple[str, str, float]]:
        """(type, layer, 0/1) for `caffe_anomaly`; a type never seen yet is one `layer=""` series at 0."""
        seen = {t for t, _ in self.active}
        out = [(t, layer, 1.0 if on else 0.0) for (t, layer), on in self.active.items()]
        out += [(t, "", 0.0) for t in self.types if t not in seen]
        return sorted(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": [[t, layer, on] for (t, layer), on in self.active.items()],
            "counts": dict(self.counts),
            "findings": [f.to_dict() for f in self.findings],
            "suppressed": dict(self.suppressed),
            "open": dict(self.open),
        }

    def load(self, d: Mapping[str, Any]) -> None:
        self.active = {(str(t), str(layer)): bool(on) for t, layer, on in d["active"]}
        self.counts.update(d["counts"])
        self.findings = [Finding.from_dict(f) for f in d["findings"]]
        self.suppressed.update(d["suppressed"])
        self.open = {str(t): int(i) for t, i in d["open"].items()}
