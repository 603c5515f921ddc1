"""End to end: `python -m exporter serve` as a subprocess on 127.0.0.1, real logs written while it runs.

One daemon watches a temporary directory. lenet_healthy is written into healthy/caffe.log in chunks that cut
lines in half, then rotated by rename (a new file at the same path), then by copytruncate, and lenet_nan is
added as a second run. /metrics scraped over HTTP must equal what feeding the same lines in-process gives:
nothing counted twice, nothing lost. Every wait is bounded; the daemon is always stopped (tests/e2e_util.py).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config
from exporter.daemon import build
from exporter.identity import SourceRule
from exporter.pipeline import Pipeline
from exporter.tail import Chunk
from tests.e2e_util import E2E_MARKS, ManagedProcess, free_port, http_get, running, wait_http_ok, wait_until

pytestmark = E2E_MARKS

REPO = Path(__file__).resolve().parent.parent
REAL = REPO / "tests" / "fixtures" / "real-caffe"
HEALTHY = (REAL / "lenet_healthy/caffe.log").read_bytes()
NAN = (REAL / "lenet_nan/caffe.log").read_bytes()
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str, prefix: str = "caffe_") -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(prefix) and not s.name.startswith("caffe_exporter_") and not s.name.endswith(
                    "_created"):
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def same(a: Samples, b: Samples) -> list[str]:
    """Differences, NaN-aware (NaN == NaN here)."""
    diffs = []
    for key in sorted(a.keys() | b.keys()):
        x, y = a.get(key), b.get(key)
        if x is None or y is None or not (x == y or (x != x and y != y)):
            diffs.append(f"{key}: daemon {x} vs in-process {y}")
    return diffs


def expected_metrics(parts: list[tuple[str, bytes]], sources: tuple[SourceRule, ...]) -> tuple[str, Pipeline]:
    """Feed the same bytes in-process through the daemon's own wiring (`daemon.build`), file by file, as
    complete lines: what the daemon must have read."""
    pipeline, registry = build(Config(sources=sources))
    line_no: dict[str, int] = {}
    for path, data in parts:
        text = data.decode("utf-8", errors="replace")
        first = line_no.get(path, 0) + 1
        pipeline.on_chunk(Chunk(path, text, first, first == 1, time.time()))
        line_no[path] = first - 1 + text.count("\n")
    return generate_latest(registry).decode(), pipeline


def write_in_pieces(path: Path, data: bytes, rng: random.Random, mode: str = "ab") -> None:
    """Append `data` in 5-40 pieces cut at random byte offsets (so lines arrive in halves), flushing each."""
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(5, 40)))
    with path.open(mode) as f:
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            f.write(data[a:b])
            f.flush()
            if rng.random() < 0.3:
                time.sleep(0.02)


def line_cut(data: bytes, fraction: float) -> int:
    """A byte offset just after the newline nearest to `fraction` of `data`."""
    return data.index(b"\n", int(len(data) * fraction)) + 1


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[ManagedProcess, str, Path]]:
    root = tmp_path / "logs"
    (root / "healthy").mkdir(parents=True)
    (root / "nan").mkdir()
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", "--poll-interval", "0.2",
           str(root)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with running("caffe-exporter", cmd, tmp_path / "daemon.log", cwd=REPO, env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(url + "/metrics", timeout=20, procs=[proc])
        yield proc, url, root


def test_rotation_truncation_and_a_second_file_lose_and_repeat_nothing(
        daemon: tuple[ManagedProcess, str, Path]) -> None:
    proc, url, root = daemon
    rng = random.Random(2)
    log = root / "healthy" / "caffe.log"
    a, b = line_cut(HEALTHY, 0.35), line_cut(HEALTHY, 0.7)
    part_a, part_b, part_c = HEALTHY[:a], HEALTHY[a:b], HEALTHY[b:]

    def scrape() -> str:
        return http_get(url + "/metrics")

    def lines_read() -> float:
        text = scrape()
        return sum(value(text, "caffe_exporter_lines_total", outcome=o) or 0 for o in ("parsed", "skipped"))

    def wait_lines(n: int, what: str) -> None:
        wait_until(what, lambda: lines_read() == n or None, timeout=20, interval=0.1, procs=[proc])

    # 1. a new file, written in pieces that cut lines in half
    write_in_pieces(log, part_a, rng)
    wait_lines(part_a.count(b"\n"), "part A read")

    # 2. rename rotation: caffe.log -> caffe.log.1, a new caffe.log at the same path
    os.rename(log, log.with_name("caffe.log.1"))
    write_in_pieces(log, part_b, rng, mode="wb")
    wait_lines(part_a.count(b"\n") + part_b.count(b"\n"), "part B read after the rename")
    wait_until("the rotation counted", lambda: value(scrape(), "caffe_exporter_file_rotations_total") == 1 or None,
               timeout=10, procs=[proc])

    # 3. copytruncate: copy, truncate in place, wait until the daemon saw it, then append the rest
    shutil.copy(log, log.with_name("caffe.log.2"))
    with log.open("r+b") as f:
        f.truncate(0)
    wait_until("the truncation counted",
               lambda: value(scrape(), "caffe_exporter_file_truncations_total") == 1 or None, timeout=10,
               procs=[proc])
    write_in_pieces(log, part_c, rng)

    # 4. a second run appears
    write_in_pieces(root / "nan" / "caffe.log", NAN, rng, mode="wb")
    total = HEALTHY.count(b"\n") + NAN.count(b"\n")
    wait_lines(total, "everything read")

    text = scrape()
    healthy, nan = str(log), str(root / "nan" / "caffe.log")
    want_text, pipeline = expected_metrics(
        [(healthy, part_a), (healthy, part_b), (healthy, part_c), (nan, NAN)], (SourceRule(str(root)),))
    assert not same(samples(text), samples(want_text)), "\n".join(same(samples(text), samples(want_text))[:20])

    # the self-metrics: every line and byte once, one rotation, one truncation, no errors
    assert value(text, "caffe_exporter_lines_total", outcome="parsed") == pipeline.lines.parsed
    assert value(text, "caffe_exporter_lines_total", outcome="skipped") == pipeline.lines.skipped
    assert value(text, "caffe_exporter_lines_total", outcome="oversized") == 0
    assert value(text, "caffe_exporter_bytes_read_total") == len(HEALTHY) + len(NAN)
    assert value(text, "caffe_exporter_file_rotations_total") == 1
    assert value(text, "caffe_exporter_file_truncations_total") == 1
    assert value(text, "caffe_exporter_read_errors_total") == 0
    assert value(text, "caffe_exporter_runs") == 2
    assert value(text, "caffe_exporter_files_watched") == 2

    # the counters the issue names, spelled out (the comparison above already covers them)
    assert value(text, "caffe_display_iterations_total", run="healthy") == 31
    assert value(text, "caffe_debug_lines_total", run="healthy", phase="train", stage="forward") == 540
    assert value(text, "caffe_debug_lines_total", run="healthy", phase="test", stage="forward") == 920
    assert value(text, "caffe_debug_lines_total", run="nan", phase="train", stage="backward") == 450
    nonfinite = sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                    if s.name == "caffe_nonfinite_values_total" and s.labels["run"] == "nan")
    assert nonfinite > 0
    assert value(text, "caffe_nonfinite_values_total", run="healthy") is None

    # the landing page lists both runs and their logs
    page = http_get(url + "/")
    for needle in ("healthy", "nan", healthy, nan, "/metrics"):
        assert needle in page


def test_stdin(tmp_path: Path) -> None:
    """`cat log | python -m exporter serve -`: the run is `stdin`, its metrics are those of the file."""
    port = free_port()
    log = REAL / "lenet_nan" / "caffe.log"
    cmd = ["sh", "-c", f'cat "{log}" | exec "{sys.executable}" -m exporter serve - --listen 127.0.0.1:{port}']
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with running("caffe-exporter stdin", cmd, tmp_path / "daemon.log", cwd=REPO, env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        n = NAN.count(b"\n")

        def all_read() -> str | None:
            text = http_get(url + "/metrics")
            done = sum(value(text, "caffe_exporter_lines_total", outcome=o) or 0 for o in ("parsed", "skipped"))
            return text if done == n else None

        text = wait_until("stdin read", all_read, timeout=20, interval=0.1, procs=[proc])
        want, _ = expected_metrics([("-", NAN)], (SourceRule("-"),))
        # the year of a prefix without one comes from the file time, which a stream has not: compare the rest
        got_s = {k: v for k, v in samples(text).items() if k[0] != "caffe_last_log_timestamp_seconds"}
        want_s = {k: v for k, v in samples(want).items() if k[0] != "caffe_last_log_timestamp_seconds"}
        assert not same(got_s, want_s), "\n".join(same(got_s, want_s)[:20])
        assert value(text, "caffe_loss", run="stdin") != value(text, "caffe_loss", run="stdin")  # NaN
        assert "stdin" in http_get(url + "/")


def test_sigterm_stops_the_daemon_promptly(daemon: tuple[ManagedProcess, str, Path]) -> None:
    proc, url, root = daemon
    (root / "healthy" / "caffe.log").write_bytes(HEALTHY[: line_cut(HEALTHY, 0.1)])
    wait_until("a run", lambda: "healthy" in http_get(url + "/") or None, timeout=20, procs=[proc])
    started = time.monotonic()
    proc.popen.send_signal(signal.SIGTERM)
    try:
        code = proc.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("caffe-exporter did not stop within 10 s of SIGTERM\n" + proc.tail())
    assert code == 0, proc.tail()
    assert time.monotonic() - started < 10
