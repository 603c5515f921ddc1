"""`caffe-exporter demo`: the packaged real logs replayed live, every metric moving, no Caffe needed."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e_util import E2E_MARKS, free_port, http_get, running, samples, wait_until

pytestmark = E2E_MARKS


def test_demo_replays_both_runs_and_the_nan_run_turns_nonfinite(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "demo", "--listen", f"127.0.0.1:{port}", "--pace", "0.05"]
    with running("demo", cmd, tmp_path / "demo.log") as proc:
        url = f"http://127.0.0.1:{port}/metrics"

        def nan_run_flagged() -> str | None:
            text = http_get(url)
            flagged = [lb for lb, v in samples(text, "caffe_anomaly") if lb["type"] == "nonfinite" and v == 1]
            return text if any(lb["run"] == "lenet-nan" for lb in flagged) else None

        text = wait_until("the demo's NaN run to be flagged", nan_run_flagged, 60, procs=[proc])
        runs = {lb["run"] for lb, _ in samples(text, "caffe_iteration")}
        assert runs == {"lenet-healthy", "lenet-nan"}
        first = {lb["run"]: v for lb, v in samples(text, "caffe_iteration")}
        # it keeps moving: the healthy run's iteration advances between two scrapes
        wait_until(
            "the healthy run's iteration to advance",
            lambda: any(lb["run"] == "lenet-healthy" and v != first["lenet-healthy"]
                        for lb, v in samples(http_get(url), "caffe_iteration")),
            30,
            procs=[proc],
        )
        layers = {lb["layer"] for lb, _ in samples(text, "caffe_layer_top_data_abs_mean")}
        assert {"conv1", "ip2", "loss"} <= layers
        assert "lenet-healthy" in http_get(f"http://127.0.0.1:{port}/")
