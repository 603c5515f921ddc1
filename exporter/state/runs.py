"""All runs of one exporter: routing chunks by path, naming new runs, and dropping runs for the lifecycle."""

from __future__ import annotations

import posixpath
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from exporter.events import Chunk, GlogHeader
from exporter.parse import line_at, parse_line
from exporter.scan import SCAN
from exporter.state.limits import Limits, SeriesBudget
from exporter.state.records import BlockObserver
from exporter.state.run import RunState

# A glog prefix whose source file is one of Caffe's (NVCaffe and Intel Caffe included): the line is Caffe's
# even when no event is parsed from it. Any other glog program's lines, and bare glog file headers, are not.
_CAFFE_SOURCE = re.compile(
    r"^[IWEF]\d{4}(?:\d{4})? \d\d:\d\d:\d\d(?:\.\d+)? +\d+ (?:"
    r"\w*_(?:layer|solver)|solver|net|caffe|layer_factory|parallel|data_transformer|data_reader|internal_thread|"
    r"blocking_queue|db_lmdb|db_leveldb|upgrade_proto|gpu_memory|cudnn\w*|syncedmem|insert_splits|hdf5|"
    r"device_alternate|cpu_info|solver_factory|net_parameter\w*"
    r")\.(?:cpp|hpp|cu):\d+\]",
    re.M,
)
def carries_caffe_state(text: str) -> bool:
    """Whether a chunk holds a line only Caffe prints: a glog prefix naming a Caffe source file, or a line
    the parser reads as an event (a glog file header alone is any glog program's)."""
    if _CAFFE_SOURCE.search(text):
        return True
    for m in SCAN.finditer(text):
        start, end = line_at(text, m.start())
        pl = parse_line(text[start:end])
        if pl is not None and not isinstance(pl.event, GlogHeader):
            return True
    return False



def _disambiguations(name: str, path: str) -> Iterator[str]:
    yield name
    parts = [p for p in posixpath.dirname(path).split("/") if p not in ("", ".")]
    for depth in range(1, len(parts)):
        yield "/".join([*parts[-depth - 1 : -1], name])
    n = 2
    while True:
        yield f"{name}~{n}"
        n += 1



@dataclass
class RunRegistry:
    """All runs of this exporter, keyed by run name; routes each chunk to its run.

    A path becomes a run only at its first chunk that carries Caffe state (`carries_caffe_state`); until
    then nothing of it is kept, so a directory of unrelated logs costs no memory. `limits` bound what is
    stored; `clock` (wall time) stamps `RunState.read_at` for the lifecycle's time-to-live rules."""

    identify: Callable[[str], tuple[str, dict[str, str]]]
    make_observers: Callable[[RunState], list[BlockObserver]] = lambda run: []
    runs: dict[str, RunState] = field(default_factory=dict)
    _by_path: dict[str, RunState] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.time
    budget: SeriesBudget = field(init=False)
    expired: Counter[str] = field(default_factory=Counter)  # runs dropped by the lifecycle, by reason
    # paths of dropped runs: their next chunk must start a file (the tailer re-reads it from offset 0)
    _dropped: set[str] = field(default_factory=set)
    _refused: set[str] = field(default_factory=set)  # Caffe paths refused by max_runs (counted once each)
    # chunks fed to each run, and `epoch` bumped by a reload (which rewrites every run's labels and thresholds):
    # a checkpoint re-encodes only the runs whose count or the epoch moved since its last save
    changes: Counter[str] = field(default_factory=Counter)
    epoch: int = 0

    def __post_init__(self) -> None:
        self.budget = SeriesBudget(self.limits)

    def feed(self, chunk: Chunk) -> int:
        run = self._by_path.get(chunk.path)
        if run is None:
            run = self._admit(chunk)
            if run is None:
                return 0
        run.read_at = self.clock()
        self.changes[run.run] += 1  # before feeding: a chunk that raises half-way has changed the run too
        return run.feed(chunk)

    def _admit(self, chunk: Chunk) -> RunState | None:
        path = chunk.path
        if path in self._dropped:
            if not chunk.file_start:
                return None  # the rest of a dropped run's file; it comes again from offset 0
            self._dropped.discard(path)
        if not carries_caffe_state(chunk.text):
            return None
        run = self._run_for(path)
        if run is None:
            if path not in self._refused:
                self._refused.add(path)
                self.budget.dropped["max_runs"] += 1
            return None
        self._refused.discard(path)
        self._by_path[path] = run
        return run

    def restore(self, run: RunState) -> None:
        """Take back a run from a checkpoint: its sources route to it again."""
        run.budget = self.budget
        run.recount()
        self.budget.total += run.series
        self.runs[run.run] = run
        for src in run.sources:
            self._by_path[src] = run

    def drop(self, name: str, reason: str) -> list[str]:
        """Forget a run (lifecycle): its series, its routes; returns its paths. A dropped path's next chunk
        starts a new run only if it is read from the file's start."""
        run = self.runs.pop(name)
        self.changes.pop(name, None)
        self.budget.total -= run.series
        for src in run.sources:
            if self._by_path.get(src) is run:
                del self._by_path[src]
                self._dropped.add(src)
        self.expired[reason] += 1
        return list(run.sources)

    def dropped_paths(self) -> list[str]:
        """Paths of dropped runs not read from their start since (to carry across a restart)."""
        return list(self._dropped)

    def mark_dropped(self, paths: Iterable[str]) -> None:
        """Restore `dropped_paths()` of a previous process: their chunks start no run until one is read from
        the file's start (the tailer told to forget them again)."""
        self._dropped.update(p for p in paths if p not in self._by_path)

    def set_limits(self, limits: Limits) -> None:
        """New limits (a reloaded configuration): they apply to series not stored yet; none is removed."""
        self.limits = limits
        self.budget.limits = limits
        self.epoch += 1

    def forget_dropped(self, path: str) -> None:
        """A dropped path that is gone from disk needs no mark any more (keeps the set bounded)."""
        self._dropped.discard(path)
        self._refused.discard(path)

    def refused_paths(self) -> list[str]:
        return list(self._refused)

    def _run_for(self, path: str) -> RunState | None:
        """The run of a new path: files of one directory share a run (glog starts a new file on restart);
        two jobs whose names collide (`/a/exp1/caffe.log`, `/b/exp1/caffe.log`) are told apart by the
        directories above, else by a `~N` suffix. None when a new run would exceed limits.max_runs."""
        name, labels = self.identify(path)
        for candidate in _disambiguations(name, path):
            run = self.runs.get(candidate)
            if run is None:
                if len(self.runs) >= self.limits.max_runs:
                    return None
                run = self.runs[candidate] = RunState(run=candidate, labels=labels, budget=self.budget)
                run.observers = self.make_observers(run)
                return run
            if any(posixpath.dirname(src) == posixpath.dirname(path) for src in run.sources) or not run.sources:
                return run
        raise AssertionError("unreachable: _disambiguations ends with unused names")
