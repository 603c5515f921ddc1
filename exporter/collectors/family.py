"""A metric family declared once: its name, type, HELP and label names.

`describe()` announces families built from the declaration and `collect()` fills families built from the
same one, with label values given in the declared order, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    type: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...] = ()  # the family's own labels, after the run's (`run` and configured ones)
    sample: str = field(init=False)  # the sample name: counters end in _total

    def __post_init__(self) -> None:
        object.__setattr__(self, "sample", self.name + "_total" if self.type == "counter" else self.name)

    def empty(self) -> Metric:
        """The family without samples (what describe() returns, and what collect() fills)."""
        cls = CounterMetricFamily if self.type == "counter" else GaugeMetricFamily
        return cls(self.name, self.help, labels=self.labels)

    def add(self, fam: Metric, value: float, *values: str, base: Mapping[str, str] | None = None) -> None:
        """One sample: `values` are this family's label values in declared order, after `base`'s labels."""
        labels = dict(zip(self.labels, values, strict=True))
        fam.add_sample(self.sample, {**base, **labels} if base else labels, value)

    def of(self, value: float, *values: str) -> Metric:
        """The family holding one sample."""
        fam = self.empty()
        self.add(fam, value, *values)
        return fam
