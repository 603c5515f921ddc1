#!/usr/bin/env python3
"""Fleet scale (issue 9): what a scrape, the memory and a checkpoint cost with N ResNet-50 runs held, and
how much a scraper slows reading; each beside its baseline, in the same invocation.

For each N (`--runs`, default 10,50,200) a fresh exporter process (bench/scale_child.py) is built with the
exporter's own wiring and fed N copies of one generated 50-iteration ResNet-50 run with a late NaN
(gen_caffe_log.py, ~3,170 samples per run) under N run directories, in-process through `Pipeline.on_chunk`.
One scrape of it is replayed into a plain prometheus_client registry (Gauges holding the same samples,
served by `start_http_server`) in a second process. Then, printed per N:

* `/metrics` from connect to last byte on a fresh connection, text format, OpenMetrics and text + gzip,
  p50 and p99 (nearest rank: with fewer than 100 reps p99 is the slowest), exporter and baseline scraped
  alternately (which goes first alternates too);
* RSS: the exporter's growth from empty to N runs per exported series, its peak (VmHWM) after the scrapes
  against the steady state, and the baseline's;
* checkpoint: the daemon's own periodic save (under the pipeline lock, so the time is how long reading
  and scraping wait), its CPU and the file size;
* ingestion: a healthy run fed over and over (each copy dropped once read: the state stays N runs) for
  `--ingest-seconds`, alone and while a scraper GETs /metrics every second (back to back once a scrape
  takes longer), alternately; lines/s and the drop.

The exporter measured is the build users run (`--build installed`: `pip install` into a fresh venv) with
the scan path asked for (`--scan c|pure`); the run fails when another one runs (bench/scanguard.py).

Usage:
  python3 bench/scale.py --quick                    # N = 2, 10, few reps: under a minute
  python3 bench/scale.py                            # N = 10, 50, 200 (~10 min on 2 cores)
  python3 bench/scale.py --runs 50 --reps 10 --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench import scanguard
else:  # run as a script: bench/ is sys.path[0] (the checkout's root is not: it would shadow the build)
    import scanguard

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FORMATS = {  # name: request headers
    "text": {},
    "OpenMetrics": {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    "text+gzip": {"Accept-Encoding": "gzip"},
}


@dataclass
class Proc:
    """A child speaking one JSON line per command on stdout."""

    popen: subprocess.Popen[str]

    def ask(self, command: str | None = None) -> dict[str, Any]:
        stdin, stdout = self.popen.stdin, self.popen.stdout
        assert stdin is not None and stdout is not None
        if command is not None:
            stdin.write(command + "\n")
            stdin.flush()
        line = stdout.readline()
        if not line:
            raise SystemExit(f"scale: child {self.popen.args!r} ended (rc {self.popen.wait()})")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.popen.poll() is None:
            stdin: IO[str] | None = self.popen.stdin
            if stdin is not None:
                stdin.write("quit\n")
                stdin.flush()
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start(argv: list[str], env: dict[str, str] | None, cwd: str) -> Proc:
    return Proc(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd))


def scrape(port: int, headers: dict[str, str], timeout: float = 300) -> tuple[float, int, bytes]:
    """(seconds from connect to the last byte, body bytes, body) of one GET /metrics on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    seconds = time.perf_counter() - t0
    if resp.status != 200:
        raise SystemExit(f"scale: GET /metrics on port {port} answered {resp.status}")
    return seconds, len(body), body


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def gen_log(workdir: str, name: str, gen_args: list[str], timeout: float) -> str:
    path = os.path.join(workdir, name)
    stamp = path + ".args"
    if os.path.isfile(path) and os.path.isfile(stamp) and Path(stamp).read_text().strip() == " ".join(gen_args):
        return path
    subprocess.run([sys.executable, os.path.join(HERE, "gen_caffe_log.py"), *gen_args, "--out", path], check=True,
                   timeout=timeout, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        f.write(" ".join(gen_args) + "\n")
    return path


class Scraper(threading.Thread):
    """GET /metrics every `interval` s (at once when a scrape took longer), as Prometheus would."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.stop = threading.Event()
        self.times: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            seconds, _, _ = scrape(self.port, {})
            self.times.append(seconds)
            self.stop.wait(max(0.0, self.interval - seconds))


def scrape_rounds(exp_port: int, base_port: int, reps: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fmt, headers in FORMATS.items():
        times: dict[str, list[float]] = {"exporter": [], "baseline": []}
        sizes: dict[str, int] = {}
        for rep in range(reps[fmt]):
            order = [("exporter", exp_port), ("baseline", base_port)]
            for who, port in order if rep % 2 == 0 else order[::-1]:
                seconds, size, _ = scrape(port, headers)
                times[who].append(seconds)
                sizes[who] = size
        out[fmt] = {who: {"p50_s": statistics.median(t), "p99_s": pct(t, 0.99), "runs_s": t, "bytes": sizes[who]}
                    for who, t in times.items()}
    return out


def ingest_rounds(exporter: Proc, port: int, reps: int, seconds: float) -> dict[str, Any]:
    alone: list[float] = []
    scraped: list[float] = []
    scrapes: list[float] = []
    for rep in range(reps):
        for with_scraper in ([False, True] if rep % 2 == 0 else [True, False]):
            scraper = Scraper(port) if with_scraper else None
            if scraper is not None:
                scraper.start()
            r = exporter.ask(f"ingest {seconds}")
            if scraper is not None:
                scraper.stop.set()
                scraper.join()
                scrapes.extend(scraper.times)
            (scraped if with_scraper else alone).append(r["lines"] / r["seconds"])
    return {"alone_lines_per_s": alone, "scraped_lines_per_s": scraped, "scrapes_during": len(scrapes),
            "scrape_s_during": scrapes}


def measure(n: int, args: argparse.Namespace, target: scanguard.Target, logs: tuple[str, str],
            outdir: str) -> dict[str, Any]:
    child = os.path.join(HERE, "scale_child.py")
    exporter = start([target.python, child, "exporter", "--log", logs[0], "--workload", logs[1], "--runs", str(n),
                      "--scan", args.scan], target.env, outdir)
    baseline: Proc | None = None
    try:
        loaded = exporter.ask()
        wrong = scanguard.check(loaded, args.scan, target)
        if wrong:
            raise SystemExit(wrong)
        port = int(loaded["port"])
        _, _, body = scrape(port, {})
        samples_file = os.path.join(outdir, f"exporter.N{n}.prom")
        with open(samples_file, "wb") as f:
            f.write(body)
        samples = sum(1 for ln in body.decode().splitlines() if ln and not ln.startswith("#"))
        baseline = start([sys.executable, child, "baseline", "--samples", samples_file], None, outdir)
        base = baseline.ask()
        os.unlink(samples_file)  # loaded: 63 MB at 200 runs
        print(f"scale: N={n}: {loaded['lines_fed']:,} lines fed in {loaded['feed_s']:.1f} s, {samples:,} samples; "
              "scraping", file=sys.stderr, flush=True)
        reps = {"text": args.reps, "OpenMetrics": args.reps_other, "text+gzip": args.reps_other}
        result: dict[str, Any] = {"runs": n, "samples": samples, "baseline_samples": base["samples"],
                                  "load": loaded, "scrapes": scrape_rounds(port, int(base["port"]), reps)}
        result["exporter_memory_after_scrapes"] = exporter.ask("rss")
        result["baseline_memory"] = {"before": base["before"], "after": base["after"],
                                     "after_scrapes": baseline.ask("rss")}
        result["checkpoint"] = exporter.ask(f"checkpoint {args.checkpoint_reps}")
        result["ingest"] = ingest_rounds(exporter, port, args.ingest_reps, args.ingest_seconds)
        return result
    finally:
        exporter.close()
        if baseline is not None:
            baseline.close()


def ms(s: float) -> str:
    return f"{s * 1000:,.0f}" if s >= 0.1 else f"{s * 1000:.1f}"


def table(results: list[dict[str, Any]]) -> list[str]:
    out = ["| N runs | samples | format | exporter p50 / p99 ms | baseline p50 / p99 ms | baseline / exporter (p50) "
           "| body bytes exporter / baseline |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for fmt, by in r["scrapes"].items():
            e, b = by["exporter"], by["baseline"]
            out.append(f"| {r['runs']} | {r['samples']:,} | {fmt} | {ms(e['p50_s'])} / {ms(e['p99_s'])} | "
                       f"{ms(b['p50_s'])} / {ms(b['p99_s'])} | {b['p50_s'] / e['p50_s']:.2f}x | "
                       f"{e['bytes']:,} / {b['bytes']:,} |")
    out += ["", "| N runs | exporter RSS empty / N runs / peak after scrapes MiB | bytes RSS per series | peak / "
            "steady | baseline RSS / peak MiB | baseline bytes per series |", "|---|---|---|---|---|---|"]
    for r in results:
        ld, after = r["load"], r["exporter_memory_after_scrapes"]
        grow = (ld["after"]["vmrss_mib"] - ld["before"]["vmrss_mib"]) * (1 << 20)
        bm = r["baseline_memory"]
        bgrow = (bm["after"]["vmrss_mib"] - bm["before"]["vmrss_mib"]) * (1 << 20)
        out.append(f"| {r['runs']} | {ld['before']['vmrss_mib']:.1f} / {ld['after']['vmrss_mib']:.1f} / "
                   f"{after['vmhwm_mib']:.1f} | {grow / r['samples']:.0f} | "
                   f"{after['vmhwm_mib'] / ld['after']['vmrss_mib']:.2f}x | {bm['after_scrapes']['vmrss_mib']:.1f} / "
                   f"{bm['after_scrapes']['vmhwm_mib']:.1f} | {bgrow / r['baseline_samples']:.0f} |")
    out += ["", "| N runs | checkpoint bytes | save (lock held) median / max ms | save CPU median ms | ingest lines/s "
            "alone | with a scrape every 1 s | drop | scrapes during |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, ig = r["checkpoint"], r["ingest"]
        alone, scraped = statistics.median(ig["alone_lines_per_s"]), statistics.median(ig["scraped_lines_per_s"])
        out.append(f"| {r['runs']} | {c['bytes']:,} | {ms(statistics.median(c['held_s']))} / {ms(max(c['held_s']))} "
                   f"| {ms(statistics.median(c['cpu_s']))} | {alone:,.0f} | {scraped:,.0f} | "
                   f"{(1 - scraped / alone) * 100:.0f}% | {ig['scrapes_during']} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=None, help="comma-separated N (default 10,50,200; --quick: 2,10)")
    ap.add_argument("--reps", type=int, default=None, help="text-format scrapes per N and server (default 7)")
    ap.add_argument("--reps-other", type=int, default=None, help="OpenMetrics and gzip scrapes (default 3)")
    ap.add_argument("--checkpoint-reps", type=int, default=None, help="checkpoint saves per N (default 3)")
    ap.add_argument("--ingest-reps", type=int, default=None, help="ingestion passes per N and mode (default 2)")
    ap.add_argument("--ingest-seconds", type=float, default=None,
                    help="length of one ingestion pass (default 10; --quick: 3)")
    ap.add_argument("--ingest-iterations", type=int, default=150,
                    help="iterations of the healthy run fed over and over in an ingestion pass (default 150)")
    ap.add_argument("--quick", action="store_true", help="N = 2, 10 and few reps: under a minute")
    ap.add_argument("--scan", choices=scanguard.SCAN_PATHS, default="c", help="c (default) or pure; fails if "
                    "the other one runs")
    ap.add_argument("--build", choices=scanguard.BUILDS, default="installed",
                    help="installed (pip install into a fresh venv, default) or inplace (exporter/ as it is)")
    ap.add_argument("--src", default=ROOT, help="the checkout to measure (default: this one)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "caffe-exporter-scale"))
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args(argv)
    quick = {"runs": "2,10", "reps": 5, "reps_other": 2, "checkpoint_reps": 1, "ingest_reps": 1,
             "ingest_seconds": 3.0}
    full = {"runs": "10,50,200", "reps": 7, "reps_other": 3, "checkpoint_reps": 3, "ingest_reps": 2,
            "ingest_seconds": 10.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    os.makedirs(args.workdir, exist_ok=True)
    outdir = tempfile.mkdtemp(prefix="run-", dir=args.workdir)
    target = scanguard.prepare(args.build, os.path.abspath(args.src), outdir)
    logs = (gen_log(args.workdir, "run50nan.log", ["--iterations", "50", "--nan-at", "45:res4c_branch2b"], 600),
            gen_log(args.workdir, f"healthy{args.ingest_iterations}.log",
                    ["--iterations", str(args.ingest_iterations), "--seed", "2"], 600))
    git = subprocess.run(["git", "-C", args.src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
    results = [measure(int(n), args, target, logs, outdir) for n in args.runs.split(",")]
    scan_module = results[0]["load"]["scan_module"]
    head = [f"caffe-exporter {git}, {target.build} build ({target.package_dir}); scan path measured: "
            f"**{scanguard.LABEL[args.scan]}**" + (f" ({scan_module})" if args.scan == "c" else ""),
            f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
            f"{os.cpu_count()} cores; reps: text {args.reps}, OpenMetrics and gzip {args.reps_other}, checkpoint "
            f"{args.checkpoint_reps}, ingestion {args.ingest_reps} x {args.ingest_seconds:g} s per mode "
            f"({args.ingest_iterations}-iteration healthy run fed over and over)", ""]
    print("\n".join(head + table(results)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "git": git, "build": target.build, "scan": args.scan,
                       "scan_module": scan_module, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
