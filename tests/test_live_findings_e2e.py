"""The daemon and `caffe-exporter diagnose` are one implementation: same logs, same findings.

A real `caffe-exporter serve` tails copies of the real fixture runs; once it has read them, its anomaly
series on /metrics must equal what `diagnose --json` (a separate process) reports for the same files.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_util import E2E_MARKS, free_port, http_get, running, samples, wait_until

pytestmark = E2E_MARKS

FIXTURES = Path(__file__).parent / "fixtures" / "real-caffe"
RUNS = ["lenet_healthy", "lenet_nan", "explode", "vanish", "dead_relu"]
ANOMALY_SERIES = (
    "caffe_anomaly",
    "caffe_anomalies_total",
    "caffe_first_nonfinite_iteration",
    "caffe_first_nonfinite_layer_iteration",
    "caffe_first_nonfinite_info",
    "caffe_loss_nonfinite_total",
)


def _display_lines(name: str) -> int:
    facts = json.loads((FIXTURES / name / "FACTS.json").read_text())
    return len(facts["display_losses"])


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("live-findings")
    logs = tmp / "logs"
    for name in RUNS:  # one directory per job: the run is named after it
        (logs / name).mkdir(parents=True)
        shutil.copy(FIXTURES / name / "caffe.log", logs / name / "caffe.log")
    port = free_port()
    cmd = [sys.executable, "-m", "exporter", "serve", "--listen", f"127.0.0.1:{port}", str(logs)]
    with running("caffe-exporter", cmd, tmp / "exporter.log") as proc:
        url = f"http://127.0.0.1:{port}/metrics"

        def all_read() -> str | None:
            text = http_get(url)
            seen = {labels["run"]: v for labels, v in samples(text, "caffe_display_iterations_total")}
            return text if all(seen.get(n) == _display_lines(n) for n in RUNS) else None

        exposition = wait_until("the exporter to read every fixture", all_read, 60, procs=[proc])
    report = subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", "--json", *(str(logs / n / "caffe.log") for n in RUNS)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert report.returncode == 1, report.stderr
    return exposition, json.loads(report.stdout)


def test_daemon_flags_exactly_the_types_diagnose_reports(scraped: tuple[str, dict[str, Any]]) -> None:
    exposition, report = scraped
    live = {(labels["run"], labels["type"]) for labels, v in samples(exposition, "caffe_anomalies_total") if v > 0}
    offline = {(run["run"], f["type"]) for run in report["runs"] for f in run["findings"]}
    assert live == offline
    assert ("lenet_nan", "nonfinite") in live and not any(run == "lenet_healthy" for run, _ in live)


def test_daemon_series_equal_the_in_process_analysis(scraped: tuple[str, dict[str, Any]]) -> None:
    """Every anomaly sample, value and label set, as the daemon serves it and as diagnose's code computes it."""
    from exporter.collectors.anomalies import metric_tuples
    from exporter.diagnose import read_runs  # the report's own reading of the files

    exposition, _ = scraped
    registry, _, errors = read_runs([str(FIXTURES / n / "caffe.log") for n in RUNS])
    assert not errors
    expected = {(name, tuple(sorted(labels.items())), value)
                for run in registry.runs.values() for name, labels, value in metric_tuples(run)}
    live = {(name, tuple(sorted(labels.items())), value)
            for name in ANOMALY_SERIES for labels, value in samples(exposition, name)}
    # the copies live in directories named after the run, like the originals: the run names agree
    assert {e for e in expected if not math.isnan(e[2])} == {x for x in live if not math.isnan(x[2])}
