#!/usr/bin/env python3
"""Where a NaN line's time goes before any scrape: from the append to the chunk reaching the pipeline,
in-process, per watcher, measured side by side.

One ``follow()`` per watcher, each on its own log among ``--files`` idle ones (``jobNNNNN/caffe.log``,
a directory source, so the poll cost of a tree is included): watchfiles' ``watch`` (what fff2f35 used:
step 50 ms, its Rust loop yields a change after one quiet step) and exporter.tail.inotify.watch (what
follow() uses on Linux now, with reads limited to the changed file). Trials are interleaved with random
0.1-0.4 s gaps. The time to /metrics adds one scrape (and the wait for a scrape in progress) to this.

    python3 bench/wakeup.py --trials 30 --files 1000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the root, not bench/: bench.py shadows it
import watchfiles  # noqa: E402

from exporter.tail import Chunk, Tailer, follow, inotify  # noqa: E402
from exporter.tail.follow import Watch  # noqa: E402

LINE = b"I1109 13:00:00.000000  1234 net.cpp:608]     [Forward] Layer live_probe, top blob live_probe data: nan\n"


class Probe:
    def __init__(self, root: Path, files: int, watch: Watch, rescan: float | None) -> None:
        for i in range(files):
            d = root / f"job{i:05d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "caffe.log").write_bytes(b"I1109 12:00:00.000000  1234 solver.cpp:218] Iteration 0, loss = 1\n")
        self.log = root / "job00000" / "caffe.log"
        self.seen = threading.Event()
        self.stop = threading.Event()
        self.lat: list[float] = []
        self.t0 = 0.0
        tailer = Tailer([str(root)])
        self.thread = threading.Thread(target=follow, args=(tailer, self._chunk, self.stop), daemon=True,
                                       kwargs={"watch": watch, "rescan_interval": rescan})
        self.thread.start()

    def _chunk(self, chunk: Chunk) -> None:
        if "live_probe" in chunk.text:
            self.lat.append((time.perf_counter() - self.t0) * 1000)
            self.seen.set()

    def trial(self) -> None:
        self.seen.clear()
        with open(self.log, "ab") as f:
            f.write(LINE)
            f.flush()
            self.t0 = time.perf_counter()
        if not self.seen.wait(10):
            self.lat.append(float("nan"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--files", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wakeup-"))
    probes = {"watchfiles step 50 ms, full polls": Probe(work / "wf", args.files, watchfiles.watch, None),
              "inotify.watch, changed files only": Probe(work / "ino", args.files, inotify.watch, 10.0)}
    time.sleep(3)  # caught up and settled
    rng = random.Random(5)
    for _ in range(args.trials):
        for p in probes.values():
            time.sleep(0.1 + 0.3 * rng.random())
            p.trial()
    print(f"{'append -> chunk, ' + str(args.files) + ' files':<36} {'p50 ms':>8} {'p99 ms':>8} {'max':>8}")
    for name, p in probes.items():
        p.stop.set()
        lat = sorted(p.lat)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(f"{name:<36} {statistics.median(lat):8.1f} {p99:8.1f} {lat[-1]:8.1f}")
    for p in probes.values():
        p.thread.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
