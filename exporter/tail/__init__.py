"""Tail Caffe log files: the first pipeline stage.

A :class:`Tailer` turns a list of sources (files, globs, directories) into :class:`Chunk` s of complete
lines and hides rotation, truncation and deletion from its consumers (the model is mtail's ``filestream``
and fail2ban's ``FileContainer``). :func:`follow` decides *when* to poll (watchfiles wake-ups plus a
timer); the Tailer decides *what* changed. :func:`read_stream` does the same line splitting for a pipe.
One module per concern:

- :mod:`~exporter.tail.lines`: bytes -> complete lines (partial last lines, oversized lines, NULs), and pipes;
- :mod:`~exporter.tail.discover`: sources -> paths and watch roots, not re-walked while no directory changed;
- :mod:`~exporter.tail.files`: one stream per file: rotation, truncation, errors, idle closing, draining;
- :mod:`~exporter.tail.resume`: restored and forgotten positions, matched by content;
- :mod:`~exporter.tail.tailer`: the :class:`Tailer` (one poll) and its lifecycle (forget, set_sources);
- :mod:`~exporter.tail.follow`: when to poll, with the clock and the watcher injected.

Positions. Every chunk of a regular file carries ``end``, the :class:`FilePosition` just after its last
line, so the stage that applies chunks can commit exactly what it applied (a checkpoint of how far the
tailer *read* can be ahead of what was applied). Bytes consumed without a line emitted (an oversized line
dropped, history skipped by ``start_at_end``, a file that moved to another matched name, a forgotten
file) produce a chunk with ``text == ""`` that only moves ``end``. ``end`` is None only for a stream and
for a file being drained after it was renamed away (its path names another file, or none, and nothing
will resume it).

The package imports only :mod:`exporter.events` (where :class:`Chunk` and :class:`FilePosition` live, so
the run state needs no tailer); its counters live in a :class:`TailStats` passed in.
"""

from exporter.events import Chunk, FilePosition
from exporter.tail.discover import COMPRESSED_SUFFIXES
from exporter.tail.follow import follow
from exporter.tail.lines import read_stream
from exporter.tail.resume import HEAD_BYTES
from exporter.tail.stats import TailStats
from exporter.tail.tailer import Tailer

__all__ = ["COMPRESSED_SUFFIXES", "HEAD_BYTES", "Chunk", "FilePosition", "TailStats", "Tailer", "follow",
           "read_stream"]
