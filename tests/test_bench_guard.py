"""bench/bench.py measures the build and scan path it was asked for, or fails saying why (issue 9 item 8).

Each test runs the real benchmark script as a subprocess on a tiny generated log (3 iterations of the
ResNet-50 debug_info log, ~5,500 lines) with only the exporter case: the builds are real (`pip install`
into a fresh venv; a copy of exporter/), and a build without the C scanner is made the way users get one,
by installing where no C compiler works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import scanguard

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench.py"
BUILT = any((REPO / "exporter").glob("_scan*.so"))
needs_scanner = pytest.mark.skipif(not BUILT, reason="the C scanner is not built in place (setup.py build_ext)")
needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
FAILED_GUARD = 2


def _bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(BENCH), "--iterations", "3", "--nan-at", "2:res4c_branch2b", "--reps", "1",
            "--skip-mtail", "--skip-tuned", "--no-pin", "--workdir", str(tmp_path / "work"), "--timeout", "120",
            *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, **(env or {})})


def _checkout_without_scanner(tmp_path: Path) -> Path:
    """A fresh clone's state: the sources, no in-place-built scanner."""
    src = tmp_path / "clone"
    shutil.copytree(REPO / "exporter", src / "exporter", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return src


@needs_cc
def test_the_installed_build_is_measured_and_says_it_ran_the_c_scanner(tmp_path: Path) -> None:
    r = _bench(tmp_path, "--scan", "c")
    assert r.returncode == 0, r.stderr
    assert "scan path measured: **C scanner (exporter/_scan.c)**" in r.stdout
    site = f"installed build at {tmp_path / 'work'}"
    assert site in r.stdout and "/venv/lib/" in r.stdout


@needs_cc
def test_asking_for_c_fails_when_the_installed_build_has_no_scanner(tmp_path: Path) -> None:
    r = _bench(tmp_path, "--scan", "c", env={"CC": "false"})  # the compiler fails: installed without it
    assert r.returncode == FAILED_GUARD
    assert "--scan c asked, but the C scanner is not loaded in the installed build" in r.stderr
    assert "No module named 'exporter._scan'" in r.stderr
    assert "scan path measured" not in r.stdout


@needs_cc
def test_the_installed_build_without_scanner_measures_pure_python_when_asked(tmp_path: Path) -> None:
    r = _bench(tmp_path, "--scan", "pure", env={"CC": "false"})
    assert r.returncode == 0, r.stderr
    assert "scan path measured: **pure Python (no C scanner)**" in r.stdout


@needs_scanner
def test_asking_for_pure_switches_a_built_scanner_off(tmp_path: Path) -> None:
    r = _bench(tmp_path, "--build", "inplace", "--scan", "pure")
    assert r.returncode == 0, r.stderr
    assert "scan path measured: **pure Python (no C scanner)**" in r.stdout
    assert f"inplace build at {tmp_path / 'work'}" in r.stdout


def test_asking_for_c_fails_for_a_checkout_whose_scanner_is_not_built(tmp_path: Path) -> None:
    r = _bench(tmp_path, "--build", "inplace", "--src", str(_checkout_without_scanner(tmp_path)))
    assert r.returncode == FAILED_GUARD
    assert "--scan c asked, but the C scanner is not loaded in the inplace build" in r.stderr
    assert "python3 setup.py build_ext --inplace" in r.stderr


def test_an_exporter_imported_from_elsewhere_than_the_build_fails_the_check(tmp_path: Path) -> None:
    target = scanguard.Target("installed", sys.executable, str(tmp_path / "venv/lib/site-packages/exporter"))
    report = {"exporter_dir": str(REPO / "exporter"), "scan_module": "x.so", "scan_calls": 3, "scan_path": "c"}
    wrong = scanguard.check(report, "c", target)
    assert wrong == (f"bench: the child imported exporter from {REPO / 'exporter'}, not from the installed build "
                     f"under test ({target.package_dir}): something on sys.path shadows it")


def test_a_loaded_scanner_that_never_ran_on_a_debug_info_log_fails_the_check(tmp_path: Path) -> None:
    target = scanguard.Target("inplace", sys.executable, str(REPO / "exporter"))
    report = {"exporter_dir": str(REPO / "exporter"), "scan_module": "x.so", "scan_calls": 0, "scan_path": "pure"}
    assert scanguard.check(report, "c", target) == (
        "bench: --scan c asked, but the pure Python (no C scanner) path ran (0 calls of the C scanner): the "
        "measurement is not the one asked for")
    assert scanguard.check(report, "c", target, scanned=False) is None  # an input with nothing to scan


SCALE = REPO / "bench" / "scale.py"


def _scale(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCALE), "--runs", "1", "--reps", "1", "--reps-other", "1", "--checkpoint-reps", "1",
            "--ingest-reps", "1", "--ingest-seconds", "0", "--ingest-iterations", "2", "--build", "inplace",
            "--workdir", str(tmp_path / "work"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)


def test_the_scale_benchmark_fails_when_asked_for_c_on_a_checkout_without_the_scanner(tmp_path: Path) -> None:
    r = _scale(tmp_path, "--src", str(_checkout_without_scanner(tmp_path)))
    assert r.returncode != 0
    assert "--scan c asked, but the C scanner is not loaded in the inplace build" in r.stderr


def test_the_scale_benchmark_prints_every_table_and_the_scan_path_it_measured(tmp_path: Path) -> None:
    r = _scale(tmp_path, "--scan", "pure")
    assert r.returncode == 0, r.stderr
    assert "scan path measured: **pure Python (no C scanner)**" in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| 1 |")]
    assert [ln.split(" | ")[2] for ln in rows[:3]] == ["text", "OpenMetrics", "text+gzip"]
    assert len(rows) == 5  # three formats, memory, checkpoint and ingestion
