"""The two servers bench/scale.py scrapes, each in its own process (so RSS is its own): run as a script.

* `exporter`: the exporter's own wiring (`exporter.daemon.build`, `make_app` + `start_server` as `serve` has
  them), N runs fed in-process through `Pipeline.on_chunk` in 4 MiB chunks of whole lines, as the tailer
  cuts them; then commands on stdin: `checkpoint K` (K saves as the daemon's periodic save does them: under
  the pipeline lock), `ingest S` (one more run fed again and again for S seconds while scrapes may be going on,
  each copy dropped once read so the state stays the N runs), `rss`, `quit`.
* `baseline`: a plain prometheus_client registry with the same samples (one `Gauge` per sample name, same
  label names, values, plus ProcessCollector and PlatformCollector), served by `start_http_server`, as in
  the review's baseline; commands `rss`, `quit`.

Every answer is one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench import scanguard
else:  # run as a script: bench/ is sys.path[0] (the checkout's root is not: it would shadow the build)
    import scanguard

CHUNK_BYTES = 4 << 20
RUN_PATH = "jobs/run{:04d}/caffe.log"
INGEST_PATH = "jobs/ingest{:04d}/caffe.log"


def memory() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process, MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key.lower() + "_mib"] = int(value.split()[0]) / 1024
    return out


def chunks_of(text: str) -> Iterator[tuple[str, int]]:
    """(text, first line) pieces of about CHUNK_BYTES ending at a newline."""
    pos, line = 0, 1
    while pos < len(text):
        end = text.find("\n", min(pos + CHUNK_BYTES, len(text)) - 1)
        end = len(text) if end < 0 else end + 1
        piece = text[pos:end]
        yield piece, line
        line += piece.count("\n")
        pos = end


def send(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class ExporterUnderTest:
    def __init__(self, scan: str, log: str, workload: str) -> None:
        self.probe = scanguard.select(scan)
        import dataclasses

        from exporter import config, daemon
        from exporter.identity import SourceRule
        from exporter.serve import make_app, start_server
        from exporter.tail import Chunk

        self.tmp = tempfile.mkdtemp(prefix="scale-ckpt-")
        self.cfg = dataclasses.replace(config.Config(), sources=(SourceRule("jobs"),),
                                       checkpoint_file=os.path.join(self.tmp, "checkpoint.json"))
        self.Chunk = Chunk
        self.pipeline, self.registry = daemon.build(self.cfg)
        self.saver = daemon._checkpointer(self.cfg, self.pipeline, None)  # the daemon's own save
        self.log, self.workload = log, workload  # read when fed, then freed: not counted in the RSS
        self.ingested = 0
        pipeline = self.pipeline

        def runs() -> list[tuple[str, str]]:
            with pipeline.lock:
                return [(r.run, ", ".join(r.sources)) for r in pipeline.registry.runs.values()]

        self.server = start_server(make_app(self.registry, runs), "127.0.0.1", 0)

    def feed(self, path: str, text: str) -> None:
        for piece, first in chunks_of(text):
            self.pipeline.on_chunk(self.Chunk(path, piece, first, first == 1, 0.0))

    def load(self, n: int) -> dict[str, Any]:
        from prometheus_client import generate_latest

        generate_latest(self.registry)  # the empty exporter's first scrape (imports, caches) before "before"
        before = memory()
        text = Path(self.log).read_text(encoding="utf-8")
        t0 = time.perf_counter()
        for i in range(n):
            self.feed(RUN_PATH.format(i), text)
        feed_s = time.perf_counter() - t0
        lines = n * text.count("\n")
        del text
        return {"port": self.server.address[1], "runs": len(self.pipeline.registry.runs), "feed_s": feed_s,
                "lines_fed": lines, "before": before, "after": memory(), **self.probe.report()}

    def checkpoint(self, reps: int) -> dict[str, Any]:
        held, cpu, wall = [], [], []
        for _ in range(reps):
            self.pipeline.registry.epoch += 1  # as after a reload: every run encoded again, the worst case
            c0, t0 = time.process_time(), time.perf_counter()
            ok = self.saver.save()  # the Snapshotter takes the pipeline lock one run at a time itself
            wall.append(time.perf_counter() - t0)
            held.append(float(getattr(self.saver.state, "longest_hold", wall[-1])))  # longest single lock hold
            cpu.append(time.process_time() - c0)
            if not ok:
                raise SystemExit("scale: the checkpoint save failed")
        return {"held_s": held, "save_s": wall, "cpu_s": cpu, "bytes": os.path.getsize(self.cfg.checkpoint_file)}

    def ingest(self, at_least: float) -> dict[str, Any]:
        """Feed the workload run, again and again under new run directories (each dropped once read, so the
        state stays the N runs), for at least `at_least` seconds; lines/s over the whole."""
        text = Path(self.workload).read_text(encoding="utf-8")
        lines = text.count("\n")
        fed, t0 = 0, time.perf_counter()
        while fed == 0 or time.perf_counter() - t0 < at_least:
            path = INGEST_PATH.format(self.ingested)
            self.ingested += 1
            self.feed(path, text)
            fed += lines
            with self.pipeline.lock:
                reg = self.pipeline.registry
                for name in [n for n, r in reg.runs.items() if path in r.sources]:
                    reg.drop(name, "removed")
        return {"lines": fed, "seconds": time.perf_counter() - t0}


def exporter_main(args: argparse.Namespace) -> int:
    ex = ExporterUnderTest(args.scan, args.log, args.workload)
    send(ex.load(args.runs))
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "checkpoint":
            send(ex.checkpoint(int(rest[0])))
        elif cmd == "ingest":
            send(ex.ingest(float(rest[0])))
        elif cmd == "rss":
            send(memory())
        elif cmd == "quit":
            break
    ex.server.shutdown()
    shutil.rmtree(ex.tmp, ignore_errors=True)
    return 0


def baseline_main(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector, start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    before = memory()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    by_name: dict[str, tuple[str, list[tuple[dict[str, str], float]]]] = {}
    for family in text_string_to_metric_families(Path(args.samples).read_text(encoding="utf-8")):
        if family.name.startswith(("process_", "python_")):
            continue  # the baseline's own collectors export these
        for s in family.samples:
            by_name.setdefault(s.name, (family.documentation or s.name, []))[1].append((s.labels, s.value))
    samples = 0
    for name, (doc, values) in by_name.items():
        labels = list(dict.fromkeys(k for lb, _ in values for k in lb))
        gauge = Gauge(name, doc, labels, registry=registry)
        for lb, v in values:
            (gauge.labels(*(lb.get(k, "") for k in labels)) if labels else gauge).set(v)
            samples += 1
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    send({"port": server.server_port, "samples": samples, "before": before, "after": memory()})
    for line in sys.stdin:
        if line.strip() == "rss":
            send(memory())
        elif line.strip() == "quit":
            break
    server.shutdown()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    e = sub.add_parser("exporter")
    e.add_argument("--log", required=True)
    e.add_argument("--workload", required=True)
    e.add_argument("--runs", type=int, required=True)
    e.add_argument("--scan", choices=scanguard.SCAN_PATHS, default="c")
    b = sub.add_parser("baseline")
    b.add_argument("--samples", required=True)
    args = p.parse_args()
    return exporter_main(args) if args.role == "exporter" else baseline_main(args)


if __name__ == "__main__":
    sys.exit(main())
