"""Saved state <-> JSON, derived from the dataclass fields themselves.

Every field of a dataclass is saved unless it is declared `field(..., metadata=DERIVED)` (rebuilt from configuration or
recomputed after a restore), so a field added later is checkpointed without anyone remembering to. The
encoding follows the field's type annotation:

* `str`, `int`, `bool`, `None`: as they are (decoding checks the type: a damaged file is an error).
* `float`: a JSON number. **Non-finite floats are the tokens `NaN`, `Infinity` and `-Infinity`**, which
  Python's json writes with `allow_nan=True` (checkpoint.write) and reads back; this is the one encoding
  of NaN/Inf. Decoding also accepts an integer, and the strings "nan"/"inf" of older files.
* `list`, `tuple` (fixed or `...`), `set` (sorted), NamedTuple (its fields in order): a JSON array.
* `dict[str, V]` and `Counter[str]`: a JSON object; decoding also reads `[[key, value], ...]` (older files).
* `dict[tuple[...], V]`: an array of rows `[*key, value]` (JSON objects have string keys only).
* a dataclass: an object of its saved fields; a field missing from the object gets its default (files
  written before the field existed); decoding also reads the positional array of older files.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
_DERIVED = "codec.derived"
# `field(..., metadata=DERIVED)`: the field is not saved (it is rebuilt after a restore)
DERIVED: Mapping[str, bool] = types.MappingProxyType({_DERIVED: True})


def saved_fields(cls: type) -> list[str]:
    """The names of the fields of a dataclass that are saved, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get(_DERIVED)]


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    """The resolved field types of a class (cached: resolving them is slower than encoding a run)."""
    return typing.get_type_hints(cls)


def to_json(obj: Any) -> dict[str, Any]:
    """The JSON-ready form of a dataclass instance (see the module docstring)."""
    cls: Any = type(obj)
    hints = _hints(cls)
    return {name: encode(getattr(obj, name), hints[name]) for name in saved_fields(cls)}


def from_json(cls: type[T], data: Any) -> T:
    """An instance of dataclass `cls` from `to_json`'s form; TypeError/ValueError/KeyError if it has not
    that shape (a damaged or foreign file)."""
    return decode(data, cls)  # type: ignore[no-any-return]


@functools.cache
def _kind(hint: Any) -> str:
    """Which encoding a type annotation takes (cached: a run encodes the same few hints over and over)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return "optional"
    if hint in _SCALARS:
        return "scalar"
    if dataclasses.is_dataclass(hint):
        return "dataclass"
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):
        return "namedtuple"
    if origin in (dict, Counter):
        key = args[0]
        return "rows" if typing.get_origin(key) is tuple else "object"
    if origin is set or origin is list or (origin is tuple and args[-1] is Ellipsis):
        return "array"
    if origin is tuple:
        return "tuple"
    raise TypeError(f"codec: no encoding for {hint!r}")


def _item_types(hint: Any) -> tuple[Any, ...]:
    args = typing.get_args(hint)
    return (args[0], int) if typing.get_origin(hint) is Counter else args


def encode(value: Any, hint: Any) -> Any:
    """The JSON form of `value`, annotated `hint`."""
    if value is None:
        return None
    return _ENCODE[_kind(hint)](value, hint)


def decode(data: Any, hint: Any) -> Any:
    """The value annotated `hint` from its JSON form; TypeError/ValueError if it has not that shape."""
    return _DECODE[_kind(hint)](data, hint)


def _optional(hint: Any) -> Any:
    return next(a for a in typing.get_args(hint) if a is not type(None))


def _encode_array(value: Any, hint: Any) -> list[Any]:
    t = typing.get_args(hint)[0]
    items = [encode(v, t) for v in value]
    return sorted(items) if typing.get_origin(hint) is set else items


def _decode_array(data: Any, hint: Any) -> Any:
    items = [decode(v, typing.get_args(hint)[0]) for v in _array(data)]
    return {"list": list, "set": set, "tuple": tuple}[typing.get_origin(hint).__name__](items)


def _decode_optional(data: Any, hint: Any) -> Any:
    if data is None and type(None) in typing.get_args(hint):
        return None
    return decode(data, _optional(hint))


def _decode_namedtuple(data: Any, hint: Any) -> Any:
    h = _hints(hint)
    return hint(*(decode(v, h[f]) for v, f in zip(_array(data), hint._fields, strict=True)))


_ENCODE: dict[str, Callable[[Any, Any], Any]] = {
    "optional": lambda v, h: encode(v, _optional(h)),
    "scalar": lambda v, h: float(v) if h is float else v,
    "dataclass": lambda v, h: to_json(v),
    "namedtuple": lambda v, h: [encode(getattr(v, f), _hints(h)[f]) for f in h._fields],
    "object": lambda v, h: {k: encode(x, _item_types(h)[1]) for k, x in v.items()},
    "rows": lambda v, h: [[*k, encode(x, _item_types(h)[1])] for k, x in v.items()],
    "array": _encode_array,
    "tuple": lambda v, h: [encode(x, t) for x, t in zip(v, typing.get_args(h), strict=True)],
}
_DECODE: dict[str, Callable[[Any, Any], Any]] = {
    "optional": _decode_optional,
    "scalar": lambda d, h: _SCALARS[h](d),
    "dataclass": lambda d, h: _decode_dataclass(d, h),
    "namedtuple": _decode_namedtuple,
    "object": lambda d, h: _decode_mapping(d, h),
    "rows": lambda d, h: _decode_mapping(d, h),
    "array": _decode_array,
    "tuple": lambda d, h: tuple(decode(x, t) for x, t in zip(_array(d), typing.get_args(h), strict=True)),
}


def _decode_mapping(data: Any, hint: Any) -> dict[Any, Any]:
    kt, vt = _item_types(hint)
    if typing.get_origin(kt) is tuple:
        n = len(typing.get_args(kt))
        rows = [_array(r) for r in _array(data)]
        if any(len(r) != n + 1 for r in rows):
            raise ValueError(f"codec: rows of {n} key parts and a value expected, got {data!r:.80}")
        pairs = [(decode(r[:n], kt), decode(r[n], vt)) for r in rows]
    else:
        items = data.items() if isinstance(data, Mapping) else [tuple(_array(r)) for r in _array(data)]
        pairs = [(decode(k, kt), decode(v, vt)) for k, v in items]
    return Counter(dict(pairs)) if typing.get_origin(hint) is Counter else dict(pairs)


def _decode_dataclass(data: Any, cls: type) -> Any:
    names = saved_fields(cls)
    if isinstance(data, list):  # older files saved small dataclasses as their fields in order
        if len(data) != len(names):
            raise ValueError(f"codec: {cls.__name__} needs {len(names)} values, got {len(data)}")
        data = dict(zip(names, data, strict=True))
    if not isinstance(data, Mapping):
        raise TypeError(f"codec: {cls.__name__} must be an object, got {type(data).__name__}")
    hints = _hints(cls)
    return cls(**{n: decode(data[n], hints[n]) for n in names if n in data})


def _array(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise TypeError(f"codec: an array expected, got {type(data).__name__}")
    return data


def _exact(kind: type) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if type(v) is not kind:
            raise TypeError(f"codec: {kind.__name__} expected, got {v!r:.40}")
        return v
    return check


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise TypeError(f"codec: a number expected, got {v!r:.40}")
    return float(v)  # "nan"/"inf" strings of older files read back; other strings are a ValueError


_SCALARS: dict[Any, Callable[[Any], Any]] = {str: _exact(str), int: _exact(int), bool: _exact(bool), float: _float}
