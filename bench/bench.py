#!/usr/bin/env python3
"""Throughput of the whole caffe-exporter pipeline beside mtail (and the peers' tuned Python loop).

Generates (or reuses, ``--log``) a ResNet-50-sized Caffe ``debug_info`` log with a NaN injected late
(``gen_caffe_log.py``), then runs each case ``--reps`` times, round-robin (the VM's speed drifts by up to
2x from one minute to the next: compare the ratios measured in one invocation, not absolute numbers):

* ``caffe-exporter``: a fresh ``python bench.py --child-exporter`` process pinned to one core
  (``taskset -c 0``). It wires the pipeline with ``exporter.daemon.build`` (so detectors or anything else
  ``build`` adds are included), reads the log with the real ``Tailer`` (as ``serve`` creates it), feeds
  every chunk to ``Pipeline.on_chunk`` (parse + run state), and finally renders ``/metrics`` once with
  ``prometheus_client.generate_latest(registry)``.
* ``mtail``: ``mtail --one_shot --one_shot_format prometheus`` with ``bench/caffe.mtail`` (the peer
  program), not pinned unless ``--pin-peers`` (as in ../shared/peer-bench: mtail uses ~1.2 cores).
* ``python tuned``: ../shared/peer-bench/py_tuned.py when that directory exists (skipped otherwise).

Wall time is measured around the child (process start included, as for the peers); CPU time and peak
RSS come from the child's own rusage (``os.wait4``). The exporter child also reports its import/build
time, its read+parse time and the render time and size. Lines/s and MB/s (MB = 10^6 bytes) are
lines or bytes of the log / wall time. Prints a markdown table and writes JSON (``--json``).

The output of every exporter run is checked: the NaN origin layer (``--nan-at``, default
res4c_branch2b) has ``caffe_nonfinite_values_total{stage="forward"}`` > 0 from exactly the injected
iteration on and no layer before it in forward order has one, ``caffe_loss`` is NaN, and every line is
accounted for (parsed + skipped = lines). ``--profile`` runs the exporter case once more under cProfile.

The exporter measured is the build users run: by default the checkout `pip install`ed into a fresh venv
(``--build installed``; ``--build inplace``: a copy of exporter/ as it is), with the scan path asked for
(``--scan c``, default, or ``--scan pure``); the run stops with exit status 2 and says why when the child
imported another exporter or ran the other scan path (bench/scanguard.py). The tables name both.

Usage:
  python3 bench/bench.py                                  # 2M lines (1560 iterations), 3 reps
  python3 bench/bench.py --iterations 100 --reps 1        # quick check (~130k lines)
  python3 bench/bench.py --log LOG --nan-at 1500:res4c_branch2b --json out.json --profile
  python3 bench/bench.py --scan pure --build inplace      # the pure-Python fallback, exporter/ as it is
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench import scanguard
else:  # run as a script: bench/ is sys.path[0] (the checkout's root is not: it would shadow the build)
    import scanguard

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_DIR = os.path.join(os.path.dirname(ROOT), "shared", "peer-bench")
ORIGIN_LAYER = "res4c_branch2b"


# --------------------------------------------------------------------------------------------------
# child: the exporter pipeline (runs in its own process)
# --------------------------------------------------------------------------------------------------


def child_exporter(log: str, out: str, report: str, profile: str | None, read_bytes: int | None,
                   scan: str = "c") -> int:
    t_start = time.perf_counter()
    import dataclasses
    import resource

    from prometheus_client import generate_latest

    from exporter import config, daemon

    probe = scanguard.select(scan)  # `pure`: the fallback used where exporter/_scan.c could not be compiled
    from exporter.identity import SourceRule
    from exporter.tail import Tailer

    cfg = dataclasses.replace(config.Config(), sources=(SourceRule(log),))
    if read_bytes:
        cfg = dataclasses.replace(cfg, read_bytes=read_bytes)
    pipeline, registry = daemon.build(cfg)
    tailer = Tailer([log], start_at_end=cfg.start_at == "end", max_line_bytes=cfg.max_line_bytes,
                    read_bytes=cfg.read_bytes, stats=pipeline.tail_stats)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t_read = time.perf_counter()
    chunks = 0
    while True:  # poll until a poll brings nothing new (the first one reads the file to EOF)
        n0 = chunks
        for chunk in tailer.poll():
            pipeline.on_chunk(chunk)
            chunks += 1
        if chunks == n0:
            break
    t_render = time.perf_counter()
    body = generate_latest(registry)
    t_end = time.perf_counter()
    if prof is not None and profile:
        prof.disable()
        prof.dump_stats(profile)
    tailer.close()
    with open(out, "wb") as f:
        f.write(body)
    origin: dict[str, Any] | None = None
    observers = 0
    for run in pipeline.registry.runs.values():
        observers += len(getattr(run, "observers", []) or [])
        nv = getattr(run, "first_nonfinite_layer", None)
        if nv is not None and origin is None:
            origin = {k: getattr(nv, k, None) for k in ("iteration", "phase", "stage", "layer", "blob", "value")}
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rep = {
        "startup_build_s": t_read - t_start,
        "read_parse_s": t_render - t_read,
        "render_s": t_end - t_render,
        "render_bytes": len(body),
        "chunks": chunks,
        "read_bytes": cfg.read_bytes,
        "lines_parsed": pipeline.lines.parsed,
        "lines_skipped": pipeline.lines.skipped,
        "bytes_read": pipeline.tail_stats.bytes_read,
        "runs": len(pipeline.registry.runs),
        "observers": observers,
        "state_first_nonfinite_layer": origin,
        "self_user_s": ru.ru_utime,
        "self_sys_s": ru.ru_stime,
        "self_maxrss_kb": ru.ru_maxrss,
        **probe.report(),
    }
    with open(report, "w") as f:
        json.dump(rep, f)
    return 0


# --------------------------------------------------------------------------------------------------
# parent: log, cases, round-robin runs, verification, table
# --------------------------------------------------------------------------------------------------


def code_fingerprint(pkg: str) -> str:
    """sha256 over the measured exporter package's *.py (which code was measured)."""
    import hashlib

    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, pkg).encode() + b"\0")
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:16]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def ensure_log(args: argparse.Namespace) -> str:
    if args.log:
        if not os.path.isfile(args.log):
            sys.exit(f"bench: --log {args.log}: no such file")
        return str(args.log)
    path = os.path.join(args.workdir, f"caffe_{args.iterations}it.log")
    gen_args = ["--iterations", str(args.iterations), "--nan-at", args.nan_at]
    stamp = path + ".args"
    if os.path.isfile(path) and os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read().strip() == " ".join(gen_args):
                print(f"bench: reusing {path}", file=sys.stderr)
                return path
    print(f"bench: generating {path} ({' '.join(gen_args)})", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, "gen_caffe_log.py"), *gen_args, "--out", path],
                   check=True, timeout=args.timeout, stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        f.write(" ".join(gen_args) + "\n")
    return path


def run_child(argv: list[str], stdout_path: str, stderr_path: str, timeout: float,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run argv to completion (killed after `timeout` s); wall, CPU and peak RSS of that child only. It runs
    in the output directory: no checkout on its sys.path but the bench/ scripts' own directory."""
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                             cwd=os.path.dirname(stdout_path))
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            p.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)  # rusage of this child alone (taskset execs in place)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if killed.is_set():
        raise RuntimeError(f"{argv[:3]}... timed out after {timeout:.0f} s")
    if p.returncode != 0:
        with open(stderr_path, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{argv} failed rc={p.returncode}: {tail}")
    return {"wall_s": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "maxrss_kb": ru.ru_maxrss}


def build_cases(args: argparse.Namespace, log: str, outdir: str,
                target: scanguard.Target) -> list[dict[str, Any]]:
    pin = ["taskset", "-c", str(args.cpu)] if shutil.which("taskset") and not args.no_pin else []
    cases = [{
        "name": "caffe-exporter" + (" (pure Python)" if args.scan == "pure" else ""),
        "desc": f"Tailer -> Pipeline.on_chunk -> generate_latest, via exporter.daemon.build, {target.build} "
                f"build, {scanguard.LABEL[args.scan]}" + (
            f", taskset -c {args.cpu}" if pin else ", not pinned (no taskset)"),
        "kind": "exporter",
        "pinned": bool(pin),
        "env": target.env,
        "argv": lambda rep: [*pin, target.python, os.path.abspath(__file__), "--child-exporter", log,
                             "--child-out", os.path.join(outdir, f"exporter.{rep}.prom"),
                             "--child-report", os.path.join(outdir, f"exporter.{rep}.json"),
                             *(["--read-bytes", str(args.read_bytes)] if args.read_bytes else []),
                             "--scan", args.scan],
    }]
    peer_pin = pin if args.pin_peers else []
    mtail = shutil.which("mtail")
    if mtail and not args.skip_mtail:
        progs = os.path.join(outdir, "progs")
        os.makedirs(progs, exist_ok=True)
        shutil.copy(os.path.join(HERE, "caffe.mtail"), progs)
        cases.append({
            "name": "mtail caffe.mtail",
            "desc": "mtail --one_shot --one_shot_format prometheus, bench/caffe.mtail" + (
                f", taskset -c {args.cpu}" if peer_pin else ", not pinned"),
            "kind": "mtail",
            "pinned": bool(peer_pin),
            "env": None,
            "argv": lambda rep: [*peer_pin, mtail, "--one_shot", "--one_shot_format", "prometheus",
                                 "--progs", progs, "--logs", log, "--address", "127.0.0.1",
                                 "--port", str(free_port())],
        })
    elif not args.skip_mtail:
        sys.exit("bench: mtail not found (apt-get install -y mtail), or pass --skip-mtail")
    tuned = os.path.join(args.peer_dir, "py_tuned.py")
    if os.path.isfile(tuned) and not args.skip_tuned:
        cases.append({
            "name": "python tuned (peer)",
            "desc": "../shared/peer-bench/py_tuned.py (find/partition loop, no exposition)" + (
                f", taskset -c {args.cpu}" if peer_pin else ", not pinned"),
            "kind": "tuned",
            "pinned": bool(peer_pin),
            "env": dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
            "argv": lambda rep: [*peer_pin, sys.executable, tuned, log],
        })
    elif not args.skip_tuned:
        print(f"bench: {tuned} not found: skipping the tuned Python peer", file=sys.stderr)
    return cases


def parse_prom(path: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples]


def verify_exporter(prom: str, report: dict[str, Any], nlines: int, total_iters: int | None,
                    nan_iter: int, origin: str) -> dict[str, Any]:
    """The checks on the exporter's /metrics after the whole log; returns {check: (ok, detail)}."""
    samples = parse_prom(prom)
    checks: dict[str, Any] = {}

    def check(name: str, ok: bool, detail: Any) -> None:
        checks[name] = {"ok": bool(ok), "detail": detail}

    loss = [v for n, _, v in samples if n == "caffe_loss"]
    check("caffe_loss is NaN", len(loss) == 1 and math.isnan(loss[0]), loss)
    fwd: dict[str, float] = {}  # layer -> most NaN/Inf values of one of its forward series (= iterations)
    for n, lb, v in samples:
        if n == "caffe_nonfinite_values_total" and lb.get("phase") == "train" and lb.get("stage") == "forward":
            fwd[lb["layer"]] = max(fwd.get(lb["layer"], 0.0), v)
    n_origin = fwd.get(origin, 0.0)
    check(f"caffe_nonfinite_values_total{{stage=forward,layer={origin}}} > 0", n_origin > 0, n_origin)
    order = {lb["layer"]: int(lb["index"]) for n, lb, _ in samples
             if n == "caffe_layer_info" and lb.get("phase") == "train"}
    if origin in order:
        # Caffe's NaN reaches the layers before the origin only one iteration later (through the update)
        upstream = sorted((lyr, v) for lyr, v in fwd.items()
                          if order.get(lyr, 1 << 30) < order[origin] and v >= n_origin)
        check(f"every layer before {origin} in forward order has fewer non-finite forward values", not upstream,
              upstream[:5])
    else:
        check(f"{origin} in caffe_layer_info", False, None)
    its = [v for n, _, v in samples if n == "caffe_iteration"]
    if total_iters is not None:
        # one forward NaN per iteration from nan_iter to the last one => the first was at nan_iter
        check(f"NaN in {origin} from iteration {nan_iter} on (count = last iteration - {nan_iter} + 1)",
              bool(its) and n_origin == its[0] - nan_iter + 1, {"count": n_origin, "last_iteration": its})
    st = report.get("state_first_nonfinite_layer")
    if st is not None:
        check("run state: first non-finite layer value", st.get("layer") == origin and st.get("iteration") == nan_iter,
              st)
    extra = sorted({(n, lb.get("layer")) for n, lb, v in samples
                    if ("origin" in n or "first_nonfinite" in n) and lb.get("layer")})
    if extra:
        check("origin metric(s) name the layer", any(layer == origin for _, layer in extra), extra)
    accounted = report["lines_parsed"] + report["lines_skipped"]
    check("every line parsed or skipped", accounted == nlines, {"parsed": report["lines_parsed"],
                                                                 "skipped": report["lines_skipped"]})
    checks["_series"] = len(samples)
    return checks


def verify_mtail(prom: str, origin: str) -> dict[str, Any]:
    with open(prom, encoding="utf-8", errors="replace") as f:
        text = f.read()
    loss = [ln for ln in text.splitlines() if ln.startswith("caffe_loss")]
    nan_origin = [ln for ln in text.splitlines() if ln.startswith("caffe_nonfinite_values_total")
                  and f'layer="{origin}"' in ln and 'direction="forward"' in ln]
    return {"caffe_loss": loss, "nonfinite_origin_forward": nan_origin,
            "series": sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))}


def fmt_n(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x / 1e3:.0f}k"


def summarize(runs: list[dict[str, Any]], nlines: int, size: int) -> dict[str, Any]:
    w = [r["wall_s"] for r in runs]
    cpu = [r["user_s"] + r["sys_s"] for r in runs]
    med = statistics.median(w)
    s = {
        "wall_median_s": med, "wall_min_s": min(w), "wall_max_s": max(w),
        "lines_per_s_median": nlines / med, "lines_per_s_min": nlines / max(w), "lines_per_s_max": nlines / min(w),
        "mb_per_s_median": size / 1e6 / med, "mb_per_s_min": size / 1e6 / max(w), "mb_per_s_max": size / 1e6 / min(w),
        "cpu_s_median": statistics.median(cpu), "cpu_s_min": min(cpu), "cpu_s_max": max(cpu),
        "lines_per_cpu_s_median": nlines / statistics.median(cpu),
        "maxrss_mb_max": max(r["maxrss_kb"] for r in runs) / 1024.0,
    }
    child = [r["child"] for r in runs if "child" in r]
    if child:
        for key in ("startup_build_s", "read_parse_s", "render_s"):
            vals = [c[key] for c in child]
            s[key + "_median"] = statistics.median(vals)
            s[key + "_min"] = min(vals)
            s[key + "_max"] = max(vals)
        s["render_bytes"] = child[-1]["render_bytes"]
        s["read_parse_lines_per_s_median"] = nlines / s["read_parse_s_median"]
    return s


def markdown(result: dict[str, Any]) -> str:
    out = []
    out.append(f"log: {result['log']}: {result['lines']:,} lines, {result['bytes']:,} bytes "
               f"({result['bytes'] / 1e6:.1f} MB); median (min-max) of {result['reps']} round-robin reps; "
               f"{result['date']}")
    out.append("")
    dirty = len(result["exporter_uncommitted"])
    out.append(f"code: exporter/ of HEAD {result['git_head']}"
               f"{f' + {dirty} uncommitted file(s)' if dirty else ''} (sha256 {result['exporter_code_sha256']}), "
               f"{result['build']} build at {result['package_dir']}; Python {result['python']}; {result['mtail']}")
    out.append("")
    out.append(f"scan path measured: **{scanguard.LABEL[result['scan_path']]}**"
               + (f" ({result['scan_module']})" if result["scan_module"] and result["scan_path"] == "c" else ""))
    out.append("")
    out.append("| case | wall s | lines/s | MB/s | CPU s | lines per CPU s | peak RSS MB |")
    out.append("|---|---|---|---|---|---|---|")
    for c in result["cases"]:
        s = c["summary"]
        out.append(
            f"| {c['name']}{' (1 core)' if c['pinned'] else ''} | {s['wall_median_s']:.2f} "
            f"({s['wall_min_s']:.2f}-{s['wall_max_s']:.2f}) | **{fmt_n(s['lines_per_s_median'])}** "
            f"({fmt_n(s['lines_per_s_min'])}-{fmt_n(s['lines_per_s_max'])}) | {s['mb_per_s_median']:.1f} "
            f"({s['mb_per_s_min']:.1f}-{s['mb_per_s_max']:.1f}) | {s['cpu_s_median']:.2f} | "
            f"{fmt_n(s['lines_per_cpu_s_median'])} | {s['maxrss_mb_max']:.1f} |")
    ex = next((c for c in result["cases"] if c["kind"] == "exporter"), None)
    if ex is not None:
        s = ex["summary"]
        out.append("")
        out.append("caffe-exporter, inside the child (median (min-max)):")
        out.append("")
        out.append("| step | seconds | note |")
        out.append("|---|---|---|")
        out.append(f"| interpreter start, imports, build() | "
                   f"{s['wall_median_s'] - s['read_parse_s_median'] - s['render_s_median']:.2f} | "
                   "median wall minus the two rows below |")
        out.append(f"| read + parse + run state (Tailer.poll -> on_chunk) | {s['read_parse_s_median']:.2f} "
                   f"({s['read_parse_s_min']:.2f}-{s['read_parse_s_max']:.2f}) | "
                   f"{fmt_n(s['read_parse_lines_per_s_median'])} lines/s |")
        out.append(f"| render /metrics once (generate_latest) | {s['render_s_median'] * 1000:.1f} ms "
                   f"({s['render_s_min'] * 1000:.1f}-{s['render_s_max'] * 1000:.1f}) | "
                   f"{s['render_bytes']:,} bytes, {ex['series']:,} samples |")
    if result.get("ratios"):
        out.append("")
        for k, v in result["ratios"].items():
            out.append(f"* {k}: **{v:.2f}x**")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", help="reuse this log instead of generating one (give its --nan-at too)")
    ap.add_argument("--iterations", type=int, default=1560,
                    help="iterations to generate (default 1560: 2,000,003 lines, 223.6 MB)")
    ap.add_argument("--nan-at", default=None,
                    help=f"ITER:LAYER of the injected NaN (default: iteration 96%% of the way, {ORIGIN_LAYER};"
                         " 1500 for 1560 iterations)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "caffe-exporter-bench"),
                    help="generated logs and outputs (default $TMPDIR/caffe-exporter-bench)")
    ap.add_argument("--cpu", type=int, default=0, help="core for taskset (default 0)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the exporter with taskset")
    ap.add_argument("--pin-peers", action="store_true", help="pin mtail and the tuned loop too (default: not)")
    ap.add_argument("--read-bytes", type=int, default=None, help="Tailer read size (default: the config's)")
    ap.add_argument("--peer-dir", default=PEER_DIR, help="../shared/peer-bench (optional)")
    ap.add_argument("--skip-mtail", action="store_true")
    ap.add_argument("--skip-tuned", action="store_true")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per subprocess (default 900)")
    ap.add_argument("--profile", action="store_true",
                    help="afterwards run the exporter once more under cProfile; print the top 15 by tottime")
    ap.add_argument("--scan", choices=scanguard.SCAN_PATHS, default="c",
                    help="the scan path to measure: c (exporter/_scan.c, default) or pure (the fallback where it "
                         "could not be compiled); the run fails if the other one runs")
    ap.add_argument("--pure-python", dest="scan", action="store_const", const="pure", help="same as --scan pure")
    ap.add_argument("--build", choices=scanguard.BUILDS, default="installed",
                    help="installed (default): `pip install` a copy of the checkout into a fresh venv, as users "
                         "do; inplace: a copy of exporter/ as it is (scanner built in place or not)")
    ap.add_argument("--src", default=ROOT, help="the checkout to measure (default: this one)")
    ap.add_argument("--child-exporter", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-report", help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_exporter:
        return child_exporter(args.child_exporter, args.child_out, args.child_report, args.child_profile,
                              args.read_bytes, args.scan)
    if args.nan_at is None:
        args.nan_at = f"{round(args.iterations * 1500 / 1560)}:{ORIGIN_LAYER}"
    nan_iter_s, _, origin = args.nan_at.partition(":")
    nan_iter = int(nan_iter_s)
    if not args.log and not 0 <= nan_iter < args.iterations:
        sys.exit(f"bench: --nan-at {args.nan_at}: iteration outside 0..{args.iterations - 1}")
    os.makedirs(args.workdir, exist_ok=True)
    log = ensure_log(args)
    outdir = tempfile.mkdtemp(prefix="run-", dir=args.workdir)
    size = os.path.getsize(log)
    nlines = count_lines(log)
    subprocess.run(["cat", log], stdout=subprocess.DEVNULL, check=True, timeout=args.timeout)  # page cache
    target = scanguard.prepare(args.build, os.path.abspath(args.src), outdir, args.timeout)
    code = code_fingerprint(target.package_dir)
    dirty = subprocess.run(["git", "-C", args.src, "status", "--porcelain", "--", "exporter"], capture_output=True,
                           text=True, timeout=30).stdout.split("\n")
    git = subprocess.run(["git", "-C", args.src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
    print(f"bench: measuring the {target.build} build ({target.package_dir}), asked for {scanguard.LABEL[args.scan]}",
          file=sys.stderr, flush=True)
    cases = build_cases(args, log, outdir, target)
    runs: dict[str, list[dict[str, Any]]] = {c["name"]: [] for c in cases}
    checks: list[dict[str, Any]] = []
    mtail_check: dict[str, Any] | None = None
    series = 0
    for rep in range(args.reps):
        order = cases[rep % len(cases):] + cases[:rep % len(cases)]  # rotate: no case always goes first
        for c in order:
            tag = c["name"].split()[0]
            stdout = os.path.join(outdir, f"{tag}.{rep}.out")
            r = run_child(c["argv"](rep), stdout, os.path.join(outdir, f"{tag}.{rep}.err"), args.timeout, c["env"])
            if c["kind"] == "exporter":
                with open(os.path.join(outdir, f"exporter.{rep}.json")) as f:
                    r["child"] = json.load(f)
                wrong = scanguard.check(r["child"], args.scan, target)
                if wrong:
                    print(wrong, file=sys.stderr)
                    return 2
                ck = verify_exporter(os.path.join(outdir, f"exporter.{rep}.prom"), r["child"], nlines,
                                     None if args.log else args.iterations, nan_iter, origin)
                series = ck.pop("_series")
                checks.append(ck)
                bad = [k for k, v in ck.items() if not v["ok"]]
                r["checks_failed"] = bad
            elif c["kind"] == "mtail":
                mtail_check = verify_mtail(stdout, origin)
            runs[c["name"]].append(r)
            extra = ""
            if "child" in r:
                ch = r["child"]
                failed_now = f" CHECKS FAILED: {r['checks_failed']}" if r["checks_failed"] else ""
                extra = (f"  parse {ch['read_parse_s']:.2f}s render {ch['render_s'] * 1000:.0f}ms "
                         f"{ch['render_bytes']}B{failed_now}")
            print(f"rep {rep + 1} {c['name']:<22} {r['wall_s']:8.2f} s  cpu {r['user_s'] + r['sys_s']:7.2f} s  "
                  f"rss {r['maxrss_kb'] / 1024:7.1f} MB{extra}", file=sys.stderr, flush=True)
    mtail_version = ""
    if shutil.which("mtail"):
        mtail_version = subprocess.run(["mtail", "--version"], capture_output=True, text=True,
                                       timeout=30).stdout.partition("\n")[0]
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "log": log, "lines": nlines, "bytes": size, "reps": args.reps, "nan_at": args.nan_at,
        "git_head": git, "exporter_uncommitted": [x for x in dirty if x],
        "exporter_code_sha256": code, "python": platform.python_version(), "mtail": mtail_version,
        "nproc": os.cpu_count(), "build": target.build, "package_dir": target.package_dir,
        "scan_path": args.scan, "scan_module": runs[cases[0]["name"]][-1]["child"]["scan_module"],
        "argv": sys.argv, "outdir": outdir, "cases": [],
    }
    for c in cases:
        entry = {"name": c["name"], "desc": c["desc"], "kind": c["kind"], "pinned": c["pinned"],
                 "argv_example": c["argv"](0), "runs": runs[c["name"]],
                 "summary": summarize(runs[c["name"]], nlines, size)}
        if c["kind"] == "exporter":
            entry["series"] = series
            entry["checks_last_rep"] = checks[-1]
            entry["observers_per_build"] = runs[c["name"]][-1]["child"]["observers"]
        if c["kind"] == "mtail":
            entry["check"] = mtail_check
        result["cases"].append(entry)
    by = {c["kind"]: c["summary"] for c in result["cases"]}
    ratios = {}
    if "mtail" in by:
        ratios["caffe-exporter / mtail, lines/s (wall)"] = (by["exporter"]["lines_per_s_median"]
                                                            / by["mtail"]["lines_per_s_median"])
        ratios["caffe-exporter / mtail, lines per CPU second"] = (by["exporter"]["lines_per_cpu_s_median"]
                                                                  / by["mtail"]["lines_per_cpu_s_median"])
    if "tuned" in by:
        ratios["caffe-exporter / python tuned, lines/s (wall)"] = (by["exporter"]["lines_per_s_median"]
                                                                   / by["tuned"]["lines_per_s_median"])
    result["ratios"] = ratios
    failed = sorted({k for ck in checks for k, v in ck.items() if not v["ok"]})
    result["checks_failed"] = failed
    if args.profile:
        prof = os.path.join(outdir, "exporter.prof")
        argv_p = [*cases[0]["argv"]("profile"), "--child-profile", prof]
        run_child(argv_p, os.path.join(outdir, "profile.out"), os.path.join(outdir, "profile.err"),
                  args.timeout, cases[0]["env"])
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime").print_stats(15)
        result["profile_top15"] = buf.getvalue()
        result["profile_file"] = prof
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(markdown(result))
    print()
    print("exporter checks (every rep): " + ("all passed" if not failed else f"FAILED: {failed}"))
    for k, v in checks[-1].items():
        print(f"  [{'ok' if v['ok'] else 'FAIL'}] {k}: {v['detail']}")
    if mtail_check is not None:
        print(f"mtail output: {mtail_check['series']} samples; {mtail_check['caffe_loss']}; "
              f"{len(mtail_check['nonfinite_origin_forward'])} forward NaN series for {origin}: "
              f"{mtail_check['nonfinite_origin_forward'][:1]}")
    if args.profile:
        print()
        print(result["profile_top15"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
