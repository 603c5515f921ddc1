"""The YAML configuration: every key has a default, every error names the file, the key and the expectation.

See docs/configuration.md for the keys. Command-line flags override the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from exporter import shard as sharding
from exporter.detectors import DetectorConfig
from exporter.identity import SourceRule, check_label_name
from exporter.lifecycle import LifecycleConfig, parse_duration
from exporter.shard import Shard
from exporter.state import Limits

DEFAULT_LISTEN = "0.0.0.0:10052"
T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the file."""


@dataclass(frozen=True)
class Config:
    listen: str = DEFAULT_LISTEN
    sources: tuple[SourceRule, ...] = (SourceRule("."),)
    start_at: str = "beginning"  # or "end": skip the history of files that exist at start
    poll: bool = False  # stat-polling instead of inotify (NFS and other network filesystems)
    poll_interval: float = 1.0  # seconds between safety-net polls (and between polls with poll: true)
    max_line_bytes: int = 1 << 20
    read_bytes: int = 4 << 20
    max_open_files: int = 256  # descriptors held for log files; idle ones are closed, their offsets kept
    idle_close: float = 30.0  # seconds without growth after which a file's descriptor is closed
    rotate_wait: float = 5.0  # seconds a renamed-away file is still read until it stops growing
    checkpoint_file: str = ""  # offsets and state saved here so a restart continues (docs/configuration.md)
    checkpoint_interval: float = 30.0
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    limits: Limits = field(default_factory=Limits)
    runs: LifecycleConfig = field(default_factory=LifecycleConfig)
    shard: Shard = field(default_factory=Shard)  # this exporter's share of the runs (docs/configuration.md, shard)

    @property
    def max_series_per_run(self) -> int:
        return self.limits.max_series_per_run


def parse_listen(value: str, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT (e.g. 0.0.0.0:10052 or :10052), got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _get(d: Mapping[str, Any], key: str, where: str, check: Callable[[Any], bool], expected: str,
         default: T) -> T:
    if key not in d:
        return default
    v = d[key]
    if not check(v):
        sep = " " if where.endswith(":") else "."
        raise ConfigError(f"{where}{sep}{key}: expected {expected}, got {v!r}")
    return v  # type: ignore[no-any-return]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _source(item: Any, where: str) -> SourceRule:
    if isinstance(item, str):
        item = {"path": item}
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a path or a mapping with 'path', got {item!r}")
    unknown = set(item) - {"path", "run_regex", "labels"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected path, run_regex, labels")
    path = _get(item, "path", where, lambda v: isinstance(v, str) and v != "", "a non-empty string", "")
    if not path:
        raise ConfigError(f"{where}.path: missing (a file, glob, directory or '-')")
    pattern = _get(item, "run_regex", where, lambda v: isinstance(v, str), "a regular expression string", "")
    labels: dict[str, Any] = _get(item, "labels", where, lambda v: isinstance(v, dict), "a mapping of label: value", {})
    return SourceRule(path, _run_regex(pattern, where), _labels(labels, where))


def _run_regex(pattern: str, where: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{where}.run_regex: invalid regular expression: {e}") from None
    for name in regex.groupindex:
        try:
            check_label_name(name, f"{where}.run_regex group")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return regex


def _labels(labels: Mapping[Any, Any], where: str) -> dict[str, str]:
    for k, v in labels.items():
        try:
            check_label_name(str(k), f"{where}.labels")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise ConfigError(f"{where}.labels.{k}: expected a string, got {v!r}")
    return {str(k): str(v) for k, v in labels.items()}


def _seconds(low: float, high: float | None = None, low_ok: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if not isinstance(v, int | float) or isinstance(v, bool):
            return False
        return (v >= low if low_ok else v > low) and (high is None or v <= high)
    return check


# the plain top-level settings: key -> (check, what the error says is expected); defaults are Config's
_SCALARS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "listen": (lambda v: isinstance(v, str), "HOST:PORT"),
    "start_at": (lambda v: v in ("beginning", "end"), "'beginning' or 'end'"),
    "poll": (lambda v: isinstance(v, bool), "true or false"),
    "poll_interval": (_seconds(0, 3600), "a number of seconds in (0, 3600]"),
    "max_line_bytes": (lambda v: _is_int(v) and v >= 1024, "an integer >= 1024"),
    "read_bytes": (lambda v: _is_int(v) and v >= 4096, "an integer >= 4096"),
    "max_open_files": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "idle_close": (_seconds(0), "a positive number of seconds"),
    "rotate_wait": (_seconds(0, low_ok=True), "a number of seconds >= 0"),
    "checkpoint_file": (lambda v: isinstance(v, str), "a file path string"),
    "checkpoint_interval": (_seconds(0), "a positive number of seconds"),
}
_FLOATS = {"poll_interval", "idle_close", "rotate_wait", "checkpoint_interval"}
_SECTIONS = {"sources", "limits", "runs", "detectors", "shard"}


def from_mapping(data: Any, where: str) -> Config:
    """Validate a parsed YAML document; `where` (the file name) prefixes every error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of settings at the top level, got {type(data).__name__}")
    known = set(_SCALARS) | _SECTIONS
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    w = where + ":"
    defaults = Config()
    values: dict[str, Any] = {}
    for key, (check, expected) in _SCALARS.items():
        v = _get(data, key, w, check, expected, getattr(defaults, key))
        values[key] = float(v) if key in _FLOATS else v
    parse_listen(values["listen"], f"{where}: listen")
    raw_sources = _get(data, "sources", w, lambda v: isinstance(v, list) and len(v) > 0,
                       "a non-empty list of sources", None)
    if raw_sources is not None:
        values["sources"] = tuple(_source(item, f"{where}: sources[{i}]") for i, item in enumerate(raw_sources))
    values["limits"] = _limits(_get(data, "limits", w, lambda v: isinstance(v, dict), "a mapping", {}),
                               f"{where}: limits")
    values["runs"] = _lifecycle(_get(data, "runs", w, lambda v: isinstance(v, dict), "a mapping", {}),
                                f"{where}: runs")
    if "shard" in data:
        values["shard"] = parse_shard(data["shard"], f"{where}: shard")
    raw_detectors: dict[str, Any] = _get(data, "detectors", w, lambda v: isinstance(v, dict), "a mapping", {})
    try:
        values["detectors"] = DetectorConfig.from_mapping(raw_detectors, where)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return Config(**values)


def parse_shard(value: Any, where: str) -> Shard:
    """``"I/N"`` from the file or ``--shard``; a ConfigError names ``where``."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string INDEX/TOTAL such as \"0/3\" (shard 0 of 3), got {value!r}")
    try:
        return sharding.parse(value)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _limits(d: Mapping[str, Any], where: str) -> Limits:
    known = ["layers", "max_name_bytes", "max_runs", "max_series", "max_series_per_run"]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {known}")
    dflt = Limits()

    def positive(key: str, default: int) -> int:
        return _get(d, key, where, lambda v: _is_int(v) and v > 0, "a positive integer", default)

    layers: dict[str, Any] = _get(d, "layers", where, lambda v: isinstance(v, dict), "a mapping with include "
                                  "and/or exclude", {})
    unknown = sorted(set(layers) - {"include", "exclude"})
    if unknown:
        raise ConfigError(f"{where}.layers: unknown key(s) {unknown}; known: ['exclude', 'include']")
    patterns: dict[str, re.Pattern[str] | None] = {}
    for key in ("include", "exclude"):
        pattern = _get(layers, key, f"{where}.layers", lambda v: isinstance(v, str), "a regular expression string",
                       "")
        try:
            patterns[key] = re.compile(pattern) if pattern else None
        except re.error as e:
            raise ConfigError(f"{where}.layers.{key}: invalid regular expression: {e}") from None
    return Limits(max_series_per_run=positive("max_series_per_run", dflt.max_series_per_run),
                  max_series=positive("max_series", dflt.max_series), max_runs=positive("max_runs", dflt.max_runs),
                  max_name_bytes=positive("max_name_bytes", dflt.max_name_bytes),
                  layer_include=patterns["include"], layer_exclude=patterns["exclude"])


def _lifecycle(d: Mapping[str, Any], where: str) -> LifecycleConfig:
    known = ["deleted_grace", "finished_ttl", "stale_ttl"]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {known}")
    seconds: dict[str, float] = {}
    for key in known:
        if key in d:
            try:
                seconds[key] = parse_duration(d[key])
            except ValueError as e:
                raise ConfigError(f"{where}.{key}: {e}") from None
    return LifecycleConfig(**seconds)


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read configuration: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return from_mapping(data, path)
