"""The Analysis (exporter/detectors/__init__.py): the ordered list, the declared suppression, restarts, checkpoints."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from exporter import checkpoint
from exporter.collectors.anomalies import metric_tuples
from exporter.detectors import (
    DETECTORS,
    FORMAT,
    SUPPRESSIONS,
    TYPES,
    Analysis,
    Detector,
    DetectorConfig,
    Hit,
    Scope,
    Settings,
    Suppression,
    View,
    analysis_of,
)
from exporter.detectors.history import History
from exporter.detectors.schema import setting
from exporter.errors import stage_of
from exporter.pipeline import Pipeline
from exporter.state import Block, BlockObserver, RunRegistry, RunState
from exporter.tail import Chunk

from . import REAL, block, make, run_blocks, types


def test_healthy_sequence_is_silent() -> None:
    a = run_blocks([block(i * 10, loss=2.0 / (i + 1)) for i in range(10)])
    assert a.findings == []
    assert all(n == 0 for n in a.counts.values())


def test_the_list_gives_the_types_and_their_order() -> None:
    assert TYPES == ("nonfinite", "nan_loss", "loss_saturated", "exploding", "vanishing", "zero_gradient", "dead",
                     "loss_spike")
    assert tuple(d.name for d in DETECTORS) == TYPES
    assert {d.Config for d in DETECTORS} == {type(s) for s in (getattr(DetectorConfig(), t) for t in TYPES)}


# --- suppression ---------------------------------------------------------------------------------


def test_loss_spike_suppressed_while_exploding() -> None:
    a = run_blocks([block(0, loss=1.0, l2=1.0), block(5, loss=40.0, l2=12.0)])
    assert types(a) == ["exploding"]


def test_the_suppression_rule_is_declared_not_built_in() -> None:
    rule = Suppression("loss_spike", by=("nonfinite", "nan_loss", "exploding"), held=("exploding",))
    assert (rule,) == SUPPRESSIONS
    blocks = [block(0, loss=1.0, l2=1.0), block(5, loss=40.0, l2=12.0)]
    run, _ = make()
    a = Analysis(DetectorConfig(), DETECTORS, suppressions=())
    run.observers = [a]
    for b in blocks:
        run.feed(Chunk("t.log", "\n".join(b) + "\n", 100, False, 0.0))
    assert types(a) == ["exploding", "loss_spike"]


def test_an_open_explosion_explains_a_spike_on_a_display_line_without_debug_info() -> None:
    no_debug = ["I1126 14:26:22.113291 18205 solver.cpp:239] Iteration 6 (11.4943 iter/s, 0.174s/2 iters), loss = 45"]
    a = run_blocks([block(0, loss=1.0, l2=1.0), block(5, loss=40.0, l2=12.0), no_debug])
    assert types(a) == ["exploding"] and a.counts["loss_spike"] == 0
    # the explosion ended at the last debug block: the same line is a spike of its own
    b = run_blocks([block(0, loss=1.0, l2=1.0), block(5, loss=40.0, l2=12.0), block(6, loss=1.0, l2=1.0), no_debug])
    assert types(b) == ["exploding", "loss_spike"]


# --- a new detector: one class and one list entry ----------------------------------------------------


@dataclass(frozen=True)
class HighLossConfig(Settings):
    limit: float = setting(5.0, lambda v: v > 0, "a number > 0")


class HighLoss(Detector):
    """A detector written the way the built-in ones are, known to nothing else."""

    name: ClassVar[str] = "high_loss"
    Config: ClassVar[type[Settings]] = HighLossConfig
    ADVICE: ClassVar[str] = "Lower the loss."
    scope: ClassVar[Scope] = Scope.DISPLAY
    config: HighLossConfig

    def __init__(self, config: HighLossConfig) -> None:
        self.config = config
        self.seen = 0

    def observe(self, block: Block, view: View) -> Hit | None:
        self.seen += 1
        if block.loss <= self.config.limit:
            return None
        return Hit([""], f"loss {block.loss} > {self.config.limit}", {"loss": block.loss}, [block.line])

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load(self, d: Mapping[str, Any]) -> None:
        self.seen = int(d["seen"])


WITH_HIGH_LOSS: tuple[type[Detector], ...] = (*DETECTORS, HighLoss)  # the one list entry


def _with_high_loss(run: RunState) -> list[BlockObserver]:
    return [Analysis(DetectorConfig(), WITH_HIGH_LOSS)]


def test_a_new_detector_is_tracked_counted_exported_and_checkpointed() -> None:
    reg = RunRegistry(lambda p: ("t", {}), _with_high_loss)
    for i, loss in enumerate([1.0, 6.0, 7.0, 1.0]):
        reg.feed(Chunk("t.log", "\n".join(block(i * 10, loss=loss)) + "\n", 1 + 20 * i, i == 0, 0.0))
    a = analysis_of(reg.runs["t"])
    assert a is not None
    (f,) = [f for f in a.findings if f.type == "high_loss"]
    assert (f.iteration, f.last_iteration, f.display_iterations, f.open, f.advice) == (10, 20, 2, False,
                                                                                       "Lower the loss.")
    assert a.counts["high_loss"] == 2 and a.active["high_loss", ""] is False
    samples = {(name, labels["type"]): value for name, labels, value in metric_tuples(reg.runs["t"])
               if "type" in labels}
    assert samples["caffe_anomalies_total", "high_loss"] == 2.0 and samples["caffe_anomaly", "high_loss"] == 0.0
    back = Analysis.from_dict(json.loads(json.dumps(a.to_dict())), detectors=WITH_HIGH_LOSS)
    restored = back.detector("high_loss")
    assert isinstance(restored, HighLoss) and restored.seen == 4


# --- restarts and checkpoints ------------------------------------------------------------------------


def test_restart_resets_trailing_state() -> None:
    # a second solver run from iteration 0 in the same log: its loss is compared with its own minimum
    a = run_blocks([block(0, loss=0.5), block(10, loss=0.05), block(0, loss=2.3)])
    assert a.findings == []


def _same(x: Analysis, y: Analysis) -> bool:  # NaN-aware: NaN == NaN in their JSON text
    return json.dumps(x.to_dict(), sort_keys=True) == json.dumps(y.to_dict(), sort_keys=True)


def test_round_trip_mid_run_gives_the_same_result() -> None:
    blocks = [block(0, loss=1.0, l2=1.0), block(5, loss=1.5, l2=4.0, relu=0), block(10, relu=0, w1="nan")]
    blocks += [block(15, relu=0, loss=2.0, l2=60.0), block(20, relu=0, w1=0), block(25, loss=87.3365)]
    whole = run_blocks(blocks)
    run, a = make()
    for b in blocks[:3]:
        run.feed(Chunk("t.log", "\n".join(b) + "\n", 100, False, 0.0))
    saved = json.loads(json.dumps(a.to_dict()))
    restored = Analysis.from_dict(saved)

    assert _same(restored, a)
    run.observers = [restored]
    for b in blocks[3:]:
        run.feed(Chunk("t.log", "\n".join(b) + "\n", 100, False, 0.0))
    assert _same(restored, whole)
    assert {f.type for f in whole.findings} >= {"nonfinite", "dead", "exploding", "loss_saturated"}


@pytest.mark.parametrize("name", ["lenet_nan", "explode", "dead_relu", "vanish"])
def test_a_checkpoint_after_every_display_block_of_a_real_log_changes_nothing(name: str) -> None:
    lines = (REAL / name / "caffe.log").read_text().splitlines(keepends=True)
    cuts = [i + 1 for i, line in enumerate(lines) if "solver.cpp:239] Iteration" in line]
    parts = [lines[a:b] for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=True)]

    def feed_all(checkpointing: bool) -> Analysis:
        reg = RunRegistry(lambda p: ("r", {}), lambda run: [Analysis()])
        first = 1
        for part in parts:
            reg.feed(Chunk("r.log", "".join(part), first, first == 1, 0.0))
            first += len(part)
            run = reg.runs["r"]
            if checkpointing:
                a = analysis_of(run)
                assert a is not None
                run.observers = [Analysis.from_dict(json.loads(json.dumps(a.to_dict())))]
        a = analysis_of(reg.runs["r"])
        assert a is not None
        return a

    whole, resumed = feed_all(False), feed_all(True)
    assert whole.findings and _same(resumed, whole)


def test_findings_per_type_are_capped() -> None:
    cfg = DetectorConfig(max_findings_per_type=2)
    blocks = [block(i, loss=1.0 if i % 2 else 20.0) for i in range(1, 12)]
    a = run_blocks([block(0, loss=1.0), *blocks], cfg)
    assert types(a) == ["loss_spike", "loss_spike"]
    assert a.suppressed["loss_spike"] == 3 and a.counts["loss_spike"] == 5


OLD_FORMAT: dict[str, Any] = {  # what exporter/detect.py saved before the detectors had modules of their own
    "config": DetectorConfig().to_dict(), "active": [], "counts": dict.fromkeys(TYPES, 0), "findings": [],
    "suppressed": dict.fromkeys(TYPES, 0), "open": {}, "first_iteration": 0, "first_loss": 2.3,
    "last_iteration": 0, "prev_line": 10, "prev_display": 0, "window": [], "snapshots": [], "streaks": [],
    "min_loss": 2.3, "min_loss_iteration": 0, "best_loss": 2.3, "best_iteration": 0, "nonfinite_order": [],
    "largest_before": [],
}


def test_a_state_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match=f"analysis state of format None, expected {FORMAT}"):
        Analysis.from_dict(OLD_FORMAT)


def test_a_checkpoint_with_an_old_analysis_is_not_used_at_all() -> None:
    reg = RunRegistry(lambda p: ("t", {}), lambda run: [Analysis()])
    reg.feed(Chunk("t.log", "\n".join(block(0)) + "\n", 1, True, 0.0))
    data = checkpoint.snapshot(reg, {})
    data["runs"][0]["analysis"] = OLD_FORMAT
    fresh = RunRegistry(lambda p: ("t", {}), lambda run: [Analysis()])
    with pytest.raises(checkpoint.CheckpointError, match="does not match this version"):
        checkpoint.restore(json.loads(json.dumps(data)), fresh, DetectorConfig())
    assert fresh.runs == {}


def test_a_detector_the_saved_state_does_not_name_starts_fresh() -> None:
    a = run_blocks([block(0, loss=1.0), block(1, loss=20.0)])
    saved = a.to_dict()
    del saved["detectors"]["loss_spike"]
    back = Analysis.from_dict(saved)
    assert [f.type for f in back.findings] == ["loss_spike"]  # the tracker's record stays
    spike = back.detector("loss_spike")
    assert spike is not None and spike.to_dict()["min_loss_iteration"] is None


# --- configuration reload ------------------------------------------------------------------------------


def test_a_reloaded_configuration_changes_thresholds_and_keeps_state() -> None:
    run, a = make()
    for i in range(2):
        run.feed(Chunk("t.log", "\n".join(block(i, relu=0)) + "\n", 100, False, 0.0))
    assert a.findings == []  # 2 of 3 displays
    a.config = DetectorConfig.from_mapping({"dead": {"iterations": 2}, "max_findings_per_type": 1})
    run.feed(Chunk("t.log", "\n".join(block(2, relu=0)) + "\n", 100, False, 0.0))
    (f,) = a.findings
    assert (f.type, f.iteration) == ("dead", 0)  # the streak counted before the reload
    assert a.tracker.max_findings == 1 and a.history.window.maxlen == 5


# --- failures --------------------------------------------------------------------------------------------


class Broken(HighLoss):
    name: ClassVar[str] = "broken"

    def observe(self, block: Block, view: View) -> Hit | None:
        raise ZeroDivisionError("a bug in a detector")


def test_a_failing_detector_is_counted_in_the_detect_stage_and_reading_goes_on() -> None:
    registry = RunRegistry(lambda p: ("t", {}), lambda run: [Analysis(DetectorConfig(), (*DETECTORS, Broken))])
    pipeline = Pipeline(registry)
    pipeline.on_chunk(Chunk("t.log", "\n".join(block(0)) + "\n", 1, True, 0.0))
    pipeline.on_chunk(Chunk("t.log", "\n".join(block(10, loss=0.5)) + "\n", 14, False, 0.0))
    assert pipeline.errors.counts["detect"] == 2 and pipeline.errors.counts["state"] == 0
    assert registry.runs["t"].iteration == 10


def test_an_error_inside_a_detectors_module_belongs_to_the_detect_stage() -> None:
    with pytest.raises(ValueError) as e:
        History(5).load({"prev_line": "not a line number", "prev_display": None, "window": [], "snapshots": []})
    assert stage_of(e.value, "state") == "detect"
