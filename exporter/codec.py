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


def encode(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (types.UnionType, typing.Union):
        return encode(value, next(a for a in args if a is not type(None)))
    if hint is float:
        return float(value)
    if dataclasses.is_dataclass(hint):
        return to_json(value)
    if _is_namedtuple(hint):
        h = _hints(hint)
        return [encode(getattr(value, f), h[f]) for f in hint._fields]
    if origin in (dict, Counter):
        kt, vt = args if origin is dict else (args[0], int)
        if typing.get_origin(kt) is tuple:
            return [[*k, encode(v, vt)] for k, v in value.items()]
        return {k: encode(v, vt) for k, v in value.items()}
    if origin is set:
        return sorted(encode(v, args[0]) for v in value)
    if origin is list or (origin is tuple and args[-1] is Ellipsis):
        return [encode(v, args[0]) for v in value]
    if origin is tuple:
        return [encode(v, t) for v, t in zip(value, args, strict=True)]
    return value


def decode(data: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if data is None and type(None) in args:
            return None
        return decode(data, next(a for a in args if a is not type(None)))
    if hint in _SCALARS:
        return _SCALARS[hint](data)
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(data, hint)  # type: ignore[arg-type]
    if _is_namedtuple(hint):
        h = _hints(hint)
        return hint(*(decode(v, h[f]) for v, f in zip(_array(data), hint._fields, strict=True)))
    if origin in (dict, Counter):
        return _decode_mapping(data, origin, args)
    if origin is set:
        return {decode(v, args[0]) for v in _array(data)}
    if origin is list or (origin is tuple and args[-1] is Ellipsis):
        items = [decode(v, args[0]) for v in _array(data)]
        return items if origin is list else tuple(items)
    if origin is tuple:
        return tuple(decode(v, t) for v, t in zip(_array(data), args, strict=True))
    raise TypeError(f"codec: no encoding for {hint!r}")


def _decode_mapping(data: Any, origin: type, args: tuple[Any, ...]) -> dict[Any, Any]:
    kt, vt = args if origin is dict else (args[0], int)
    if typing.get_origin(kt) is tuple:
        n = len(typing.get_args(kt))
        rows = [_array(r) for r in _array(data)]
        if any(len(r) != n + 1 for r in rows):
            raise ValueError(f"codec: rows of {n} key parts and a value expected, got {data!r:.80}")
        pairs = [(decode(r[:n], kt), decode(r[n], vt)) for r in rows]
    else:
        items = data.items() if isinstance(data, Mapping) else [tuple(_array(r)) for r in _array(data)]
        pairs = [(decode(k, kt), decode(v, vt)) for k, v in items]
    return Counter(dict(pairs)) if origin is Counter else dict(pairs)


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


def _is_namedtuple(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")


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
