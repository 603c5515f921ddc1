"""docs/detectors.md lists exactly each detector's keys and defaults, as its settings dataclass declares them."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from exporter.detectors import DETECTORS, Detector, DetectorConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "detectors.md"


def _section(name: str) -> str:
    m = re.search(rf"^### `{name}`.*?$(.*?)(?=^##)", DOC.read_text(), re.M | re.S)
    assert m, f"docs/detectors.md has no section ### `{name}`"
    return m.group(1)


def test_the_yaml_example_is_exactly_the_defaults() -> None:
    m = re.search(r"```yaml\n(detectors:\n.*?)```", DOC.read_text(), re.S)
    assert m
    assert yaml.safe_load(m.group(1))["detectors"] == DetectorConfig().to_dict()


def test_the_sections_follow_the_list() -> None:
    headings = re.findall(r"^### `(\w+)`", DOC.read_text(), re.M)
    assert headings == [d.name for d in DETECTORS]


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_each_table_lists_the_keys_and_defaults(detector: type[Detector]) -> None:
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", _section(detector.name), re.M)
    documented = {key: float(default.strip()) for key, default in rows}
    defaults = detector.Config()
    declared = {f.name: float(getattr(defaults, f.name)) for f in fields(defaults) if f.name != "enabled"}
    assert documented == declared
