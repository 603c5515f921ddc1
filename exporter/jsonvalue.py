"""Numbers in the JSON documents people read (`diagnose --json`, findings' values): strict JSON has no token
for NaN or infinity, so they are written as Python's repr, the strings "nan", "inf", "-inf"."""

from __future__ import annotations

import math


def finite_or_repr(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)


def optional_number(v: float | None) -> float | str | None:
    """`finite_or_repr` for a value that may not have been seen yet (None stays null)."""
    return None if v is None else finite_or_repr(v)
