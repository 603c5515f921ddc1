#!/usr/bin/env python3
"""Catch-up: does /metrics answer while a large backlog is read, and does caffe_exporter_backlog_bytes
count it down?

Generates a ResNet-50 log of ``--iterations`` (bench/gen_caffe_log.py; 1000 -> ~1.28M lines, ~143 MB), starts
the daemon of this checkout on it, and scrapes /metrics back to back until ``/-/ready``. Prints the time to
ready, how many scrapes were answered meanwhile and how long they took (p50/max), the backlog values seen
(first, last, and whether they only went down), and the daemon's catch-up log line.

    python3 bench/catchup.py --iterations 1000
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the root, not bench/: bench.py shadows it
from bench.latency import ROOT, free_port, get  # noqa: E402

BACKLOG = re.compile(r"^caffe_exporter_backlog_bytes (\S+)$", re.M)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "caffe-exporter-catchup")
    args = ap.parse_args()
    work: Path = args.workdir
    (work / "job").mkdir(parents=True, exist_ok=True)
    log = work / "job" / "caffe.log"
    if not log.exists():
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_caffe_log.py"), "--iterations",
                        str(args.iterations), "--out", str(log)], check=True, stdout=subprocess.DEVNULL)
    size = log.stat().st_size
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    err = open(work / "daemon.err", "w")  # noqa: SIM115 (closed below)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", str(work), "--listen", f"127.0.0.1:{port}",
                             "--log-level", "info"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    took: list[float] = []
    backlog: list[float] = []
    try:
        ready_at = None
        while time.monotonic() - t0 < 600 and ready_at is None:
            try:
                s = time.monotonic()
                body = get(url + "/metrics")
                took.append((time.monotonic() - s) * 1000)
                m = BACKLOG.search(body)
                if m:
                    backlog.append(float(m.group(1)))
                get(url + "/-/ready")
                ready_at = time.monotonic() - t0
            except OSError:
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        err.close()
    print(f"log: {size:,} bytes; ready after {ready_at:.2f} s" if ready_at else "not ready within 600 s")
    if took:
        print(f"scrapes answered during catch-up: {len(took)}, p50 {statistics.median(took):.1f} ms, "
              f"max {max(took):.1f} ms")
    if backlog:
        peak = backlog.index(max(backlog))  # before the first poll has stat'ed the files it is 0
        down = all(b >= a for b, a in itertools.pairwise(backlog[peak:]))
        print(f"backlog_bytes seen: {len(backlog)} values, peak {backlog[peak]:,.0f} (scrape {peak + 1}), "
              f"last {backlog[-1]:,.0f}; after the peak it {'never rose' if down else 'ROSE'}")
    for line in (work / "daemon.err").read_text().splitlines():
        if "caught up" in line:
            print("daemon:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
