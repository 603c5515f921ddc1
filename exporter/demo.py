"""`caffe-exporter demo`: real Caffe logs replayed live into a temporary directory, served as usual.

A new user sees every metric move (and the NaN run's anomalies fire) without having Caffe.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from exporter.config import Config
from exporter.identity import SourceRule

log = logging.getLogger("caffe_exporter.demo")
DEMO_LOGS = {"lenet-healthy": "lenet_healthy.log", "lenet-nan": "lenet_nan.log"}
_DISPLAY = re.compile(r"^.*\] Iteration \d+ \(.*loss = .*$", re.M)
_PREFIX_TIME = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6}", re.M)


def split_blocks(text: str) -> list[str]:
    """The log cut after each display line, so each piece is one display iteration (plus tests)."""
    blocks, start = [], 0
    for m in _DISPLAY.finditer(text):
        blocks.append(text[start : m.end() + 1])
        start = m.end() + 1
    blocks.append(text[start:])
    return [b for b in blocks if b]


def _now_prefix(block: str) -> str:
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime()) + f".{int(time.time() % 1 * 1e6):06d}"
    return _PREFIX_TIME.sub(lambda m: m[1] + stamp, block)


def replay(root: Path, pace: float, loops: int, stop: threading.Event) -> None:
    logs = {run: split_blocks(resources.files("exporter").joinpath("demo_data", name).read_text())
            for run, name in DEMO_LOGS.items()}
    files = {run: root / run / "caffe.log" for run in logs}
    for f in files.values():
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    loop = 0
    while not stop.is_set() and (loops == 0 or loop < loops):
        for f in files.values():  # start over: the exporter sees a truncation and a new solver start
            f.write_text("")
        for i in range(max(len(b) for b in logs.values())):
            for run, blocks in logs.items():
                if i < len(blocks):
                    with files[run].open("a") as out:
                        out.write(_now_prefix(blocks[i]))
            if stop.wait(pace):
                return
        loop += 1
        log.info("demo: replay %d done", loop)
    stop.set()


def run(listen: str, pace: float, loops: int, stop: threading.Event,
        serve: Callable[[Config, threading.Event], object]) -> int:
    root = Path(tempfile.mkdtemp(prefix="caffe-exporter-demo-"))
    writer = threading.Thread(target=replay, args=(root, pace, loops, stop), name="demo-writer", daemon=True)
    writer.start()
    log.info("demo: replaying %s into %s; open http://%s/metrics", list(DEMO_LOGS), root, listen)
    try:
        serve(Config(listen=listen, sources=(SourceRule(str(root)),)), stop)
    finally:
        stop.set()
        writer.join(timeout=5)
        shutil.rmtree(root, ignore_errors=True)
    return 0
