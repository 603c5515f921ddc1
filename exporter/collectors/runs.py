"""Turns every run's state into the `caffe_*` series of docs/metrics.md, fresh on each scrape."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.collectors.family import Family
from exporter.state import RunRegistry, RunState

_ABS_MEAN = " Caffe prints the blob's mean absolute value (asum/count), not an L2 norm."


def _g(name: str, doc: str, *labels: str) -> Family:
    return Family(name, "gauge", doc, labels)


def _c(name: str, doc: str, *labels: str) -> Family:
    return Family(name, "counter", doc, labels)


# every family of a run, in exposition order; label names after `run` and the run's configured labels
LAYER_TOP_DATA = _g("caffe_layer_top_data_abs_mean", "Newest [Forward] top blob data of each layer." + _ABS_MEAN,
                    "phase", "layer", "blob")
LAYER_PARAM_DATA = _g("caffe_layer_param_data_abs_mean", "Newest [Forward] param blob data of each layer."
                      + _ABS_MEAN, "phase", "layer", "param")
LAYER_BOTTOM_DIFF = _g("caffe_layer_bottom_diff_abs_mean", "Newest [Backward] bottom blob diff (gradient)."
                       + _ABS_MEAN, "layer", "blob")
LAYER_PARAM_DIFF = _g("caffe_layer_param_diff_abs_mean", "Newest [Backward] param blob diff (gradient)."
                      + _ABS_MEAN, "layer", "param")
LAYER_UPDATE_DATA = _g("caffe_layer_update_data_abs_mean", "Newest [Update] param data (2014-2015 Caffe)."
                       + _ABS_MEAN, "layer", "param")
LAYER_UPDATE_DIFF = _g("caffe_layer_update_diff_abs_mean", "Newest [Update] param diff (2014-2015 Caffe)."
                       + _ABS_MEAN, "layer", "param")
LAYER_INFO = _g("caffe_layer_info", "One series per layer and phase: Caffe layer type and position in forward "
                "order (index, zero-padded, 000 = input side).", "phase", "layer", "type", "index")
NET_NORMS = (  # in the order of RunState.norms
    _g("caffe_net_param_data_l1_norm", "Sum of |w| over all learnable params ('All net params' line)."),
    _g("caffe_net_param_diff_l1_norm", "Sum of |dw| over all learnable params ('All net params' line)."),
    _g("caffe_net_param_data_l2_norm", "sqrt(sum w^2) over all learnable params ('All net params' line)."),
    _g("caffe_net_param_diff_l2_norm", "sqrt(sum dw^2) over all learnable params ('All net params' line)."),
)
ITERATION = _g("caffe_iteration", "Newest solver iteration printed.")
LOSS = _g("caffe_loss", "Smoothed training loss of the newest display line (NaN/Inf kept).")
LEARNING_RATE = _g("caffe_learning_rate", "Learning rate of the newest 'Iteration N, lr = v' line.")
SPEED = _g("caffe_iterations_per_second", "Training speed: the display line's iter/s, else from glog times.")
TRAIN_OUTPUT = _g("caffe_train_output", "Newest 'Train net output' value (before the loss weight).", "output")
TEST_OUTPUT = _g("caffe_test_output", "'Test net output' of the newest test phase (mean over test_iter).", "net",
                 "output")
TEST_LOSS = _g("caffe_test_loss", "'Test loss: v' of the newest test phase.", "net")
TEST_ITERATION = _g("caffe_test_iteration", "Iteration of the newest 'Testing net (#k)'.", "net")
DISPLAY_ITERATIONS = _c("caffe_display_iterations", "Display lines 'Iteration N ..., loss = v' read.")
DEBUG_LINES = _c("caffe_debug_lines", "debug_info lines read, by phase and stage.", "phase", "stage")
SOLVER_STARTS = _c("caffe_solver_starts", "Solver (re)starts seen in the run ('Solving <net>').")
SNAPSHOTS = _c("caffe_snapshots", "Model snapshots written ('Snapshotting to ...caffemodel').")
LAST_SNAPSHOT = _g("caffe_last_snapshot_iteration", "Iteration of the newest snapshot.")
LAST_TIMESTAMP = _g("caffe_last_log_timestamp_seconds", "glog time of the newest line of the run, Unix seconds.")
FINISHED = _g("caffe_run_finished", "1 after 'Optimization Done', 0 while training.")
RUN_INFO = _g("caffe_run_info", "The run's net name and newest log path.", "net", "source")
NONFINITE = _c("caffe_nonfinite_values", "NaN/Inf values read, by phase, stage, layer and blob.", "phase", "stage",
               "layer", "blob")
FAMILIES: tuple[Family, ...] = (
    LAYER_TOP_DATA, LAYER_PARAM_DATA, LAYER_BOTTOM_DIFF, LAYER_PARAM_DIFF, LAYER_UPDATE_DATA, LAYER_UPDATE_DIFF,
    LAYER_INFO, *NET_NORMS, ITERATION, LOSS, LEARNING_RATE, SPEED, TRAIN_OUTPUT, TEST_OUTPUT, TEST_LOSS,
    TEST_ITERATION, DISPLAY_ITERATIONS, DEBUG_LINES, SOLVER_STARTS, SNAPSHOTS, LAST_SNAPSHOT, LAST_TIMESTAMP,
    FINISHED, RUN_INFO, NONFINITE,
)


class RunCollector(Collector):
    """One collector for all runs: the series are derived from `RunState` under the pipeline's lock.

    Nothing is withheld here: the limits (`limits:` in the configuration) are applied when a value is
    stored (state.RunState._admit), so what a run holds is what it exports."""

    def __init__(self, registry: RunRegistry, lock: threading.Lock) -> None:
        self._registry = registry
        self._lock = lock

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return self.render(list(self._registry.runs.values()))

    def render(self, runs: Iterable[RunState]) -> list[Metric]:
        """The families of `runs`; the caller holds the lock (collectors.scrape renders every family of one
        scrape under one hold of it)."""
        fams = self._families()
        for run in runs:
            self._run(run, fams)
        return list(fams.values())

    @staticmethod
    def _families() -> dict[str, Metric]:
        return {f.name: f.empty() for f in FAMILIES}

    def _run(self, run: RunState, fams: dict[str, Metric]) -> None:
        base = {"run": run.run, **run.labels}

        def put(spec: Family, value: str | float, *labels: str) -> None:
            # Family.add inlined for the hot loop, without zip's strict check (it triples the cost here);
            # tests/test_families.py checks every sample's label names against the declaration instead
            sample = base.copy()
            sample.update(zip(spec.labels, labels))  # noqa: B905
            fams[spec.name].add_sample(spec.sample, sample, float(value))

        for phase in ("train", "test"):
            for lyr, role, blob, v in run.blobs(phase, "forward"):
                put(LAYER_PARAM_DATA if role == "param" else LAYER_TOP_DATA, v, phase, lyr, blob)
            for i, name in enumerate(run.layer_order(phase)):
                put(LAYER_INFO, 1, phase, name, _layer_type(run, name), f"{i:03d}")
        for lyr, role, blob, v in run.blobs("train", "backward"):
            put(LAYER_PARAM_DIFF if role == "param" else LAYER_BOTTOM_DIFF, v, lyr, blob)
        for lyr, param, data, diff in run.updates():
            if data is not None:
                put(LAYER_UPDATE_DATA, data, lyr, param)
            put(LAYER_UPDATE_DIFF, diff, lyr, param)
        if run.norms is not None:
            for spec, v in zip(NET_NORMS, run.norms, strict=True):
                put(spec, v)
        for spec, v in self._solver(run):
            put(spec, v)
        self._outputs(run, put)
        for (phase, stage), n in run.debug_lines.items():
            put(DEBUG_LINES, n, phase, stage)
        for (phase, stage, lyr, blob), n in run.nonfinite.items():
            put(NONFINITE, n, phase, stage, lyr, blob)
        put(RUN_INFO, 1, run.net, run.sources[-1] if run.sources else "")

    @staticmethod
    def _outputs(run: RunState, put: Callable[..., None]) -> None:
        for out, v in run.train_outputs.items():
            put(TRAIN_OUTPUT, v, out)
        for (net, out), v in run.test_outputs.items():
            put(TEST_OUTPUT, v, net, out)
        for net, v in run.test_loss.items():
            put(TEST_LOSS, v, net)
        for net, it in run.test_iteration.items():
            put(TEST_ITERATION, it, net)

    @staticmethod
    def _solver(run: RunState) -> Iterator[tuple[Family, float]]:
        optional = (
            (ITERATION, run.iteration),
            (LOSS, run.loss),
            (LEARNING_RATE, run.lr),
            (SPEED, run.speed),
            (LAST_SNAPSHOT, run.last_snapshot_iteration),
            (LAST_TIMESTAMP, run.last_timestamp),
        )
        for spec, v in optional:
            if v is not None:
                yield spec, float(v)
        yield DISPLAY_ITERATIONS, run.display_iterations
        yield SOLVER_STARTS, run.solver_starts
        yield SNAPSHOTS, run.snapshots
        yield FINISHED, 1.0 if run.finished else 0.0


def _layer_type(run: RunState, layer: str) -> str:
    """Type from the net dump; Caffe's auto-inserted `<blob>_<layer>_<k>_split` layers are never in it."""
    return run.layer_types.get(layer) or ("Split" if layer.endswith("_split") else "")
