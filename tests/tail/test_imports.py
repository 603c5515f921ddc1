"""The records the stages share live in exporter.events: importing them, the run state or the tailer's
line splitting does not load the file watcher (watchfiles and its Rust notifier: ~17 ms, threads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.tail import inotify

ROOT = Path(__file__).resolve().parent.parent.parent


def loaded_after(statement: str) -> bool:
    code = f"import sys\n{statement}\nprint('watchfiles' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return out.strip() == "True"


def test_the_shared_records_and_the_run_state_do_not_load_watchfiles() -> None:
    assert not loaded_after("from exporter.events import Chunk, FilePosition\nimport exporter.state")


def test_the_tail_package_does_not_load_watchfiles_at_import() -> None:
    assert not loaded_after("from exporter.tail import Chunk, Tailer, TailStats, follow, read_stream")


@pytest.mark.skipif(not inotify.available(), reason="Linux inotify only")
@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_following_on_linux_does_not_load_watchfiles(polling: bool) -> None:
    assert not loaded_after("import threading\nfrom exporter.tail import Tailer, follow\n"
                            "stop = threading.Event(); stop.set()\n"
                            f"follow(Tailer([]), print, stop, force_polling={polling})")
