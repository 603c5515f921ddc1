"""glog time -> Unix time: old glog prints no year, so it is inferred per file and carried over."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.events import GlogPrefix

_GLOG_NAME_DATE = re.compile(r"\.(\d{4})(\d\d)(\d\d)-\d{6}\.\d+$")


@dataclass
class SourceClock:
    """The year of one file's classic glog prefixes (and whether they are UTC), updated as lines are read."""

    year: int
    last_month: int = 0
    utc: bool = False
    # month of the file time the year was taken from: a first line from a later month was written the
    # year before (a log begun in December, read after New Year)
    mtime_month: int = 0

    def unix(self, p: GlogPrefix) -> float:
        """The Unix time of a prefix; advances the year at December -> January (so it is no pure getter)."""
        if p.year is not None:
            year = p.year
        else:
            if not self.last_month and self.mtime_month and p.month > self.mtime_month:
                self.year -= 1
            elif self.last_month and p.month < self.last_month - 6:  # December -> January
                self.year += 1
            year = self.year
        self.last_month = p.month
        tt = (year, p.month, p.day, 0, 0, 0, 0, 0, -1)
        midnight = calendar.timegm(tt) if self.utc else time.mktime(tt)
        return midnight + p.seconds_of_day


def clock_for(path: str, mtime: float, now: Callable[[], float] = time.time) -> SourceClock:
    """Year of a classic glog prefix: glog's file name, else the file's time (refined by the header); a
    stream (no file time) takes the year of `now`."""
    m = _GLOG_NAME_DATE.search(path)
    if m:
        return SourceClock(int(m[1]), int(m[2]))
    t = time.localtime(mtime if mtime > 0 else now())
    return SourceClock(t.tm_year, 0, mtime_month=t.tm_mon)
