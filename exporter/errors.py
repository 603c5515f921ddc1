"""Errors of the pipeline's stages: counted per stage, logged once per episode, never fatal to reading.

A daemon left alone for months must neither die on one odd line (every thread would stop reading, the HTTP
thread would keep serving frozen numbers) nor flood its log with the same traceback for every chunk of a
broken file. An episode is one (stage, place, exception type); it ends when that place succeeds again.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

STAGES = ("tail", "parse", "state", "detect", "checkpoint", "collect")
_MODULE_STAGE = {"exporter.parse": "parse", "exporter.events": "parse", "exporter.state": "state",
                 "exporter.detectors": "detect", "exporter.checkpoint": "checkpoint", "exporter.tail": "tail",
                 "exporter.scan": "state", "exporter.codec": "checkpoint"}

log = logging.getLogger("caffe_exporter.errors")


def stage_of(exc: BaseException, default: str) -> str:
    """The stage whose code raised: the innermost exporter module in the traceback."""
    stage = default
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")  # a module, or one of a package's (exporter.detectors)
        stage = _MODULE_STAGE.get(name, _MODULE_STAGE.get(name.rpartition(".")[0], stage))
        tb = tb.tb_next
    return stage


class StageErrors:
    """`caffe_exporter_errors_total{stage}` and its log lines; safe to use from any thread."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.counts: dict[str, int] = dict.fromkeys(STAGES, 0)
        self._open: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._log = logger

    def report(self, stage: str, place: str, exc: BaseException, detail: str = "") -> None:
        """Count one failure of `stage` at `place` (a file, "the tailer"...); log it if its episode is new."""
        key = (stage, place, type(exc).__name__)
        with self._lock:
            self.counts[stage] = self.counts.get(stage, 0) + 1
            new = key not in self._open
            self._open.add(key)
        where = f"{place}{' ' + detail if detail else ''}"
        if new:
            self._log.error("%s stage failed at %s (reading goes on; further failures of this kind here are only "
                            "counted in caffe_exporter_errors_total): %r", stage, where, exc, exc_info=exc)
        else:
            self._log.debug("%s stage failed again at %s: %r", stage, where, exc)

    def ok(self, stage: str, place: str) -> None:
        """`stage` succeeded at `place`: a failure episode there is over."""
        if not self._open:
            return
        with self._lock:
            self._open = {k for k in self._open if not (k[0] == stage and k[1] == place)}
