"""The command line's own duties: logging configured once, under the one `caffe_exporter` namespace."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _log_with_level(level: str) -> str:
    script = ("import logging\nfrom exporter.cli import setup_logging\n"
              f"setup_logging({level!r})\n"
              "logging.getLogger('caffe_exporter.daemon').debug('ours at debug')\n"
              "logging.getLogger('caffe_exporter.tail').info('ours at info')\n"
              "logging.getLogger('watchfiles.main').info('1 change detected')\n"
              "logging.getLogger('watchfiles.main').warning('the watcher warns')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stderr


def test_log_level_sets_every_exporter_module_and_only_them() -> None:
    err = _log_with_level("debug")
    assert "DEBUG caffe_exporter.daemon: ours at debug" in err
    assert "INFO caffe_exporter.tail: ours at info" in err
    assert "1 change detected" not in err  # a library's INFO chatter stays out even at --log-level debug
    assert "WARNING watchfiles.main: the watcher warns" in err


def test_the_default_level_shows_info_but_not_debug() -> None:
    err = _log_with_level("INFO")
    assert "ours at info" in err and "ours at debug" not in err
