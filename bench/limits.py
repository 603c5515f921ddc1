"""Memory bound of the ingestion limits (issue 8 item 5): RSS of cardinality floods, each in a fresh process.

    python3 bench/limits.py                      # both floods at full size (~1 min)
    python3 bench/limits.py --layers 200000 --runs 20000

* layers: one run whose log prints N distinct layer names (`[Forward] Layer floodI, top blob bI data: v`,
  a Caffe debug_info line), fed in 4 MiB chunks as the tailer reads them;
* runs: N run directories `jobs/runI/caffe.log`, each the first 700 lines of a real Caffe log (setup, net
  dump, the first test pass with debug_info: 35 per-layer series per run);
* unrelated: N files of syslog/other-glog/JSON lines (only Caffe logs become runs).

Everything goes through the daemon's own wiring (`exporter.daemon.build` with the default `limits:`), then
/metrics is rendered once. Printed per case: RSS before and after (VmRSS of /proc/self/status, MiB),
the growth per input item, runs and series stored, values refused by reason, the scrape's time and size.
The tailer (file descriptors, offsets per path) is not part of it: this measures what the run state holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench import scanguard
else:  # run as a script: bench/ is sys.path[0] (the checkout's root is not: it would shadow the build)
    import scanguard

REPO = Path(__file__).resolve().parent.parent
PREFIX = "I1126 14:26:20.074826 18205 net.cpp:593]     "


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(case: str, n: int, scan: str) -> dict[str, object]:
    from prometheus_client import generate_latest

    from exporter.config import Config
    from exporter.daemon import build
    from exporter.identity import SourceRule
    from exporter.tail import Chunk

    probe = scanguard.select(scan)
    pipeline, registry = build(Config(sources=(SourceRule("jobs"),)))
    generate_latest(registry)
    before = rss_mib()
    t0 = time.perf_counter()
    if case == "layers":
        line_no, buf, size = 1, [], 0
        for i in range(n):
            line = f"{PREFIX}[Forward] Layer flood{i}, top blob b{i} data: 0.5\n"
            buf.append(line)
            size += len(line)
            if size >= 4 << 20 or i == n - 1:
                pipeline.on_chunk(Chunk("jobs/flood/caffe.log", "".join(buf), line_no, line_no == 1, 0.0))
                line_no += len(buf)
                buf, size = [], 0
    elif case == "runs":
        real = (REPO / "tests/fixtures/real-caffe/lenet_healthy/caffe.log").read_text().splitlines(keepends=True)
        head = "".join(real[:700])
        for i in range(n):
            pipeline.on_chunk(Chunk(f"jobs/run{i}/caffe.log", head, 1, True, 0.0))
    else:
        text = ("Dec  2 01:02:03 node-a systemd[1]: Started Session 42 of user root.\n"
                "I1202 01:02:03.123456 18205 server.cc:88] Listening on 0.0.0.0:8080\n"
                + json.dumps({"level": "info", "msg": "step 1 loss = 0.5"}) + "\n") * 20
        for i in range(n):
            pipeline.on_chunk(Chunk(f"jobs/app{i}/app.log", text, 1, True, 0.0))
    feed_s = time.perf_counter() - t0
    after_feed = rss_mib()
    t0 = time.perf_counter()
    body = generate_latest(registry)
    scrape_s = time.perf_counter() - t0
    reg = pipeline.registry
    return {"case": case, "items": n, "rss_before_mib": round(before, 1), "rss_after_mib": round(after_feed, 1),
            "rss_after_scrape_mib": round(rss_mib(), 1),
            "bytes_per_item": round((after_feed - before) * (1 << 20) / n, 1), "runs": len(reg.runs),
            "series": reg.budget.total, "dropped": dict(reg.budget.dropped), "feed_s": round(feed_s, 2),
            "scrape_s": round(scrape_s, 3), "scrape_bytes": len(body), **probe.report()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=1_000_000, help="distinct layer names in one run")
    p.add_argument("--runs", type=int, default=100_000, help="distinct run directories")
    p.add_argument("--unrelated", type=int, default=10_000, help="files of other programs' logs")
    p.add_argument("--scan", choices=scanguard.SCAN_PATHS, default="c",
                   help="c (default) or pure; fails if the other one runs")
    p.add_argument("--build", choices=scanguard.BUILDS, default="installed",
                   help="installed (pip install into a fresh venv, default) or inplace (exporter/ as it is)")
    p.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.scan)))
        return 0
    with tempfile.TemporaryDirectory(prefix="caffe-exporter-limits-") as work:
        target = scanguard.prepare(args.build, str(REPO), work)
        print(f"limits: {target.build} build ({target.package_dir}), {scanguard.LABEL[args.scan]}", flush=True)
        for case, n in (("layers", args.layers), ("runs", args.runs), ("unrelated", args.unrelated)):
            out = subprocess.run([target.python, os.path.abspath(__file__), "--child", case, str(n),
                                  "--scan", args.scan], capture_output=True, text=True, check=True, env=target.env,
                                 cwd=work)
            report = json.loads(out.stdout)
            wrong = scanguard.check(report, args.scan, target, scanned=case != "unrelated")
            if wrong:
                print(wrong, file=sys.stderr)
                return 2
            print(out.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
