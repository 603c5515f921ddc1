"""One scrape, one snapshot: run series, anomaly series and self-metrics of one /metrics answer all come from
the same state, even while chunks are applied between (or during) scrapes.

lenet_nan's display losses are 2.58179, 79.1487, then NaN at every later display line, so in any one state
caffe_loss_nonfinite_total (anomaly families) == max(0, caffe_display_iterations_total - 2) (run families).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors.scrape import ScrapeCollector
from exporter.config import Config
from exporter.daemon import build
from exporter.detectors import make_observers
from exporter.identity import RunNamer, SourceRule
from exporter.pipeline import Pipeline
from exporter.state import RunRegistry
from exporter.tail import Chunk

NAN = (Path(__file__).parent / "fixtures/real-caffe/lenet_nan/caffe.log").read_text()
PATH = "jobs/lenet_nan/caffe.log"


def display_chunks() -> list[Chunk]:
    """The log cut after every display line: each chunk adds exactly one display iteration."""
    lines = NAN.splitlines(keepends=True)
    chunks, start = [], 0
    for i, line in enumerate(lines):
        if ", loss = " in line and "solver.cpp" in line:
            chunks.append(Chunk(PATH, "".join(lines[start:i + 1]), start + 1, start == 0, 0.0))
            start = i + 1
    return chunks


def views(text: str) -> tuple[float, float, float]:
    """(display iterations from the run families, non-finite losses from the anomaly families, lines parsed
    from the self-metrics)."""
    got: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in ("caffe_display_iterations_total", "caffe_loss_nonfinite_total"):
                got[s.name] = s.value
            if s.name == "caffe_exporter_lines_total" and s.labels["outcome"] == "parsed":
                got["parsed"] = s.value
    return (got.get("caffe_display_iterations_total", 0.0), got.get("caffe_loss_nonfinite_total", 0.0),
            got["parsed"])


class FeedOnRelease:
    """The pipeline's lock, which applies the next chunk each time a scrape lets go of it: any collector
    taking the lock a second time within one scrape then sees a later state than the first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pipeline: Pipeline | None = None
        self.pending: list[Chunk] = []
        self._feeding = False

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.release()
        if not self._feeding and self.pending and self.pipeline is not None:
            self._feeding = True
            try:
                self.pipeline.on_chunk(self.pending.pop(0))
            finally:
                self._feeding = False


def test_every_family_of_a_scrape_comes_from_one_state() -> None:
    chunks = display_chunks()
    lock = FeedOnRelease()
    pipeline = Pipeline(RunRegistry(identify=RunNamer(), make_observers=make_observers()), lock=lock)  # type: ignore[arg-type]
    lock.pipeline = pipeline
    pipeline.on_chunk(chunks[0])
    lock.pending = chunks[1:]
    prom = CollectorRegistry()
    prom.register(ScrapeCollector(pipeline))
    parsed_after: list[int] = []
    seen = []
    while lock.pending:
        parsed_after.append(pipeline.lines.parsed)
        seen.append(views(generate_latest(prom).decode()))
    assert len(seen) == len(chunks) - 1 == 30  # one chunk applied after each scrape, none within one
    for k, (display, nonfinite, parsed) in enumerate(seen, start=1):
        assert (display, nonfinite, parsed) == (k, max(0, k - 2), parsed_after[k - 1])


def test_the_daemon_registers_one_collector_for_all_caffe_families() -> None:
    _, prom = build(Config())
    owners = [c for c, names in prom._collector_to_names.items() if any(n.startswith("caffe_") for n in names)]
    # each wrapped so that its failure is counted (errors_total{stage="collect"}) instead of failing the scrape
    assert [type(getattr(c, "inner", c)) for c in owners] == [ScrapeCollector]


def test_scrapes_concurrent_with_feeding_never_mix_two_states() -> None:
    """The daemon's own wiring (daemon.build), a feeding thread and scrapes interleaving freely; bounded."""
    pipeline, prom = build(Config(sources=(SourceRule("jobs"),)))
    chunks = display_chunks()
    done = threading.Event()

    def feed() -> None:
        for _ in range(20):  # the whole log 20 times over: one run whose counters keep growing
            for c in chunks:
                pipeline.on_chunk(c)
                time.sleep(0)
        done.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    scrapes = 0
    deadline = time.monotonic() + 60
    while not done.is_set() and scrapes < 400 and time.monotonic() < deadline:
        display, nonfinite, _ = views(generate_latest(prom).decode())
        # each pass over the log adds 31 display lines, 29 of them NaN
        passes, k = divmod(int(display), len(chunks))
        assert nonfinite == passes * 29 + max(0, k - 2), (display, nonfinite)
        scrapes += 1
    feeder.join(timeout=60)
    assert scrapes > 0 and done.is_set()
