"""Only Caffe logs become runs: a path routes to a run from its first chunk holding a line only Caffe prints
(a parsed event, or a glog prefix naming a Caffe source file); other logs cost nothing but their lines."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from exporter.identity import RunNamer
from exporter.pipeline import Pipeline
from exporter.state import RunRegistry, carries_caffe_state
from exporter.tail import Chunk

FIXTURES = Path(__file__).parent / "fixtures"
LOGS = sorted(FIXTURES.glob("real-caffe/*/caffe.log")) + sorted(FIXTURES.glob("public-logs/*.log"))
HEALTHY = (FIXTURES / "real-caffe/lenet_healthy/caffe.log").read_text()

SYSLOG = ("Dec  2 01:02:03 node-a systemd[1]: Started Session 42 of user root.\n"
          "Dec  2 01:02:04 node-a kernel: [12345.678901] NVRM: GPU at PCI:0000:3b:00: GPU has fallen off the bus.\n"
          "Dec  2 01:02:05 node-a CRON[9981]: (root) CMD (run-parts /etc/cron.hourly)\n")
# another glog program: the same file header and prefix shape as Caffe's, no Caffe source file
OTHER_GLOG = ("Log file created at: 2026/12/02 01:02:03\n"
              "Running on machine: node-a\n"
              "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg\n"
              "I1202 01:02:03.123456 18205 server.cc:88] Listening on 0.0.0.0:8080\n"
              "W1202 01:02:04.000001 18206 worker.cpp:120] queue is 90% full\n")
JSON_LOG = "".join(json.dumps({"ts": 1733101323 + i, "level": "info", "msg": f"step {i} loss = 0.5"}) + "\n"
                   for i in range(3))
CAFFE_FIRST = "I1126 14:26:19.532178 18205 caffe.cpp:204] Using GPUs 0\n"


@pytest.mark.parametrize("text", [SYSLOG, OTHER_GLOG, JSON_LOG, "", "\n\n"],
                         ids=["syslog", "other-glog", "json", "empty", "blank"])
def test_unrelated_logs_carry_no_caffe_state(text: str) -> None:
    assert not carries_caffe_state(text)


@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_caffe_log_is_recognised_within_its_first_chunk(log: Path) -> None:
    head = log.read_bytes()[:64 << 10].decode("utf-8", "replace")
    assert carries_caffe_state(head[:head.rfind("\n") + 1])


@pytest.mark.parametrize("line", [
    CAFFE_FIRST,
    "I1126 14:26:20.029485 18205 layer_factory.hpp:77] Creating layer mnist\n",
    "I1126 14:26:20.1 18205 hdf5_data_layer.cpp:80] Loading list of HDF5 filenames from: train.txt\n",
    "I20261126 14:26:20.074826 18205 net.cpp:86] Creating Layer conv1\n",  # glog >= 0.5 prints the year
    "Iteration 100, loss = 0.25\n",  # no glog prefix (a wrapper stripped it): the parsed event decides
])
def test_a_caffe_source_file_or_a_parsed_event_makes_a_caffe_log(line: str) -> None:
    assert carries_caffe_state(line)


def test_a_path_becomes_a_run_at_its_first_caffe_chunk_only() -> None:
    reg = RunRegistry(identify=RunNamer(), clock=lambda: 0.0)
    pipeline = Pipeline(reg)
    pipeline.on_chunk(Chunk("jobs/lenet/caffe.log", OTHER_GLOG[:OTHER_GLOG.index("I1202")], 1, True, 0.0))
    assert reg.runs == {} and pipeline.lines.skipped == 3  # its lines are counted, nothing else kept
    pipeline.on_chunk(Chunk("jobs/lenet/caffe.log", HEALTHY, 4, False, 0.0))
    assert list(reg.runs) == ["lenet"] and reg.runs["lenet"].display_iterations == 31
    assert reg.runs["lenet"].sources == ["jobs/lenet/caffe.log"]


def test_a_directory_of_thousands_of_unrelated_logs_exports_no_run_and_keeps_memory_flat() -> None:
    reg = RunRegistry(identify=RunNamer(), clock=lambda: 0.0)
    pipeline = Pipeline(reg)
    kinds = [SYSLOG, OTHER_GLOG, JSON_LOG]
    held = []
    tracemalloc.start()
    try:
        for i in range(4000):
            pipeline.on_chunk(Chunk(f"/var/log/app{i}/app.log", kinds[i % 3] * 20, 1, True, 0.0))
            if i in (999, 3999):
                held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert reg.runs == {} and pipeline.lines.parsed == 0
    assert pipeline.lines.skipped == sum(kinds[i % 3].count("\n") * 20 for i in range(4000))
    assert held[1] - held[0] < 64 << 10  # 3,000 more files: nothing of them kept
