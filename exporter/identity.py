"""Run identity: which training run a log path belongs to, and the labels its series carry.

The default name is stable across restarts and readable in Grafana:
* glog's own files (`caffe.HOST.USER.log.INFO.YYYYMMDD-HHMMSS.PID`, a new one per process start) are one
  run per directory, so a restarted solver continues the same run;
* a file with a generic name (`caffe.log`, `train.log`, `stderr.log` ...) is named after its directory,
  the common one-directory-per-job layout (`/jobs/resnet50-lr0.1/caffe.log` -> `resnet50-lr0.1`);
* any other file is named after its file name without `.log`/`.txt`.
Directories called `log`, `logs`, `glog`, `output` are skipped when naming, in favour of their parent.
Rotated siblings belong to their log's run: `caffe.log.1`, `caffe.log-20261126`, `caffe.log.2.gz` are named
as `caffe.log` (a rotation suffix is stripped only after a `.log`/`.txt` name, so `lr0.1` stays).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

GLOG_FILE = re.compile(
    r"(?P<prog>[^.]+)\.(?P<host>.+)\.(?P<user>[^.]+)\.log\.(?P<severity>INFO|WARNING|ERROR|FATAL)"
    r"\.(?P<date>\d{8})-(?P<time>\d{6})\.(?P<pid>\d+)"
)
GENERIC_STEMS = frozenset({"caffe", "train", "training", "log", "output", "stderr", "stdout", "console", "nohup",
                           "solver", "run"})
GENERIC_DIRS = frozenset({"log", "logs", "glog", "output", "outputs", ""})
RESERVED_LABELS = frozenset({"run", "phase", "stage", "layer", "blob", "param", "net", "output", "type",
                             "index", "source", "value", "job", "instance", "le", "quantile"})
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_COMPRESSED = re.compile(r"\.(?:gz|bz2|xz|zst|lz4|zip)$", re.IGNORECASE)
_ROTATED = re.compile(r"(?P<base>.+\.(?:log|txt))(?:\.\d+|[-.]\d{8})", re.IGNORECASE)


def unrotated_name(name: str) -> str:
    """``name`` without the suffixes logrotate adds (``.N``, ``-YYYYMMDD``, ``.YYYYMMDD``, compression)."""
    name = _COMPRESSED.sub("", name)
    m = _ROTATED.fullmatch(name)
    return m.group("base") if m else name


def _dir_name(path: str) -> str:
    d = os.path.dirname(os.path.abspath(path))
    while os.path.basename(d) in GENERIC_DIRS and os.path.dirname(d) != d:
        d = os.path.dirname(d)
    return os.path.basename(d) or "root"


def default_run_name(path: str) -> str:
    if path == "-":
        return "stdin"
    name = _COMPRESSED.sub("", os.path.basename(path))
    if GLOG_FILE.fullmatch(name):
        return _dir_name(path)
    stem = re.sub(r"\.(log|txt)$", "", unrotated_name(name))
    if stem.lower() in GENERIC_STEMS:
        return _dir_name(path)
    return stem


def identify_default(path: str) -> tuple[str, dict[str, str]]:
    return default_run_name(path), {}


def check_label_name(name: str, where: str) -> None:
    if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
        raise ValueError(f"{where}: {name!r} is not a valid Prometheus label name")
    if name in RESERVED_LABELS and name != "run":
        raise ValueError(f"{where}: label {name!r} is reserved for caffe-exporter's own series")


@dataclass(frozen=True)
class SourceRule:
    """A configured source: which paths it covers, and how their run name and labels are made."""

    path: str
    run_regex: re.Pattern[str] | None = None  # named groups become labels; group `run` names the run
    labels: Mapping[str, str] = field(default_factory=dict)

    def covers(self, path: str) -> bool:
        if path == self.path:
            return True
        if os.path.isdir(self.path):
            root = os.path.join(os.path.abspath(self.path), "")
            return os.path.abspath(path).startswith(root)
        return fnmatch.fnmatch(path, self.path) or fnmatch.fnmatch(os.path.abspath(path), self.path)

    def identify(self, path: str) -> tuple[str, dict[str, str]]:
        run = default_run_name(path)
        labels = dict(self.labels)
        if self.run_regex is not None and (m := self.run_regex.search(os.path.abspath(path))):
            groups = {k: v for k, v in m.groupdict().items() if v is not None}
            run = groups.pop("run", run)
            labels.update(groups)
        return run, labels


@dataclass(frozen=True)
class RunNamer:
    """Maps a path to (run, extra labels) with the first rule that covers it."""

    rules: Sequence[SourceRule] = ()

    def __call__(self, path: str) -> tuple[str, dict[str, str]]:
        for rule in self.rules:
            if rule.covers(path):
                return rule.identify(path)
        return identify_default(path)
