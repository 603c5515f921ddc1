"""Detector thresholds as data: each detector's settings dataclass declares its keys, defaults and rules.

A detector module defines its settings as a frozen subclass of :class:`Settings` whose fields are made
with :func:`setting` (default plus the check a configured value must pass and how to say what was
expected). The `detectors:` section of config.yaml is validated from those declarations alone, so a new
detector's keys reach the YAML schema without an edit here, and tests/detectors/test_docs.py holds
docs/detectors.md to the same declarations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar, get_type_hints

Check = Callable[[float], bool]
Rule = tuple[Check, str]  # (check, what was expected: "a number > 1")


def setting(default: Any, check: Check, expect: str) -> Any:
    """A threshold field: its default and the rule a configured value must satisfy.

    Typed `Any` so a field reads `factor: float = setting(10.0, ...)`; the dataclass sees a `Field`.
    """
    return field(default=default, metadata={"rule": (check, expect)})


@dataclass(frozen=True)
class Settings:
    """What every detector's settings have: `enabled` (a disabled detector is never evaluated)."""

    enabled: bool = True


S = TypeVar("S", bound=Settings)


def show(v: object) -> str:
    return repr(v) if isinstance(v, str) else f"{v!r} ({type(v).__name__})"


def keys(cls: type[Settings]) -> dict[str, tuple[type, Rule | None]]:
    """key -> (bool, int or float, the rule or None), in declaration order."""
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("rule")) for f in fields(cls)}


def checked(path: str, v: object, want: type, rule: Rule | None) -> object:
    """`v` as a `want` (bool, int, float) satisfying `rule`; ValueError names `path` and what was expected."""
    if want is bool:
        if not isinstance(v, bool):
            raise ValueError(f"{path}: expected true or false, got {show(v)}")
        return v
    expect = rule[1] if rule else ("an integer" if want is int else "a number")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{path}: expected {expect}, got {show(v)}")
    if want is int and not isinstance(v, int) and not float(v).is_integer():
        raise ValueError(f"{path}: expected {expect}, got {show(v)}")
    num = float(v)
    if not math.isfinite(num) or (rule is not None and not rule[0](num)):
        raise ValueError(f"{path}: expected {expect}, got {show(v)}")
    return int(num) if want is int else num


def section(cls: type[S], data: object, path: str) -> S:
    """One detector's YAML mapping (None: all defaults) validated against its settings class."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping, got {show(data)}")
    known = keys(cls)
    values: dict[str, Any] = {}
    for k, v in data.items():
        if k not in known:
            raise ValueError(f"{path}.{k}: unknown key (expected one of {', '.join(known)})")
        want, rule = known[k]
        values[str(k)] = checked(f"{path}.{k}", v, want, rule)
    return cls(**values)
