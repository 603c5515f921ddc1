"""The fast path of reading a chunk, in one place: which lines to look at, and the plain per-layer values.

A debug_info log is nearly all per-layer lines with a plain finite value. They are stored without building
a `ParsedLine`: `SCAN` (or `SCAN_GLOG`) finds them with one compiled regex and hands back the key and the
number as named groups (`FORWARD`, `BACKWARD`, `UPDATE`, `NONFINITE`: `m.lastgroup` tells which); every
other line worth reading matches with no group and goes to `parse.parse_line`. The patterns are built
from parse.py's grammar (PLAIN_NUMBER, the layer markers, MESSAGE_STARTS), so there is one definition of
a line's shape. The optional C scanner (exporter/_scan.c) does the same stores faster; `FastPath` says
which of these a run may use (tests force each off to compare against the pure path).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

from exporter.parse import (
    BACKWARD_LAYER,
    FORWARD_LAYER,
    GLIBC_NONFINITE,
    MESSAGE_STARTS,
    PLAIN_NUMBER,
    UPDATE_LAYER,
)


def _load_c_scanner() -> ModuleType | None:
    try:
        from exporter import _scan
    except ImportError:  # built without a C compiler: the pure-Python loop does the same, slower
        return None
    try:
        _scan.scan("", 0, 0, {}, {}, {}, {}, False)
    except TypeError:  # a build older than the `insert` flag: not usable
        return None
    return _scan


# The C scanner, or None where it was not built (bench/bench.py --pure-python sets it to None).
C_SCANNER: ModuleType | None = _load_c_scanner()


@dataclass(frozen=True)
class FastPath:
    """Which shortcuts a run takes: `stores` the regex's per-layer groups stored without parse_line, `c`
    the C scanner where it is built (only with `stores`). Every choice gives the same state."""

    stores: bool = True
    c: bool = True


FAST = FastPath()
PYTHON = FastPath(c=False)  # the fallback where exporter/_scan.c could not be compiled
PURE = FastPath(stores=False, c=False)  # every line through parse.parse_line


# m.lastgroup of a match of SCAN / SCAN_GLOG: a plain value to store, or None (a line for parse_line)
FORWARD, BACKWARD, UPDATE, NONFINITE = "fwd", "bwd", "upd_diff", "nf"
_N = "(?P<{}>" + PLAIN_NUMBER + ")"
_BODY = (
    # The key ("conv1, top blob conv1") stays one string so storing it is one dict store; `parse.split_key`
    # takes it apart once per distinct key.
    FORWARD_LAYER + r"(?P<fwd_key>.+) data: " + _N.format(FORWARD) + "$"
    + "|" + BACKWARD_LAYER + r"(?P<bwd_key>.+) diff: " + _N.format(BACKWARD) + "$"
    + "|" + UPDATE_LAYER + r"(?P<upd_key>.+) data: " + _N.format("upd_data") + "; diff: " + _N.format(UPDATE) + "$"
    + r"|\[(?P<nf_stage>Forward|Backward)\] Layer (?P<nf_key>.+) (?:data|diff): (?P<nf>" + GLIBC_NONFINITE + ")$"
    + "|" + "|".join(MESSAGE_STARTS)
)
SCAN = re.compile(_BODY, re.M)
# The same for chunks of glog-prefixed lines: every message follows "] ", a literal the regex engine can
# search for, instead of trying each alternative at every character (25% faster on a debug_info log).
# The one unprefixed line it cannot see, glog's file header, is read by the feed from the file start.
SCAN_GLOG = re.compile(r"\] +(?:" + _BODY + ")", re.M)

_DEBUG_TID = re.compile(r" (\d+) net\.cpp:\d+\]")


def debug_tid(text: str) -> str | None:
    """The one thread id printing debug lines in this chunk, "" if unprefixed, None if several."""
    m = _DEBUG_TID.search(text)
    if m is None:
        return ""
    if text.count("net.cpp:") != text.count(f" {m[1]} net.cpp:"):
        return None
    return m[1]


Tables = tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, float]]


def accelerated(text: str, pos: int, tables: Callable[[], Tables], counts: list[int]) -> Iterator[re.Match[str]]:
    """SCAN_GLOG's matches from pos, except the plain per-layer value lines of keys already stored, which the
    C scanner stores itself into `tables()` (forward of the current phase, backward, update data and diff)
    and counts in `counts` (forward, backward, update).

    The scanner stops at every other line and at every new key (new series go through the limits); the
    regex takes over from there for `burst` bytes, which doubles while the scanner keeps stopping at once
    (a diverged run prints nothing but NaN lines) and falls back to one line as soon as it gets through
    plain lines again. `tables` is called at every resume: a line the caller applied may change the phase."""
    c = C_SCANNER
    assert c is not None
    n = len(text)
    burst = 0
    while pos < n:
        stop, nf, nb, nu = c.scan(text, pos, n, *tables(), False)
        counts[0] += nf
        counts[1] += nb
        counts[2] += nu
        if stop >= n:
            return
        burst = min(2 * burst or 1, 1 << 20) if stop == pos else 0
        end = text.find("\n", stop + burst)
        end = n if end < 0 else end
        yield from SCAN_GLOG.finditer(text, stop, end)
        pos = end + 1
