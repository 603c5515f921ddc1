"""End to end: the real daemon drops deleted, finished and stale runs on time (second-scale `runs:` durations),
from /metrics, from the landing page and from the checkpoint, and counts them by reason.

Each run is watched on its own (seen present, then seen gone), so a slow machine only makes the test slower.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

from tests.e2e_util import E2E_MARKS, free_port, http_get, running, samples, wait_http_ok, wait_until

pytestmark = E2E_MARKS

REPO = Path(__file__).resolve().parent.parent
HEALTHY = (REPO / "tests/fixtures/real-caffe/lenet_healthy/caffe.log").read_bytes()  # ends `Optimization Done`
TRAINING = HEALTHY[:HEALTHY.rfind(b"\n", 0, HEALTHY.index(b"Iteration 200,")) + 1]


def test_deleted_finished_and_stale_runs_leave_metrics_landing_page_and_checkpoint(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    state = tmp_path / "state.json"
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "runs": {"deleted_grace": "1s", "finished_ttl": "3s", "stale_ttl": "6s"},
        "checkpoint_file": str(state), "checkpoint_interval": 0.2, "poll_interval": 0.2}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "exporter", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
           str(root)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with running("caffe-exporter", cmd, tmp_path / "daemon.log", cwd=REPO, env=env) as proc:
        wait_http_ok(url + "/metrics", timeout=20, procs=[proc])

        def runs_on_metrics() -> set[str]:
            return {labels["run"] for labels, _ in samples(http_get(url + "/metrics"), "caffe_run_info")}

        def exported(run: str) -> bool | None:
            return run in runs_on_metrics() or None

        def dropped(run: str) -> bool | None:
            return run not in runs_on_metrics() or None

        def expired() -> dict[str, float]:
            return {lab["reason"]: v for lab, v in samples(http_get(url + "/metrics"),
                                                          "caffe_exporter_runs_expired_total")}

        assert expired() == {"deleted": 0, "finished": 0, "stale": 0, "removed": 0, "resharded": 0}
        for name, data in (("done", HEALTHY), ("gone", TRAINING), ("old", TRAINING)):
            (root / name).mkdir()
            (root / name / "caffe.log").write_bytes(data)
        for name in ("done", "gone", "old"):
            wait_until(f"{name} exported", functools.partial(exported, name), timeout=20,
                       interval=0.1, procs=[proc])
        os.unlink(root / "gone" / "caffe.log")
        for name, reason in (("gone", "deleted"), ("done", "finished"), ("old", "stale")):
            wait_until(f"{name} dropped ({reason})", functools.partial(dropped, name), timeout=30,
                       interval=0.1, procs=[proc])
            assert expired()[reason] == 1
            assert f"<td>{name}</td>" not in http_get(url + "/")
        assert expired() == {"deleted": 1, "finished": 1, "stale": 1, "removed": 0, "resharded": 0}
        assert runs_on_metrics() == set()
        with (root / "old" / "caffe.log").open("ab") as f:  # a dropped log grows again
            f.write(HEALTHY[len(TRAINING):])
        wait_until("old grown again: a fresh run from its start", lambda: [
            v for lab, v in samples(http_get(url + "/metrics"), "caffe_display_iterations_total")
            if lab["run"] == "old" and v == HEALTHY.count(b", loss = ")] or None,
            timeout=20, procs=[proc])
        proc.popen.send_signal(signal.SIGTERM)
        proc.popen.wait(timeout=20)
        # the checkpoint holds no dropped run, only the fresh one
        assert [r["state"]["run"] for r in json.loads(state.read_text())["runs"]] == ["old"]
