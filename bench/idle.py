#!/usr/bin/env python3
"""What idle watched files cost: CPU% of a core and open descriptors per daemon, measured side by side.

Trees of N job directories (``jobNNNNN/caffe.log``, each the first 200 lines of a real fixture, cycled),
one daemon per (checkout, mode, N): this checkout and a baseline revision (``git archive`` of
``--baseline``, default fff2f35, with this checkout's built C scanner copied in), with inotify and with
``--poll --poll-interval 1``, each started with the soft descriptor limit at 1024 (the common default).
All daemons run at once; once every one is ready (``/-/ready``) and ``--settle`` seconds have passed (past
``idle_close``, 30 s, so idle files are closed), CPU (utime + stime from /proc/PID/stat) is measured over
the same ``--window`` seconds. Printed per daemon: CPU%, descriptors open on log files
(/proc/PID/fd), caffe_exporter_files_watched and caffe_exporter_files_open.

    python3 bench/idle.py                       # N = 1000 and 10000, ~3 min
    python3 bench/idle.py --files 1000 --window 30 --no-baseline

Only processes this script started are stopped, by their PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the root, not bench/: bench.py shadows it
from bench.latency import ROOT, baseline_tree, free_port, get  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def make_tree(root: Path, n: int) -> Path:
    tree = root / f"N{n}"
    done = tree / ".complete"
    if done.exists():
        return tree
    fixtures = sorted((ROOT / "tests" / "fixtures" / "real-caffe").glob("*/caffe.log"))
    heads = [b"".join(f.read_bytes().splitlines(keepends=True)[:200]) for f in fixtures]
    for i in range(n):
        d = tree / f"job{i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "caffe.log").write_bytes(heads[i % len(heads)])
    done.write_text("")
    return tree


def limit_fds() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


@dataclass
class Daemon:
    name: str
    tree: Path
    url: str
    proc: subprocess.Popen[bytes]

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def log_fds(self) -> int:
        n = 0
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            try:
                if os.readlink(f"/proc/{self.proc.pid}/fd/{fd}").startswith(str(self.tree)):
                    n += 1
            except OSError:
                continue
        return n

    def gauges(self, *names: str) -> list[float]:
        """After the CPU window: a scrape of 10,000 runs takes seconds (issue 9 item 1)."""
        body = get(self.url + "/metrics", timeout=300)
        found = [re.search(rf"^{name} (\S+)$", body, re.M) for name in names]
        return [float(m.group(1)) if m else float("nan") for m in found]


def start(name: str, code: Path, tree: Path, extra: list[str]) -> Daemon:
    port = free_port()
    argv = [sys.executable, "-m", "exporter", "serve", str(tree), "--listen", f"127.0.0.1:{port}",
            "--log-level", "warning", *extra]
    proc = subprocess.Popen(argv, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=limit_fds)
    return Daemon(name, tree, f"http://127.0.0.1:{port}", proc)


def ready(d: Daemon) -> bool:
    try:
        get(d.url + "/-/ready")
        return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=35.0)
    ap.add_argument("--baseline", default="fff2f35")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "caffe-exporter-idle")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    codes = [("now", ROOT)] + ([] if args.no_baseline else [(args.baseline, baseline_tree(args.baseline, work))])
    daemons: list[Daemon] = []
    try:
        for n in args.files:
            tree = make_tree(work, n)
            for label, code in codes:
                for mode, extra in (("inotify", []), ("poll 1s", ["--poll", "--poll-interval", "1"])):
                    daemons.append(start(f"{label} {mode} N={n}", code, tree, extra))
        deadline = time.monotonic() + 900
        while not all(ready(d) for d in daemons):
            dead = [d.name for d in daemons if d.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"not ready: {dead or 'timeout'}")
            time.sleep(1)
        time.sleep(args.settle)
        before = [d.cpu() for d in daemons]
        t0 = time.monotonic()
        time.sleep(args.window)
        wall = time.monotonic() - t0
        rows = {}
        print(f"{'daemon':<28} {'CPU %':>7} {'log fds':>8} {'watched':>8} {'open':>6}")
        measured = [((d.cpu() - b) / wall * 100, d.log_fds()) for d, b in zip(daemons, before, strict=True)]
        for d, (cpu, fds) in zip(daemons, measured, strict=True):
            watched, opened = d.gauges("caffe_exporter_files_watched", "caffe_exporter_files_open")
            row = {"cpu_percent": cpu, "log_fds": fds, "files_watched": watched, "files_open": opened}
            rows[d.name] = row
            print(f"{d.name:<28} {row['cpu_percent']:7.2f} {row['log_fds']:8d} {row['files_watched']:8.0f} "
                  f"{row['files_open']:6.0f}")
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=1))
    finally:
        for d in daemons:
            d.proc.terminate()
        for d in daemons:
            try:
                d.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                d.proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
