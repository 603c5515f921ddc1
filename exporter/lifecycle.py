"""Run lifecycle: which runs the exporter forgets, and when (docs/configuration.md, `runs:`).

An exporter left running for months on a training node sees thousands of runs come and go. Without
forgetting, every run ever seen stays on /metrics, on the landing page and in the checkpoint. Three rules,
each disabled by a duration of 0:

* deleted: every log file of the run is gone (lexists false) since `deleted_grace`;
* finished: the run printed `Optimization Done` and the exporter read its last chunk `finished_ttl` ago;
* stale: any other run whose last chunk the exporter read `stale_ttl` ago.

Times are the exporter's wall clock (`RunState.read_at`, stamped by the registry when it applies a chunk),
not the log's, so an old log read at start stays visible for the whole time-to-live, and the checkpoint
carries them across restarts. A dropped run's paths go to `on_drop` (the tailer's `forget`, which reads
such a file again from its start once it grows: a log that grows again starts a fresh run).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.state import RunRegistry, RunState

REASONS = ("deleted", "finished", "stale")
_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")


def parse_duration(value: object) -> float:
    """Seconds of a Prometheus duration (`90s`, `5m`, `1h30m`, `7d`; units y w d h m s ms, largest first);
    `0` (the number or the string) is 0. Raises ValueError otherwise."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if isinstance(value, str) and value:
        if value == "0":
            return 0.0
        m = _DURATION.fullmatch(value)
        if m is not None:
            return float(sum(int(n) * u for n, u in zip(m.groups(), _UNITS.values(), strict=True) if n))
    raise ValueError(f"expected a duration such as 90s, 5m, 1h30m or 7d (0 disables), got {value!r}")


@dataclass(frozen=True)
class LifecycleConfig:
    """Seconds; 0 disables the rule."""

    deleted_grace: float = 300.0
    finished_ttl: float = 3600.0
    stale_ttl: float = 7 * 86400.0

    def sweep_interval(self, most: float = 5.0) -> float:
        """How often to sweep: a quarter of the shortest enabled duration, at most `most` seconds."""
        enabled = [d for d in (self.deleted_grace, self.finished_ttl, self.stale_ttl) if d > 0]
        return min([most, *(d / 4 for d in enabled)])


class Lifecycle:
    """Drops the runs whose time is up; `sweep()` is called periodically under the pipeline's lock."""

    def __init__(self, config: LifecycleConfig, registry: RunRegistry, *, clock: Callable[[], float],
                 exists: Callable[[str], bool], on_drop: Callable[[Sequence[str]], None] = lambda paths: None,
                 ) -> None:
        self.config = config
        self.registry = registry
        self.clock = clock
        self.exists = exists
        self.on_drop = on_drop

    def sweep(self) -> list[tuple[str, str]]:
        """Drop what is due; returns (run, reason) of the dropped runs."""
        now = self.clock()
        dropped: list[tuple[str, str]] = []
        paths: list[str] = []
        for run in list(self.registry.runs.values()):
            reason = self._due(run, now)
            if reason is not None:
                paths += self.registry.drop(run.run, reason)
                dropped.append((run.run, reason))
        for p in self.registry.dropped_paths() + self.registry.refused_paths():
            if not self.exists(p):  # gone from disk: a file at that path later is a new file anyway
                self.registry.forget_dropped(p)
        if paths:
            self.on_drop(paths)
        return dropped

    def _due(self, run: RunState, now: float) -> str | None:
        """Why `run` is to be dropped now, if it is (stamping when its files were first seen gone)."""
        cfg = self.config
        if run.read_at is None:  # restored from a checkpoint without it: its time starts now
            run.read_at = now
        files = [p for p in run.sources if p != "-"]  # standard input is never "gone"
        if files and not any(self.exists(p) for p in files):
            run.gone_at = now if run.gone_at is None else run.gone_at
        else:
            run.gone_at = None
        if cfg.deleted_grace and run.gone_at is not None and now - run.gone_at >= cfg.deleted_grace:
            return "deleted"
        ttl = cfg.finished_ttl if run.finished else cfg.stale_ttl
        if ttl and now - run.read_at >= ttl:
            return "finished" if run.finished else "stale"
        return None
