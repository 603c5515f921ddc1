"""Pure parsing of Caffe log text: no files, no clock, no module state beyond compiled patterns.

Two entry points share one set of patterns:

* `parse_line(line)` turns any single line into a typed `ParsedLine` (or `None` for lines that carry no
  training state). It knows every shape of `docs/log-format.md`; the run state uses it for every line
  that is not a plain per-layer value.
* the pieces of grammar the fast path (exporter/scan.py) is built from: the number Caffe prints, the
  per-layer line markers and where every message begins (`MESSAGE_STARTS`), so there is one grammar of
  a log line, kept here.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

from exporter.events import (
    ChildBlob,
    DisplayIteration,
    Event,
    GlogHeader,
    GlogPrefix,
    LayerBlob,
    LayerHeader,
    LearningRate,
    NetDef,
    NetInitStart,
    NetNorms,
    NetOutput,
    OptimizationDone,
    ParsedLine,
    Restore,
    Snapshot,
    Solving,
    TestingNet,
    TestLoss,
    UpdateValue,
)

# --- numbers ------------------------------------------------------------------------------------------

_NONFINITE = re.compile(
    r"(?i)([-+]?)(?:(nan)(?:\((?:ind|snan|q?nan)\))?|(inf)(?:inity)?|1\.#(qnan|snan|ind|inf)0*)"
)


def parse_value(token: str) -> float:
    """Parse a number as Caffe prints it (glibc, MSVC old and new, macOS), non-finite spellings included.

    Raises ValueError for anything else, so a garbled line is skipped instead of exporting junk.
    """
    try:
        return float(token)
    except ValueError:
        pass
    m = _NONFINITE.fullmatch(token)
    if m is None:
        # MSVC <= 2013 prints three exponent digits (1e-006): float() reads those already.
        raise ValueError(f"not a Caffe number: {token!r}")
    sign, nan, _inf, msvc = m.groups()
    if nan or (msvc and msvc.lower() in ("qnan", "snan", "ind")):
        return math.nan
    return -math.inf if sign == "-" else math.inf


# --- the glog prefix --------------------------------------------------------------------------------

_PREFIX = re.compile(
    r"([IWEF])(\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d(?:\.\d+)?) +(\d+) [^\]\n]*?:\d+\](?: |$)"
)
# A line-start anchored search for the newest prefix in a chunk (for the run's last-log timestamp).
PREFIX_AT_LINE_START = re.compile(r"^" + _PREFIX.pattern, re.M)


def split_prefix(line: str) -> tuple[GlogPrefix | None, str]:
    """Split off the glog prefix; lines a wrapper stripped of it come back whole with prefix None."""
    m = _PREFIX.match(line)
    if m is None:
        return None, line
    sev, year, month, day, hh, mm, ss, tid = m.groups()
    prefix = GlogPrefix(
        severity=sev,
        year=int(year) if year else None,
        month=int(month),
        day=int(day),
        seconds_of_day=int(hh) * 3600 + int(mm) * 60 + float(ss),
        tid=tid,
    )
    return prefix, line[m.end() :]


def prefix_from_match(m: re.Match[str]) -> GlogPrefix:
    sev, year, month, day, hh, mm, ss, tid = m.groups()
    return GlogPrefix(sev, int(year) if year else None, int(month), int(day),
                      int(hh) * 3600 + int(mm) * 60 + float(ss), tid)


# --- the grammar the fast path shares ---------------------------------------------------------------
# exporter/scan.py builds its patterns from these (and exporter/_scan.c mirrors PLAIN_NUMBER and the
# layer markers); tests/test_scan_accel.py checks that every line the fast path stores reads the same here.

PLAIN_NUMBER = r"\d+(?:\.\d+)?(?:e[-+]\d+)?"  # a finite value as iostream prints nearly all of them
GLIBC_NONFINITE = r"[-+]?(?:nan|inf)"  # NaN/Inf as glibc prints them (after a divergence, every line)
FORWARD_LAYER = r"\[Forward\] Layer "
BACKWARD_LAYER = r"\[Backward\] Layer "
UPDATE_LAYER = r"\[Update\] Layer "
# Where every message that parse_message reads begins (after the glog prefix and tags): a line holding none
# of them carries no state, so the scan never hands it to parse_line.
MESSAGE_STARTS = (
    r"\[(?:Forward|Backward|Update)\]", r"-> (?:top|bottom|param) blob ", r"Iteration \d", r"(?:Train|Test) net output",
    r"Test score #", r"Test loss: ", r"Snapshotting ", r"Restoring previous", r"Resuming from ", r"Solving ",
    r"Optimization ", r"Initializing net from", r"Log file created at: ",
)

# --- messages ---------------------------------------------------------------------------------------

# NVCaffe 0.17 device tags (`[0] `, `(0) `) and the July-2014 `[debug_info] ` tag precede some messages.
_TAGS = re.compile(r"\s*(?:[\[(][\d.]+[\])]\s*)?(?:\[debug_info\] )?")
_V = r"(\S+)"

_LAYER_BLOB = re.compile(
    r"\[(Forward|Backward)\] Layer (.+?), (top|bottom|param) blob (.+) (?:data|diff): " + _V
    + r"(?: \((\S+)\))?"
)
_INPUT = re.compile(r"\[Forward\] Input (.+) data: " + _V)
_NET_NORMS = re.compile(
    r"\[Backward\] All net params \(data, diff\): L1 norm = \((\S+), (\S+)\); L2 norm = \((\S+), (\S+)\)"
)
_UPDATE_SHARED = re.compile(UPDATE_LAYER + r"(.+?), param blob (.+) \(owned by layer .+, param .+\) diff: " + _V)
_UPDATE = re.compile(UPDATE_LAYER + r"(.+?), param (.+) data: (\S+); diff: " + _V)
_HEADER16 = re.compile(r"\[(Forward|Backward)\] Layer (.+)")
_CHILD16 = re.compile(r"-> (top|bottom|param) blob (.+?), count: \d+,? (?:data|diff): " + _V)
_ITERATION = re.compile(r"Iteration (\d+)(?: \(([^)]*)\))?,(?: [\d.]+/[\d.]+ep,)? loss = " + _V)
_SPEED = re.compile(r"(\S+) iter/s")
_LR = re.compile(r"Iteration (\d+), lr = ([^,\s]+)")
_OUTPUT = re.compile(r"(Train|Test) net output (?:mAP )?#(\d+): (.+?) = (\S+)(?: \(\* .*\))?")
_TEST_SCORE = re.compile(r"Test score #(\d+): " + _V)
_TESTING = re.compile(r"Iteration (\d+), Testing net(?: \(#(\d+)\))?")
_TEST_LOSS = re.compile(r"Test loss: " + _V)
_SNAPSHOT = re.compile(r"Snapshotting (?:solver state )?to (?:binary proto file|HDF5 file)? ?(.+)")
_ITER_IN_NAME = re.compile(r"_iter_(\d+)")
_RESTORE = re.compile(r"(?:Resuming from|Restoring previous solver status from) (.+)")
_SOLVING = re.compile(r"Solving (.+)")
_DONE = re.compile(r"Optimization (Done|stopped early)")
_NET_INIT = re.compile(r"Initializing net from parameters:")
_GLOG_HEADER = re.compile(r"Log file created at: (\d{4})/(\d\d)/(\d\d) [\d:]+( UTC)?")

STAGES = {"Forward": "forward", "Backward": "backward"}  # as printed -> the `stage` label


def _layer_blob(m: re.Match[str]) -> LayerBlob:
    stage, layer, role, blob, value, mean = m.groups()
    # July 2014 builds printed `data: <sum> (<mean>)`; the mean is the value every later Caffe prints.
    return LayerBlob(STAGES[stage], layer, role, blob, parse_value(mean or value))  # type: ignore[arg-type]


def parse_message(msg: str) -> Event | None:
    """Parse a message (the text after the glog prefix). Raises nothing: junk gives None."""
    body = msg[_TAGS.match(msg).end() :]  # type: ignore[union-attr]  # _TAGS matches the empty string
    try:
        return _parse_body(body.rstrip())
    except ValueError:
        return None


def _parse_body(body: str) -> Event | None:
    # the first two characters pick the few shapes a message can have (a debug_info log is nearly all "[F"
    # and "[B"); the first shape that matches is the event
    for match, event in _SHAPES.get(body[:2], _OTHER_SHAPES):
        if m := match(body):
            return event(m)
    return None


def _display(m: re.Match[str]) -> DisplayIteration:
    s = _SPEED.match(m[2]) if m[2] else None
    return DisplayIteration(int(m[1]), parse_value(m[3]), parse_value(s[1]) if s else None)


def _snapshot(m: re.Match[str]) -> Snapshot:
    it = _ITER_IN_NAME.findall(m[1])
    return Snapshot(m[1], int(it[-1]) if it else None)


_Shape = tuple[Callable[[str], "re.Match[str] | None"], Callable[["re.Match[str]"], Event]]
_LAYER_SHAPES: tuple[_Shape, ...] = (
    (_LAYER_BLOB.fullmatch, _layer_blob),
    (_NET_NORMS.fullmatch, lambda m: NetNorms(*(parse_value(v) for v in m.groups()))),
    (_INPUT.fullmatch, lambda m: LayerBlob("forward", "input", "input", m[1], parse_value(m[2]))),
    (_HEADER16.fullmatch, lambda m: LayerHeader(STAGES[m[1]], m[2])),  # type: ignore[arg-type]
)
_OUTPUT_SHAPES: tuple[_Shape, ...] = (
    (_OUTPUT.fullmatch, lambda m: NetOutput("train" if m[1] == "Train" else "test", int(m[2]), m[3],
                                            parse_value(m[4]))),
    (_TEST_SCORE.fullmatch, lambda m: NetOutput("test", int(m[1]), f"score#{m[1]}", parse_value(m[2]))),
    (_TEST_LOSS.fullmatch, lambda m: TestLoss(parse_value(m[1]))),
)
_SHAPES: dict[str, tuple[_Shape, ...]] = {
    "[F": _LAYER_SHAPES,
    "[B": _LAYER_SHAPES,
    "[U": (
        (_UPDATE_SHARED.fullmatch, lambda m: UpdateValue(m[1], m[2], None, parse_value(m[3]))),
        (_UPDATE.fullmatch, lambda m: UpdateValue(m[1], m[2], parse_value(m[3]), parse_value(m[4]))),
    ),
    "->": ((_CHILD16.fullmatch, lambda m: ChildBlob(m[1], m[2], parse_value(m[3]))),),  # type: ignore[arg-type]
    "It": (
        (_ITERATION.fullmatch, _display),
        (_LR.match, lambda m: LearningRate(int(m[1]), parse_value(m[2]))),
        (_TESTING.fullmatch, lambda m: TestingNet(int(m[1]), m[2] or "0")),
    ),
    "Tr": _OUTPUT_SHAPES,
    "Te": _OUTPUT_SHAPES,
}
_OTHER_SHAPES: tuple[_Shape, ...] = (
    (_SNAPSHOT.fullmatch, _snapshot),
    (_RESTORE.fullmatch, lambda m: Restore(m[1])),
    (_SOLVING.fullmatch, lambda m: Solving(m[1])),
    (_DONE.match, lambda m: OptimizationDone(early=m[1] != "Done")),
    (_NET_INIT.match, lambda m: NetInitStart()),
    (_GLOG_HEADER.fullmatch, lambda m: GlogHeader(int(m[1]), int(m[2]), int(m[3]), bool(m[4]))),
)


def parse_line(line: str) -> ParsedLine | None:
    """Parse one log line (with or without its glog prefix, trailing newline allowed)."""
    prefix, msg = split_prefix(line.rstrip("\r\n"))
    event = parse_message(msg)
    return None if event is None else ParsedLine(prefix, event)


_KEY = re.compile(r"(.+?), (top|bottom|param) blob (.+)")
_UPDATE_KEY = re.compile(r"(.+?), param (.+)")


@functools.lru_cache(maxsize=1 << 16)
def split_key(key: str) -> tuple[str, str, str] | None:
    """`"conv1, top blob conv1"` -> ("conv1", "top", "conv1"); None if the text is no layer/blob key."""
    m = _KEY.fullmatch(key)
    return None if m is None else (m[1], m[2], m[3])


@functools.lru_cache(maxsize=1 << 16)
def split_update_key(key: str) -> tuple[str, str] | None:
    """`"conv1, param 0"` -> ("conv1", "0")."""
    m = _UPDATE_KEY.fullmatch(key)
    return None if m is None else (m[1], m[2])


def layer_key(layer: str, role: str, blob: str) -> str:
    return f"{layer}, {role} blob {blob}"


def line_at(text: str, pos: int) -> tuple[int, int]:
    """Start and end (exclusive, before the newline) of the line holding position `pos`."""
    end = text.find("\n", pos)
    return text.rfind("\n", 0, pos) + 1, (len(text) if end < 0 else end)


# --- the protobuf dump after `Initializing net from parameters:` ------------------------------------

_DUMP_LINE = re.compile(r"\s*(?:[A-Za-z_][\w.]*\s*(?::.*|\{)|\})\s*")
_FIELD = re.compile(r'\s*(name|type)\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(\w+))')


def is_dump_line(line: str) -> bool:
    """A line of a protobuf text dump (`name: "x"`, `layer {`, `}`); the first other line ends the dump."""
    return _DUMP_LINE.fullmatch(line) is not None


def parse_net_dump(lines: list[str]) -> NetDef:
    """Net name and (layer name, layer type) pairs, in definition order, from a NetParameter text dump."""
    name = ""
    layers: list[tuple[str, str]] = []
    depth = 0
    cur: dict[str, str] = {}
    for line in lines:
        s = line.strip()
        if s.endswith("{"):
            depth += 1
            if depth == 1:
                cur = {"block": s[:-1].strip()}
            continue
        if s == "}":
            if depth == 1 and cur.get("block") in ("layer", "layers") and "name" in cur:
                layers.append((cur["name"], cur.get("type", "")))
            depth = max(0, depth - 1)
            continue
        m = _FIELD.match(s)
        if m is None:
            continue
        key, quoted, bare = m.groups()
        value = quoted if quoted is not None else bare
        if depth == 0 and key == "name":
            name = value
        elif depth == 1 and key not in cur:
            cur[key] = value
    return NetDef(name, tuple(layers))
