"""Crash safety as a test: SIGKILL at random moments never loses or doubles a line.

A writer appends real logs in random-sized pieces that split lines; the exporter runs with a short
checkpoint_interval and is killed with SIGKILL again and again (some kills land while a checkpoint is being
written, some while a large chunk is being applied) and restarted from its checkpoint. At the end every
`caffe_*` run series equals one uninterrupted read of the final files.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

from prometheus_client import generate_latest

from exporter import config
from exporter.daemon import build
from exporter.identity import SourceRule
from exporter.pipeline import Pipeline
from exporter.tail import Chunk, Tailer
from tests.e2e_util import E2E_MARKS, free_port, http_get, running, samples, wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "real-caffe"
JOBS = {"jobA": FIXTURES / "resumed" / "caffe.log", "jobB": FIXTURES / "lenet_nan" / "caffe.log",
        "jobC": FIXTURES / "lenet_healthy" / "caffe.log", "jobD": FIXTURES / "vanish" / "caffe.log"}
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float | str]


def _run_series(exposition: str) -> Series:
    """Every caffe_* sample except the exporter's own (its byte and line counters count re-reads)."""
    out: Series = {}
    names = {ln.split("{")[0].split(" ")[0] for ln in exposition.splitlines() if ln and not ln.startswith("#")}
    for name in sorted(n for n in names if n.startswith("caffe_") and not n.startswith("caffe_exporter_")):
        for labels, value in samples(exposition, name):
            out[name, tuple(sorted(labels.items()))] = "NaN" if math.isnan(value) else value
    return out


def _single_read(root: Path) -> Series:
    pipeline, registry = build(config.Config(sources=(SourceRule(str(root)),)))
    tailer = Tailer([str(root)], stats=pipeline.tail_stats)
    for chunk in tailer.poll():
        pipeline.on_chunk(chunk)
    tailer.close()
    return _run_series(generate_latest(registry).decode())


def _diff(a: Series, b: Series) -> str:
    keys = sorted(set(a) | set(b))
    rows = [f"{k}: {a.get(k)} != {b.get(k)}" for k in keys if a.get(k) != b.get(k)]
    return f"{len(rows)} series differ:\n" + "\n".join(rows[:30])


class _Writer(threading.Thread):
    """Appends each job's log in random pieces of 1-4000 bytes (lines split anywhere), round robin."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.rng = rng
        self.todo = {root / job / "caffe.log": src.read_bytes() for job, src in JOBS.items()}
        self.big = threading.Event()  # set: write a large piece next (to kill while it is applied)
        self.wrote_big = threading.Event()
        for path in self.todo:
            path.parent.mkdir(parents=True)
            path.write_bytes(b"")

    def run(self) -> None:
        while self.todo:
            path = self.rng.choice(sorted(self.todo))
            rest = self.todo[path]
            n = 400_000 if self.big.is_set() else self.rng.randint(1, 4000)
            with path.open("ab") as f:
                f.write(rest[:n])
            if self.big.is_set():
                self.big.clear()
                self.wrote_big.set()
            if len(rest) > n:
                self.todo[path] = rest[n:]
            else:
                del self.todo[path]
            time.sleep(self.rng.uniform(0.002, 0.02))


@E2E_MARKS[0]
@E2E_MARKS[1]
def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261202)
    root = tmp_path / "logs"
    ck = tmp_path / "state" / "checkpoint.json"
    ck.parent.mkdir()
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"checkpoint_file: {ck}\ncheckpoint_interval: 0.2\n")
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", "--config", str(cfg),
           "--poll-interval", "0.2", str(root)]
    writer = _Writer(root, rng)
    writer.start()
    kinds = {"random": 0, "during checkpoint write": 0, "while applying a large chunk": 0}
    leftovers_seen = 0
    deadline = time.monotonic() + 150
    n = 0
    while (n < 24 or writer.is_alive()) and time.monotonic() < deadline:
        kind = ["random", "during checkpoint write", "while applying a large chunk"][n % 3]
        with running(f"exporter-{n}", cmd, tmp_path / f"exporter-{n}.log") as proc:
            if kind == "during checkpoint write":
                until = time.monotonic() + 3
                while time.monotonic() < until and not any(
                        p.name.startswith(".checkpoint.json.tmp-") for p in ck.parent.iterdir()):
                    time.sleep(0.0005)
            elif kind == "while applying a large chunk" and writer.is_alive():
                time.sleep(rng.uniform(0.3, 0.8))  # started and reading
                writer.wrote_big.clear()
                writer.big.set()
                writer.wrote_big.wait(2)
                time.sleep(rng.uniform(0.0, 0.05))
            else:
                time.sleep(rng.uniform(0.1, 1.5))
            assert proc.alive, proc.tail()
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(10)
        kinds[kind] += 1
        leftovers_seen += any(p.name.startswith(".checkpoint.json.tmp-") for p in ck.parent.iterdir())
        n += 1
    writer.join(30)
    assert not writer.is_alive()
    assert sum(kinds.values()) >= 20, kinds
    expected = _single_read(root)
    assert sum(1 for k in expected if k[0] == "caffe_display_iterations_total") == len(JOBS)
    url = f"http://127.0.0.1:{port}/metrics"
    with running("exporter-final", cmd, tmp_path / "exporter-final.log") as proc:
        got: dict[str, Series] = {}

        def settled() -> bool:
            got["now"] = _run_series(http_get(url))
            return got["now"] == expected

        try:
            wait_until("the restarted exporter to equal one uninterrupted read", settled, 60, procs=[proc])
        except BaseException:
            print(_diff(got.get("now", {}), expected))
            raise
        assert not [p for p in ck.parent.iterdir() if p.name.startswith(".checkpoint.json.tmp-")]
    print(f"kills: {kinds}; a kill left a temporary checkpoint file {leftovers_seen} times")


def test_a_checkpoint_taken_between_read_and_apply_saves_only_what_was_applied(tmp_path: Path) -> None:
    """The tailer has read chunk 2 but the pipeline has applied only chunk 1: the offsets saved are chunk 1's."""
    log = tmp_path / "job" / "caffe.log"
    log.parent.mkdir()
    text = (FIXTURES / "lenet_nan" / "caffe.log").read_bytes()
    log.write_bytes(text)
    cfg = config.Config(sources=(SourceRule(str(tmp_path)),))
    pipeline, _ = build(cfg)
    tailer = Tailer([str(tmp_path)], read_bytes=64 * 1024, stats=pipeline.tail_stats)
    chunks = tailer.poll()
    first = next(chunks)
    pipeline.on_chunk(first)
    second = next(chunks)  # read, not applied
    assert first.end is not None and second.end is not None
    assert pipeline.applied == {str(log): first.end}
    assert tailer.positions()[str(log)].offset == second.end.offset > first.end.offset
    # a restart from what the checkpoint holds re-reads chunk 2 and ends equal to one uninterrupted read
    again: Pipeline = build(cfg)[0]
    again.on_chunk(first)
    resumed = Tailer([str(tmp_path)], read_bytes=64 * 1024, positions=dict(pipeline.applied))
    rest: list[Chunk] = list(resumed.poll())
    assert rest[0].first_line == second.first_line and rest[0].text.startswith(second.text[:200])
    for chunk in rest:
        again.on_chunk(chunk)
    whole = build(cfg)[0]
    for chunk in Tailer([str(tmp_path)]).poll():
        whole.on_chunk(chunk)
    def state(p: Pipeline) -> str:
        d = p.registry.runs["job"].to_dict()
        d.pop("read_at")  # when the exporter read the last line: its own clock
        return json.dumps(d)

    assert state(again) == state(whole)
    assert again.lines == whole.lines
