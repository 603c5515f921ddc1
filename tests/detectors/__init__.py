"""Tests for exporter/detectors/, one file per module; shared helpers live here.

Two kinds of input: small hand-made display blocks of a 2-layer MLP in real Caffe line shapes (the line
prefixes are copied from tests/fixtures/real-caffe logs) to put each threshold at its edge, and replays of
the real logs in tests/fixtures.
"""

from __future__ import annotations

from pathlib import Path

from exporter.detectors import Analysis, DetectorConfig, analysis_of, make_observers
from exporter.state import RunRegistry, RunState
from exporter.tail import Chunk, read_stream

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REAL = FIXTURES / "real-caffe"

NET = "I1126 14:26:20.074826 18205 net.cpp:593]     "
BWD = "I1126 14:26:22.073792 18205 net.cpp:621]     "
SOLVER = "I1126 14:26:22.113291 18205 solver.cpp:239] "


def fwd(layer: str, blob: str, v: object) -> str:
    return f"{NET}[Forward] Layer {layer}, top blob {blob} data: {v}"


def pdiff(layer: str, i: int, v: object) -> str:
    return f"{BWD}[Backward] Layer {layer}, param blob {i} diff: {v}"


def bdiff(layer: str, blob: str, v: object) -> str:
    return f"{BWD}[Backward] Layer {layer}, bottom blob {blob} diff: {v}"


def norms(l2: object, l1: object = 1.0) -> str:
    return (
        "E1126 14:26:22.113255 18205 net.cpp:721]     [Backward] All net params (data, diff): "
        f"L1 norm = (13506.9, {l1}); L2 norm = (24.0999, {l2})"
    )


def display(it: int, loss: object) -> str:
    return f"{SOLVER}Iteration {it} (11.4943 iter/s, 0.174s/2 iters), loss = {loss}"


def output(name: str, v: object) -> str:
    return f"I1126 14:29:21.582772 21301 solver.cpp:258]     Train net output #0: {name} = {v} (* 1 = {v} loss)"


DUMP = [
    "I1126 14:26:19.000000 18205 net.cpp:53] Initializing net from parameters: ",
    'name: "T"',
    "layer {",
    '  name: "ip1"',
    '  type: "InnerProduct"',
    "}",
    "layer {",
    '  name: "relu1"',
    '  type: "ReLU"',
    "}",
    "layer {",
    '  name: "ip2"',
    '  type: "InnerProduct"',
    "}",
    "layer {",
    '  name: "acc"',
    '  type: "Accuracy"',
    "}",
    "I1126 14:26:19.100000 18205 net.cpp:100] Creating Layer ip1",
]


def make(config: DetectorConfig | None = None) -> tuple[RunState, Analysis]:
    reg = RunRegistry(lambda p: ("t", {}), make_observers(config))
    reg.feed(Chunk("t.log", "\n".join(DUMP) + "\n", 1, True, 0.0))
    run = reg.runs["t"]
    a = analysis_of(run)
    assert a is not None
    return run, a


def feed(run: RunState, lines: list[str]) -> None:
    run.feed(Chunk("t.log", "\n".join(lines) + "\n", 100, False, 0.0))


def block(
    it: int,
    loss: object = 1.0,
    w1: object = 0.01,
    w2: object = 0.02,
    relu: object = 0.5,
    l2: object = 1.0,
    acc: object = 0.5,
    extra: list[str] | None = None,
) -> list[str]:
    """One display block of a 2-layer MLP: ip1 -> relu1 -> ip2 (+ a train Accuracy layer)."""
    return [
        fwd("ip1", "ip1", 0.3),
        fwd("relu1", "ip1", relu),
        fwd("ip2", "ip2", 0.2),
        fwd("acc", "acc", acc),
        bdiff("ip2", "ip1", 0.001),
        pdiff("ip2", 0, w2),
        pdiff("ip2", 1, w2),
        bdiff("relu1", "ip1", 0.001),
        pdiff("ip1", 0, w1),
        pdiff("ip1", 1, w1),
        *(extra or []),
        norms(l2),
        display(it, loss),
    ]


def run_blocks(blocks: list[list[str]], config: DetectorConfig | None = None) -> Analysis:
    run, a = make(config)
    for b in blocks:
        feed(run, b)
    return a


def types(a: Analysis) -> list[str]:
    return [f.type for f in a.findings]


def replay(path: Path, config: DetectorConfig | None = None) -> Analysis:
    """The Analysis of a real log read whole, as one run."""
    reg = RunRegistry(identify=lambda p: ("r", {}), make_observers=make_observers(config))
    with open(path, "rb") as f:
        for chunk in read_stream(f, path=str(path)):
            reg.feed(chunk)
    a = analysis_of(reg.runs["r"])
    assert a is not None
    return a


def replay_run(name: str, config: DetectorConfig | None = None) -> Analysis:
    return replay(REAL / name / "caffe.log", config)
