"""`caffe-exporter diagnose LOG... [--json]`: where did training go wrong, from the log alone.

The logs are streamed through the same run state and detectors as the daemon (`exporter.state`,
`exporter.detectors`), so the report and the `caffe_anomaly` metrics agree; memory is constant per run.
Exit code: 0 healthy, 1 something was found, 2 a file could not be read or holds no Caffe log.
The `--json` schema is documented in docs/detectors.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from exporter import config
from exporter.detectors import Analysis, Finding, analysis_of, make_observers, nv_dict
from exporter.events import Chunk
from exporter.identity import RunNamer
from exporter.jsonvalue import optional_number as _num
from exporter.state import RunRegistry, RunState
from exporter.tail import read_stream

SCHEMA = "caffe-exporter.diagnose/1"


def _chunks(path: str) -> Iterator[Chunk]:
    """Complete lines of a file (or `-` = stdin) to its current end; a last line without newline counts."""
    if path == "-":
        yield from read_stream(sys.stdin.buffer, path="-")
        return
    with open(path, "rb") as f:
        yield from read_stream(f, path=path, read_bytes=4 << 20)


def run_report(run: RunState) -> dict[str, Any]:
    """One run's summary, non-finite origins and findings as JSON-ready data (the `runs[]` schema)."""
    a = analysis_of(run)
    findings: list[Finding] = a.findings if a is not None else []
    nonfinite = _nonfinite(run, a)
    return {
        "run": run.run,
        "labels": dict(run.labels),
        "sources": list(run.sources),
        "summary": _summary(run, a),
        "nonfinite": nonfinite,
        "findings": [f.to_dict() for f in findings],
        "suppressed_findings": {t: n for t, n in (a.suppressed.items() if a else []) if n},
        "healthy": not findings and run.first_nonfinite is None and not nonfinite["unattributed"],
    }


def _summary(run: RunState, a: Analysis | None) -> dict[str, Any]:
    tests: dict[str, dict[str, Any]] = {}
    for (net, name), v in run.test_outputs.items():
        t = tests.setdefault(net, {"iteration": run.test_iteration.get(net), "outputs": {}})
        t["outputs"][name] = _num(v)
    return {
        "net": run.net,
        "solver_runs": run.solver_starts,
        "finished": run.finished,
        "first_iteration": a.first_iteration if a else None,
        "last_iteration": run.iteration,
        "display_iterations": run.display_iterations,
        "first_loss": _num(a.first_loss) if a else None,
        "last_loss": _num(run.loss),
        "lr": run.lr,
        "last_snapshot_iteration": run.last_snapshot_iteration,
        "train_outputs": {k: _num(v) for k, v in run.train_outputs.items()},
        "test_outputs": tests,
        "debug_lines": sum(run.debug_lines.values()),
    }


def _nonfinite(run: RunState, a: Analysis | None) -> dict[str, Any]:
    # non-finite values of a block whose display line has not been written yet (a live log, a fragment)
    unattributed = [nv_dict(nv) for th in run.threads.values() for nv in th.pending if nv.iteration is None][:10]
    return {
        "first_observed": nv_dict(run.first_nonfinite),
        "first_observed_layer": nv_dict(run.first_nonfinite_layer),
        "order": a.nonfinite_order if a else [],
        "largest_before": a.largest_before if a else [],
        "loss_nonfinite_lines": run.loss_nonfinite,
        "unattributed": unattributed,
    }


def _origin_text(nv: dict[str, Any] | None) -> str:
    if nv is None:
        return "none"
    where = (
        f"[{nv['stage']}] layer {nv['layer']}, blob {nv['blob']}"
        if nv["layer"]
        else (f"[{nv['stage']}] All net params {nv['blob']}")
    )
    block = f", pass {nv['block']}" if nv["block"] else ""
    return (
        f"iteration {nv['iteration']} ({nv['phase']}{block}): {where} {nv['kind']} = {nv['value']} (line {nv['line']})"
    )


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def print_text(reports: Iterable[dict[str, Any]], errors: list[dict[str, str]], out: TextIO, err: TextIO) -> None:
    for e in errors:
        err.write(f"caffe-exporter diagnose: {e['path']}: {e['error']}\n")
    for r in reports:
        _print_summary(r, out)
        _print_nonfinite(r["nonfinite"], out)
        if not r["findings"]:
            out.write("healthy: no anomalies found\n" if r["healthy"] else "findings: none beyond the above\n")
            continue
        _print_findings(r, out)


def _print_summary(r: dict[str, Any], out: TextIO) -> None:
    s = r["summary"]
    out.write(f"\n== run {r['run']} ({', '.join(r['sources'])})\n")
    out.write(
        f"net: {s['net'] or '?'}   solver runs: {s['solver_runs']}   iterations: {s['first_iteration']} .. "
        f"{s['last_iteration']} ({s['display_iterations']} display lines)"
        f"{'   finished' if s['finished'] else ''}\n"
    )
    out.write(f"loss: first {_fmt(s['first_loss'])}, last {_fmt(s['last_loss'])}   lr: {_fmt(s['lr'])}\n")
    for net, t in s["test_outputs"].items():
        outs = ", ".join(f"{k} = {_fmt(v)}" for k, v in t["outputs"].items())
        out.write(f"test net #{net} at iteration {t['iteration']}: {outs}\n")


def _print_nonfinite(nf: dict[str, Any], out: TextIO) -> None:
    for nv in nf["unattributed"][:3]:
        out.write(
            f"non-finite value in a block without its display line yet: [{nv['stage']}] layer {nv['layer']}, "
            f"blob {nv['blob']} {nv['kind']} = {nv['value']} (line {nv['line']})\n"
        )
    if nf["first_observed"] is None and nf["first_observed_layer"] is None:
        if not nf["unattributed"]:
            out.write("non-finite values: none\n")
        return
    out.write(f"first observed non-finite value (any kind): {_origin_text(nf['first_observed'])}\n")
    out.write(f"first observed non-finite per-layer value: {_origin_text(nf['first_observed_layer'])}\n")
    if nf["order"]:
        order = ", ".join(f"{o['layer']} ({o['stage']} {o['kind']} {o['value']})" for o in nf["order"][:12])
        out.write(f"  layers turned non-finite in this order: {order}\n")
    if nf["largest_before"]:
        big = ", ".join(f"{b['key']} = {b['value']:.6g}" for b in nf["largest_before"])
        out.write(f"  largest finite diffs just before (iteration {nf['largest_before'][0]['iteration']}): {big}\n")
    out.write("  (only display iterations carry debug_info: these are the first OBSERVED values)\n")


def _print_findings(r: dict[str, Any], out: TextIO) -> None:
    out.write(f"findings: {len(r['findings'])}\n")
    for f in r["findings"]:
        span = f"iteration {f['iteration']}"
        if f["last_iteration"] != f["iteration"]:
            span += f" .. {f['last_iteration']}"
        layers = f"   layers: {', '.join(f['layers'])}" if f["layers"] else ""
        out.write(f"- [{f['type']}] {span} ({f['display_iterations']} display iterations){layers}\n")
        out.write(f"    {f['message']}\n")
        lines = f["evidence_lines"]
        ev = (
            f"lines {lines[0]}-{lines[1]}"
            if len(lines) == 2 and f["type"] not in ("nonfinite",)
            else ("lines " + ", ".join(map(str, lines)))
        )
        out.write(f"    evidence: {ev}\n")
        out.write(f"    advice: {f['advice']}\n")
    for t, n in r["suppressed_findings"].items():
        out.write(f"  ({n} more {t} episodes not listed)\n")


def read_runs(
    paths: list[str], cfg: config.Config | None = None
) -> tuple[RunRegistry, list[dict[str, Any]], list[dict[str, str]]]:
    """Feed the logs through the daemon's own pipeline stages: runs, per-file outcomes, errors. Runs are named
    and labelled by `cfg`'s source rules as the daemon names them (paths no rule covers: the default name)."""
    cfg = cfg or config.Config(sources=())
    registry = RunRegistry(identify=RunNamer(cfg.sources), make_observers=make_observers(cfg.detectors))
    errors: list[dict[str, str]] = []
    files: list[dict[str, Any]] = []
    for path in paths:
        parsed = 0
        error = None
        try:
            for chunk in _chunks(path):
                parsed += registry.feed(chunk)
        except OSError as e:
            error = f"cannot read: {e.strerror or e}"
        if error is None and parsed == 0:
            error = "no Caffe log lines found"
        if error is not None:
            errors.append({"path": path, "error": error})
        files.append({"path": path, "parsed_lines": parsed, "error": error})
    return registry, files, errors


def diagnose(paths: list[str], cfg: config.Config | None = None) -> tuple[dict[str, Any], int]:
    """Read the logs and build the report (the `--json` document) and the exit code."""
    registry, files, errors = read_runs(paths, cfg)
    reports = [run_report(r) for r in registry.runs.values() if r.display_iterations or r.debug_lines]
    found = any(not r["healthy"] for r in reports)
    code = 2 if errors else (1 if found else 0)
    doc = {"schema": SCHEMA, "exit_code": code, "files": files, "runs": reports}
    return doc, code


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="caffe-exporter diagnose",
        description="Report where a Caffe training went wrong (NaN origin, exploding/vanishing gradients, dead "
        "ReLUs, loss spikes) from its debug_info log. Exit 0 healthy, 1 findings, 2 unreadable / not a Caffe log.",
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="Caffe log files ('-' = stdin)")
    p.add_argument("--json", action="store_true", help="machine-readable report (schema: docs/detectors.md)")
    p.add_argument("--config", metavar="YAML", help="the daemon's config.yaml: its `sources:` name the runs, "
                   "its `detectors:` set the thresholds")
    args = p.parse_args(argv)
    try:
        cfg = config.load(args.config) if args.config else None
    except config.ConfigError as e:
        sys.stderr.write(f"caffe-exporter diagnose: {e}\n")
        return 2
    doc, code = diagnose(args.logs, cfg)
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_text(doc["runs"], [e for e in doc["files"] if e["error"]], sys.stdout, sys.stderr)
    return code
