#!/usr/bin/env python3
"""From a NaN line written to a log to /metrics showing it: p50/p99 per daemon, measured side by side.

Each target is a real daemon process on 127.0.0.1 following its own log (a 3-iteration ResNet-50 prefill
from bench/gen_caffe_log.py, so the probe line belongs to a run): this checkout with inotify and with
``--poll``, the same for a baseline revision (``git archive`` of ``--baseline``, default fff2f35, with this
checkout's built C scanner copied in), and mtail (``--poll_interval 250ms``, bench/caffe.mtail) when it is
installed (skipped with a note otherwise). Trials are interleaved round-robin with random 0.2-1.0 s gaps:
append ``[Forward] Layer live_probe, top blob live_probe data: nan``, then GET /metrics every 2 ms until
``caffe_nonfinite_values_total{layer="live_probe"}`` reaches the new count (10 s bound per trial, a miss
is counted as lost). Latency = the first such response's end minus the write, so it includes one scrape.

    python3 bench/latency.py --trials 30            # ~2 min
    python3 bench/latency.py --trials 10 --no-baseline --no-mtail

Only processes this script started are stopped, by their PID.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PROBE = re.compile(r'^caffe_nonfinite_values_total\{[^}]*layer="live_probe"[^}]*\} (\S+)$', re.M)
LINE = "I1109 13:00:%02d.000000  1234 net.cpp:608]     [Forward] Layer live_probe, top blob live_probe data: nan\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str, timeout: float = 5.0) -> str:
    with OPENER.open(url, timeout=timeout) as r:
        body: bytes = r.read()
        return body.decode()


def probe_count(url: str) -> float:
    m = PROBE.search(get(url))
    return float(m.group(1)) if m else 0.0


@dataclass
class Target:
    name: str
    argv: list[str]
    log: Path
    url: str
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    lat: list[float | None] = field(default_factory=list)
    count: int = 0


def baseline_tree(rev: str, work: Path) -> Path:
    out = work / f"baseline-{rev}"
    if not out.exists():
        out.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        for so in (ROOT / "exporter").glob("_scan*.so"):
            shutil.copy(so, out / "exporter" / so.name)
    return out


def exporter_target(name: str, tree: Path, work: Path, prefill: bytes, extra: list[str]) -> Target:
    d = work / name.replace(" ", "_")
    d.mkdir(parents=True, exist_ok=True)
    log = d / "caffe.log"
    log.write_bytes(prefill)
    port = free_port()
    argv = [sys.executable, "-m", "exporter", "serve", str(log), "--listen", f"127.0.0.1:{port}",
            "--log-level", "warning", *extra]
    return Target(name, argv, log, f"http://127.0.0.1:{port}/metrics", tree)


def mtail_target(work: Path, prefill: bytes) -> Target | None:
    if shutil.which("mtail") is None:
        print("mtail: not installed, skipped (Debian: apt-get install mtail)", file=sys.stderr)
        return None
    d = work / "mtail"
    (d / "progs").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "bench" / "caffe.mtail", d / "progs" / "caffe.mtail")
    log = d / "caffe.log"
    log.write_bytes(b"")  # mtail starts existing files at their end: the prefill is appended once it runs
    port = free_port()
    argv = ["mtail", "--progs", str(d / "progs"), "--logs", str(log), "--address", "127.0.0.1", "--port",
            str(port), "--poll_interval", "250ms", "--poll_log_interval", "250ms", "--logtostderr"]
    t = Target("mtail 250ms", argv, log, f"http://127.0.0.1:{port}/metrics", d)
    t.count = -1  # marks: prefill still to append
    return t


def start(t: Target, prefill: bytes) -> None:
    t.proc = subprocess.Popen(t.argv, cwd=t.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            get(t.url)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{t.name} did not answer within 30 s") from None
            time.sleep(0.05)
    if t.count == -1:
        time.sleep(0.8)  # let mtail open the file, then give it the run
        with open(t.log, "ab") as f:
            f.write(prefill)
        t.count = 0
    time.sleep(1.0)


def trial(t: Target, i: int) -> None:
    with open(t.log, "a") as f:
        f.write(LINE % (i % 60))
        f.flush()
        t0 = time.perf_counter()
    t.count += 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if probe_count(t.url) >= t.count:
            t.lat.append((time.perf_counter() - t0) * 1000)
            return
        time.sleep(0.002)
    t.lat.append(None)
    t.count = int(probe_count(t.url))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--baseline", default="fff2f35", help="git revision to measure beside this checkout")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-mtail", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "caffe-exporter-latency")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    prefill_path = work / "prefill.log"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gen_caffe_log.py"), "--iterations", "3", "--out",
                    str(prefill_path)], check=True, stdout=subprocess.DEVNULL)
    prefill = prefill_path.read_bytes()
    trees = [("now", ROOT)] + ([] if args.no_baseline else [(args.baseline, baseline_tree(args.baseline, work))])
    targets = [exporter_target(f"{label} {mode}", tree, work, prefill, extra)
               for label, tree in trees for mode, extra in (("inotify", []), ("--poll", ["--poll"]))]
    m = None if args.no_mtail else mtail_target(work, prefill)
    if m is not None:
        targets.append(m)
    rng = random.Random(7)
    try:
        for t in targets:
            start(t, prefill)
        for i in range(args.trials):
            for t in targets[i % len(targets):] + targets[:i % len(targets)]:
                time.sleep(0.2 + 0.8 * rng.random())
                trial(t, i)
    finally:
        for t in targets:
            if t.proc is not None:
                t.proc.terminate()
                try:
                    t.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    t.proc.kill()
    return report(targets, args.json)


def report(targets: list[Target], out: Path | None) -> int:
    rows = {}
    print(f"{'target':<20} {'p50 ms':>8} {'p99 ms':>8} {'min':>7} {'max':>7} {'lost':>5}")
    for t in targets:
        ok = [x for x in t.lat if x is not None]
        if not ok:
            print(f"{t.name:<20} all {len(t.lat)} lost")
            continue
        row = {"p50": statistics.median(ok), "p99": pct(ok, 0.99), "min": min(ok), "max": max(ok),
               "lost": len(t.lat) - len(ok), "runs": t.lat}
        rows[t.name] = row
        print(f"{t.name:<20} {row['p50']:8.1f} {row['p99']:8.1f} {row['min']:7.1f} {row['max']:7.1f} {row['lost']:5d}")
    if out is not None:
        out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
