"""Run state: the data of each run (run.py), reading chunks into it (feed.py), glog clocks (clock.py),
limits on what is stored (limits.py) and the registry of all runs (runs.py).

The names other modules use are re-exported here, so `from exporter.state import RunState` keeps working.
"""

from exporter.state.clock import SourceClock
from exporter.state.feed import MAX_DUMP_LINES
from exporter.state.limits import DROP_REASONS, UNLIMITED, Limits, SeriesBudget
from exporter.state.records import PHASES, Block, BlockObserver, NonfiniteValue, Origin, ThreadState
from exporter.state.run import RunState
from exporter.state.runs import RunRegistry, carries_caffe_state

__all__ = [
    "DROP_REASONS", "MAX_DUMP_LINES", "PHASES", "UNLIMITED", "Block", "BlockObserver", "Limits", "NonfiniteValue",
    "Origin", "RunRegistry", "RunState", "SeriesBudget", "SourceClock", "ThreadState", "carries_caffe_state",
]
