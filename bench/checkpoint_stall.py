#!/usr/bin/env python3
"""How long a checkpoint save stops the pipeline, before and after per-run saves, in one invocation.

For each N, N generated ResNet-50 runs (bench/gen_caffe_log.py, every fourth with a NaN) are read in-process
through `exporter.daemon.build` and a real `Tailer`, then saved three ways:

* **before**: the whole-dump path of checkpoint version 1 (every run's `to_dict` into one mapping and
  `json.dump` to the file, all under `pipeline.lock`, as the daemon's saver did): the lock is held for the
  whole save.
* **after, first save**: `checkpoint.Snapshotter` (one run per lock hold) + `checkpoint.write` outside it.
* **after, one run changed**: a few more iterations appended to one run's log and read, then saved again:
  only that run is encoded again.

For each: the longest single hold of `pipeline.lock` by the save, the longest a second thread waited for the
lock while the save ran (what a scrape or the reading thread sees), wall and CPU time of the save, file size.
Then what dominates one run's record.

    python3 bench/checkpoint_stall.py            # N = 10, 50, 200 (~3 min; 200 runs of 65k lines are read first)
    python3 bench/checkpoint_stall.py --quick    # N = 2, 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter import checkpoint, config
from exporter.daemon import build
from exporter.detectors import analysis_of
from exporter.identity import SourceRule
from exporter.pipeline import Pipeline
from exporter.tail import Tailer

GEN = Path(__file__).resolve().parent / "gen_caffe_log.py"


def _generate(out: Path, iterations: int, nan: bool, start: int = 0, preamble: bool = True) -> None:
    args = [sys.executable, str(GEN), "--iterations", str(iterations), "--out", str(out), "--seed", "7",
            "--start-iter", str(start)]
    if nan:
        args += ["--nan-at", f"{start + iterations // 2}:res4c_branch2b"]
    if not preamble:
        args.append("--no-preamble")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _old_save(pipeline: Pipeline, path: str) -> None:
    """Checkpoint version 1's save as the daemon ran it: one mapping of everything, `json.dump`, under the lock."""
    runs = []
    for run in pipeline.registry.runs.values():
        analysis = analysis_of(run)
        runs.append({"state": run.to_dict(), "analysis": None if analysis is None else analysis.to_dict()})
    data = {"version": 1, "positions": {p: pos.to_dict() for p, pos in pipeline.applied.items()}, "runs": runs,
            "counters": pipeline.counters()}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, allow_nan=True, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def _probe(lock: threading.Lock) -> Iterator[list[float]]:
    """A thread taking `lock` every millisecond, as the reader and scrapes do; yields [longest wait]."""
    longest = [0.0]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            with lock:
                longest[0] = max(longest[0], time.perf_counter() - t)
            time.sleep(0.001)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield longest
    finally:
        stop.set()
        t.join()


def _measure(lock: threading.Lock, save: Callable[[], float | None], path: str) -> dict[str, float]:
    with _probe(lock) as waited:
        w, c = time.perf_counter(), time.process_time()
        hold = save()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    return {"hold": wall if hold is None else hold, "wait": waited[0], "wall": wall, "cpu": cpu,
            "bytes": os.path.getsize(path)}


def _dominant(data: dict[str, Any], top: int = 6) -> list[tuple[str, int]]:
    """Encoded size of the largest parts of one run's record (state fields, analysis parts)."""
    rec = max(data["runs"], key=lambda r: len(json.dumps(r)))
    parts = {f"state.{k}": v for k, v in rec["state"].items()}
    if rec["analysis"] is not None:
        parts.update({f"analysis.{k}": v for k, v in rec["analysis"].items() if k != "history"})
        parts.update({f"analysis.history.{k}": v for k, v in rec["analysis"]["history"].items()})
    sizes = sorted(((k, len(json.dumps(v, allow_nan=True))) for k, v in parts.items()), key=lambda kv: -kv[1])
    return [("whole record", len(json.dumps(rec, allow_nan=True))), *sizes[:top]]


def bench(n: int, iterations: int, work: Path) -> dict[str, dict[str, float]]:
    root = work / f"n{n}"
    healthy, nan = work / "healthy.log", work / "nan.log"
    for i in range(n):
        (root / f"job{i:03d}").mkdir(parents=True)
        shutil.copyfile(nan if i % 4 == 3 else healthy, root / f"job{i:03d}" / "caffe.log")
    pipeline, _ = build(config.Config(sources=(SourceRule(str(root)),)))
    tailer = Tailer([str(root)], stats=pipeline.tail_stats)
    t = time.perf_counter()
    for chunk in tailer.poll():
        pipeline.on_chunk(chunk)
    read = time.perf_counter() - t
    path = str(work / f"ckpt{n}.json")

    def old() -> None:
        with pipeline.lock:
            _old_save(pipeline, path)

    snap = checkpoint.Snapshotter(pipeline.lock, pipeline.registry, pipeline.applied, pipeline.counters)

    def new() -> float:
        checkpoint.write(path, snap())
        return snap.longest_hold

    out = {"before": _measure(pipeline.lock, old, path)}
    out["after, first save"] = _measure(pipeline.lock, new, path)
    out["after, first save"]["encoded"] = snap.encoded
    extra = work / "extra.log"
    _generate(extra, 2, False, start=iterations, preamble=False)
    with open(root / "job000" / "caffe.log", "ab") as f:
        f.write(extra.read_bytes())
    for chunk in tailer.poll():
        pipeline.on_chunk(chunk)
    out["after, one run changed"] = _measure(pipeline.lock, new, path)
    out["after, one run changed"]["encoded"] = snap.encoded
    tailer.close()
    print(f"\nN={n}: {len(pipeline.registry.runs)} runs, {pipeline.lines.parsed + pipeline.lines.skipped:,} lines "
          f"read in {read:.1f} s")
    print(f"  {'save':26} {'longest lock hold':>18} {'longest wait':>13} {'wall s':>8} {'CPU s':>7} "
          f"{'file bytes':>12} {'runs encoded':>13}")
    for name, m in out.items():
        enc = int(m["encoded"]) if "encoded" in m else n
        print(f"  {name:26} {m['hold'] * 1000:15.1f} ms {m['wait'] * 1000:10.1f} ms {m['wall']:8.3f} "
              f"{m['cpu']:7.3f} {int(m['bytes']):12,} {enc:13}")
    with open(path, encoding="utf-8") as saved:
        dominant = _dominant(json.load(saved))
    print("  largest parts of one run's record (bytes): " + ", ".join(f"{k} {v:,}" for k, v in dominant))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 2, 5 and shorter logs (a smoke run)")
    ap.add_argument("--runs", type=int, nargs="*", help="the values of N (default 10 50 200)")
    ap.add_argument("--iterations", type=int, help="iterations per run (default 50: ~65k lines; --quick 10)")
    args = ap.parse_args()
    ns = args.runs or ([2, 5] if args.quick else [10, 50, 200])
    iterations = args.iterations or (10 if args.quick else 50)
    with tempfile.TemporaryDirectory(prefix="ckpt-stall-") as tmp:
        work = Path(tmp)
        _generate(work / "healthy.log", iterations, False)
        _generate(work / "nan.log", iterations, True)
        lines = (work / "healthy.log").read_bytes().count(b"\n")
        print(f"checkpoint_stall: {iterations} iterations per run ({lines:,} lines), every 4th run with a NaN; "
              "'longest wait' = longest a thread taking the lock every 1 ms waited during the save")
        for n in ns:
            bench(n, iterations, work)
            shutil.rmtree(work / f"n{n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
