"""Turns every run's state into the `caffe_*` series of docs/metrics.md, fresh on each scrape."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.state import RunRegistry, RunState

_ABS_MEAN = " Caffe prints the blob's mean absolute value (asum/count), not an L2 norm."


def _gauge(name: str, doc: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc)


def _counter(name: str, doc: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc)


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
        g, c = _gauge, _counter
        fams: list[Metric] = [
            g("caffe_layer_top_data_abs_mean", "Newest [Forward] top blob data of each layer." + _ABS_MEAN),
            g("caffe_layer_param_data_abs_mean", "Newest [Forward] param blob data of each layer." + _ABS_MEAN),
            g("caffe_layer_bottom_diff_abs_mean", "Newest [Backward] bottom blob diff (gradient)." + _ABS_MEAN),
            g("caffe_layer_param_diff_abs_mean", "Newest [Backward] param blob diff (gradient)." + _ABS_MEAN),
            g("caffe_layer_update_data_abs_mean", "Newest [Update] param data (2014-2015 Caffe)." + _ABS_MEAN),
            g("caffe_layer_update_diff_abs_mean", "Newest [Update] param diff (2014-2015 Caffe)." + _ABS_MEAN),
            g("caffe_layer_info", "One series per layer and phase: Caffe layer type and position in forward "
              "order (index, zero-padded, 000 = input side)."),
            g("caffe_net_param_data_l1_norm", "Sum of |w| over all learnable params ('All net params' line)."),
            g("caffe_net_param_diff_l1_norm", "Sum of |dw| over all learnable params ('All net params' line)."),
            g("caffe_net_param_data_l2_norm", "sqrt(sum w^2) over all learnable params ('All net params' line)."),
            g("caffe_net_param_diff_l2_norm", "sqrt(sum dw^2) over all learnable params ('All net params' line)."),
            g("caffe_iteration", "Newest solver iteration printed."),
            g("caffe_loss", "Smoothed training loss of the newest display line (NaN/Inf kept)."),
            g("caffe_learning_rate", "Learning rate of the newest 'Iteration N, lr = v' line."),
            g("caffe_iterations_per_second", "Training speed: the display line's iter/s, else from glog times."),
            g("caffe_train_output", "Newest 'Train net output' value (before the loss weight)."),
            g("caffe_test_output", "'Test net output' of the newest test phase (mean over test_iter)."),
            g("caffe_test_loss", "'Test loss: v' of the newest test phase."),
            g("caffe_test_iteration", "Iteration of the newest 'Testing net (#k)'."),
            c("caffe_display_iterations", "Display lines 'Iteration N ..., loss = v' read."),
            c("caffe_debug_lines", "debug_info lines read, by phase and stage."),
            c("caffe_solver_starts", "Solver (re)starts seen in the run ('Solving <net>')."),
            c("caffe_snapshots", "Model snapshots written ('Snapshotting to ...caffemodel')."),
            g("caffe_last_snapshot_iteration", "Iteration of the newest snapshot."),
            g("caffe_last_log_timestamp_seconds", "glog time of the newest line of the run, Unix seconds."),
            g("caffe_run_finished", "1 after 'Optimization Done', 0 while training."),
            g("caffe_run_info", "The run's net name and newest log path."),
            c("caffe_nonfinite_values", "NaN/Inf values read, by phase, stage, layer and blob."),
        ]
        return {f.name: f for f in fams}

    def _run(self, run: RunState, fams: dict[str, Metric]) -> None:
        base = {"run": run.run, **run.labels}

        def put(name: str, value: float, **labels: str) -> None:
            fam = fams[name]
            sample = name + "_total" if fam.type == "counter" else name
            fam.add_sample(sample, {**base, **labels}, value)

        def layer(name: str, value: str | float, **labels: str) -> None:
            put(name, float(value), **labels)

        for phase in ("train", "test"):
            for lyr, role, blob, v in run.blobs(phase, "forward"):
                if role == "param":
                    layer("caffe_layer_param_data_abs_mean", v, phase=phase, layer=lyr, param=blob)
                else:
                    layer("caffe_layer_top_data_abs_mean", v, phase=phase, layer=lyr, blob=blob)
            for i, name in enumerate(run.layer_order(phase)):
                put("caffe_layer_info", 1, phase=phase, layer=name, type=_layer_type(run, name),
                    index=f"{i:03d}")
        for lyr, role, blob, v in run.blobs("train", "backward"):
            if role == "param":
                layer("caffe_layer_param_diff_abs_mean", v, layer=lyr, param=blob)
            else:
                layer("caffe_layer_bottom_diff_abs_mean", v, layer=lyr, blob=blob)
        for lyr, param, data, diff in run.updates():
            if data is not None:
                layer("caffe_layer_update_data_abs_mean", data, layer=lyr, param=param)
            layer("caffe_layer_update_diff_abs_mean", diff, layer=lyr, param=param)
        if run.norms is not None:
            for name, v in zip(("data_l1", "diff_l1", "data_l2", "diff_l2"), run.norms, strict=True):
                put(f"caffe_net_param_{name}_norm", v)
        for name, v in self._solver(run):
            put(name, v)
        for out, v in run.train_outputs.items():
            put("caffe_train_output", v, output=out)
        for (net, out), v in run.test_outputs.items():
            put("caffe_test_output", v, net=net, output=out)
        for net, v in run.test_loss.items():
            put("caffe_test_loss", v, net=net)
        for net, it in run.test_iteration.items():
            put("caffe_test_iteration", it, net=net)
        for (phase, stage), n in run.debug_lines.items():
            put("caffe_debug_lines", n, phase=phase, stage=stage)
        for (phase, stage, lyr, blob), n in run.nonfinite.items():
            put("caffe_nonfinite_values", n, phase=phase, stage=stage, layer=lyr, blob=blob)
        put("caffe_run_info", 1, net=run.net, source=run.sources[-1] if run.sources else "")

    @staticmethod
    def _solver(run: RunState) -> Iterator[tuple[str, float]]:
        optional = (
            ("caffe_iteration", run.iteration),
            ("caffe_loss", run.loss),
            ("caffe_learning_rate", run.lr),
            ("caffe_iterations_per_second", run.speed),
            ("caffe_last_snapshot_iteration", run.last_snapshot_iteration),
            ("caffe_last_log_timestamp_seconds", run.last_timestamp),
        )
        for name, v in optional:
            if v is not None:
                yield name, float(v)
        yield "caffe_display_iterations", run.display_iterations
        yield "caffe_solver_starts", run.solver_starts
        yield "caffe_snapshots", run.snapshots
        yield "caffe_run_finished", 1.0 if run.finished else 0.0


def _layer_type(run: RunState, layer: str) -> str:
    """Type from the net dump; Caffe's auto-inserted `<blob>_<layer>_<k>_split` layers are never in it."""
    return run.layer_types.get(layer) or ("Split" if layer.endswith("_split") else "")
