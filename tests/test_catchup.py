"""Catch-up in the daemon: the log says when the backlog present at start was read (bytes, files, seconds),
and caffe_exporter_backlog_bytes is on /metrics."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest

from exporter import config, daemon
from exporter.identity import SourceRule
from tests.e2e_util import free_port, http_get, samples, wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "real-caffe"
LOGS = [FIXTURES / "lenet_healthy" / "caffe.log", FIXTURES / "explode" / "caffe.log"]


def test_the_end_of_the_startup_backlog_is_logged_and_backlog_bytes_is_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    total = 0
    for i, src in enumerate(LOGS):
        (tmp_path / f"job{i}").mkdir()
        data = src.read_bytes()
        (tmp_path / f"job{i}" / "caffe.log").write_bytes(data)
        total += len(data)
    port = free_port()
    cfg = config.Config(listen=f"127.0.0.1:{port}", sources=(SourceRule(str(tmp_path)),))
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="caffe_exporter.daemon")
    server = threading.Thread(target=daemon.serve, args=(cfg, stop), daemon=True)
    server.start()
    try:
        wait_until("ready", lambda: http_get(f"http://127.0.0.1:{port}/-/ready") or None, 30)
        body = http_get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop.set()
        server.join(30)
    assert samples(body, "caffe_exporter_backlog_bytes") == [({}, 0.0)]
    ends = [r.getMessage() for r in caplog.records if r.getMessage().startswith("caught up")]
    assert len(ends) == 1
    m = re.fullmatch(r"caught up with the backlog present at start: (\d+) bytes of (\d+) files in (\d+\.\d\d) s",
                     ends[0])
    assert m is not None, ends[0]
    assert (int(m.group(1)), int(m.group(2))) == (total, 2)


@pytest.mark.parametrize(("poll", "rescan"), [(False, 10.0), (True, None)], ids=["inotify", "polling"])
def test_the_daemon_rescans_every_10_s_with_inotify_and_every_poll_interval_when_polling(
        tmp_path: Path, poll: bool, rescan: float | None) -> None:
    (tmp_path / "caffe.log").write_bytes(LOGS[0].read_bytes())
    got: list[dict[str, object]] = []
    stop = threading.Event()

    def follow(*args: object, **kwargs: object) -> None:
        got.append(kwargs)
        stop.set()

    cfg = config.Config(listen=f"127.0.0.1:{free_port()}", sources=(SourceRule(str(tmp_path)),), poll=poll)
    assert daemon.serve(cfg, stop, follow_files=follow) == 0
    assert got == [{"force_polling": poll, "poll_interval": 1.0, "rescan_interval": rescan}]
