"""SIGHUP reloads the configuration file, as Prometheus-ecosystem daemons do."""

from __future__ import annotations

import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e_util import E2E_MARKS, free_port, http_get, running, samples, wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "real-caffe"
LOG = FIXTURES / "lenet_healthy" / "caffe.log"


def _value(text: str, name: str, **match: str) -> list[float]:
    return [v for lb, v in samples(text, name) if all(lb.get(k) == w for k, w in match.items())]


def _scrape_when(url: str, ok: Callable[[str], bool]) -> str | None:
    text = http_get(url)
    return text if ok(text) else None


@E2E_MARKS[0]
@E2E_MARKS[1]
def test_sighup_applies_sources_and_labels_and_keeps_the_state_of_runs_that_stay(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "resnet", tmp_path / "b" / "vgg"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    lines = LOG.read_text().splitlines(keepends=True)
    (a / "caffe.log").write_text("".join(lines))
    (b / "caffe.log").write_text("".join(lines[:1500]))
    displays = sum(1 for ln in lines if "] Iteration " in ln and ", loss = " in ln)
    cfg = tmp_path / "config.yml"
    cfg.write_text(f"sources:\n  - path: {tmp_path / 'a'}\n    labels: {{cluster: one}}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", "--config", str(cfg),
           "--poll-interval", "0.2"]
    with running("exporter", cmd, tmp_path / "exporter.log") as proc:
        first = wait_until("run resnet", lambda: _scrape_when(url, lambda t: _value(
            t, "caffe_display_iterations_total", run="resnet", cluster="one") == [displays]), 30, procs=[proc])
        assert _value(first, "caffe_exporter_config_last_reload_successful") == [1]
        assert not _value(first, "caffe_display_iterations_total", run="vgg")

        cfg.write_text(f"sources:\n  - path: {tmp_path / 'a'}\n    labels: {{cluster: two}}\n"
                       f"  - {tmp_path / 'b'}\n")
        os.kill(proc.popen.pid, signal.SIGHUP)
        after = wait_until("the new source and label", lambda: _scrape_when(url, lambda t: bool(_value(
            t, "caffe_display_iterations_total", run="vgg") and _value(
            t, "caffe_display_iterations_total", run="resnet", cluster="two"))), 30, procs=[proc])
        # the run that stayed kept its state: not re-read, not reset
        assert _value(after, "caffe_display_iterations_total", run="resnet", cluster="two") == [displays]
        assert not _value(after, "caffe_display_iterations_total", cluster="one")
        assert _value(after, "caffe_exporter_config_last_reload_successful") == [1]

        cfg.write_text("sources: [unclosed\n")
        os.kill(proc.popen.pid, signal.SIGHUP)
        wait_until("the failed reload to show", lambda: _value(
            http_get(url), "caffe_exporter_config_last_reload_successful") == [0], 30, procs=[proc])
        with (b / "caffe.log").open("a") as f:  # the old configuration still reads b
            f.write("".join(lines[1500:]))
        wait_until("b read to the end under the old configuration", lambda: _value(
            http_get(url), "caffe_display_iterations_total", run="vgg") == [displays], 30, procs=[proc])
        assert proc.alive
        assert "configuration reload failed" in proc.log.read_text()

        cfg.write_text(f"sources:\n  - path: {tmp_path / 'a'}\n    labels: {{cluster: two}}\n"
                       "limits: {max_series_per_run: 100}\nruns: {stale_ttl: 1h}\n")
        os.kill(proc.popen.pid, signal.SIGHUP)
        last = wait_until("the removed source's run to go", lambda: _scrape_when(url, lambda t: not _value(
            t, "caffe_display_iterations_total", run="vgg")), 30, procs=[proc])
        assert _value(last, "caffe_exporter_runs_expired_total", reason="removed") == [1]
        assert _value(last, "caffe_exporter_config_last_reload_successful") == [1]
        assert _value(last, "caffe_display_iterations_total", run="resnet") == [displays]


class _ThreadKilled(BaseException):
    """Not an Exception: what no `except Exception` in the reading thread catches (a bug, or a kill on purpose)."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_a_dead_reading_thread_turns_healthy_503_and_exits_non_zero(tmp_path: Path) -> None:
    from exporter import config, daemon
    from exporter.identity import SourceRule

    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "caffe.log").write_text(LOG.read_text())
    die = threading.Event()
    health: list[int] = []

    def follow(*args: object, **kwargs: object) -> None:
        die.wait(30)
        raise _ThreadKilled

    port = free_port()
    cfg = config.Config(listen=f"127.0.0.1:{port}", sources=(SourceRule(str(tmp_path)),))
    stop = threading.Event()
    result: list[int] = []
    # a supervisor checking every 2 s leaves room to see 503 before the exit
    server = threading.Thread(target=lambda: result.append(daemon.serve(cfg, stop, supervise_interval=2.0,
                                                                        follow_files=follow)))
    server.start()
    try:
        wait_until("ready", lambda: http_get(f"http://127.0.0.1:{port}/-/ready") is not None, 30)
        health.append(_status(f"http://127.0.0.1:{port}/-/healthy"))
        die.set()
        wait_until("unhealthy", lambda: _status(f"http://127.0.0.1:{port}/-/healthy") == 503 or not server.is_alive(),
                   30)
        health.append(503 if server.is_alive() else -1)
        server.join(30)
    finally:
        stop.set()
        server.join(30)
    assert health == [200, 503]
    assert result == [1]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
